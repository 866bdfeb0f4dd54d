"""Reward models: a sequence-classification head (one number per text) trained on preference pairs with
TRL's `RewardTrainer` (the Bradley-Terry loss `-log sigmoid(r(chosen) - r(rejected))`), LoRA by default or full.

    data   one row per pair: `prompt` (or `instruction`, optional `input`), `chosen`, `rejected`; optional `system`
    model  AutoModelForSequenceClassification(num_labels=1) over the base causal LM's weights (a new `score` head)
    lora   peft task_type SEQ_CLS, the score head trained whole (modules_to_save); merged into the base at the end
    out    a whole sequence-classification model, registered with kind "reward"

The text a reward model reads is the conversation `[user: prompt, assistant: response]` rendered with the
tokenizer's chat template (`reward_text`), the same at training and when a deployment scores
(`backends/reward.py`); the tokenizer is saved with its template, so a deployment needs nothing else.
Only the options and the table check are imported at module level: torch, transformers, peft and trl are
imported inside `rm_train`.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, ClassVar, Iterable, Literal, Mapping, Sequence

from pydantic import AliasChoices, Field, model_validator

from ..errors import ConfigError
from .options import LoraFields, TrainOptions
from .trainer import use_device

PROMPT_COLUMNS = ("prompt", "instruction")
PAIR_COLUMNS = ("chosen", "rejected")
# the keys of one pair a reward model scores (the plugin's `score`, SQL's llm_param map, the client, HTTP)
PAIR_KEYS = ("instruction", "response", "system", "input")
PREFERENCE_FORMS = ("a preference table: columns prompt (or instruction, with an optional input), chosen and "
                    "rejected (the preferred and the worse answer to it); optional system")


class RmOptions(LoraFields, TrainOptions):
    """Reward-model training (`rm/<family>`, `!byzerllm setup rm`)."""

    kind: ClassVar[str] = "rm"

    method: Literal["lora", "full"] = Field("lora", description="lora: LoRA adapters over the frozen base plus the "
                                            "new score head, merged at the end; full: every weight")
    max_seq_length: int = Field(512, ge=8, le=1_048_576, description="tokens of prompt + answer per scored text; "
                                "pairs with a longer chosen or rejected text are left out")
    eval_split: float = Field(0.0, ge=0, lt=0.5, description="fraction of the pairs held out: their pair accuracy "
                              "(chosen scored above rejected) and mean margin are the job's eval_accuracy / eval_margin")
    per_device_batch_size: int = Field(
        4, ge=1, le=4096,
        validation_alias=AliasChoices("per_device_batch_size", "perDeviceBatchSize", "batch_size", "batchSize"),
        description="pairs per step on each worker (each pair is two sequences)")
    center_rewards_coefficient: float | None = Field(
        None, ge=0, description="TRL's centring term: this times the mean squared reward is added to the loss, "
                                "keeping rewards near 0 (0.01 is the recommended value)")

    default_eval_metrics: ClassVar[str] = "exact_match"

    @model_validator(mode="after")
    def _no_eval_table(self):
        if self.eval_table or self.eval_metrics:
            raise ValueError("a reward model is measured on held-out pairs, not on an evalTable: use evalSplit "
                             "(e.g. evalSplit=\"0.1\"), or evaluate a chat model with it afterwards "
                             "(action=\"eval\" and metrics=\"reward\" and rewardModel=\"<udfName>\")")
        return self

    def lr(self) -> float:
        """The learning rate: the given one, else 1e-4 with lora (TRL's RewardConfig default), 1e-5 full."""
        return self.learning_rate or (1e-5 if self.method == "full" else 1e-4)


def preference_form(columns: Sequence[str]) -> str:
    """The prompt column of a preference table (`prompt` or `instruction`), after checking that it also has
    `chosen` and `rejected`. ConfigError naming the columns found and the accepted form otherwise."""
    cols = {c.lower() for c in columns}
    prompt = next((c for c in PROMPT_COLUMNS if c in cols), None)
    missing = [c for c in PAIR_COLUMNS if c not in cols] + ([] if prompt else ["prompt (or instruction)"])
    if missing:
        hint = (" (an sft table? train it with sft/<family>)" if "output" in cols or "messages" in cols else "")
        raise ConfigError(f"the training table has columns {', '.join(columns) or '(none)'}; missing "
                          f"{', '.join(missing)}{hint}. Reward models train on {PREFERENCE_FORMS}")
    return prompt  # type: ignore[return-value]


def pair_messages(instruction: Any, system: Any = None, extra: Any = None) -> list[dict[str, str]]:
    """The prompt of a scored answer as chat messages: an optional system message, then the user's
    `instruction` (with `extra`, alpaca's input, on a new line when given)."""
    text = "" if instruction is None else str(instruction)
    if extra is not None and str(extra).strip():
        text = f"{text}\n{extra}"
    msgs = [{"role": "system", "content": str(system)}] if system else []
    return msgs + [{"role": "user", "content": text}]


def reward_text(tokenizer: Any, prompt: list[dict[str, str]], response: Any) -> str:
    """The text a reward model scores: `prompt` (chat messages) and the assistant's `response`, rendered with
    the tokenizer's chat template."""
    msgs = [*prompt, {"role": "assistant", "content": "" if response is None else str(response)}]
    return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=False)


