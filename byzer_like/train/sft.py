"""Supervised fine-tuning with transformers' Trainer and peft: LoRA, QLoRA (a 4-bit base through
bitsandbytes), full, freeze (the last decoder layers) or prefix tuning (train/methods.py). Checkpoints every `checkpoint_steps`; `resume=True` continues from the last one
with the Trainer's own restore (same step, optimizer and scheduler state, data position).
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Sequence

from ..errors import ConfigError
from . import data as D
from .options import SftOptions
from .progress import STOP, TENSORBOARD_DIR, Reporter
from .trainer import use_device


def load_conversations(data_path: str) -> list[list[dict[str, str]]]:
    import pyarrow.parquet as pq

    table = pq.read_table(data_path)
    if table.num_rows == 0:
        raise ConfigError("the training table is empty")
    return D.conversations(table.to_pylist(), D.sft_form(table.column_names))


def prepare_tokenizer(model_dir: str, fallback_template: str | None = None, template: str | None = None):
    """The tokenizer of `model_dir` for training: a pad token (the eos when it has none), padding on the right,
    and the chat template of the named `template` (train/templates.py) when given, else its own, else
    `fallback_template` (the plugin's)."""
    from transformers import AutoTokenizer

    from .templates import chat_template

    tok = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=False)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    if template:
        tok.chat_template = chat_template(template)
    elif not tok.chat_template and fallback_template:
        tok.chat_template = fallback_template
    tok.padding_side = "right"
    return tok


def stop_token_ids(model_dir: str, tokenizer: Any, stop_tokens: Sequence[str] = ()) -> list[int]:
    """The ids that end an answer: the generation config's eos ids, the tokenizer's eos, the plugin's stop tokens."""
    from transformers import GenerationConfig

    ids: list[int] = []
    try:
        eos = GenerationConfig.from_pretrained(model_dir).eos_token_id
    except OSError:  # no generation_config.json
        eos = None
    vocab = tokenizer.get_vocab()
    for value in (eos if isinstance(eos, list) else [eos]) + [tokenizer.eos_token_id] + [vocab.get(t) for t in stop_tokens]:
        if value is not None and value not in ids:
            ids.append(int(value))
    return ids


def last_checkpoint(checkpoint_dir: str | Path) -> str | None:
    """The newest complete Trainer checkpoint (`checkpoint-<step>`) in `checkpoint_dir`, or None.

    A run stopped while it was saving leaves a checkpoint folder without `trainer_state.json` (the
    Trainer writes it last): such a folder is skipped, so a resume starts from the one before it."""
    d = Path(checkpoint_dir)
    if not d.is_dir():
        return None
    steps = sorted((int(p.name.split("-", 1)[1]), p) for p in d.glob("checkpoint-*")
                   if p.is_dir() and p.name.split("-", 1)[1].isdigit())
    for step, p in reversed(steps):
        if (p / "trainer_state.json").is_file():
            return str(p)
        print(f"[byzer-like] skipping {p.name}: incomplete (the run stopped while saving it)", flush=True)
    return None


