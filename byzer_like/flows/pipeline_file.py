"""Pipeline files: llm-module's config file (INI, or the same model as YAML) compiled to ONE SQL script of this
project's statements, checked whole, then run by the SQL session.

    file (INI / YAML) ──read──► sections with each key's line ──schema──► PipelineFile (pydantic, tagged by kind)
         ──compile──► Compiled: the SQL script, the stage graph, warnings ──Session.sql──► results, chat answers

The format follows llm-module's `example/trainer.ini`: a section is a component (`[Trainer]`, `[ModelLoader]`);
`[DatasetLoader_1]` is an instance of `DatasetLoader` (its kind is its name minus a `_suffix`); a value that
names a section (`model=ModelLoader`) refers to it; `[Project] pipeline=Trainer,Export,Chat` lists the stages
in the order they run. Stages and what they compile to:

    Trainer   stage pt|sft|rm|dpo|ppo (pt is sfft here, ppo TRL's RLOO; orpo, kto too) with FinetuneArguments' type
              full|freeze|lora|qlora|prefix -> `!byzerllm setup <task>;` + `run command as LLM.`` where ...`
              (steps: train; eval -> action="eval" on the registered model; predict -> predictTable)
    Export    type merge|quantize (gguf: refused, this project imports GGUF, it writes none) -> action="merge" /
              action="quantize", registered under [Project] name (its next version)
    Eval      action="eval" of a model on a DatasetLoader
    Deploy    action="infer" (num_workers through `!byzerllm setup`)
    Chat      deploys (unless a Deploy did), then answers `questions=` with a select (a list, or a file of one
              question a line); with none, a terminal chats interactively (the CLI does that)

Keys of TrainingArguments, FinetuneArguments (`lora_config_*`), GenerateArguments, ModelLoader and DatasetLoader
(`prompt_column`, `query_column`, `response_column`, `history_column`, `system_column`, `text_column`) map onto
this project's keys (KEYS); a key llm-module has that means nothing here is named in a warning (never dropped
silently); any key of the training task's options model (`maxSeqLength`, `evalMetrics`, ...) is taken as it is;
every other key is an error listing the valid ones. Every problem of a file (syntax, unknown section kind, unknown
key, bad value, a reference to a missing section or of the wrong kind, a cycle) is collected and raised at once
as one PipelineFileError, each said as `file:line [Section] key: message`, before anything runs; the compiled
script is then parsed and checked whole by the session (`session/check.py`) before its first statement runs.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .. import tasks
from ..config import REQUEST_KEYS, DeployOptions, EvalOptions, QuantizeOptions
from ..errors import ConfigError, _choices, did_you_mean

# -- errors --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    """One problem of a pipeline file: where (file, line, section, key) and what."""

    file: str
    line: int
    section: str | None
    key: str | None
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}"
        if self.section:
            where += f" [{self.section}]"
        if self.key:
            where += f" {self.key}"
        return f"{where}: {self.message}"


class PipelineFileError(ConfigError):
    """A pipeline file that cannot run: every problem found, one per line (`file:line [Section] key: message`),
    in `problems` (a list of Problem). Raised before anything starts."""

    def __init__(self, problems: list[Problem]):
        self.problems = sorted(problems, key=lambda p: (p.line, p.section or "", p.key or ""))
        n = len(self.problems)
        head = f"pipeline file: {n} problem{'s' if n != 1 else ''}"
        super().__init__(head + "\n" + "\n".join(f"  {p}" for p in self.problems))


# -- reading: sections and keys with their lines ----------------------------------------------------------------


@dataclass
class RawValue:
    """A value as written (INI: text; YAML: a scalar or a list) and its line (1-based)."""

    value: Any
    line: int


@dataclass
class RawSection:
    name: str
    line: int
    values: dict[str, RawValue] = field(default_factory=dict)


@dataclass
class RawFile:
    """The sections of a file in their order, each key with its line; `path` names it in errors, `folder` is
    where its relative paths start."""

    path: str
    folder: Path
    sections: dict[str, RawSection]


_SECTION = re.compile(r"^\[(?P<name>[^\]]*)\]\s*$")


def read_ini(text: str, path: str = "<pipeline>", folder: Path | None = None) -> RawFile:
    """An llm-module config file as configparser reads it (`[Section]`, `key=value` or `key: value`, `#` and `;`
    comment lines, indented continuation lines joined with newlines), keeping each key's line. Raises
    PipelineFileError listing every bad line (a key outside a section, a line with neither `=` nor `:`, a section
    or key given twice)."""
    problems: list[Problem] = []
    sections: dict[str, RawSection] = {}
    current: RawSection | None = None
    last: tuple[RawSection, str] | None = None
    for n, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not stripped:
            last = None
            continue
        if stripped.startswith(("#", ";")):
            continue
        if raw[:1].isspace() and last is not None:  # a continuation line
            sec, key = last
            sec.values[key].value = f"{sec.values[key].value}\n{stripped}".lstrip("\n")
            continue
        m = _SECTION.match(stripped)
        if m:
            name = m["name"].strip()
            if name in sections:
                problems.append(Problem(path, n, name, None, f"section given twice (first at line {sections[name].line})"))
                current = RawSection(name, n)  # read, not kept
            else:
                current = sections[name] = RawSection(name, n)
            last = None
            continue
        cut = [i for i in (stripped.find("="), stripped.find(":")) if i > 0]
        if not cut:
            problems.append(Problem(path, n, current.name if current else None, None,
                                    f"not `key=value`, a `[Section]` or a comment: {stripped!r}"))
            continue
        key, value = stripped[:min(cut)].strip(), stripped[min(cut) + 1:].strip()
        if current is None:
            problems.append(Problem(path, n, None, key, "a key before any [Section]"))
            continue
        if key in current.values:
            problems.append(Problem(path, n, current.name, key, f"given twice (first at line {current.values[key].line})"))
            continue
        current.values[key] = RawValue(value, n)
        last = (current, key)
    if problems:
        raise PipelineFileError(problems)
    return RawFile(path, folder or Path.cwd(), sections)


def read_yaml(text: str, path: str = "<pipeline>", folder: Path | None = None) -> RawFile:
    """The YAML form of the same model: a mapping of section name -> mapping of key -> value (a value may be a
    list), each key's line from the YAML parser. Raises PipelineFileError (bad YAML, a section that is no
    mapping, a key given twice)."""
    import yaml

    try:
        root = yaml.compose(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise PipelineFileError([Problem(path, (mark.line + 1) if mark else 1, None, None,
                                         f"not YAML: {getattr(e, 'problem', None) or e}")]) from None
    if root is None:
        return RawFile(path, folder or Path.cwd(), {})
    if not isinstance(root, yaml.MappingNode):
        raise PipelineFileError([Problem(path, root.start_mark.line + 1, None, None,
                                         "a pipeline file is a mapping of section names to their keys")])
    problems: list[Problem] = []
    sections: dict[str, RawSection] = {}
    for knode, vnode in root.value:
        name, line = str(knode.value), knode.start_mark.line + 1
        if name in sections:
            problems.append(Problem(path, line, name, None, f"section given twice (first at line {sections[name].line})"))
            continue
        sec = sections[name] = RawSection(name, line)
        if isinstance(vnode, yaml.ScalarNode) and vnode.value in ("", "~", "null"):
            continue
        if not isinstance(vnode, yaml.MappingNode):
            problems.append(Problem(path, line, name, None, "a section is a mapping of keys to values"))
            continue
        for k, v in vnode.value:
            key = str(k.value)
            if key in sec.values:
                problems.append(Problem(path, k.start_mark.line + 1, name, key,
                                        f"given twice (first at line {sec.values[key].line})"))
                continue
            sec.values[key] = RawValue(yaml.safe_load(yaml.serialize(v)), k.start_mark.line + 1)
    if problems:
        raise PipelineFileError(problems)
    return RawFile(path, folder or Path.cwd(), sections)


def read(path: str | Path) -> RawFile:
    """A pipeline file by its suffix: `.yaml` / `.yml` as YAML, anything else as INI (llm-module's `.ini`,
    `.conf`). Raises ConfigError when it cannot be read, PipelineFileError for its syntax."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"cannot read pipeline file {path}: {e.strerror}") from None
    reader = read_yaml if p.suffix.lower() in (".yaml", ".yml") else read_ini
    return reader(text, str(path), p.resolve().parent)


