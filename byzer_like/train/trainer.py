"""What every task trained through transformers' Trainer shares (sft; dpo, orpo, kto and rm through TRL's
trainers, which are Trainer subclasses; sfft's LoRA under DeepSpeed for the adapter config): peft's LoRA
config from the options' lora* keys, and the Trainer arguments every such task sets the same way."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from ..errors import ConfigError


def use_device(cpus: float, gpus: float) -> bool:
    """Set torch's CPU threads to the job's `cpus` (when at least 1) and say whether it trains on a CUDA GPU
    (`gpus` > 0 and one is there); what every task's training process does first. torch is imported here."""
    import torch

    if cpus >= 1:
        torch.set_num_threads(int(cpus))
    return gpus > 0 and torch.cuda.is_available()


def lora_config(opts: Any, model: Any, target_modules: Sequence[str], *, task_type: str = "CAUSAL_LM",
                modules_to_save: list[str] | None = None, check: bool = True) -> Any:
    """peft's LoraConfig (loraR, loraAlpha, loraDropout) on `opts.lora_target_modules`, else the plugin's
    `target_modules`, else every linear layer but the output head (peft's "all-linear"). With `check`, a
    ConfigError when none of the named modules is in `model`, naming the linear layers it has."""
    from peft import LoraConfig

    modules: Any = list(opts.lora_target_modules or target_modules or ["all-linear"])
    if modules == ["all-linear"]:
        modules = "all-linear"  # peft's name for every linear layer but the output head
    if check and isinstance(modules, list):
        present = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
        if not set(modules) & present:
            raise ConfigError(f"none of the LoRA target modules {modules} is in this model; its linear layers "
                              f"include {', '.join(sorted(n for n in present if 'proj' in n or 'attn' in n)[:12])}")
    return LoraConfig(r=opts.lora_r, lora_alpha=opts.lora_alpha, lora_dropout=opts.lora_dropout,
                      target_modules=modules, task_type=task_type, modules_to_save=modules_to_save)


def trainer_arguments(opts: Any, ckpt_dir: Path, batch_size: int, has_eval: bool, on_gpu: bool) -> dict[str, Any]:
    """The keyword arguments of transformers' TrainingArguments (and TRL's configs built on it) that every
    task sets from the shared training options: `batch_size` rows per device and step, checkpoints in
    `ckpt_dir` every checkpoint_steps (save_total_limit kept), an evaluation each epoch with `has_eval`, the
    seed for weights and data order, bf16 on a GPU that has it (not for qlora), no progress bars, and no
    report_to (TensorBoard's callback is given with its folder)."""
    import torch

    return dict(
        output_dir=str(ckpt_dir),
        per_device_train_batch_size=batch_size,
        per_device_eval_batch_size=batch_size,
        gradient_accumulation_steps=opts.gradient_accumulation_steps,
        learning_rate=opts.lr(),
        num_train_epochs=opts.num_train_epochs,
        max_steps=opts.max_steps,
        warmup_steps=opts.warmup_ratio,  # a float below 1 is a fraction of the steps
        weight_decay=opts.weight_decay,
        logging_steps=opts.logging_steps,
        logging_first_step=True,
        save_strategy="steps",
        save_steps=opts.checkpoint_steps,
        save_total_limit=opts.save_total_limit,
        eval_strategy="epoch" if has_eval else "no",
        seed=opts.seed,
        data_seed=opts.seed,
        use_cpu=not on_gpu,
        bf16=on_gpu and torch.cuda.is_bf16_supported() and getattr(opts, "method", None) != "qlora",
        report_to=[],
        disable_tqdm=True,
        dataloader_num_workers=0,
    )


__all__ = ["lora_config", "trainer_arguments"]
