"""Preference training with TRL 1.16: DPO and KTO (`trl.DPOTrainer`, `trl.KTOTrainer`) and ORPO (from TRL's
experimental module, `trl.experimental.orpo.ORPOTrainer`), LoRA, QLoRA or full, in the job's runner.

The reference model is handled as TRL does: with LoRA / QLoRA the trainer is given the base and a
`peft.LoraConfig`, and the reference is the same frozen base with the adapter switched off (no second copy
in memory); with `method="full"` TRL loads a second, frozen copy of the base; ORPO needs no reference.
Checkpoints, resume and stop are sft's (`train.sft`): the Trainer's own checkpoints every `checkpoint_steps`,
`resume=True` continues from the last complete one, a stop signal ends the run at a step's end.

TRL 1.16 has no `max_prompt_length`: `maxPromptLength` keeps a longer prompt's last tokens, cut after TRL has
tokenized it (DPO, KTO) or just before (ORPO, whose tokenizer is its own).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

from ..errors import ConfigError
from . import data as D
from . import preference_data as P
from .preference_options import PreferenceOptions
from .progress import STOP, TENSORBOARD_DIR, Reporter
from .trainer import use_device

# the metrics TRL logs that a job's progress keeps (training, and `eval_` + each after an evaluation)
LOGGED = ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "kl", "nll_loss",
          "log_odds_ratio")
EVAL_LOGGED = ("eval_loss", "eval_rewards/margins", "eval_rewards/accuracies")


def trl_classes(task: str) -> tuple[Any, Any]:
    """(trainer class, config class) of `task` from TRL; ORPO comes from `trl.experimental.orpo` (its notice that
    the module is experimental is silenced: TRL_EXPERIMENTAL_SILENCE=1 in this process)."""
    if task == "dpo":
        from trl import DPOConfig, DPOTrainer

        return _prompt_cut_dpo(DPOTrainer), DPOConfig
    if task == "kto":
        from trl import KTOConfig, KTOTrainer

        return _prompt_cut_dpo(KTOTrainer), KTOConfig
    if task == "orpo":
        os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer

        return _prompt_cut_orpo(ORPOTrainer), ORPOConfig
    raise ConfigError(f"no preference method {task!r}; known: dpo, orpo, kto")


def _prompt_cut_dpo(base: type) -> type:
    """`base` (DPOTrainer / KTOTrainer) whose tokenized examples keep only the last `max_prompt_length` prompt
    tokens (the attribute set before `__init__` runs; None: prompts are left whole)."""

    class Trainer(base):
        max_prompt_length: int | None = None

        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):  # noqa: ANN001
            dataset = super()._prepare_dataset(dataset, processing_class, args, dataset_name)
            n = self.max_prompt_length
            if n and "prompt_ids" in dataset.column_names:
                dataset = dataset.map(lambda ex: {"prompt_ids": ex["prompt_ids"][-n:]})
            return dataset

    Trainer.__name__ = base.__name__
    return Trainer


def _prompt_cut_orpo(base: type) -> type:
    """ORPOTrainer whose prompts (text, after the chat template) keep only their last `max_prompt_length` tokens,
    and which counts the tokens it trains on (prompt + chosen and prompt + rejected, no padding) as DPOTrainer
    does, logging them as `num_tokens`."""

    class Trainer(base):
        max_prompt_length: int | None = None
        _total_train_tokens = 0  # DPO and KTO count these themselves (TRL's num_tokens); ORPO does not

        def training_step(self, model, inputs, *args, **kwargs):  # noqa: ANN001
            self._total_train_tokens += int(sum(inputs[k].sum() for k in ("chosen_attention_mask",
                                                                            "rejected_attention_mask") if k in inputs))
            return super().training_step(model, inputs, *args, **kwargs)

        def log(self, logs, *args, **kwargs):  # noqa: ANN001 - num_tokens in the logs, as DPO and KTO log it
            if "loss" in logs:
                logs = {**logs, "num_tokens": float(self._total_train_tokens)}
            return super().log(logs, *args, **kwargs)

        def tokenize_row(self, feature, model=None):  # noqa: ANN001
            n = self.max_prompt_length
            if n:
                ids = self.processing_class(feature["prompt"], add_special_tokens=False)["input_ids"]
                if len(ids) > n:
                    feature = {**feature, "prompt": self.processing_class.decode(ids[-n:])}
            return super().tokenize_row(feature, model)

    Trainer.__name__ = base.__name__
    return Trainer


def preference_train(task: str, *, model_dir: str, data_path: str, output_dir: str, run_dir: str,
                     options: PreferenceOptions, target_modules: Sequence[str] = (),
                     fallback_template: str | None = None, stop_tokens: Sequence[str] = (), cpus: float = 1.0,
                     gpus: float = 0.0, reporter: Reporter | None = None, resume: bool = False) -> dict:
    """Train `model_dir` with `task` (dpo, orpo, kto) on the table in `data_path` (parquet, a form of
    `train.preference_data`); write the adapter (lora, qlora) or the whole model (full) to `output_dir`.

    Progress (loss, rewards/chosen, rewards/rejected, rewards/margins, rewards/accuracies; KTO's kl, ORPO's
    nll_loss and log_odds_ratio) goes to `reporter` every `logging_steps`. Returns `{"model_dir", "kind",
    "metrics"}`. Raises ConfigError for data TRL cannot train on."""
    import datasets
    import pyarrow.parquet as pq
    import torch

    from .sft import _save, _tensorboard, _train, prepare_tokenizer, stop_token_ids

    datasets.disable_progress_bars()
    on_gpu = use_device(cpus, gpus)
    reporter = reporter or Reporter()
    opts = options
    tok = prepare_tokenizer(model_dir, fallback_template)
    stop_ids = stop_token_ids(model_dir, tok, stop_tokens)
    table = pq.read_table(data_path)
    if table.num_rows == 0:
        raise ConfigError("the training table is empty")
    train_rows, eval_rows = D.split(P.examples(task, table), opts.eval_split, opts.seed)

    model, peft_config = load_model(model_dir, opts, target_modules, on_gpu)
    trainer_cls, config_cls = trl_classes(task)
    ckpt_dir = Path(run_dir) / "checkpoints"
    args = config_cls(**training_args(task, opts, ckpt_dir, len(train_rows), bool(eval_rows), on_gpu))
    evaluator = _evaluator(Path(run_dir) / "eval.parquet", opts, tok, stop_ids)
    progress = progress_callback(reporter, evaluator)
    trainer_cls.max_prompt_length = opts.max_prompt_length
    trainer = trainer_cls(
        model=model, args=args, processing_class=tok, peft_config=peft_config,
        train_dataset=datasets.Dataset.from_list(train_rows),
        eval_dataset=datasets.Dataset.from_list(eval_rows) if eval_rows else None,
        callbacks=[progress, *_tensorboard(Path(run_dir) / TENSORBOARD_DIR)],
    )
    dropped = len(train_rows) - len(trainer.train_dataset)
    if dropped:
        print(f"[byzer-like] {dropped} rows dropped by TRL: their prompt alone fills maxLength={opts.max_length}",
              flush=True)
    out, runtime, resumed_from = _train(trainer, ckpt_dir, resume)

    _save(trainer.model, tok, output_dir)
    final_evals = (progress.evals or evaluator(trainer.model)) if evaluator is not None else {}
    metrics = run_metrics(trainer.state, out.training_loss, runtime, train_rows=len(trainer.train_dataset),
                          eval_rows=len(eval_rows), dropped=dropped, resumed_from=resumed_from,
                          tokens=trained_tokens(trainer))
    metrics.update(final_evals)
    return {"model_dir": str(output_dir), "kind": "model" if opts.method == "full" else "adapter", "metrics": metrics}


def load_model(model_dir: str, opts: PreferenceOptions, target_modules: Sequence[str], on_gpu: bool) -> tuple[Any, Any]:
    """(the base model, the `peft.LoraConfig` TRL wraps it with, or None for `method="full"`). QLoRA loads the
    base in 4-bit nf4 (bitsandbytes) and prepares it for k-bit training, as sft does."""
    import torch
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"trust_remote_code": False, "use_safetensors": True, "dtype": torch.float32}
    if opts.method == "qlora":
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16 if on_gpu else torch.float32)
        kwargs["device_map"] = {"": 0 if on_gpu else "cpu"}
    model = AutoModelForCausalLM.from_pretrained(model_dir, **kwargs)
    if opts.method == "full":
        return model, None
    from peft import prepare_model_for_kbit_training

    from .trainer import lora_config

    if opts.method == "qlora":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    return model, lora_config(opts, model, target_modules)


def training_args(task: str, opts: PreferenceOptions, ckpt_dir: Path, train_rows: int, has_eval: bool,
                  on_gpu: bool) -> dict[str, Any]:
    """The keyword arguments of TRL's config for `task` (DPOConfig, KTOConfig, ORPOConfig): sft's Trainer
    settings (checkpoints in `ckpt_dir` every checkpoint_steps, an evaluation each epoch with `has_eval`, bf16 on
    a GPU that has it but not for qlora, no gradient checkpointing) and the method's beta, loss type, lengths."""
    from .trainer import trainer_arguments

    args: dict[str, Any] = dict(
        **trainer_arguments(opts, ckpt_dir, opts.batch_size(train_rows), has_eval, on_gpu),
        gradient_checkpointing=False,
        remove_unused_columns=False,
        max_length=opts.max_length,
        beta=opts.beta,
    )
    if task == "dpo":
        args["loss_type"] = opts.loss_type_names()  # several are combined with equal weights
    if task == "kto":
        args["loss_type"] = opts.loss_type
        args["desirable_weight"] = opts.desirable_weight
        args["undesirable_weight"] = opts.undesirable_weight
    return args


