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
from ..tasks import TASKS

METHODS = ("lora", "qlora", "full", "freeze", "prefix")
SFFT_METHODS = ("full", "lora")


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
                                        "with lora / qlora, 2e-5 full, 5e-5 freeze, 1e-2 prefix; sfft 5e-5, 2e-4 "
                                        "with lora)")
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
    predict_table: str | None = Field(None, description="a table of the session the trained model answers once it "
                                      "is registered (llm-module's steps=train,eval,predict): its rows with an answer "
                                      "column, in predictions.parquet in the job's folder")
    predict_column: str | None = Field(None, description="predictTable's prompt column (default: the first of "
                                       "instruction, prompt, question, input, text)")
    predict_max_new_tokens: int = Field(64, ge=1, le=4096, description="answer tokens per predictTable row")
    gradient_checkpointing: bool = Field(False, description="recompute activations in the backward pass instead of "
                                         "keeping them: less memory for about a third more compute (LLaMA-Factory's "
                                         "and llm-module's use_gradient_checkpointing)")

    default_eval_metrics: ClassVar[str] = "exact_match"

    def registered_method(self) -> str:
        """The `method` the registry records for the model this run trains (the option's value; "pretrain"
        for a task without one)."""
        return str(getattr(self, "method", None) or "pretrain")

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
        return cls.parse(values, where=cls.kind or "training", given=given)

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


def _names(v: Any) -> Any:
    """A list of module names from JSON text (`["q_proj"]`), comma-separated text or a list."""
    if isinstance(v, str):
        v = json.loads(v) if v.strip().startswith("[") else [m.strip() for m in v.split(",") if m.strip()]
    return v


class LoraFields(_Options):
    """The LoRA adapter's shape, for every task that can train one (sft's lora / qlora, sfft's lora)."""

    lora_r: int = Field(8, ge=1, le=4096, description="LoRA: the rank of the adapter's matrices")
    lora_alpha: float = Field(16.0, gt=0, description="LoRA: the adapter's scale (alpha / r)")
    lora_dropout: float = Field(0.05, ge=0, lt=1, description="LoRA: dropout on the adapter's input")
    lora_target_modules: list[str] | None = Field(None, description="default: the plugin's")

    @field_validator("lora_target_modules", mode="before")
    @classmethod
    def _modules(cls, v: Any) -> Any:
        return _names(v)