# -- the key tables -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Maps:
    """An llm-module key that sets this project's key `to` (a training `where` key, a request key of
    GenerateArguments, or a DatasetLoader column); `convert` turns the value."""

    to: str
    convert: Callable[[Any], Any] | None = None


@dataclass(frozen=True)
class Ignored:
    """An llm-module key with no meaning here, and why (said in a warning)."""

    why: str


def _not(value: Any) -> bool:
    return not _bool(value)


NO_DOWNLOAD = "nothing is downloaded here (models and data are local)"
HF_LOADING = "models load the same way everywhere here (the plugin's loader: safetensors, dtype auto)"
REGISTERED = "models and their files are registered in the workspace's registry, under [Project] name"
# per section kind: the llm-module keys (other than the section's own typed fields and references)
KEYS: dict[str, dict[str, Maps | Ignored]] = {
    "Project": {
        "version": Ignored("the registry numbers versions itself (name@v1, v2, ...)"),
        "user": Ignored("no per-user settings here"),
        "proxies": Ignored(NO_DOWNLOAD),
    },
    "TokenizerLoader": {
        "use_fast": Ignored("the model directory's tokenizer is used as it is"),
        "split_special_tokens": Ignored("the model directory's tokenizer is used as it is"),
        "padding_side": Ignored("batches are padded as each engine needs"),
        "device_map": Ignored("where a model runs is the setup's (num_gpus, device)"),
        "trust_remote_code": Ignored("the tokenizer is the model directory's; trustRemoteCode is a deploy key"),
        "cache_dir": Ignored(NO_DOWNLOAD),
        "use_auth_token": Ignored(NO_DOWNLOAD),
    },
    "ModelLoader": {
        "class": Ignored("the model type (model_type=, default auto) picks the plugin that loads it"),
        "print_model_structure": Ignored("no model summary is printed"),
        "trust_remote_code": Ignored("training loads safetensors models without remote code"),
        "cache_dir": Ignored(NO_DOWNLOAD),
        "device_map": Ignored("where a job runs is the setup's (num_gpus)"),
        "use_auth_token": Ignored(NO_DOWNLOAD),
        "torch_dtype": Ignored(HF_LOADING),
        "use_gradient_checkpointing": Maps("gradientCheckpointing"),
        "rope_scaling": Ignored(HF_LOADING),
        "model_max_length": Ignored("the length trained is maxSeqLength (DatasetLoader cutoff_len)"),
        "flash_attn": Ignored(HF_LOADING),
        "shift_attn": Ignored("no shift-short attention here"),
        "quantization_bit": Ignored("4-bit training is FinetuneArguments type=qlora"),
        "double_quantization": Ignored("qlora's quantization is fixed (nf4, double quantization)"),
        "quantization_type": Ignored("qlora's quantization is fixed (nf4)"),
    },
    "FinetuneArguments": {
        "checkpoint_dir": Ignored("training starts from the ModelLoader's model; resume jobs with `byzer-like jobs resume`"),
        "lora_config_r": Maps("loraR"),
        "lora_config_lora_alpha": Maps("loraAlpha"),
        "lora_config_lora_dropout": Maps("loraDropout"),
        "lora_config_target_modules": Maps("loraTargetModules"),
        "lora_config_task_type": Ignored("always CAUSAL_LM here"),
        "lora_config_inference_mode": Ignored("adapters are trained, then served for inference by modelTable"),
        "lora_config_bias": Ignored("LoRA trains no biases here (bias=none)"),
        "lora_config_fan_in_fan_out": Ignored("peft sets it from the model's layers"),
        "num_layer_trainable": Maps("numLayerTrainable"),
        "upcast_layernorm": Ignored("layer norms stay in the model's dtype"),
        "neft_alpha": Maps("neftuneNoiseAlpha"),
    },
    "TrainingArguments": {
        "class": Ignored("the training task (Trainer stage) picks the trainer"),
        "generation_max_length": Ignored("answers' length is GenerateArguments' max_new_tokens"),
        "generation_num_beams": Ignored("answers are sampled or greedy, never beam-searched"),
        "per_device_train_batch_size": Maps("perDeviceBatchSize"),
        "per_device_eval_batch_size": Ignored("evaluation batches are the deployment's (max_batch_size)"),
        "gradient_accumulation_steps": Maps("gradientAccumulationSteps"),
        "warmup_steps": Ignored("use warmup_ratio (warmupRatio)"),
        "warmup_ratio": Maps("warmupRatio"),
        "max_steps": Maps("maxSteps"),
        "num_train_epochs": Maps("numTrainEpochs"),
        "learning_rate": Maps("learningRate"),
        "weight_decay": Maps("weightDecay"),
        "fp16": Ignored("the dtype follows the device (bf16 / fp16 on GPUs where supported)"),
        "bf16": Ignored("the dtype follows the device (bf16 / fp16 on GPUs where supported)"),
        "logging_steps": Maps("loggingSteps"),
        "save_steps": Maps("checkpointSteps"),
        "save_total_limit": Maps("saveTotalLimit"),
        "seed": Maps("seed"),
        "gradient_checkpointing": Maps("gradientCheckpointing"),
        "neftune_noise_alpha": Maps("neftuneNoiseAlpha"),
        "do_train": Ignored("the Trainer's steps say what runs"),
        "do_eval": Ignored("the Trainer's steps say what runs"),
        "do_predict": Ignored("the Trainer's steps say what runs"),
        "remove_unused_columns": Ignored("the training rows' columns are read by name"),
        "output_dir": Ignored("a job writes into its folder in the workspace (jobs/<id>/); " + REGISTERED),
        "overwrite_output_dir": Ignored("a job writes into a folder of its own"),
        "save_safetensors": Ignored("models are always saved as safetensors"),
        "report_to": Ignored("TensorBoard event files are always written into the job's folder"),
        "lr_scheduler_type": Ignored("the schedule is linear with warmupRatio"),
    },
    "GenerateArguments": {
        "temperature": Maps("temperature"),
        "top_p": Maps("top_p"),
        "top_k": Maps("top_k"),
        "max_length": Maps("max_length"),
        "max_new_tokens": Maps("max_new_tokens"),
        "repetition_penalty": Maps("repetition_penalty"),
        "do_sample": Maps("temperature", lambda v: None if _bool(v) else 0.0),
        "num_beams": Ignored("answers are sampled or greedy, never beam-searched"),
        "length_penalty": Ignored("only used by beam search, which is not used here"),
    },
    "DatasetLoader": {
        "prompt_column": Maps("instruction"),
        "query_column": Maps("input"),
        "response_column": Maps("output"),
        "history_column": Maps("history"),
        "system_column": Maps("system"),
        "text_column": Maps("text"),
        "split": Ignored("a data file is one table (every row is read)"),
        "cache_dir": Ignored(NO_DOWNLOAD),
        "streaming": Ignored("the table is read whole and written once into the job's folder"),
        "use_auth_token": Ignored(NO_DOWNLOAD),
        "cutoff_len": Maps("maxSeqLength"),
        "sft_packing": Maps("packing"),
        "render": Maps("template"),
        "label_mask_prompt": Ignored("only the answers are learnt (the prompt is always masked)"),
    },
    "Trainer": {
        "class": Ignored("the stage picks the training task"),
        "resume_from_checkpoint": Ignored("resume a job with `byzer-like jobs resume JOB_ID`"),
        "plot_loss": Ignored("the loss curve is always drawn (a PNG beside the model)"),
        "ignore_pad_token_for_loss": Ignored("padding never counts in the loss"),
        "streaming": Ignored("the table is read whole and written once into the job's folder"),
        "split_train_val": Ignored("the eval step measures eval_dataset (default: the training dataset); "
                                   "evalSplit holds rows out for the eval loss"),
        "split_train_val_val_size": Ignored("use eval_dataset=, or evalSplit (a fraction) for the eval loss"),
        "split_train_val_seed": Ignored("the held-out split follows seed"),
        "split_train_val_buffer_size": Ignored("no streaming shuffle buffer here"),
        "predict_with_generate": Ignored("the predict step always generates answers"),
        "ppo_args": Ignored("ppo's options are TrainingArguments' and Trainer's keys here (num_generations, beta, "
                            "max_new_tokens, ...)"),
        "reward_model": Maps("rewardModel"),
    },
    "Export": {
        "output_dir": Ignored(REGISTERED),
        "max_shard_size": Ignored("exports are written as the model's safetensors"),
    },
    "Chat": {
        "pretrained_model_name_or_path": Ignored("the chat deploys the model its model= names (the exported one: "
                                                 "[Project] name)"),
        "render": Ignored("a trained model keeps the template it was trained with"),
    },
    "Eval": {},
    "Deploy": {},
}
# references by kind: key -> the kinds it may name (a model may be a ModelLoader or a stage that made one)
MODEL_SOURCES = ("ModelLoader", "Trainer", "Export")
REFS: dict[str, dict[str, tuple[str, ...]]] = {
    "Project": {},
    "TokenizerLoader": {},
    "ModelLoader": {"finetune_args": ("FinetuneArguments",), "tokenizer": ("TokenizerLoader",)},
    "FinetuneArguments": {},
    "TrainingArguments": {},
    "GenerateArguments": {},
    "DatasetLoader": {"tokenizer": ("TokenizerLoader",)},
    "Trainer": {"model": ("ModelLoader",), "tokenizer": ("TokenizerLoader",), "args": ("TrainingArguments",),
                "dataset": ("DatasetLoader",), "eval_dataset": ("DatasetLoader",),
                "predict_dataset": ("DatasetLoader",), "generate_args": ("GenerateArguments",),
                "finetune_args": ("FinetuneArguments",)},
    "Export": {"model": MODEL_SOURCES, "tokenizer": ("TokenizerLoader",)},
    "Eval": {"model": MODEL_SOURCES + ("Deploy",), "dataset": ("DatasetLoader",), "generate_args": ("GenerateArguments",)},
    "Deploy": {"model": MODEL_SOURCES},
    "Chat": {"model": MODEL_SOURCES + ("Deploy",), "tokenizer": ("TokenizerLoader",),
             "generating_args": ("GenerateArguments",), "generate_args": ("GenerateArguments",)},
}
STAGES = ("Trainer", "Export", "Eval", "Deploy", "Chat")
# llm-module's stages -> this project's training tasks (pt is continued pretraining: sfft)
STAGE_TASKS = {"pt": "sfft", "sft": "sft", "rm": "rm", "dpo": "dpo", "orpo": "orpo", "kto": "kto", "ppo": "ppo"}
# options models whose keys a section takes as they are, by kind
OWN_OPTIONS: dict[str, tuple[type, ...]] = {"Eval": (EvalOptions,), "Deploy": (DeployOptions,),
                                           "Export": (QuantizeOptions,)}