def progress_callback(reporter: Reporter, evaluator: Any = None) -> Any:
    """A TrainerCallback reporting to `reporter`: the start (step, total steps), each logged step's LOGGED
    metrics (loss, rewards/*, ...) with the learning rate, epoch and tokens since the last report (TRL's
    `num_tokens`), each evaluation's EVAL_LOGGED, and with an `evaluator` (evalTable) its metrics at each
    epoch's end (kept in `.evals`). A stop signal (STOP) ends the run at a step's end."""
    from transformers import TrainerCallback

    class _Progress(TrainerCallback):
        tokens = 0.0  # TRL's num_tokens at the last report
        evals: dict = {}

        def on_train_begin(self, a, state, control, **kw):  # noqa: ANN001
            reporter.start(state.global_step, state.max_steps)

        def on_step_end(self, a, state, control, **kw):  # noqa: ANN001 - before this step's save, never during one
            STOP.check()

        def on_epoch_end(self, a, state, control, model=None, **kw):  # noqa: ANN001
            if evaluator is not None:
                self.evals = evaluator(model)
                reporter.step(state.global_step, tokens=0, epoch=round(state.epoch or 0, 3), **self.evals)

        def on_log(self, a, state, control, logs=None, **kw):  # noqa: ANN001
            logs = logs or {}
            if "loss" in logs:
                seen = float(logs.get("num_tokens") or self.tokens)
                tokens, self.tokens = max(seen - self.tokens, 0), seen
                values = {k: logs.get(k) for k in LOGGED}
                reporter.step(state.global_step, tokens=int(tokens), learning_rate=logs.get("learning_rate"),
                              epoch=round(state.epoch or 0, 3), **values)
            elif "eval_loss" in logs:
                reporter.step(state.global_step, tokens=0, epoch=round(state.epoch or 0, 3),
                              **{k: logs.get(k) for k in EVAL_LOGGED})

    return _Progress()