def sft_train(*, model_dir: str, data_path: str, output_dir: str, run_dir: str, options: SftOptions,
              target_modules: Sequence[str] = (), fallback_template: str | None = None,
              stop_tokens: Sequence[str] = (), cpus: float = 1.0, gpus: float = 0.0,
              reporter: Reporter | None = None, resume: bool = False) -> dict:
    """Fine-tune `model_dir` on the table in `data_path` (parquet); write the adapter (lora, qlora, prefix) or
    the whole model (full, freeze) to `output_dir`. Returns `{"model_dir", "kind", "metrics"}` (kind
    "adapter" or "model"). ConfigError for a method the base cannot take (`methods.check_method`)."""
    import torch
    from transformers import DataCollatorForSeq2Seq, Trainer

    from .methods import check_method

    on_gpu = use_device(cpus, gpus)
    reporter = reporter or Reporter()
    opts = options if options.method else options.model_copy(update={"method": "lora"})  # settled at submit
    check_method(opts, model_dir)
    tok = prepare_tokenizer(model_dir, fallback_template, opts.template)
    stop_ids = stop_token_ids(model_dir, tok, stop_tokens)
    convs = load_conversations(data_path)
    eval_path = Path(run_dir) / "eval.parquet"
    train_rows, eval_rows, held_convs, dropped = _examples(tok, convs, opts, stop_ids, eval_path)

    model = _load_model(model_dir, opts, target_modules, on_gpu)
    evaluator = _evaluator(eval_path, held_convs, opts, tok, stop_ids)
    ckpt_dir = Path(run_dir) / "checkpoints"
    args = _training_args(opts, ckpt_dir, len(train_rows), bool(eval_rows), on_gpu)
    progress = _progress_callback(reporter, evaluator)
    trainer = Trainer(
        model=model, args=args, train_dataset=_dataset(train_rows), eval_dataset=_dataset(eval_rows) or None,
        data_collator=DataCollatorForSeq2Seq(tok, label_pad_token_id=D.IGNORE, padding=True),
        callbacks=[progress, *_tensorboard(Path(run_dir) / TENSORBOARD_DIR)],
    )
    out, runtime, resumed_from = _train(trainer, ckpt_dir, resume)

    _save(model, tok, output_dir)
    # the final model's metrics on evalTable, in the job's metrics
    final_evals = (progress.evals or evaluator(model)) if evaluator is not None else {}
    metrics = _metrics(trainer.state, out.training_loss, runtime, train_rows=len(train_rows), eval_rows=len(eval_rows),
                       dropped=dropped, resumed_from=resumed_from, final_evals=final_evals,
                       start_tokens=progress.start_tokens)
    return {"model_dir": str(output_dir), "kind": "adapter" if opts.trains_adapter() else "model", "metrics": metrics}


def _examples(tok: Any, convs: list, opts: SftOptions, stop_ids: list[int],
              eval_path: Path) -> tuple[list, list, list, int]:
    """Encode the conversations: (train rows, evalSplit rows, held-out conversations, dropped rows).

    Rows are (input ids, labels) pairs (packed into max_seq_length-token blocks with packing), split by
    evalSplit and seed. The held-out conversations are the evalSplit's rows as conversations, for evalMetrics
    when no evalTable is stored at `eval_path` (none with packing, which holds out blocks, not rows). Dropped:
    rows with no answer token within max_seq_length (said on stdout)."""
    examples, dropped = D.encode_all(tok, convs, opts.max_seq_length, stop_ids)
    if dropped:
        print(f"[byzer-like] {dropped} rows have no answer token within max_seq_length={opts.max_seq_length}: skipped")
    held_convs: list = []
    if opts.eval_split > 0 and opts.eval_metrics and not eval_path.is_file():  # evalMetrics on the held-out rows
        if opts.packing:
            print("[byzer-like] evalMetrics not measured: with packing the evalSplit holds out packed blocks, not "
                  "rows; give an evalTable", flush=True)
        else:
            kept = [c for c in convs if D.encode(tok, c, opts.max_seq_length, stop_ids) is not None]
            held_convs = D.split(kept, opts.eval_split, opts.seed)[1]  # the examples' split: same length and seed
    if opts.packing:
        examples = D.pack(examples, opts.max_seq_length)
    train_rows, eval_rows = D.split(examples, opts.eval_split, opts.seed)
    return train_rows, eval_rows, held_convs, dropped


def _dataset(rows: list) -> list[dict]:
    """(input ids, labels) rows as the Trainer's examples, with an all-ones attention mask."""
    return [{"input_ids": i, "labels": lab, "attention_mask": [1] * len(i)} for i, lab in rows]


def _tensorboard(folder: Path) -> list:
    """transformers' TensorBoardCallback writing the logged metrics into `folder` (the job's TENSORBOARD_DIR),
    or none where the tensorboard package is not installed."""
    import importlib.util

    if importlib.util.find_spec("tensorboard") is None:
        return []
    from torch.utils.tensorboard import SummaryWriter
    from transformers.integrations import TensorBoardCallback

    return [TensorBoardCallback(SummaryWriter(log_dir=str(folder)))]


