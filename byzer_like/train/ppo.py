"""PPO (`ppo/<family>`, `!byzerllm setup ppo`): online reinforcement learning of a chat model against a learned
reward model, llm-module's `stage=ppo` with its `reward_model`.

TRL 1.16 has no PPOTrainer any more (it is gone from `trl` and from `trl.experimental`); the stage is kept under
its name and runs TRL's `RLOOTrainer` (REINFORCE Leave-One-Out, Ahmadian et al. 2024), the online method TRL
offers in its place that, like PPO for RLHF, puts the KL penalty into the reward:

    prompts   a table: `prompt` (or `instruction` with an optional `input`, or `messages`); optional `system`
    rollouts  numGenerations answers sampled per prompt from the policy (maxNewTokens, temperature)
    reward    the reward model's score of each (prompt, answer), minus beta * KL(policy || reference) summed
              over the answer's tokens; an answer's advantage is its reward minus the mean of its siblings'
    policy    LoRA (default; the reference is the base with the adapter off, no second copy) or qlora or full

The reward model is a registered model of kind "reward" (`rm/<family>`) or a deployment of one (`rewardModel`
is its udfName): either way it is resolved to its folder when the job is submitted (`prepare_ppo`), and the
job's runner loads it in-process (AutoModelForSequenceClassification, as the reward back end loads it) and
renders each (prompt, answer) exactly as it was trained on (`train.reward.reward_text`): the job calls no
deployment. Each logged step's mean reward (`reward`, before the KL penalty), its spread (`reward_std`) and the
mean per-token KL (`kl`) go to the job's record, its log and its curve. Only the options and checks are
imported at module level: torch, transformers and TRL are imported inside the functions.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, ClassVar, Literal, Mapping, Sequence

from pydantic import AliasChoices, Field, field_validator, model_validator

from ..errors import ConfigError, ModelNotFoundError, closest
from . import preference_data as P
from .options import SftOptions, TrainOptions
from .progress import STOP, TENSORBOARD_DIR, Reporter
from .trainer import use_device

PROMPT_FORMS_HELP = ("a prompt table: a column prompt (or instruction, with an optional input, or messages: the "
                     "conversation ending with the user's turn); optional system")
# what RLOOTrainer logs that a job's progress keeps, per logged step
LOGGED = ("loss", "reward", "reward_std", "kl", "entropy", "completions/mean_length", "completions/clipped_ratio")
REWARD_FUNCTION = "reward_model"  # the reward's name in TRL's logs (`rewards/reward_model/mean`)
SAMPLE_ROWS = 2000  # prompts read before the job is submitted
NO_REWARD_MODEL = ('PPO needs a reward model to score the sampled answers: rewardModel="<udfName of a deployed '
                   'reward model, or the name of a registered one>" (train one with pretrainedModelType="rm/<family>")')


def _like_sft(name: str) -> Any:
    return copy.deepcopy(SftOptions.model_fields[name])


class PpoOptions(TrainOptions):
    """PPO (`ppo/<family>`): a policy trained online against a reward model (TRL's RLOO, see the module)."""

    kind: ClassVar[str] = "ppo"
    HIDDEN: ClassVar[frozenset[str]] = frozenset({"reward_model_dir"})

    pretrained_model_type: str = Field(description="ppo/<family>")
    method: Literal["lora", "qlora", "full"] = Field("lora", description="lora (default): an adapter over the frozen "
                                                     "base, which is also the KL reference with the adapter off; "
                                                     "qlora: the same over a 4-bit base; full: every weight, with a "
                                                     "second frozen copy as the reference")
    lora_r: int = _like_sft("lora_r")
    lora_alpha: float = _like_sft("lora_alpha")
    lora_dropout: float = _like_sft("lora_dropout")
    lora_target_modules: list[str] | None = _like_sft("lora_target_modules")
    reward_model: str | None = Field(None, description="the reward model that scores the sampled answers: the "
                                     "udfName of a deployed reward model or a registered one (name, name@v2); "
                                     "trained with rm/<family>")
    reward_model_dir: str | None = Field(None, description="the reward model's folder, resolved from rewardModel "
                                         "when the job is submitted")
    num_generations: int = Field(4, ge=2, le=256, description="answers sampled per prompt (RLOO's k: each answer's "
                                 "baseline is the mean reward of the others)")
    beta: float = Field(0.05, ge=0, validation_alias=AliasChoices("beta", "kl_coef", "klCoef", "init_kl_coef",
                                                                   "initKlCoef", "kl_coefficient", "klCoefficient"),
                        description="the KL coefficient: beta * KL(policy || reference) is taken off each answer's "
                        "reward (0: no reference model, no KL term)")
    max_new_tokens: int = Field(64, ge=1, le=32_768,
                                validation_alias=AliasChoices("max_new_tokens", "maxNewTokens", "max_completion_length",
                                                              "maxCompletionLength"),
                                description="tokens per sampled answer (the rollouts' length)")
    temperature: float = Field(1.0, gt=0, le=10, description="the rollouts' sampling temperature")
    per_device_batch_size: int | None = Field(
        None, ge=2, le=4096,
        validation_alias=AliasChoices("per_device_batch_size", "perDeviceBatchSize", "batch_size", "batchSize"),
        description="answers per step (a multiple of numGenerations; default: 2 prompts' worth, 2 * numGenerations)")
    learning_rate: float | None = Field(None, gt=0, lt=1, description="the peak learning rate (default 1e-5 with lora "
                                        "/ qlora, 1e-6 full: TRL's)")

    @field_validator("lora_target_modules", mode="before")
    @classmethod
    def _modules(cls, v: Any) -> Any:
        if isinstance(v, str):
            v = json.loads(v) if v.strip().startswith("[") else [m.strip() for m in v.split(",") if m.strip()]
        return v

    @model_validator(mode="after")
    def _consistent(self):
        if not (self.reward_model or "").strip() and not self.reward_model_dir:
            raise ValueError(NO_REWARD_MODEL)
        n, k = self.per_device_batch_size, self.num_generations
        if n is not None and n % k:
            raise ValueError(f"batchSize={n} is not a multiple of numGenerations={k}: a step holds whole groups of "
                             f"answers to one prompt; use batchSize=\"{max(k, n - n % k)}\" or \"{n - n % k + k}\"")
        if self.eval_table or self.eval_metrics:
            raise ValueError("PPO is measured by its reward: each step's mean reward and KL are in the job's "
                             "record; evaluate the trained adapter afterwards with action=\"eval\" and "
                             "metrics=\"reward\" and rewardModel=\"<udfName>\" instead of evalTable")
        return self

    def batch(self) -> int:
        """Answers per optimizer step on the worker: the given batchSize, else 2 * numGenerations."""
        return self.per_device_batch_size or 2 * self.num_generations

    def lr(self) -> float:
        """The learning rate: the given one, else 1e-5 with lora / qlora and 1e-6 full (RLOOConfig's default)."""
        return self.learning_rate or (1e-6 if self.method == "full" else 1e-5)


# -- prompts --------------------------------------------------------------------------------------------------
def prompt_form(columns: Sequence[str]) -> str:
    """The prompt form of a PPO table (`prompt`, `alpaca` for instruction, `chat` for messages); ConfigError
    naming the columns found and the accepted form otherwise."""
    form = P.prompt_form(columns)
    if form is None:
        raise ConfigError(f"the prompt table has columns {', '.join(columns) or '(none)'}; missing prompt. PPO "
                          f"samples answers to the prompts of {PROMPT_FORMS_HELP}")
    return form


def prompts(rows: Sequence[Mapping[str, Any]], form: str) -> list[dict[str, list[dict[str, str]]]]:
    """Each row as TRL's conversational prompt `{"prompt": [messages ending with the user's turn]}`;
    ConfigError naming the row for a NULL prompt or a malformed conversation."""
    return [{"prompt": P.prompt_messages({k.lower(): v for k, v in r.items()}, form, i)}
            for i, r in enumerate(rows, 1)]


# -- the reward model -----------------------------------------------------------------------------------------
def prepare_ppo(opts: PpoOptions, catalog: Any, deployed: Any = None) -> PpoOptions:
    """`opts` with `reward_model_dir` set: the folder of `opts.reward_model`, a registered model of kind
    "reward" (name, name@v2; looked up first, no cluster needed) or a deployment of one (`deployed`: an object
    with `deployments(start=False) -> {name: status}` and `meta(name) -> dict`, the runtime; its meta's
    `model_dir`). ConfigError when the name is a registered model of another kind, a deployment of another
    kind, or neither (naming the registered reward models and the deployments, and the closest name)."""
    if opts.reward_model_dir:
        return opts
    name = (opts.reward_model or "").strip()
    path = None
    try:
        m = catalog.model(name)
    except (ModelNotFoundError, ConfigError):
        m = None
    if m is not None:
        if m.kind != "reward":
            raise ConfigError(f"rewardModel={name!r} is a registered {m.kind} ({m.ref}), not a reward model; name a "
                              "model trained with pretrainedModelType=\"rm/<family>\" (kind reward) or its deployment")
        path = m.path
    names = {}
    if path is None and deployed is not None:
        names = dict(deployed.deployments(start=False))
        if name in names:
            meta = deployed.meta(name)
            if meta.get("kind") != "reward":
                raise ConfigError(f"rewardModel={name!r} is a deployment of a {meta.get('kind') or 'chat'} model, "
                                  "not of a reward model; deploy one with modelTable=\"<a model trained with "
                                  "rm/<family>>\" (or pretrainedModelType=\"reward\")")
            path = meta.get("model_dir")
            if not path:
                raise ConfigError(f"deployment {name!r} does not say which folder it serves; give rewardModel the "
                                  "registered reward model's name instead")
    if path is None:
        rewards = sorted({r.name for r in catalog.models() if r.kind == "reward"})
        near = closest(name, [*rewards, *names], cutoff=0.6)
        raise ConfigError(f"rewardModel={name!r} is neither a deployment nor a registered reward model; "
                          + (f"did you mean {near!r}? " if near else "")
                          + f"registered reward models: {', '.join(rewards) or '(none)'}; deployments: "
                          f"{', '.join(sorted(names)) or '(none)'} (train one with pretrainedModelType=\"rm/<family>\")")
    check_reward_dir(str(path), name)
    return opts.model_copy(update={"reward_model_dir": str(path)})


def check_reward_dir(path: str, name: str) -> None:
    """ConfigError unless `path` holds a reward model: a config.json of a ...ForSequenceClassification with one
    output (what rm/<family> saves)."""
    try:
        cfg = json.loads(Path(path, "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise ConfigError(f"rewardModel={name!r}: {path} holds no readable config.json (was the model deleted?)") from None
    arch = [a for a in (cfg.get("architectures") or []) if isinstance(a, str)]
    labels = int(cfg.get("num_labels") or len(cfg.get("id2label") or {}) or 1)
    if not any(a.endswith("ForSequenceClassification") for a in arch) or labels != 1:
        raise ConfigError(f"rewardModel={name!r}: {path} holds a {arch[0] if arch else cfg.get('model_type')!r}, not "
                          "a reward model (a sequence classifier with one output, trained with rm/<family>)")


def check_ppo(opts: PpoOptions, table: Any, base_dir: str, plugin: Any, setup: Any) -> None:
    """ppo's check (the task table's `check`), after `prepare_ppo`: the table has a prompt column and its
    first SAMPLE_ROWS prompts read, the policy's tokenizer has a chat template (its own or the plugin's), and
    the reward model's folder holds a reward model."""
    from .sft import prepare_tokenizer

    form = prompt_form(table.column_names)
    prompts(table.slice(0, min(table.num_rows, SAMPLE_ROWS)).to_pylist(), form)
    if not opts.reward_model_dir:
        raise ConfigError(NO_REWARD_MODEL)
    check_reward_dir(opts.reward_model_dir, opts.reward_model or opts.reward_model_dir)
    tok = prepare_tokenizer(base_dir, getattr(plugin.target, "fallback_chat_template", None))
    if not tok.chat_template:
        raise ConfigError(f"the tokenizer of {base_dir} has no chat template to render the prompts with, and the "
                          f"{plugin.name!r} plugin has none either; use a chat model or a plugin with a template")


class RewardFunction:
    """TRL's reward function (`reward_funcs=`) over a reward model's folder: one float per (prompt, answer),
    the text rendered as `train.reward.reward_text` renders it, scored `batch_size` at a time on `device`.
    `calls` and `scored` count what it did (for the logs)."""

    __name__ = REWARD_FUNCTION

    def __init__(self, model_dir: str, device: str = "cpu", batch_size: int = 16):
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from .reward import reward_text, score_texts

        self._render, self._score = reward_text, score_texts
        self.model = AutoModelForSequenceClassification.from_pretrained(
            model_dir, dtype=torch.float32 if device == "cpu" else "auto", use_safetensors=True,
            trust_remote_code=False).to(device).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=False)
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.context_length = int(getattr(self.model.config, "max_position_embeddings", None) or 2048)
        self.batch_size = batch_size
        self.calls = self.scored = 0

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[float]:
        """One reward per completion; `prompts` are message lists (TRL's conversational form) and each
        completion an assistant message list, or both plain text."""
        texts = []
        for p, c in zip(prompts, completions):
            msgs = p if isinstance(p, list) else [{"role": "user", "content": str(p)}]
            answer = "".join(m.get("content") or "" for m in c) if isinstance(c, list) else str(c)
            texts.append(self._render(self.tokenizer, msgs, answer))
        self.calls += 1
        self.scored += len(texts)
        return self._score(self.model, self.tokenizer, texts, context_length=self.context_length,
                           batch_size=self.batch_size)


# -- training -------------------------------------------------------------------------------------------------
def ppo_train(*, model_dir: str, data_path: str, output_dir: str, run_dir: str, options: PpoOptions,
              target_modules: Sequence[str] = (), fallback_template: str | None = None,
              stop_tokens: Sequence[str] = (), cpus: float = 1.0, gpus: float = 0.0,
              reporter: Reporter | None = None, resume: bool = False) -> dict:
    """Train the policy `model_dir` online on the prompts in `data_path` (parquet, a form of `prompt_form`)
    against the reward model in `options.reward_model_dir` with TRL's RLOOTrainer; write the adapter (lora,
    qlora) or the whole model (full) to `output_dir`. Checkpoints go to `run_dir/checkpoints` every
    checkpoint_steps; `resume` continues from the last one; a stop signal ends the run at a step's end.

    Each logged step reports loss, reward (the mean reward of the step's answers, before the KL penalty),
    reward_std, kl (the mean per-token KL to the reference; absent with beta=0), entropy and the answers'
    mean length to `reporter`. Returns `{"model_dir", "kind", "metrics"}`: steps, first_reward / final_reward
    (the first and last logged mean reward), kl (the last), train_loss, rows, runtime (s), the step resumed
    from. Raises ConfigError for a table without prompts or options without a reward model's folder."""
    import datasets
    import pyarrow.parquet as pq
    import torch
    from trl import RLOOConfig, RLOOTrainer

    from .preference import load_model
    from .sft import _save, _tensorboard, _train, prepare_tokenizer, stop_token_ids

    datasets.disable_progress_bars()
    on_gpu = use_device(cpus, gpus)
    reporter = reporter or Reporter()
    opts = options
    if not opts.reward_model_dir:
        raise ConfigError(NO_REWARD_MODEL)
    table = pq.read_table(data_path)
    if table.num_rows == 0:
        raise ConfigError("the prompt table is empty")
    rows = prompts(table.to_pylist(), prompt_form(table.column_names))
    tok = prepare_tokenizer(model_dir, fallback_template)
    stop_ids = stop_token_ids(model_dir, tok, stop_tokens)
    model, peft_config = load_model(model_dir, opts, target_modules, on_gpu)
    if stop_ids:
        model.generation_config.eos_token_id = stop_ids
        model.generation_config.pad_token_id = tok.pad_token_id
    reward = RewardFunction(opts.reward_model_dir, "cuda" if on_gpu else "cpu")
    ckpt_dir = Path(run_dir) / "checkpoints"
    args = RLOOConfig(**rloo_args(opts, ckpt_dir, on_gpu))
    trainer = RLOOTrainer(model=model, reward_funcs=reward, args=args, processing_class=tok,
                          train_dataset=datasets.Dataset.from_list(rows), peft_config=peft_config,
                          callbacks=[progress_callback(reporter), *_tensorboard(Path(run_dir) / TENSORBOARD_DIR)])
    out, runtime, resumed_from = _train(trainer, ckpt_dir, resume)
    _save(trainer.model, tok, output_dir)
    metrics = run_metrics(trainer.state, out.training_loss, runtime, train_rows=len(rows), resumed_from=resumed_from)
    metrics["rollouts_scored"] = reward.scored
    return {"model_dir": str(output_dir), "kind": "model" if opts.method == "full" else "adapter", "metrics": metrics}


def rloo_args(opts: PpoOptions, ckpt_dir: Path, on_gpu: bool) -> dict[str, Any]:
    """The keyword arguments of TRL's RLOOConfig from the options (our options build TRL's config): the
    Trainer's settings as sft's (checkpoints every checkpoint_steps, bf16 on a GPU that has it but not for
    qlora) and the rollouts' numGenerations, maxNewTokens, temperature and the KL coefficient beta."""
    import torch

    return dict(
        output_dir=str(ckpt_dir), per_device_train_batch_size=opts.batch(),
        gradient_accumulation_steps=opts.gradient_accumulation_steps, learning_rate=opts.lr(),
        num_train_epochs=opts.num_train_epochs, max_steps=opts.max_steps, warmup_steps=opts.warmup_ratio,
        weight_decay=opts.weight_decay, logging_steps=opts.logging_steps, logging_first_step=True,
        save_strategy="steps", save_steps=opts.checkpoint_steps, save_total_limit=opts.save_total_limit,
        seed=opts.seed, data_seed=opts.seed, use_cpu=not on_gpu,
        bf16=on_gpu and torch.cuda.is_bf16_supported() and opts.method != "qlora",
        gradient_checkpointing=opts.gradient_checkpointing, report_to=[], disable_tqdm=True,
        dataloader_num_workers=0, num_generations=opts.num_generations, max_completion_length=opts.max_new_tokens,
        temperature=opts.temperature, beta=opts.beta, log_completions=False,
    )


def progress_callback(reporter: Reporter) -> Any:
    """A TrainerCallback reporting to `reporter` the start and each logged step's LOGGED metrics (loss, reward,
    reward_std, kl, ...) with the learning rate, epoch and the tokens since the last report (TRL's
    `num_tokens`); a stop signal (STOP) ends the run at a step's end."""
    from transformers import TrainerCallback

    class _Progress(TrainerCallback):
        tokens = 0.0

        def on_train_begin(self, a, state, control, **kw):  # noqa: ANN001
            reporter.start(state.global_step, state.max_steps)

        def on_step_end(self, a, state, control, **kw):  # noqa: ANN001
            STOP.check()

        def on_log(self, a, state, control, logs=None, **kw):  # noqa: ANN001
            logs = logs or {}
            if "loss" in logs:
                seen = float(logs.get("num_tokens") or self.tokens)
                tokens, self.tokens = max(seen - self.tokens, 0), seen
                reporter.step(state.global_step, tokens=int(tokens), learning_rate=logs.get("learning_rate"),
                              epoch=round(state.epoch or 0, 3),
                              **{k: logs[k] for k in LOGGED if logs.get(k) is not None})

    return _Progress()


def run_metrics(state: Any, train_loss: float, runtime: float, *, train_rows: int, resumed_from: int) -> dict:
    """The run's metrics from the Trainer's `state`: steps, epoch, train_loss, the first and last logged mean
    reward (first_reward, final_reward), the last kl and reward_std, prompts, runtime (s), the step resumed from."""
    history = [h for h in state.log_history if "loss" in h]
    rewards = [h["reward"] for h in history if h.get("reward") is not None]
    metrics: dict[str, Any] = {
        "steps": state.global_step, "epoch": round(state.epoch or 0, 3), "train_loss": round(train_loss, 6),
        "first_reward": rewards[0] if rewards else None, "final_reward": rewards[-1] if rewards else None,
        "train_rows": train_rows, "train_runtime_s": round(runtime, 3), "resumed_from_step": resumed_from,
    }
    for key in ("kl", "reward_std", "completions/mean_length"):
        values = [h[key] for h in history if h.get(key) is not None]
        if values:
            metrics[key] = values[-1]
    return metrics


__all__ = ["LOGGED", "PROMPT_FORMS_HELP", "PpoOptions", "RewardFunction", "check_ppo", "check_reward_dir",
           "ppo_train", "prepare_ppo", "progress_callback", "prompt_form", "prompts", "rloo_args", "run_metrics"]