class SftOptions(LoraFields, TrainOptions):
    """Supervised fine-tuning (`sft/<family>`)."""

    kind: ClassVar[str] = "sft"

    method: Literal["lora", "qlora", "full", "freeze", "prefix"] | None = Field(
        None, description="lora: a LoRA adapter over the frozen base; qlora: the same over a 4-bit base; full: "
        "every weight; freeze: the last numLayerTrainable decoder layers (a whole model); prefix: prefix tuning, "
        "numVirtualTokens learnt keys and values in every layer (an adapter). Not given: qlora where the job's "
        "worker has a CUDA GPU (Byzer's default), else lora; settled before the job is submitted "
        "(`train.preflight.settle_method`) and said in the job's row")
    max_seq_length: int = Field(512, ge=8, le=1_048_576, description="prompt + answer tokens per example")
    packing: bool = Field(False, description="pack several short examples into one sequence")
    eval_split: float = Field(0.0, ge=0, lt=0.5, description="fraction of rows held out for eval loss (and for "
                              "evalMetrics when no evalTable is given)")
    per_device_batch_size: int | None = Field(
        None, ge=1, le=4096,
        validation_alias=AliasChoices("per_device_batch_size", "perDeviceBatchSize", "batch_size", "batchSize"),
        description="rows per step; default: about 0.2% of the training rows, from 1 to 8")
    # freeze tuning (llm-module's type=freeze, LLaMA-Factory's finetuning_type=freeze)
    num_layer_trainable: int = Field(
        2, ge=1, validation_alias=AliasChoices("num_layer_trainable", "numLayerTrainable", "freeze_trainable_layers",
                                               "freezeTrainableLayers"),
        description="freeze: the last N decoder layers are trained, every other weight stays frozen")
    freeze_trainable_modules: list[str] | None = Field(
        None, description="freeze: only these submodules of the trained layers (e.g. mlp,self_attn); default all")
    freeze_extra_modules: list[str] | None = Field(
        None, description="freeze: modules outside the decoder layers trained too (e.g. embed_tokens,lm_head,norm)")
    # prefix tuning (PaddleNLP's Prefix Tuning; peft's PrefixTuningConfig)
    num_virtual_tokens: int = Field(20, ge=1, le=4096, description="prefix: virtual tokens whose keys and values "
                                    "are learnt in every layer")
    neftune_noise_alpha: float | None = Field(None, gt=0, description="NEFTune: uniform noise of this scale on the "
                                              "input embeddings while training (transformers' neftune_noise_alpha; "
                                              "5 is the paper's usual value)")
    template: str | None = Field(None, description="the prompt format of the training rows, by name (alpaca, chatml, "
                                 "llama2, llama3, mistral, qwen, vicuna); default: the model's chat template. Saved "
                                 "with the trained model, so a deployment of it prompts the same way")

    @field_validator("template")
    @classmethod
    def _known_template(cls, v: str | None) -> str | None:
        if v is not None:
            from .templates import template_name

            return template_name(v)
        return v

    @field_validator("freeze_trainable_modules", "freeze_extra_modules", mode="before")
    @classmethod
    def _module_list(cls, v: Any) -> Any:
        v = _names(v)
        return None if v in (["all"], []) else v

    @model_validator(mode="after")
    def _method_knobs(self):
        # compared with the defaults, not with the keys given: a job's stored options hold every field
        for name, method in (("num_layer_trainable", "freeze"), ("freeze_trainable_modules", "freeze"),
                             ("freeze_extra_modules", "freeze"), ("num_virtual_tokens", "prefix")):
            if getattr(self, name) != type(self).model_fields[name].default and self.method != method:
                raise ValueError(f"{name} is an option of method=\"{method}\", not of method=\"{self.method}\"; "
                                 f"add method=\"{method}\" or drop it")
        if self.method == "prefix" and self.gradient_checkpointing:
            raise ValueError("gradientCheckpointing cannot go with method=\"prefix\": transformers drops the key/value "
                             "cache in checkpointed layers, and that cache is where the virtual tokens live; drop "
                             "gradientCheckpointing (prefix tuning keeps few activations) or use method=\"lora\"")
        return self

    def lr(self) -> float:
        return self.learning_rate or {"full": 2e-5, "freeze": 5e-5, "prefix": 1e-2}.get(self.method, 2e-4)

    def trains_adapter(self) -> bool:
        """Whether the run's output is an adapter over its base (lora, qlora, prefix) rather than a whole model."""
        return self.method in ("lora", "qlora", "prefix", None)  # None: lora or qlora, settled at submit

    def registered_method(self) -> str:
        """The method the registry records (a method not given yet is lora's until submit settles it)."""
        return self.method or "lora"

    def batch_size(self, rows: int) -> int:
        """Rows per optimizer step (before gradient accumulation) for `rows` training examples: the given
        `per_device_batch_size`, else about 0.2% of the rows, at least 1 and at most 8 — the default of
        OpenAI's fine-tuning API (~0.2% of the examples, there capped at 256), capped at 8 to fit a worker.
        A small table thus still gets one optimizer step per row each epoch: 30 question/answer pairs at
        a batch of 8 would train for 12 steps in 3 epochs and learn nothing."""
        if self.per_device_batch_size is not None:
            return self.per_device_batch_size
        return max(1, min(8, round(0.002 * rows)))


class SfftOptions(LoraFields, TrainOptions):
    """Continued pretraining (`sfft/<family>`) on Ray Train workers with DeepSpeed."""

    kind: ClassVar[str] = "sfft"

    method: Literal["full", "lora"] = Field("full", description="full: every weight (a whole model); lora: a LoRA "
                                            "adapter over the frozen base, registered like sft's (llm-module's pt "
                                            "stage with type=lora)")

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
        return self.learning_rate or (2e-4 if self.method == "lora" else 5e-5)

    def trains_adapter(self) -> bool:
        """Whether the run's output is a LoRA adapter over its base rather than a whole model."""
        return self.method == "lora"

    def registered_method(self) -> str:
        """"pretrain" (every weight) or "pretrain-lora" (an adapter), as the registry records sfft's models."""
        return "pretrain" if self.method == "full" else f"pretrain-{self.method}"


__all__ = ["METHODS", "SFFT_METHODS", "LoraFields", "SfftOptions", "SftOptions", "TrainOptions", "normalise"]