def _training_args(opts: SftOptions, ckpt_dir: Path, train_rows: int, has_eval: bool, on_gpu: bool):
    """The Trainer's TrainingArguments: checkpoints in `ckpt_dir` every checkpoint_steps, an evaluation each
    epoch when there are evalSplit rows (`has_eval`), the batch size for `train_rows` rows, bf16 on a GPU that
    has it (not for qlora), gradient checkpointing (non-reentrant: frozen inputs need no grad) and NEFTune's
    noise when asked."""
    from transformers import TrainingArguments

    from .trainer import trainer_arguments

    return TrainingArguments(
        **trainer_arguments(opts, ckpt_dir, opts.batch_size(train_rows), has_eval, on_gpu),
        include_num_input_tokens_seen="non_padding",
        remove_unused_columns=False,
        activation_checkpointing=opts.gradient_checkpointing,  # transformers 5's name of gradient_checkpointing
        activation_checkpointing_kwargs={"use_reentrant": False} if opts.gradient_checkpointing else None,
        neftune_noise_alpha=opts.neftune_noise_alpha,
    )


def _progress_callback(reporter: Reporter, evaluator: Any) -> Any:
    """A TrainerCallback reporting to `reporter`: the start (step, total steps), every logged step (tokens since
    the last report, loss, eval_loss, LR, epoch) and, with an `evaluator`, its metrics at each epoch's end (kept
    in `.evals`). A stop signal (STOP) ends the run at a step's end. `.start_tokens`: the tokens seen when this
    session began (a resumed run starts above 0)."""
    from transformers import TrainerCallback

    class _Progress(TrainerCallback):
        tokens = 0  # tokens seen at the last report
        start_tokens = 0  # tokens seen when this session began (a resumed run starts above 0)

        def on_train_begin(self, a, state, control, **kw):  # noqa: ANN001
            self.tokens = self.start_tokens = state.num_input_tokens_seen
            reporter.start(state.global_step, state.max_steps)

        def on_step_end(self, a, state, control, **kw):  # noqa: ANN001 - before this step's save, never during one
            STOP.check()

        def on_epoch_end(self, a, state, control, model=None, **kw):  # noqa: ANN001
            if evaluator is not None:
                self.evals = evaluator(model)
                reporter.step(state.global_step, tokens=0, epoch=round(state.epoch or 0, 3), **self.evals)

        evals: dict = {}

        def on_log(self, a, state, control, logs=None, **kw):  # noqa: ANN001
            logs = logs or {}
            seen = state.num_input_tokens_seen
            if "loss" in logs or "eval_loss" in logs:
                reporter.step(state.global_step, tokens=seen - self.tokens, loss=logs.get("loss"),
                              eval_loss=logs.get("eval_loss"), learning_rate=logs.get("learning_rate"),
                              epoch=round(state.epoch or 0, 3))
                self.tokens = seen

    return _Progress()


def _train(trainer: Any, ckpt_dir: Path, resume: bool) -> tuple[Any, float, int]:
    """Run `trainer`, from the last complete checkpoint in `ckpt_dir` when `resume` (`last_checkpoint`).
    Returns (the Trainer's TrainOutput, the seconds it took, the step resumed from: 0 for a new run).

    A stop signal ends the run at the next step's end, not inside a checkpoint save."""
    start_ckpt = last_checkpoint(ckpt_dir) if resume else None
    resumed_from = int(start_ckpt.rsplit("-", 1)[1]) if start_ckpt else 0
    t0 = time.monotonic()
    STOP.defers = True
    try:
        out = trainer.train(resume_from_checkpoint=start_ckpt)
    finally:
        STOP.defers = False
    return out, time.monotonic() - t0, resumed_from


def _save(model: Any, tok: Any, output_dir: str) -> None:
    """The adapter (or whole model) as safetensors in `output_dir`, with the tokenizer padding on the left."""
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output_dir, safe_serialization=True)
    tok.padding_side = "left"
    tok.save_pretrained(output_dir)