def trained_tokens(trainer: Any) -> int:
    """The tokens `trainer` trained on in this session (prompt + chosen and prompt + rejected for pairs, prompt +
    completion for KTO; no padding): TRL's own count for DPO and KTO, `_prompt_cut_orpo`'s for ORPO."""
    return int(getattr(trainer, "_total_train_tokens", 0) or 0)


def run_metrics(state: Any, train_loss: float, runtime: float, *, train_rows: int, eval_rows: int, dropped: int,
                resumed_from: int, tokens: int = 0) -> dict:
    """The run's metrics from the Trainer's `state`: steps, epoch, train_loss (the Trainer's mean), the first and
    last logged losses, the last logged rewards (rewards/chosen, rewards/rejected, rewards/margins,
    rewards/accuracies) and eval loss / margins, rows trained on, held out and dropped, `tokens` trained on in
    this session and their tokens per second of `runtime` (s), the step resumed from."""
    history = state.log_history
    losses = [h["loss"] for h in history if "loss" in h]
    metrics: dict[str, Any] = {
        "steps": state.global_step,
        "epoch": round(state.epoch or 0, 3),
        "train_loss": round(train_loss, 6),
        "first_loss": losses[0] if losses else None,
        "final_loss": losses[-1] if losses else None,
        "train_rows": train_rows,
        "eval_rows": eval_rows,
        "dropped_rows": dropped,
        "tokens": tokens,
        "train_runtime_s": round(runtime, 3),
        "tokens_per_s": round(tokens / runtime, 2) if runtime > 0 else None,
        "resumed_from_step": resumed_from,
    }
    for key in LOGGED[1:] + EVAL_LOGGED:
        values = [h[key] for h in history if key in h]
        if values:
            metrics[key] = values[-1]
    return metrics


def _evaluator(eval_path: Path, opts: PreferenceOptions, tok: Any, stop_ids: list[int]):
    """A function of the model being trained -> `{"eval_<metric>": value}` on the evalTable stored at `eval_path`
    (`train.evaluation.TrainingEval`), or None without one."""
    if not eval_path.is_file():
        return None
    import pyarrow.parquet as pq

    from .evaluation import TrainingEval

    ev = TrainingEval.from_table(pq.read_table(eval_path), metrics=opts.eval_metric_names(),
                                 max_new_tokens=opts.eval_max_new_tokens, max_length=opts.max_length,
                                 name=opts.eval_table)
    return lambda model: ev(model, tok, stop_ids=stop_ids)


__all__ = ["EVAL_LOGGED", "LOGGED", "load_model", "preference_train", "progress_callback", "run_metrics",
           "trained_tokens", "training_args", "trl_classes"]
