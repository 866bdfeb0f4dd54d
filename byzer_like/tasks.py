"""The table of training tasks: one entry per method, read by SQL, the client, the CLI and the jobs.

    sft   supervised fine-tuning (LoRA, QLoRA, full)       options SftOptions   plugin entry point sft_train
    sfft  continued pretraining (Ray Train + DeepSpeed)    options SfftOptions  plugin entry point sfft_train
    dpo   direct preference optimisation (TRL)             options DpoOptions   plugin entry point dpo_train
    orpo  odds-ratio preference optimisation (TRL)         options OrpoOptions  plugin entry point orpo_train
    kto   Kahneman-Tversky optimisation (TRL)              options KtoOptions   plugin entry point kto_train
    rm    reward models on preference pairs (TRL)          options RmOptions    plugin entry point rm_train
    ppo   online RL against a reward model (TRL's RLOO)    options PpoOptions   plugin entry point ppo_train

A task's name is what users write: the prefix of `pretrainedModelType="sft/llama"`, the mode of
`!byzerllm setup sft`, the Python method `ByzerLLM.sft(...)`, the job kind `byzer-like jobs list` shows.
A new method is added here once (the way peft registers a tuner type with its config class); its options
model and data check are named by import path (`module:attr`, as entry points are) so that this table,
which every layer reads, imports nothing heavy. This module imports only the errors.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable

from .errors import ConfigError


@dataclass(frozen=True)
class TrainingTask:
    """One training method.

    `options`: import path of its pydantic options model (a `train.options.TrainOptions` subclass).
    `entry_point`: the plugin contract's function that runs it (`sft_train(data_refs, train_params, sys_conf)`).
    `check`: import path of `check(options, table, base_dir, plugin, setup)`, run before a job is
    submitted (`setup`: the `config.SetupConfig` it will run with); it raises ConfigError for data the run
    would fail on.
    `runner_holds_worker`: the job's runner trains in its own process and so reserves one worker's
    CPUs / GPUs; otherwise the runner only drives Ray Train workers and reserves nothing.
    `num_gpus_is_total`: Byzer's `!byzerllm setup "num_gpus=N"` is the job's total number of cards
    (workers = N / gpus_per_worker, `config.SetupConfig.for_task`), as Byzer's sfft reads it; otherwise
    GPUs per worker, as for a deployment.
    `summary`: one line for help texts.
    `prepare`: import path of `prepare(options, catalog, deployed) -> options`, run at submit before `check`:
    the options with what they name resolved (ppo: its rewardModel's folder; `deployed` is the runtime, whose
    `deployments(start=False)` and `meta(name)` say what runs), so that the job needs nothing else."""

    name: str
    options: str
    entry_point: str
    check: str
    runner_holds_worker: bool
    summary: str
    num_gpus_is_total: bool = False
    prepare: str | None = None

    def options_model(self) -> Any:
        """The options class (resolved on first use)."""
        return _resolve(self.options)

    def check_function(self) -> Callable[..., None]:
        return _resolve(self.check)

    def prepare_options(self, options: Any, catalog: Any, deployed: Any = None) -> Any:
        """`options` with what they name resolved at submit (the task's `prepare`); unchanged without one."""
        return _resolve(self.prepare)(options, catalog, deployed) if self.prepare else options

    def parse_options(self, train_params: Any) -> Any:
        """The user's `where` keys (Byzer spellings, typed keys, Python keywords) -> the options model."""
        return self.options_model().from_params(train_params)

    def stored_options(self, stored: Any, train_params: Any) -> Any:
        """The options model a job's record holds whole (`model_dump(mode="json")`, written at submit), read
        back; a record written before options were kept holds only `train_params`, which are parsed."""
        if stored:
            return self.options_model().model_validate(stored)
        return self.parse_options(train_params)


TASKS: dict[str, TrainingTask] = {
    t.name: t for t in (
        TrainingTask("sft", "byzer_like.train.options:SftOptions", "sft_train", "byzer_like.train.checks:check_sft",
                     runner_holds_worker=True,
                     summary="supervised fine-tuning on instruction/answer or chat rows (LoRA, QLoRA, full)"),
        TrainingTask("sfft", "byzer_like.train.options:SfftOptions", "sfft_train", "byzer_like.train.checks:check_sfft",
                     runner_holds_worker=False, num_gpus_is_total=True,
                     summary="continued pretraining on a text column (Ray Train workers, DeepSpeed ZeRO)"),
        TrainingTask("dpo", "byzer_like.train.preference_options:DpoOptions", "dpo_train",
                     "byzer_like.train.preference_data:check_dpo", runner_holds_worker=True,
                     summary="direct preference optimisation on prompt/chosen/rejected rows (TRL; LoRA, QLoRA, full)"),
        TrainingTask("orpo", "byzer_like.train.preference_options:OrpoOptions", "orpo_train",
                     "byzer_like.train.preference_data:check_orpo", runner_holds_worker=True,
                     summary="odds-ratio preference optimisation on prompt/chosen/rejected rows, no reference "
                     "model (TRL experimental)"),
        TrainingTask("kto", "byzer_like.train.preference_options:KtoOptions", "kto_train",
                     "byzer_like.train.preference_data:check_kto", runner_holds_worker=True,
                     summary="Kahneman-Tversky optimisation on prompt/completion/label rows (TRL; LoRA, QLoRA, full)"),
        TrainingTask("rm", "byzer_like.train.reward:RmOptions", "rm_train", "byzer_like.train.reward:check_rm",
                     runner_holds_worker=True,
                     summary="a reward model (one score per answer) on prompt/chosen/rejected pairs (LoRA, full)"),
        TrainingTask("ppo", "byzer_like.train.ppo:PpoOptions", "ppo_train", "byzer_like.train.ppo:check_ppo",
                     runner_holds_worker=True, prepare="byzer_like.train.ppo:prepare_ppo",
                     summary="PPO: answers to prompt rows sampled and scored by a reward model, the policy trained "
                     "online (TRL's RLOO; LoRA, QLoRA, full)"),
    )
}
# what `!byzerllm setup <mode>` accepts: serve models (single), or make the next `run ... as LLM` train
SETUP_MODES: tuple[str, ...] = ("single", *TASKS)


def get(name: str) -> TrainingTask:
    """The task called `name`; ConfigError listing the known ones otherwise."""
    task = TASKS.get(name)
    if task is None:
        raise ConfigError(f"unknown training task {name!r}; known tasks: {', '.join(TASKS)}")
    return task


def split_model_type(pretrained_model_type: str) -> tuple[str | None, str]:
    """Byzer's `pretrainedModelType` as (task prefix or None, model type): `sft/llama` -> ("sft", "llama");
    `llama` -> (None, "llama"); `custom/llama` -> (None, "custom/llama") (the plugin registry resolves
    `custom/<x>`: the plugin x, else auto)."""
    value = (pretrained_model_type or "").strip()
    head, sep, tail = value.partition("/")
    if sep and head in TASKS:
        return head, tail
    return None, value


def task_of(pretrained_model_type: str, mode: str = "single") -> tuple[str | None, str]:
    """(task name or None, model type) from `sft/llama`, or from the setup mode for a bare `llama`."""
    task, model_type = split_model_type(pretrained_model_type)
    if task is None and mode in TASKS:
        task = mode
    return task, model_type


def require_task(pretrained_model_type: str, mode: str = "single", task: str | None = None) -> TrainingTask:
    """The task a training statement runs: `task` if given, else the prefix of `pretrained_model_type`
    (`sft/llama`) or the setup mode. ConfigError naming the forms that would train when there is none."""
    found, model_type = task_of(pretrained_model_type, mode)
    name = task or found
    if name is None:
        forms = " or ".join(f"{t}/{model_type or '<family>'}" for t in TASKS)
        raise ConfigError(f"pretrainedModelType={pretrained_model_type!r} names no training task; use {forms} "
                          f"(or `!byzerllm setup {'|'.join(TASKS)}` before it)")
    return get(name)


def _resolve(path: str) -> Any:
    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(module), attr)


__all__ = ["SETUP_MODES", "TASKS", "TrainingTask", "get", "require_task", "split_model_type", "task_of"]
