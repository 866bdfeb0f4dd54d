"""The options of a training run, validated before anything expensive starts.

Keys arrive the Byzer way (`` `sft.int.max_seq_length`="512" ``, `learningRate="1e-4"`, all strings)
or from Python (`max_seq_length=512`). `normalise` turns both into snake_case names with typed values;
the pydantic models below then refuse unknown keys (listing the valid ones) and bad values.
This module imports neither ray nor torch.
"""
from __future__ import annotations

import json
from typing import Any, ClassVar, Literal, Mapping

from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic.alias_generators import to_snake

from ..config import _Options, split_typed_key, typed_value
from ..errors import UnknownOptionError
from ..tasks import TASKS

METHODS = ("lora", "qlora", "full")


def normalise(train_params: Mapping[str, Any], given: dict[str, str] | None = None) -> dict[str, Any]:
    """`sft.int.max_seq_length`="64" -> {"max_seq_length": 64}; `learningRate` -> `learning_rate`.
    `given`, when passed, maps each normalised name back to the key as the user wrote it."""
    out: dict[str, Any] = {}
    for key, value in train_params.items():
        name, _tag = split_typed_key(key)
        value = typed_value(key, value)
        for task in TASKS:  # `sft.max_seq_length` / `sfft.text_column`: the task prefix is dropped
            if name.startswith(f"{task}."):
                name = name[len(task) + 1:]
        name = to_snake(name) if "." not in name else name
        out[name] = value
        if given is not None:
            given[name] = key
    return out


class TrainOptions(_Options):
    """Keys every training run understands (the `where` of `run command as LLM` for sft / sfft)."""

    kind: ClassVar[str] = ""

    pretrained_model_type: str = Field(description="sft/<family> or sfft/<family>")
    model_dir: str | None = Field(
        None, validation_alias=AliasChoices("model_dir", "modelDir", "local_model_dir", "localModelDir", "model_path",
                                            "modelPath"),
        description="the base model directory (Byzer's localModelDir)")
    model_table: str | None = Field(None, description='a registered model to start from (name or name@v2), or "command"')
    model: str | None = Field(None, description='Byzer\'s model="command" (accepted, means: use localModelDir)')
    input_table: str | None = Field(None, description="the training data table")
    output_table: str | None = Field(None, description="the name the trained model is registered under")
    overwrite: bool = Field(False, description="register a new version when outputTable already exists")
    detached: bool = Field(False, description="submit as a Ray job and return at once")
    local_path_prefix: str | None = Field(None, description="where the job's files go (inside the workspace)")
    keep_partition_num: bool = Field(False, description="sfft: each training worker takes whole partitions of a "
                                     "TableRepartition'ed table, in order (partition i -> worker i % num_workers)")
    learning_rate: float | None = Field(None, gt=0, lt=1, description="the peak learning rate (default: sft 2e-4 "
                                        "with lora / qlora, 2e-5 full; sfft 5e-5)")
    num_train_epochs: float = Field(
        3.0, gt=0, validation_alias=AliasChoices("num_train_epochs", "numTrainEpochs", "epochs"),
        description="passes over the training rows (Byzer's epochs)")
    max_steps: int = Field(-1, ge=-1, description="stop after this many optimizer steps (-1: run the epochs)")
    per_device_batch_size: int = Field(
        8, ge=1, le=4096,
        validation_alias=AliasChoices("per_device_batch_size", "perDeviceBatchSize", "batch_size", "batchSize"),
        description="rows per step on each worker")
    gradient_accumulation_steps: int = Field(1, ge=1, le=1024, description="steps whose gradients add up to one "
                                             "optimizer step")
    checkpoint_steps: int = Field(
        100, ge=1, validation_alias=AliasChoices("checkpoint_steps", "checkpointSteps", "save_steps", "saveSteps"),
        description="save a resumable checkpoint every N optimizer steps")
    save_total_limit: int = Field(2, ge=1, description="checkpoints kept")
    logging_steps: int = Field(5, ge=1, description="log the loss every N optimizer steps")
    warmup_ratio: float = Field(0.0, ge=0, lt=1, description="fraction of the steps over which the learning rate "
                                "rises to its peak")
    weight_decay: float = Field(0.0, ge=0, description="AdamW's weight decay")
    seed: int = Field(42, description="the random seed: data order, held-out split, new weights")
    eval_table: str | None = Field(None, description="a table of the session measured with evalMetrics on the model "
                                   "being trained at each evaluation step and at the end (sft: after every epoch; "
                                   "sfft: every evalSteps optimizer steps)")
    eval_metrics: str | None = Field(None, description="comma-separated metrics of byzer_like.eval.metrics for evalTable "
                                     "(default: sft exact_match, sfft perplexity; judge cannot run inside a job)")
    eval_max_new_tokens: int = Field(32, ge=1, le=4096, description="answer tokens per evalTable row")

    default_eval_metrics: ClassVar[str] = "exact_match"

    def eval_metric_names(self) -> str:
        """The evalMetrics asked for, else the task's default."""
        return self.eval_metrics or self.default_eval_metrics

    @field_validator("eval_metrics")
    @classmethod
    def _known_metrics(cls, v: str | None) -> str | None:
        if v is not None:
            from ..eval.metrics import parse_metrics

            names = [m.name for m in parse_metrics(v)]
            if "reward" in names:
                raise ValueError('reward needs a deployed reward model, which a training job cannot call; evaluate the '
                                 'registered model afterwards with action="eval" and metrics="reward" and '
                                 'rewardModel="<udfName>"')
            if "judge" in names:
                raise ValueError('judge cannot run inside a training job; evaluate the registered model afterwards '
                                 'with action="eval" and judge="<udfName>"')
            return ",".join(names)
        return v

    @classmethod
    def from_params(cls, train_params: Mapping[str, Any]) -> "TrainOptions":
        given: dict[str, str] = {}
        values = normalise(train_params, given)
        try:
            return cls.parse(values, where=cls.kind or "training")
        except UnknownOptionError as e:
            raise UnknownOptionError(cls.kind or "training", given.get(e.key, e.key), e.valid,
                                     candidates=e.candidates) from None

    @field_validator("model")
    @classmethod
    def _model_command(cls, v: str | None) -> str | None:
        if v not in (None, "command"):
            raise ValueError('only model="command" is understood (use localModelDir or modelTable)')
        return v

    @model_validator(mode="after")
    def _base_given(self):
        if not self.model_dir and self.model_table in (None, "command"):
            raise ValueError("give the base model: localModelDir=\"<dir>\" or modelTable=\"<registered name>\"")
        return self