def _metrics(state: Any, train_loss: float, runtime: float, *, train_rows: int, eval_rows: int, dropped: int,
             resumed_from: int, final_evals: dict, start_tokens: int) -> dict:
    """The run's metrics from the Trainer's `state`: steps, epoch, train_loss (the Trainer's mean), the first and
    last logged losses, rows, tokens seen, runtime (s), the step resumed from, `final_evals` (evalMetrics on the
    final model), the last eval_loss and the tokens per second of this session (above `start_tokens`)."""
    losses = [h["loss"] for h in state.log_history if "loss" in h]
    metrics = {
        "steps": state.global_step,
        "epoch": round(state.epoch or 0, 3),
        "train_loss": round(train_loss, 6),
        "first_loss": losses[0] if losses else None,
        "final_loss": losses[-1] if losses else None,
        "train_rows": train_rows,
        "eval_rows": eval_rows,
        "dropped_rows": dropped,
        "tokens": int(state.num_input_tokens_seen),
        "train_runtime_s": round(runtime, 3),
        "resumed_from_step": resumed_from,
    }
    metrics.update(final_evals)
    evals = [h["eval_loss"] for h in state.log_history if "eval_loss" in h]
    if evals:
        metrics["eval_loss"] = evals[-1]
    metrics["tokens_per_s"] = round((metrics["tokens"] - start_tokens) / runtime, 2) if runtime > 0 else None
    return metrics


def _evaluator(eval_path: Path, held_convs: list, opts: SftOptions, tok: Any, stop_ids: list[int]):
    """A function of the model being trained -> `{"eval_<metric>": value}` (`train.evaluation.TrainingEval`):
    on evalTable's rows (`eval_path`) when it was given, else on the evalSplit rows held out of training
    (`held_convs`) when evalMetrics names metrics; None when there is nothing to measure."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from .evaluation import TrainingEval

    if eval_path.is_file():
        table, name = pq.read_table(eval_path), opts.eval_table
    elif held_convs and opts.eval_metrics:
        table, name = pa.table({"messages": [json.dumps(c, ensure_ascii=False) for c in held_convs]}), "evalSplit"
        print(f"[byzer-like] evalMetrics measured on the {len(held_convs)} evalSplit rows held out of training",
              flush=True)
    else:
        return None
    ev = TrainingEval.from_table(table, metrics=opts.eval_metric_names(), max_new_tokens=opts.eval_max_new_tokens,
                                 max_length=opts.max_seq_length, name=name)
    return lambda model: ev(model, tok, stop_ids=stop_ids)


def _load_model(model_dir: str, opts: SftOptions, target_modules: Sequence[str], on_gpu: bool):
    """The model `opts.method` trains: the whole model (full), with all but its trained layers frozen (freeze),
    wrapped by peft (prefix, lora; qlora over a 4-bit base)."""
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
        return model
    if opts.method == "freeze":
        from .methods import apply_freeze

        trained = apply_freeze(model, opts)
        print(f"[byzer-like] freeze: training {len(trained)} parameter tensors of the last "
              f"{opts.num_layer_trainable} decoder layers", flush=True)
        return model
    if opts.method == "prefix":
        from .methods import prefix_model

        return prefix_model(model, opts)
    from peft import get_peft_model, prepare_model_for_kbit_training

    from .trainer import lora_config

    if opts.method == "qlora":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    config = lora_config(opts, model, target_modules)
    return get_peft_model(model, config)


def merge_adapter(base_dir: str, adapter_dir: str, output_dir: str) -> str:
    """Merge a LoRA adapter into its base and save a whole model (safetensors) with the tokenizer.
    NotSupportedError for a prefix-tuning adapter, whose virtual tokens are no weights to merge."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..errors import NotSupportedError
    from .methods import is_prefix_adapter

    if is_prefix_adapter(adapter_dir):
        raise NotSupportedError(f"{adapter_dir!r} is a prefix-tuning adapter: its virtual tokens are keys and values "
                                "prepended at every layer, not weights that merge into the base; deploy it as it is "
                                "(modelTable=\"<adapter>\" on the transformers back end)")

    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32, use_safetensors=True)
    merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(output_dir, safe_serialization=True)
    AutoTokenizer.from_pretrained(adapter_dir).save_pretrained(output_dir)
    return str(output_dir)


__all__ = ["last_checkpoint", "load_conversations", "merge_adapter", "prepare_tokenizer", "sft_train"]