# sections whose other keys are the training task's own options, checked once the Trainer's task is known
TRAINING_KINDS = ("TrainingArguments", "FinetuneArguments", "Trainer")


def _bool(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    return str(v).strip().lower() in ("1", "true", "yes", "on", "t", "y")


def _list(v: Any) -> Any:
    """`a,b,c` or a YAML / JSON list -> a list of texts (None stays None)."""
    if v is None or isinstance(v, list):
        return v
    text = str(v).strip()
    if text.startswith("["):
        try:
            return [str(x) for x in json.loads(text)]
        except json.JSONDecodeError:
            pass
    return [p.strip() for p in re.split(r"[,\n]", text) if p.strip()]


# -- the schema: one pydantic model per section kind, tagged by kind -------------------------------------------


class Section(BaseModel):
    """A section: its name, kind (its name minus a `_suffix`), line; its references (key -> section name), its
    keys mapped onto this project's (`options`: our key -> value), the keys that mean nothing here (`ignored`:
    key -> why), and each key's line (`lines`, by the key as written). Subclasses add the kind's own typed keys
    (extra="forbid": a key no table names is refused)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: str
    section: str
    line: int
    refs: dict[str, str] = {}
    options: dict[str, Any] = {}
    source: dict[str, str] = {}  # our key -> the key as written
    ignored: dict[str, str] = {}
    lines: dict[str, int] = {}

    def line_of(self, key: str | None) -> int:
        return self.lines.get(key or "", self.line)


class ProjectSection(Section):
    kind: Literal["Project"] = "Project"
    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
                      description="the name the trained (and exported) model is registered under")
    pipeline: list[str] = Field(min_length=1, description="the stages, in the order they run")
    overwrite: bool = Field(False, description="register a new version when the name is taken already")

    @field_validator("pipeline", mode="before")
    @classmethod
    def _pipeline_list(cls, v: Any) -> Any:
        return _list(v)


class TokenizerLoaderSection(Section):
    kind: Literal["TokenizerLoader"] = "TokenizerLoader"
    pretrained_model_name_or_path: str | None = None


class ModelLoaderSection(Section):
    kind: Literal["ModelLoader"] = "ModelLoader"
    pretrained_model_name_or_path: str | None = Field(
        None, description="a model directory (relative to the file), or a registered model's name")
    model_type: str = Field("auto", description="the plugin (pretrainedModelType family): llama, qwen2, auto ...")


class FinetuneArgumentsSection(Section):
    kind: Literal["FinetuneArguments"] = "FinetuneArguments"
    type: Literal["full", "freeze", "lora", "qlora", "prefix"] | None = None


class TrainingArgumentsSection(Section):
    kind: Literal["TrainingArguments"] = "TrainingArguments"


class GenerateArgumentsSection(Section):
    kind: Literal["GenerateArguments"] = "GenerateArguments"


class DatasetLoaderSection(Section):
    kind: Literal["DatasetLoader"] = "DatasetLoader"
    path: str = Field("json", description="json, csv, parquet or text: the format of data_files")
    data_files: str = Field(description="the data file (relative to the pipeline file)")

    @field_validator("path")
    @classmethod
    def _format(cls, v: str) -> str:
        if v not in ("json", "csv", "parquet", "text"):
            raise ValueError(f"path={v!r}: use json, csv, parquet or text (the format of data_files; " + NO_DOWNLOAD + ")")
        return v


class TrainerSection(Section):
    kind: Literal["Trainer"] = "Trainer"
    stage: str = Field("sft", description="pt, sft, rm, dpo (orpo, kto)")
    steps: list[Literal["train", "eval", "predict"]] = ["train"]
    eval_metrics: str = Field("exact_match", description="the eval step's metrics (action=\"eval\")")

    @field_validator("steps", mode="before")
    @classmethod
    def _steps_list(cls, v: Any) -> Any:
        return _list(v)

    @field_validator("stage")
    @classmethod
    def _stage(cls, v: str) -> str:
        if v not in STAGE_TASKS:
            raise ValueError(f"unknown stage {v!r}; stages: {_choices(STAGE_TASKS)}")
        return v

    @field_validator("steps")
    @classmethod
    def _train_first(cls, v: list[str]) -> list[str]:
        if "train" not in v:
            raise ValueError("steps must include train (an [Eval] section evaluates a model without training)")
        return v


class ExportSection(Section):
    kind: Literal["Export"] = "Export"
    type: Literal["merge", "quantize", "gguf"] = "merge"

    @field_validator("type")
    @classmethod
    def _gguf(cls, v: str) -> str:
        if v == "gguf":
            raise ValueError('GGUF export is not available here (GGUF files are imported: action="convert"); '
                             "use type=merge or type=quantize")
        return v


class EvalSection(Section):
    kind: Literal["Eval"] = "Eval"


class DeploySection(Section):
    kind: Literal["Deploy"] = "Deploy"
    udf_name: str | None = None
    num_workers: int | None = Field(None, ge=1)


class ChatSection(Section):
    kind: Literal["Chat"] = "Chat"
    questions: list[str] | str | None = Field(
        None, description="a list (JSON, YAML or one per continuation line), or a file of one question a line")
    udf_name: str | None = None


AnySection = Union[ProjectSection, TokenizerLoaderSection, ModelLoaderSection, FinetuneArgumentsSection,
                   TrainingArgumentsSection, GenerateArgumentsSection, DatasetLoaderSection, TrainerSection,
                   ExportSection, EvalSection, DeploySection, ChatSection]
SECTION_MODELS: dict[str, type[Section]] = {m.model_fields["kind"].default: m for m in AnySection.__args__}


class PipelineFile(BaseModel):
    """A whole pipeline file, checked: `project`, `sections` by name (a union tagged by `kind`), `path` (as
    errors name it) and `folder` (where its relative paths start)."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)
    path: str
    folder: Path
    project: ProjectSection
    sections: dict[str, Any]

    def stages(self) -> list[Section]:
        """The stages in `pipeline=` order."""
        return [self.sections[name] for name in self.project.pipeline]


def kind_of(name: str) -> str | None:
    """A section's kind: its name if it is one (`Trainer`), else its name minus the last `_suffix`
    (`DatasetLoader_1`, `Trainer_ppo`); None when neither is a kind."""
    if name in SECTION_MODELS:
        return name
    head, sep, _ = name.rpartition("_")
    return head if sep and head in SECTION_MODELS else None


_BASE_FIELDS = set(Section.model_fields)


def _own_fields(kind: str) -> set[str]:
    return set(SECTION_MODELS[kind].model_fields) - _BASE_FIELDS


def _option_keys(kind: str) -> set[str]:
    return set().union(*(m.option_names() for m in OWN_OPTIONS.get(kind, ())))


def valid_keys(kind: str, task_options: type | None = None) -> list[str]:
    """The keys a section of `kind` takes (its own, references, llm-module's table, the options model keys)."""
    keys = _own_fields(kind) | set(REFS[kind]) | set(KEYS[kind])
    keys |= {m.sql_key(n) for m in OWN_OPTIONS.get(kind, ()) for n in m.model_fields if n not in m.HIDDEN}
    if task_options is not None and kind in TRAINING_KINDS:
        keys |= {task_options.sql_key(n) for n in task_options.model_fields if n not in task_options.HIDDEN}
    return sorted(keys)


def _empty(v: Any) -> bool:
    return v is None or (isinstance(v, str) and not v.strip())


def _section(raw: RawSection, kind: str, path: str, problems: list[Problem],
             refs_seen: dict[str, tuple[dict[str, str], dict[str, int], int]]) -> Section | None:
    """One raw section as its kind's model; its problems appended (None when it cannot be built); its references
    (with the keys' lines) put in `refs_seen` either way."""
    own = _own_fields(kind)
    table, refs = KEYS[kind], REFS[kind]
    data: dict[str, Any] = {"section": raw.name, "line": raw.line}
    out_refs, options, source, ignored = {}, {}, {}, {}
    lines = {k: v.line for k, v in raw.values.items()}
    option_keys = _option_keys(kind)
    for key, rv in raw.values.items():
        value = rv.value
        if key in own:
            if not _empty(value):
                data[key] = value
        elif key in refs:
            if not _empty(value):
                out_refs[key] = str(value).strip()
        elif isinstance(table.get(key), Maps):
            if _empty(value):
                continue
            m = table[key]
            value = m.convert(value) if m.convert else value
            if value is not None:
                options[m.to], source[m.to] = value, key
        elif isinstance(table.get(key), Ignored):
            if not _empty(value):
                ignored[key] = table[key].why
        elif kind == "FinetuneArguments" and key.startswith("lora_config_"):
            if not _empty(value):
                ignored[key] = f"peft's LoraConfig {key[len('lora_config_'):]!r} has no option here " \
                               "(lora_config_r, _lora_alpha, _lora_dropout, _target_modules map onto loraR, loraAlpha, " \
                               "loraDropout, loraTargetModules)"
        elif kind in TRAINING_KINDS or key in option_keys:
            # the task's own keys (checked once the Trainer's task is known) or an options model's
            if not _empty(value):
                options[key], source[key] = value, key
        else:
            valid = valid_keys(kind)
            problems.append(Problem(path, rv.line, raw.name, key,
                                    f"unknown key for a {kind} section; {did_you_mean(key, valid)}"
                                    f"valid keys: {_choices(valid)}"))
    data.update(refs=out_refs, options=options, source=source, ignored=ignored, lines=lines)
    refs_seen[raw.name] = (out_refs, lines, raw.line)
    try:
        return SECTION_MODELS[kind].model_validate(data)
    except ValidationError as e:
        for err in e.errors():
            key = str(err["loc"][0]) if err["loc"] else None
            line = lines.get(key or "", raw.line)
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "missing":
                msg = f"required in a {kind} section"
            problems.append(Problem(path, line, raw.name, key, msg))
        return None


def build(raw: RawFile) -> PipelineFile:
    """The checked model of a read file. Raises PipelineFileError with every problem: a section of no known kind,
    no [Project] or no pipeline=, unknown keys, bad values, a reference to a missing section or to one of the
    wrong kind, a pipeline= name that is no stage section, a cycle of references."""
    path = raw.path
    problems: list[Problem] = []
    sections: dict[str, Section] = {}
    refs_seen: dict[str, tuple[dict[str, str], dict[str, int], int]] = {}
    for name, rs in raw.sections.items():
        kind = kind_of(name)
        if kind is None:
            problems.append(Problem(path, rs.line, name, None,
                                    f"unknown section type {name!r}; {did_you_mean(name, list(SECTION_MODELS))}"
                                    f"types: {_choices(SECTION_MODELS)} (an instance: Type_suffix)"))
            continue
        s = _section(rs, kind, path, problems, refs_seen)
        if s is not None:
            sections[name] = s
    project = sections.get("Project")
    if "Project" not in raw.sections:
        problems.append(Problem(path, 1, None, None, "no [Project] section (name=..., pipeline=...)"))
    for name, (refs, lines, line) in refs_seen.items():
        for key, target in refs.items():
            kinds = REFS[kind_of(name)][key]
            if target not in raw.sections:
                problems.append(Problem(path, lines.get(key, line), name, key,
                                        f"refers to [{target}], which is not in the file; "
                                        f"{did_you_mean(target, list(raw.sections))}sections: {_choices(raw.sections)}"))
            elif kind_of(target) not in kinds:
                problems.append(Problem(path, lines.get(key, line), name, key,
                                        f"refers to [{target}], a {kind_of(target)}; it names a {' or '.join(kinds)}"))
    if isinstance(project, ProjectSection):
        for name in project.pipeline:
            if name not in raw.sections:
                problems.append(Problem(path, project.line_of("pipeline"), "Project", "pipeline",
                                        f"names [{name}], which is not in the file; sections: {_choices(raw.sections)}"))
            elif kind_of(name) not in STAGES:
                problems.append(Problem(path, project.line_of("pipeline"), "Project", "pipeline",
                                        f"names [{name}], a {kind_of(name)}; stages: {_choices(STAGES)}"))
        if len(set(project.pipeline)) != len(project.pipeline):
            problems.append(Problem(path, project.line_of("pipeline"), "Project", "pipeline", "names a stage twice"))
    problems.extend(_cycles(sections, path))
    if not problems and isinstance(project, ProjectSection):
        problems.extend(_order(sections, project, path))
    if problems:
        raise PipelineFileError(problems)
    return PipelineFile(path=path, folder=raw.folder, project=project, sections=sections)


def _cycles(sections: dict[str, Section], path: str) -> list[Problem]:
    """Each cycle of references once, said at the reference that closes it: `A -> B -> A`."""
    problems, done = [], set()
    state: dict[str, int] = {}  # 1: on the current path, 2: finished

    def visit(name: str, trail: list[tuple[str, str]]) -> None:
        state[name] = 1
        s = sections[name]
        for key, target in s.refs.items():
            if target not in sections:
                continue
            if state.get(target) == 1:
                names = [n for n, _ in trail] + [name]
                cycle = names[names.index(target):] + [target]
                if frozenset(cycle) not in done:
                    done.add(frozenset(cycle))
                    problems.append(Problem(path, s.line_of(key), name, key,
                                            f"a cycle of references: {' -> '.join(cycle)}"))
            elif state.get(target) is None:
                visit(target, trail + [(name, key)])
        state[name] = 2

    for name in sections:
        if state.get(name) is None:
            visit(name, [])
    return problems


def _order(sections: dict[str, Section], project: ProjectSection, path: str) -> list[Problem]:
    """A stage whose model= is a stage that runs later (or not at all) cannot run."""
    problems, position = [], {n: i for i, n in enumerate(project.pipeline)}
    for name in project.pipeline:
        s = sections[name]
        target = s.refs.get("model")
        if target and kind_of(target) in STAGES and position.get(target, len(position)) >= position[name]:
            problems.append(Problem(path, s.line_of("model"), name, "model",
                                    f"[{target}] does not run before [{name}] (pipeline={','.join(project.pipeline)})"))
    return problems


def load(path: str | Path) -> PipelineFile:
    """Read and check a pipeline file (INI or YAML by its suffix). Raises ConfigError / PipelineFileError."""
    return build(read(path))


# -- compiling to SQL -------------------------------------------------------------------------------------------


@dataclass
class Stage:
    """One stage of the compiled graph: its section, what it does, what it uses (key -> section), its SQL."""

    section: str
    kind: str
    does: str
    uses: dict[str, str]
    sql: list[str]


@dataclass
class Compiled:
    """A pipeline file compiled: `sql` (one script of this project's statements), `stages` (the graph),
    `warnings` (keys with no meaning here, each `file:line [Section] key: why`), `chat` (the Chat stage's
    deployed model name and its questions table, or None), `model` (the registered name)."""

    file: PipelineFile
    sql: str
    stages: list[Stage]
    warnings: list[str]
    model: str
    chat: dict[str, Any] | None = None


def _q(v: Any) -> str:
    """A value as a `where` string literal."""
    if isinstance(v, bool):
        v = "true" if v else "false"
    elif isinstance(v, list):
        v = ",".join(str(x) for x in v)
    elif isinstance(v, (dict,)):
        v = json.dumps(v)
    text = str(v)
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _lit(v: Any) -> str:
    """A SQL string (single quotes) or number literal."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    try:
        float(str(v))
        return str(v).strip()
    except ValueError:
        return "'" + str(v).replace("'", "''") + "'"


def _where(pairs: dict[str, Any]) -> str:
    return "\n    and ".join(f"{k}={_q(v)}" for k, v in pairs.items())


def _run(pairs: dict[str, Any]) -> str:
    return "run command as LLM.`` where " + _where(pairs) + ";"


def _path(pf: PipelineFile, value: str) -> str:
    p = Path(str(value)).expanduser()
    return str(p if p.is_absolute() else (pf.folder / p).resolve())


def _table(name: str) -> str:
    return re.sub(r"\W", "_", name)


class _Compiler:
    def __init__(self, pf: PipelineFile):
        self.pf, self.project = pf, pf.project
        self.name = pf.project.name
        self.problems: list[Problem] = []
        self.warnings: list[Problem] = []
        self.loaded: dict[str, list[str]] = {}  # dataset section -> its statements (emitted once)
        self.registered = False  # a stage registered [Project] name already
        self.deployed: dict[str, str] = {}  # model section -> udfName
        self.mode = None
        self.family = "auto"  # the trained model's plugin
        self.whole = False  # the registered model is a whole model (nothing to merge)

    def problem(self, s: Section, key: str | None, message: str) -> None:
        self.problems.append(Problem(self.pf.path, s.line_of(key), s.section, key, message))

    def warn_ignored(self, s: Section) -> None:
        for key, why in s.ignored.items():
            self.warnings.append((Problem(self.pf.path, s.line_of(key), s.section, key, f"no meaning here: {why}")))

    def ref(self, s: Section, key: str) -> Section | None:
        name = s.refs.get(key)
        return self.pf.sections[name] if name else None

    def setup(self, mode: str) -> list[str]:
        if self.mode == mode:
            return []
        self.mode = mode
        return [f"!byzerllm setup {mode};"]

    # what each section kind adds
    def dataset(self, d: DatasetLoaderSection) -> tuple[str, list[str]]:
        """The dataset's table name and the statements that make it (only the first time)."""
        table = _table(d.section)
        if d.section in self.loaded:
            return table, []
        self.warn_ignored(d)
        columns = {k: v for k, v in d.options.items() if k in ("instruction", "input", "output", "history", "system", "text")}
        fmt = d.path
        raw = f"{table}_raw" if columns else table
        sql = [f"-- [{d.section}] line {d.line}", f"load {fmt}.`{_path(self.pf, d.data_files)}` as {raw};"]
        if columns:
            cols = ", ".join(f"`{str(src)}` as {ours}" for ours, src in columns.items())
            sql.append(f"select {cols} from {raw} as {table};")
        self.loaded[d.section] = sql
        return table, sql

    def model_of(self, s: Section, key: str = "model") -> tuple[dict[str, Any], str]:
        """Where a stage's model comes from, as `where` pairs, and a word for the graph."""
        target = self.ref(s, key)
        if isinstance(target, DeploySection):
            target = self.ref(target, "model")
        if target is None or target.kind in ("Trainer", "Export") or (target.kind == "ModelLoader" and self.registered):
            if not self.registered:
                if target is None:
                    self.problem(s, key, "names no model, and no stage before it registers one: give model=<ModelLoader>")
                return {"modelTable": self.name}, self.name
            return {"modelTable": self.name}, f"{self.name} (registered)"
        assert isinstance(target, ModelLoaderSection)
        return self.base(target), target.section

    def base(self, m: ModelLoaderSection) -> dict[str, Any]:
        """A ModelLoader as `where` pairs: localModelDir (a directory) or modelTable (a registered name)."""
        value = m.pretrained_model_name_or_path or m.options.get("modelTable")
        if not value:
            self.problem(m, None, "give pretrained_model_name_or_path= (a model directory or a registered model)")
            return {}
        p = Path(_path(self.pf, value))
        if p.exists() or "/" in str(value) or "\\" in str(value):
            return {"localModelDir": str(p)}
        return {"modelTable": str(value)}

    def generate(self, g: Section | None) -> dict[str, Any]:
        if g is None:
            return {}
        self.warn_ignored(g)
        return {k: v for k, v in g.options.items() if k in REQUEST_KEYS}

    def trainer(self, t: TrainerSection) -> Stage:
        task_name = STAGE_TASKS[t.stage]
        task = tasks.get(task_name)
        model = self.ref(t, "model")
        if not isinstance(model, ModelLoaderSection):
            self.problem(t, "model", "a Trainer needs model=<ModelLoader>")
            return Stage(t.section, t.kind, "", {}, [])
        dataset = self.ref(t, "dataset")
        if not isinstance(dataset, DatasetLoaderSection):
            self.problem(t, "dataset", "a Trainer needs dataset=<DatasetLoader>")
            return Stage(t.section, t.kind, "", {}, [])
        finetune = self.ref(t, "finetune_args") or self.ref(model, "finetune_args")
        args = self.ref(t, "args")
        sql: list[str] = []
        table, made = self.dataset(dataset)
        sql += made
        where: dict[str, Any] = {"pretrainedModelType": f"{task_name}/{model.model_type}", **self.base(model),
                                 "inputTable": table, "outputTable": self.name}
        if self.project.overwrite:
            where["overwrite"] = True
        # option keys from the sections, each remembered with where it was written
        origin: dict[str, tuple[Section, str]] = {}
        parts: list[Section] = [s for s in (model, finetune, args, dataset, t) if s is not None]
        for s in parts:
            self.warn_ignored(s)
            for key, value in s.options.items():
                if s.kind == "DatasetLoader" and key in ("instruction", "input", "output", "history", "system", "text"):
                    continue
                if s.kind == "DatasetLoader" and key == "maxSeqLength" and task_name != "sft":
                    key = "maxLength"  # cutoff_len: sfft's, dpo's and rm's length key
                where[key] = value
                origin[key] = (s, s.source.get(key, key))
        if isinstance(finetune, FinetuneArgumentsSection) and finetune.type:
            where["method"] = finetune.type
            origin["method"] = (finetune, "type")
        if "predict" in t.steps:
            predict = self.ref(t, "predict_dataset") or dataset
            ptable, made = self.dataset(predict)
            sql[:0] = [x for x in made if x not in sql]
            where["predictTable"] = ptable
            if "predictMaxNewTokens" not in where:
                gen = self.generate(self.ref(t, "generate_args"))
                if "max_new_tokens" in gen:
                    where["predictMaxNewTokens"] = gen["max_new_tokens"]
        where.setdefault("detached", False)
        self.check_task(task, where, origin, t)
        sql += [f"-- [{t.section}] line {t.line}: stage {t.stage} -> {task_name}, steps {','.join(t.steps)}"]
        sql += self.setup(task_name)
        sql.append(_run(where))
        self.registered = True
        self.family = model.model_type
        self.whole = where.get("method") in ("full", "freeze") or task_name == "rm"
        self.mode = None  # the next statement sets the mode it needs
        sql += self.setup("single")
        uses = {"model": model.section, "dataset": dataset.section}
        uses.update({k: v for k, v in t.refs.items() if k not in uses})
        if finetune is not None:
            uses["finetune_args"] = finetune.section
        does = f"{task_name} ({where.get('method', 'the task default method')}) -> registers {self.name}"
        if "eval" in t.steps:
            ev = self.ref(t, "eval_dataset") or dataset
            etable, made = self.dataset(ev)
            sql += made
            gen = self.generate(self.ref(t, "generate_args"))
            pairs = {"action": "eval", "modelTable": self.name, "inputTable": etable, "metrics": t.eval_metrics,
                     "outputTable": f"{_table(t.section)}_eval_rows"}
            if "max_new_tokens" in gen:
                pairs["maxNewTokens"] = gen["max_new_tokens"]
            sql += [f"-- [{t.section}] step eval", _run(pairs)]
            does += f"; eval ({t.eval_metrics}) on {etable}"
        if "predict" in t.steps:
            does += f"; predict {where['predictTable']} -> {where['predictTable']}_predictions"
        return Stage(t.section, t.kind, does, uses, sql)

    def check_task(self, task: Any, where: dict[str, Any], origin: dict[str, tuple[Section, str]], t: Section) -> None:
        """The training keys through the task's options model, before anything runs: unknown keys listed with
        the valid ones, bad values at the line that set them."""
        model = task.options_model()
        names = model.option_names()
        for key in list(where):
            if key in names or "." in key:
                continue
            s, written = origin.get(key, (t, key))
            valid = valid_keys(s.kind, model)
            self.problem(s, written, f"unknown key for a {s.kind} section ({task.name}); "
                                     f"{did_you_mean(written, valid)}valid keys: {_choices(valid)}")
            where.pop(key)
        try:
            task.parse_options({k: _q(v)[1:-1].replace('\\"', '"').replace("\\\\", "\\") for k, v in where.items()})
        except ConfigError as e:
            # said at the key that set the value the message names (`'learningRate / learning_rate': ...`)
            text = str(e)
            named = [k for k in origin if re.search(rf"'{re.escape(k)}[ '/]", text)]
            s, written = origin[named[0]] if named else (t, None)
            self.problem(s, written, text)
        except ValueError as e:  # pydantic's, with the field
            self.problem(t, None, str(e))

    def export(self, e: ExportSection) -> Stage:
        self.warn_ignored(e)
        src, word = self.model_of(e)
        if e.type == "merge" and self.whole and src.get("modelTable") == self.name:
            self.warnings.append((Problem(self.pf.path, e.line_of("type"), e.section, "type",
                                             f"nothing to merge: the trained model is a whole model, registered as "
                                             f"{self.name} already")))
            return Stage(e.section, e.kind, f"nothing to merge ({self.name} is a whole model)",
                         {"model": e.refs.get("model", self.name)}, [])
        if e.type == "merge":
            pairs = {"action": "merge", **src, "outputTable": self.name, "overwrite": True}
            does = f"merge {word} -> registers {self.name} (its next version)"
        else:
            pairs = {"action": "quantize", **src, "outputTable": self.name, "overwrite": True,
                     **{k: v for k, v in e.options.items()}}
            if "method" not in pairs:
                self.problem(e, "type", "type=quantize needs method= (bnb-int8, bnb-nf4, bnb-fp4, torchao-int8, gptq-int4)")
            does = f"quantize ({pairs.get('method')}) {word} -> registers {self.name} (its next version)"
        if "localModelDir" in src:
            self.problem(e, "model", "an Export needs a registered model: a Trainer before it (or a ModelLoader "
                                     "naming a registered model)")
        self.registered = True
        sql = [f"-- [{e.section}] line {e.line}", *self.setup("single"), _run(pairs)]
        return Stage(e.section, e.kind, does, {"model": e.refs.get("model", self.name)}, sql)

    def evaluate(self, s: EvalSection) -> Stage:
        self.warn_ignored(s)
        if s.refs.get("model") in self.deployed:  # a Deploy before it: evaluate that deployment
            src, word = {"udfName": self.deployed[s.refs["model"]]}, self.deployed[s.refs["model"]]
        else:
            src, word = self.model_of(s)
        dataset = self.ref(s, "dataset")
        if not isinstance(dataset, DatasetLoaderSection):
            self.problem(s, "dataset", "an Eval needs dataset=<DatasetLoader>")
            return Stage(s.section, s.kind, "", {}, [])
        table, made = self.dataset(dataset)
        gen = self.generate(self.ref(s, "generate_args"))
        if "localModelDir" in src:
            self.problem(s, "model", "an Eval needs a registered or deployed model: a Trainer or Export before it, "
                                     "or a Deploy")
        pairs = {"action": "eval", **src, "inputTable": table, "outputTable": f"{_table(s.section)}_rows"}
        if "max_new_tokens" in gen:
            pairs["maxNewTokens"] = gen["max_new_tokens"]
        pairs.update(s.options)
        return Stage(s.section, s.kind, f"eval {word} on {table} ({pairs.get('metrics', 'exact_match')})",
                     {"model": s.refs.get("model", self.name), "dataset": dataset.section},
                     [*made, f"-- [{s.section}] line {s.line}", *self.setup("single"), _run(pairs)])

    def deploy(self, s: Section, udf: str | None, num_workers: int | None = None,
               extra: dict[str, Any] | None = None) -> tuple[str, list[str], str]:
        src, word = self.model_of(s)
        name = udf or f"{self.name}_chat"
        model = self.ref(s, "model")
        family = model.model_type if isinstance(model, ModelLoaderSection) else self.family
        sql = list(self.setup("single"))
        if num_workers:
            sql.append(f'!byzerllm setup "num_workers={num_workers}";')
        sql.append(_run({"action": "infer", "pretrainedModelType": family, **src, "udfName": name, "replace": True,
                         **(extra or {})}))
        return name, sql, word

    def deploy_stage(self, s: DeploySection) -> Stage:
        self.warn_ignored(s)
        name, sql, word = self.deploy(s, s.udf_name, s.num_workers, dict(s.options))
        self.deployed[s.section] = name
        return Stage(s.section, s.kind, f"deploy {word} as {name}", {"model": s.refs.get("model", self.name)},
                     [f"-- [{s.section}] line {s.line}", *sql])

    def chat(self, c: ChatSection) -> tuple[Stage, dict[str, Any]]:
        self.warn_ignored(c)
        target = c.refs.get("model")
        sql = [f"-- [{c.section}] line {c.line}"]
        if target in self.deployed:
            name, word = self.deployed[target], f"{target} ({self.deployed[target]})"
        else:
            name, made, word = self.deploy(c, c.udf_name)
            sql += made
        gen = self.generate(self.ref(c, "generating_args") or self.ref(c, "generate_args"))
        request = {"temperature": 0.0, "max_new_tokens": 64, **{k: v for k, v in gen.items() if v is not None}}
        questions = self.questions(c)
        table = f"{_table(c.section)}_answers"
        info = {"udf_name": name, "request": request, "answers": None}
        does = f"deploy {word} as {name}"
        if questions is not None:
            sql += questions[1]
            params = ", ".join(f"'{k}', {_lit(v)}" for k, v in request.items())
            sql.append(f"select question, llm_result({name}(llm_param(map('instruction', question, {params})))) as answer "
                       f"from {_table(c.section)}_questions as {table};")
            info["answers"] = table
            does += f"; answers {questions[0]}"
        else:
            does += "; an interactive chat on a terminal (no questions=)"
        return Stage(c.section, c.kind, does, {"model": target or self.name}, sql), info

    def questions(self, c: ChatSection) -> tuple[str, list[str]] | None:
        q = c.questions
        table = f"{_table(c.section)}_questions"
        if q is None:
            return None
        if isinstance(q, str):
            text = q.strip()
            if text.startswith("["):
                try:
                    q = [str(x) for x in json.loads(text)]
                except json.JSONDecodeError as e:
                    self.problem(c, "questions", f"not a JSON list: {e.msg}")
                    return None
            elif "\n" in text:
                q = [line.strip() for line in text.splitlines() if line.strip()]
            elif text.lower().endswith((".txt", ".text")) or Path(_path(self.pf, text)).is_file():
                path = _path(self.pf, text)
                if not Path(path).is_file():
                    self.problem(c, "questions", f"no such file: {path}")
                    return None
                return (f"the questions of {text}",
                        [f"load text.`{path}` as {table}_raw;",
                         f"select trim(value) as question from {table}_raw where trim(value) <> '' as {table};"])
            else:
                q = [text]
        if not q:
            self.problem(c, "questions", "no questions")
            return None
        values = ", ".join("('" + str(x).replace("'", "''") + "')" for x in q)
        return (f"{len(q)} question{'s' if len(q) != 1 else ''}",
                [f"select * from (values {values}) as q(question) as {table};"])


def compile_file(pf: PipelineFile) -> Compiled:
    """A checked PipelineFile as one SQL script (see the module's docstring for what each stage becomes).
    Raises PipelineFileError for what only the stages together tell (a training key the task does not take,
    a bad value for it, an Export with no registered model before it); the script is parsed by the dialect's
    parser before it is returned (a SqlError there is a bug of this compiler)."""
    from ..sql import parse_script

    c = _Compiler(pf)
    stages: list[Stage] = []
    chat = None
    c.warn_ignored(pf.project)
    for s in pf.stages():
        if isinstance(s, TrainerSection):
            stages.append(c.trainer(s))
        elif isinstance(s, ExportSection):
            stages.append(c.export(s))
        elif isinstance(s, EvalSection):
            stages.append(c.evaluate(s))
        elif isinstance(s, DeploySection):
            stages.append(c.deploy_stage(s))
        elif isinstance(s, ChatSection):
            stage, chat = c.chat(s)
            stages.append(stage)
    for s in pf.sections.values():  # sections no stage reads still have their keys said
        c.warn_ignored(s)
        if s.kind in ("TokenizerLoader",):
            if s.pretrained_model_name_or_path:
                c.warnings.append((Problem(pf.path, s.line_of("pretrained_model_name_or_path"), s.section,
                                              "pretrained_model_name_or_path",
                                              "no meaning here: the tokenizer is the model directory's own")))
    if c.problems:
        raise PipelineFileError(c.problems)
    head = [f"-- compiled from {pf.path} (an llm-module pipeline file) by `byzer-like pipeline run --dry-run`",
            f"-- project {pf.project.name}: {' -> '.join(pf.project.pipeline)}"]
    lines = head + [line for st in stages for line in st.sql]
    script = "\n".join(lines) + "\n"
    parse_script(script, {})
    warnings = [str(w) for w in sorted(dict.fromkeys(c.warnings), key=lambda w: w.line)]
    return Compiled(pf, script, stages, warnings, pf.project.name, chat)


def compile_path(path: str | Path) -> Compiled:
    """Read, check and compile a pipeline file. Raises ConfigError / PipelineFileError before anything runs."""
    return compile_file(load(path))


def explain(compiled: Compiled) -> str:
    """The stage graph as text: each stage in order, what it does and the sections it uses."""
    pf = compiled.file
    out = [f"pipeline {pf.path}: project {pf.project.name}"]
    for i, st in enumerate(compiled.stages, 1):
        out.append(f"{i}. [{st.section}] {st.kind}: {st.does}")
        for key, target in st.uses.items():
            out.append(f"     {key:<14} <- [{target}]")
    if compiled.warnings:
        out.append(f"warnings ({len(compiled.warnings)}):")
        out += [f"  {w}" for w in compiled.warnings]
    return "\n".join(out)


# -- running ---------------------------------------------------------------------------------------------------


@dataclass
class PipelineRun:
    """What a run made: `compiled`, `results` (the session's Results, one per statement), `answers` (the Chat's
    (question, answer) pairs; empty without questions), `chat_model` (the Chat's deployed name, or None)."""

    compiled: Compiled
    results: list[Any]
    answers: list[tuple[str, str]]
    chat_model: str | None


def run(compiled: Compiled, session: Any, *, on_result: Callable[[int, Any], Any] | None = None) -> PipelineRun:
    """Run a compiled pipeline in `session` (a `byzer_like.session.Session`): the script is checked whole by the
    session before its first statement runs. Raises what the session raises (ByzerError subclasses)."""
    results = session.sql(compiled.sql, on_result=on_result)
    answers: list[tuple[str, str]] = []
    chat = compiled.chat
    if chat and chat.get("answers"):
        rows = session.table(chat["answers"]).to_pylist()
        answers = [(r["question"], r["answer"]) for r in rows]
    return PipelineRun(compiled, results, answers, chat["udf_name"] if chat else None)


__all__ = ["Compiled", "PipelineFile", "PipelineFileError", "PipelineRun", "Problem", "build", "compile_file",
           "compile_path", "explain", "kind_of", "load", "read", "read_ini", "read_yaml", "run", "valid_keys"]