class SftOptions(TrainOptions):
    """Supervised fine-tuning (`sft/<family>`)."""

    kind: ClassVar[str] = "sft"

    method: Literal["lora", "qlora", "full"] = Field("lora", description="lora: a LoRA adapter over the frozen "
                                                     "base; qlora: the same over a 4-bit base; full: every weight")
    max_seq_length: int = Field(512, ge=8, le=1_048_576, description="prompt + answer tokens per example")
    packing: bool = Field(False, description="pack several short examples into one sequence")
    eval_split: float = Field(0.0, ge=0, lt=0.5, description="fraction of rows held out for eval loss (and for "
                              "evalMetrics when no evalTable is given)")
    per_device_batch_size: int | None = Field(
        None, ge=1, le=4096,
        validation_alias=AliasChoices("per_device_batch_size", "perDeviceBatchSize", "batch_size", "batchSize"),
        description="rows per step; default: about 0.2% of the training rows, from 1 to 8")
    lora_r: int = Field(8, ge=1, le=4096, description="LoRA: the rank of the adapter's matrices")
    lora_alpha: float = Field(16.0, gt=0, description="LoRA: the adapter's scale (alpha / r)")
    lora_dropout: float = Field(0.05, ge=0, lt=1, description="LoRA: dropout on the adapter's input")
    lora_target_modules: list[str] | None = Field(None, description="default: the plugin's")
    @field_validator("lora_target_modules", mode="before")
    @classmethod
    def _modules(cls, v: Any) -> Any:
        if isinstance(v, str):
            v = json.loads(v) if v.strip().startswith("[") else [m.strip() for m in v.split(",") if m.strip()]
        return v

    def lr(self) -> float:
        return self.learning_rate or (2e-5 if self.method == "full" else 2e-4)

    def batch_size(self, rows: int) -> int:
        """Rows per optimizer step (before gradient accumulation) for `rows` training examples: the given
        `per_device_batch_size`, else about 0.2% of the rows, at least 1 and at most 8 — the default of
        OpenAI's fine-tuning API (~0.2% of the examples, there capped at 256), capped at 8 to fit a worker.
        A small table thus still gets one optimizer step per row each epoch: 30 question/answer pairs at
        a batch of 8 would train for 12 steps in 3 epochs and learn nothing."""
        if self.per_device_batch_size is not None:
            return self.per_device_batch_size
        return max(1, min(8, round(0.002 * rows)))


class SfftOptions(TrainOptions):
    """Continued pretraining (`sfft/<family>`) on Ray Train workers with DeepSpeed."""

    kind: ClassVar[str] = "sfft"

    max_length: int = Field(512, ge=8, le=1_048_576, description="tokens per packed sequence")
    local_data_dir: str | None = Field(None, description="a folder of raw text files (*.txt, *.text, read as `load "
                                       "text.` reads them: one row per line, column `value`) trained on instead of "
                                       "inputTable (Byzer's localDataDir; inside the workspace or an allowed root)")
    text_column: str | None = Field(None, description="default: `text`, or the table's only string column")
    deepspeed_config: dict | None = Field(None, description="a DeepSpeed config (JSON); its zero stage wins")
    zero_stage: int = Field(2, ge=0, le=3, description="DeepSpeed ZeRO stage: 0 none, 1 optimizer states, 2 and "
                            "gradients, 3 and weights, partitioned across the workers")
    setup_nccl_socket_ifname_by_ip: bool = Field(False, description="set NCCL_SOCKET_IFNAME from each node's IP")
    max_failures: int = Field(3, ge=0, description="worker failures survived (restarts from the last checkpoint)")
    eval_steps: int | None = Field(None, ge=1, description="evaluate evalTable every N optimizer steps (and at the "
                                   "end); default: loggingSteps")

    default_eval_metrics: ClassVar[str] = "perplexity"

    @field_validator("deepspeed_config", mode="before")
    @classmethod
    def _ds_json(cls, v: Any) -> Any:
        if isinstance(v, str):
            if not v.strip():
                return None
            try:
                v = json.loads(v)
            except json.JSONDecodeError as e:
                raise ValueError(f"deepspeedConfig is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
        if v is not None and not isinstance(v, dict):
            raise ValueError("deepspeedConfig must be a JSON object")
        return v

    def lr(self) -> float:
        return self.learning_rate or 5e-5


__all__ = ["METHODS", "SfftOptions", "SftOptions", "TrainOptions", "normalise"]