def score_texts(model: Any, tokenizer: Any, texts: Sequence[str], *, context_length: int,
                batch_size: int) -> list[float]:
    """The reward model's output for each rendered text (`reward_text`), in order: each cut at
    `context_length` tokens from the left (the answer's end is what the head reads), scored `batch_size` at a
    time, shortest first, right-padded with the tokenizer's pad token. torch is imported here."""
    import torch

    rows = [tokenizer(t, add_special_tokens=False)["input_ids"][-context_length:] for t in texts]
    out: list[float] = [0.0] * len(rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    for k in range(0, len(order), max(1, batch_size)):
        chunk = order[k:k + max(1, batch_size)]
        width = max(1, max(len(rows[i]) for i in chunk))
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for r, i in enumerate(chunk):
            ids[r, :len(rows[i])] = torch.tensor(rows[i], dtype=torch.long)
            mask[r, :len(rows[i])] = 1
        with torch.inference_mode():
            logits = model(input_ids=ids.to(model.device), attention_mask=mask.to(model.device)).logits.float()
        for r, i in enumerate(chunk):
            out[i] = float(logits[r, 0])
    return out


def preference_pairs(rows: Iterable[Mapping[str, Any]], prompt_column: str) -> list[tuple[list[dict], str, str]]:
    """Each row as (prompt messages, chosen, rejected). ConfigError naming the row for a NULL chosen or
    rejected answer, or a pair whose two answers are the same text (nothing to learn from it)."""
    out = []
    for i, r in enumerate(rows, 1):
        r = {k.lower(): v for k, v in r.items()}
        chosen, rejected = r.get("chosen"), r.get("rejected")
        if chosen is None or rejected is None:
            raise ConfigError(f"row {i}: {'chosen' if chosen is None else 'rejected'} is NULL; every pair needs both "
                              "answers (filter such rows out first: `select * from t where chosen is not null and "
                              "rejected is not null as t2`)")
        if str(chosen) == str(rejected):
            raise ConfigError(f"row {i}: chosen and rejected are the same text; a pair must prefer one answer "
                              "over another")
        extra = r.get("input") if prompt_column == "instruction" else None
        out.append((pair_messages(r.get(prompt_column), r.get("system"), extra), str(chosen), str(rejected)))
    return out


def encode_pairs(tokenizer: Any, pairs: Sequence[tuple[list[dict], str, str]],
                 max_seq_length: int) -> tuple[list[dict], int]:
    """Token ids of each pair's two texts (`chosen_ids`, `rejected_ids`, as TRL's preference collator takes
    them) and how many pairs were left out because a text is longer than `max_seq_length`. ConfigError when
    none fits."""
    rows, dropped, shortest = [], 0, None
    for prompt, chosen, rejected in pairs:
        c = tokenizer(reward_text(tokenizer, prompt, chosen), add_special_tokens=False)["input_ids"]
        r = tokenizer(reward_text(tokenizer, prompt, rejected), add_special_tokens=False)["input_ids"]
        longest = max(len(c), len(r))
        shortest = longest if shortest is None else min(shortest, longest)
        if longest > max_seq_length:
            dropped += 1
            continue
        rows.append({"chosen_ids": c, "rejected_ids": r})
    if pairs and not rows:
        raise ConfigError(f"max_seq_length={max_seq_length} is too small for every pair: the shortest pair's longer "
                          f"text has {shortest} tokens; raise `rm.int.max_seq_length` to at least {shortest}")
    return rows, dropped


SAMPLE_ROWS = 2000  # pairs tokenized before the job is submitted


def check_rm(opts: RmOptions, table: Any, base_dir: str, plugin: Any, setup: Any) -> None:
    """Before a job is submitted: the table is a preference table (`preference_form`), its first SAMPLE_ROWS
    pairs are complete and some fit max_seq_length, and the plugin can train reward models."""
    form = preference_form(table.column_names)
    pairs = preference_pairs(table.slice(0, min(table.num_rows, SAMPLE_ROWS)).to_pylist(), form)
    tok = load_tokenizer(base_dir, getattr(plugin.target, "fallback_chat_template", None))
    encode_pairs(tok, pairs, opts.max_seq_length)


def load_tokenizer(model_dir: str, fallback_template: str | None = None) -> Any:
    """The base model's tokenizer with a pad token (its eos when it has none) and a chat template (the
    plugin's fallback when it has none)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=False)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    if not tok.chat_template and fallback_template:
        tok.chat_template = fallback_template
    return tok


def rm_train(*, model_dir: str, data_path: str, output_dir: str, run_dir: str, options: RmOptions,
             target_modules: Sequence[str] = (), fallback_template: str | None = None, cpus: float = 1.0,
             gpus: float = 0.0, reporter: Any = None, resume: bool = False) -> dict:
    """Train a reward model from `model_dir` on the preference table in `data_path` (parquet) and write it
    whole (safetensors, with its tokenizer and chat template) to `output_dir`. Checkpoints go to
    `run_dir/checkpoints` every checkpoint_steps; `resume` continues from the last one.

    Returns `{"model_dir", "kind": "reward", "metrics"}`: steps, train_loss, the last logged pair accuracy and
    margin (TRL's `accuracy`: the share of a batch's pairs whose chosen text scored higher; `margin`: the
    mean of r(chosen) - r(rejected)), eval_accuracy / eval_margin on the evalSplit pairs, rows, runtime."""
    import pyarrow.parquet as pq
    import torch
    from datasets import Dataset
    from trl import RewardTrainer

    from .progress import STOP, Reporter
    from .sft import last_checkpoint

    on_gpu = use_device(cpus, gpus)
    reporter = reporter or Reporter()
    opts = options
    table = pq.read_table(data_path)
    if table.num_rows == 0:
        raise ConfigError("the training table is empty")
    tok = load_tokenizer(model_dir, fallback_template)
    rows, dropped = encode_pairs(tok, preference_pairs(table.to_pylist(), preference_form(table.column_names)),
                                 opts.max_seq_length)
    if dropped:
        print(f"[byzer-like] {dropped} pairs have a text longer than max_seq_length={opts.max_seq_length}: skipped",
              flush=True)
    from .data import split

    train_rows, eval_rows = split(rows, opts.eval_split, opts.seed)
    model = _load_model(model_dir, tok)
    peft_config = _lora_config(opts, model, target_modules) if opts.method == "lora" else None
    ckpt_dir = Path(run_dir) / "checkpoints"
    trainer = RewardTrainer(
        model=model, args=_config(opts, ckpt_dir, bool(eval_rows), on_gpu), processing_class=tok,
        train_dataset=Dataset.from_list(train_rows), eval_dataset=Dataset.from_list(eval_rows) if eval_rows else None,
        peft_config=peft_config, callbacks=[_progress(reporter, STOP)],
    )
    start = last_checkpoint(ckpt_dir) if resume else None
    t0 = time.monotonic()
    STOP.defers = True
    try:
        out = trainer.train(resume_from_checkpoint=start)
    finally:
        STOP.defers = False
    runtime = time.monotonic() - t0
    evals = {k: v for k, v in trainer.evaluate().items() if k in ("eval_loss", "eval_accuracy", "eval_margin")} \
        if eval_rows else {}
    _save(trainer.model, tok, output_dir)
    logged = [h for h in trainer.state.log_history if "loss" in h]
    last = logged[-1] if logged else {}
    metrics = {
        "steps": trainer.state.global_step, "epoch": round(trainer.state.epoch or 0, 3),
        "train_loss": round(out.training_loss, 6), "first_loss": logged[0]["loss"] if logged else None,
        "final_loss": last.get("loss"), "accuracy": last.get("accuracy"), "margin": last.get("margin"),
        "train_rows": len(train_rows), "eval_rows": len(eval_rows), "dropped_rows": dropped,
        "tokens": int(last.get("num_tokens") or 0),
        "train_runtime_s": round(runtime, 3),
        "resumed_from_step": int(start.rsplit("-", 1)[1]) if start else 0, **evals,
    }
    return {"model_dir": str(output_dir), "kind": "reward", "metrics": metrics}


def _load_model(model_dir: str, tok: Any) -> Any:
    """The base as a sequence classifier with one output (a new `score` head) in float32, its pad token set."""
    import torch
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=1, dtype=torch.float32,
                                                               use_safetensors=True, trust_remote_code=False)
    model.config.pad_token_id = tok.pad_token_id
    return model


def _lora_config(opts: RmOptions, model: Any, target_modules: Sequence[str]) -> Any:
    """peft's LoraConfig for a reward model: task SEQ_CLS, the score head trained whole (modules_to_save).
    ConfigError when none of the target modules is in the model."""
    from .trainer import lora_config

    return lora_config(opts, model, target_modules, task_type="SEQ_CLS", modules_to_save=["score"])


def _config(opts: RmOptions, ckpt_dir: Path, has_eval: bool, on_gpu: bool) -> Any:
    """TRL's RewardConfig from the options (our options build TRL's config, never the other way round)."""
    from trl import RewardConfig

    from .trainer import trainer_arguments

    return RewardConfig(
        **trainer_arguments(opts, ckpt_dir, opts.per_device_batch_size, has_eval, on_gpu),
        gradient_checkpointing=False, max_length=opts.max_seq_length,
        center_rewards_coefficient=opts.center_rewards_coefficient,
    )


def _progress(reporter: Any, stop: Any) -> Any:
    """A TrainerCallback reporting the start, each logged step's loss, pair accuracy and margin (and the
    evalSplit's) and the tokens since the last report (TRL's `num_tokens`) to `reporter`; a stop signal ends
    the run at a step's end."""
    from transformers import TrainerCallback

    keys = ("loss", "accuracy", "margin", "learning_rate", "eval_loss", "eval_accuracy", "eval_margin")

    class _Progress(TrainerCallback):
        tokens = 0.0  # TRL's running `num_tokens` at the last report

        def on_train_begin(self, a, state, control, **kw):  # noqa: ANN001
            reporter.start(state.global_step, state.max_steps)

        def on_step_end(self, a, state, control, **kw):  # noqa: ANN001
            stop.check()

        def on_log(self, a, state, control, logs=None, **kw):  # noqa: ANN001
            logs = logs or {}
            if "loss" in logs or "eval_loss" in logs:
                seen = float(logs.get("num_tokens") or self.tokens)  # tokens of both texts of every pair so far
                reporter.step(state.global_step, tokens=int(seen - self.tokens) if "loss" in logs else 0,
                              epoch=round(state.epoch or 0, 3), **{k: logs[k] for k in keys if k in logs})
                self.tokens = seen

    return _Progress()


def _save(model: Any, tok: Any, output_dir: str) -> None:
    """The reward model whole (a LoRA model merged into its base first), safetensors, with the tokenizer and
    its chat template, padding on the right."""
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output_dir, safe_serialization=True)
    tok.padding_side = "right"
    tok.save_pretrained(output_dir)


__all__ = ["PAIR_KEYS", "PREFERENCE_FORMS", "RmOptions", "check_rm", "encode_pairs", "load_tokenizer", "pair_messages",
           "preference_form", "preference_pairs", "reward_text", "rm_train", "score_texts"]
