"""Option sets, one pydantic model each: setup (sys_conf), deploy (infer params), chat requests.

SQL `where` keys, `!byzerllm setup` keys and Python keyword arguments all go through these models,
so an unknown key or a value of the wrong type is one clear error that lists the valid options.
SQL spells keys in camelCase (`pretrainedModelType`), Python in snake_case (`pretrained_model_type`):
both are accepted. This module imports neither ray nor torch.
"""
from __future__ import annotations

import json
import math
import re
from typing import Any, ClassVar, Literal, Mapping

from pydantic import (
    AliasChoices, BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, ValidationError, field_validator,
    model_serializer, model_validator,
)
from pydantic.alias_generators import to_camel

from . import structured
from .errors import ConfigError, UnknownOptionError, closest, own_keys, unknown_key
from .tasks import SETUP_MODES

TYPE_TAGS = ("int", "float", "bool", "str", "list", "dict")


def parse_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    s = str(value).strip().lower()
    if s in ("true", "1", "yes", "on"):
        return True
    if s in ("false", "0", "no", "off", ""):
        return False
    raise ConfigError(f"{value!r} is not a boolean; use true or false")


def split_typed_key(key: str) -> tuple[str, str | None]:
    """`sft.int.max_seq_length` -> (`sft.max_seq_length`, `int`); `temperature` -> (`temperature`, None)."""
    parts = key.split(".")
    if len(parts) >= 3 and parts[1] in TYPE_TAGS:
        return ".".join([parts[0], *parts[2:]]), parts[1]
    return key, None


def typed_value(key: str, value: Any) -> Any:
    """Convert the string value of a typed key (`sft.int.max_seq_length`="512") to its type."""
    _, tag = split_typed_key(key)
    if tag is None or not isinstance(value, str):
        return value
    try:
        if tag == "int":
            return int(value)
        if tag == "float":
            return float(value)
        if tag == "bool":
            return parse_bool(value)
        if tag == "str":
            return value
        parsed = json.loads(value)
        want = list if tag == "list" else dict
        if not isinstance(parsed, want):
            raise ValueError(f"not a JSON {tag}")
        return parsed
    except (ValueError, ConfigError) as e:
        raise ConfigError(f"option {key!r}: {value!r} is not a valid {tag} ({e})") from None


class _Options(BaseModel):
    """Base: unknown keys are refused; camelCase and snake_case names both accepted."""

    # allow_inf_nan=False: "inf" CPUs, a NaN learning rate or an infinite timeout are never meant
    model_config = ConfigDict(extra="forbid", populate_by_name=True, alias_generator=to_camel, frozen=True,
                              allow_inf_nan=False)
    # how valid options are listed in errors: SQL `where` keys are camelCase, setup keys snake_case
    spelling: ClassVar[str] = "camel"
    # fields whose SQL key is Byzer's own word rather than the field's name in camelCase
    SQL_KEYS: ClassVar[dict[str, str]] = {"model_dir": "localModelDir"}
    # fields that are no user's key (set by the code, not listed in errors or the key table)
    HIDDEN: ClassVar[frozenset[str]] = frozenset()

    @classmethod
    def sql_key(cls, name: str) -> str:
        """How SQL (and error messages) spell field `name`: Byzer's key (`localModelDir` for `model_dir`), else
        the name in camelCase."""
        return cls.SQL_KEYS.get(name, to_camel(name))

    @classmethod
    def option_names(cls) -> set[str]:
        """Every key the model accepts: each field's spellings (HIDDEN fields are no key)."""
        return set().union(*(cls.spellings(name) for name in cls.model_fields if name not in cls.HIDDEN))

    @classmethod
    def spellings(cls, name: str) -> set[str]:
        """Every key that sets field `name`: snake_case, camelCase and its aliases."""
        f = cls.model_fields[name]
        names = {name, to_camel(name), cls.sql_key(name)}
        if isinstance(f.validation_alias, AliasChoices):
            names.update(c for c in f.validation_alias.choices if isinstance(c, str))
        return names

    @classmethod
    def given(cls, values: Mapping[str, Any], name: str) -> Any:
        """The value of field `name` in user-given `values`, under any of its spellings (None if absent)."""
        for key in cls.spellings(name):
            if key in values:
                return values[key]
        return None

    @classmethod
    def listed(cls) -> dict[str, str]:
        """How the list of valid options shows each field: its key (SQL's camelCase, or snake_case for
        snake-spelled sets) and, in brackets, its aliases that are other words than the key
        (`numTrainEpochs (or epochs)`; `modelDir` is the same word as `localModelDir`'s field and not shown)."""
        out = {}
        for name in cls.model_fields:
            if name in cls.HIDDEN:
                continue
            key = name if cls.spelling == "snake" else cls.sql_key(name)
            out[name] = key + (f" (or {', '.join(a)})" if (a := cls._other_words(name, key)) else "")
        return out

    @classmethod
    def _other_words(cls, name: str, key: str) -> list[str]:
        """Field `name`'s aliases that are other words than its name and its key, one spelling each (the set's)."""
        from .errors import _folded

        same = {_folded(name), _folded(key), _folded(cls.sql_key(name))}
        words: dict[str, str] = {}
        for alias in sorted(cls.spellings(name)):
            if _folded(alias) in same:
                continue
            snake = "_" in alias or alias == alias.lower()
            if _folded(alias) not in words or snake == (cls.spelling == "snake"):
                words[_folded(alias)] = alias
        return sorted(words.values())

    @classmethod
    def suggestions(cls) -> dict[str, str]:
        """Every accepted spelling -> the listed name it stands for (an alias shown in brackets stands for
        itself): what "did you mean" may name."""
        from .errors import _folded

        out = {}
        for name in cls.model_fields:
            if name in cls.HIDDEN:
                continue
            key = name if cls.spelling == "snake" else cls.sql_key(name)
            shown = {_folded(a): a for a in cls._other_words(name, key)}
            for spelling in cls.spellings(name) | {name}:
                out[spelling] = shown.get(_folded(spelling), key)
        return out

    @classmethod
    def parse(cls, values: Mapping[str, Any], *, where: str, also_valid: Mapping[str, str] | None = None,
              given: Mapping[str, str] | None = None, **extra: Any):
        """Validate user-given options; every problem of the options is said in one error: unknown keys
        (UnknownOptionError, `keys` all of them, a "did you mean" each that names a listed option in the
        user's spelling), then bad or missing values (ConfigError naming the key, what is wrong, the value).

        `also_valid`: further keys the caller takes itself (a plugin's infer params), listed too (key -> how
        the list shows it); `given`: how the user wrote a key that arrives renamed (normalised -> as written)."""
        data = dict(values)
        data.update(extra)
        given = dict(given or {})
        valid = cls.option_names()
        listed = {**cls.listed(), **(also_valid or {})}
        candidates = {**cls.suggestions(), **{k: k for k in (also_valid or {})}}
        unknown = [key for key in data if key not in valid]
        meant = set()  # the fields the unknown keys were most likely meant for: their "missing" is not said again
        for key in unknown:
            found = closest(key.rpartition(".")[2], candidates)
            meant.update(n for n in cls.model_fields if found in cls.spellings(n))
        problems = []
        try:
            cls.model_validate({k: v for k, v in data.items() if k not in unknown})
        except ValidationError as e:
            problems = [_explain_one(err, where, cls) for err in e.errors()
                        if not (err["type"] == "missing" and _field_of(cls, err) in meant)]
        if unknown:
            shown = [given.get(k, k) for k in unknown]
            raise UnknownOptionError(where, shown[0], listed.values(), candidates=candidates, keys=shown,
                                     also=[unknown_key(k, candidates) for k in shown[1:]] + problems)
        if problems:
            raise ConfigError("; ".join(problems))
        return cls.model_validate(data)


def _field_of(model: type[BaseModel], err: Any) -> str | None:
    """The field a pydantic error is about (its first location, in any spelling)."""
    loc = str(err["loc"][0]) if err["loc"] else ""
    return next((n for n in model.model_fields if loc in model.spellings(n)), None) \
        if issubclass(model, _Options) else loc


def _explain(e: ValidationError, where: str, model: type[BaseModel] | None = None) -> str:
    """One line for each problem, `; `-separated: the option (both spellings), what is wrong, the value given."""
    return "; ".join(_explain_one(err, where, model) for err in e.errors())


def _explain_one(err: Any, where: str, model: type[BaseModel] | None = None) -> str:
    """One pydantic error as a line: the option (both spellings), what is wrong, the value given."""
    loc = ".".join(str(x) for x in err["loc"]) or "?"
    if model is not None and issubclass(model, _Options):
        for name in model.model_fields:
            if loc in model.spellings(name) and name != model.sql_key(name):
                loc = f"{model.sql_key(name)} / {name}"
    if err["type"] == "missing":
        return f"{where} option {loc!r} is required"
    msg = err["msg"].removeprefix("Value error, ")
    return f"{where} option {loc!r}: {msg} (got {_shown(err.get('input'))})"


def _shown(value: Any, limit: int = 200) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# `!byzerllm setup "infer_backend=..."`: the serving engines byzer-like has, and Byzer's others (not yet here);
# Byzer-LLM's client spells vLLM `ray/vllm` (InferBackend.VLLM)
INFER_BACKENDS = ("transformers", "vllm")
BACKEND_ALIASES = {"ray/vllm": "vllm"}
LATER_BACKENDS = ("llama_cpp", "deepspeed", "ray/deepspeed")


class _ActionOptions(_Options):
    """Base of the options of `run command as LLM.`` where action="..."`: Byzer's `localPathPrefix`, which its
    statements take on every action, is accepted on each (a path inside the workspace's allowed roots)."""

    local_path_prefix: str | None = Field(
        None, description="Byzer: the worker's scratch folder for the model's files (accepted, checked to be inside "
        "the workspace; no effect: models are read in place from localModelDir or the registry)")


class SetupConfig(_Options):
    """What `!byzerllm setup` / `ByzerLLM.setup(...)` set: resources and serving limits (sys_conf)."""

    spelling: ClassVar[str] = "snake"

    mode: str = Field("single", description="what the next `run ... as LLM` does: single (deploy) or a training "
                      "task of byzer_like.tasks (sft, sfft)")
    num_workers: int = Field(
        1, ge=1, le=1024, validation_alias=AliasChoices("num_workers", "numWorkers", "maxConcurrency", "max_concurrency"),
        description="replicas of a deployment / training workers (Byzer's maxConcurrency)")
    cpus_per_worker: float = Field(
        1.0, ge=0, validation_alias=AliasChoices("cpus_per_worker", "cpusPerWorker", "num_cpus", "numCpus"),
        description="CPUs reserved by each worker (Ray resources)",
    )
    gpus_per_worker: float = Field(
        0.0, ge=0, validation_alias=AliasChoices("gpus_per_worker", "gpusPerWorker"),
        description="GPUs reserved by each worker (set by num_gpus unless given itself)",
    )
    num_gpus: float | None = Field(
        None, ge=0, validation_alias=AliasChoices("num_gpus", "numGpus"),
        description="Byzer's num_gpus: GPUs per worker for a deployment and for sft (it sets gpus_per_worker); for "
                    "sfft the total number of cards, workers = num_gpus / gpus_per_worker (1 card each by default)")
    max_ongoing_requests: int = Field(
        8, ge=1, validation_alias=AliasChoices("max_ongoing_requests", "maxOngoingRequests", "workerMaxConcurrency",
                                               "worker_max_concurrency"),
        description="requests a replica works on at once (Byzer's workerMaxConcurrency)")
    max_queued_requests: int = Field(256, ge=-1, description="requests waiting per caller before back-pressure (-1: no limit)")
    max_batch_size: int = Field(32, ge=1, le=4096, description="rows a replica generates in one batch")
    max_adapters_per_replica: int = Field(
        8, ge=1, le=1024, description="LoRA adapters a replica keeps loaded over its base model (least recently "
        "used ones are unloaded; a request for another one loads it)")
    request_timeout_s: float = Field(600.0, gt=0, description="a model call that takes longer fails with a timeout")
    health_check_period_s: float = Field(10.0, gt=0, description="seconds between Ray Serve's health checks of "
                                         "each replica")
    health_check_timeout_s: float = Field(30.0, gt=0, description="a replica whose health check takes longer is "
                                          "restarted by Ray Serve")
    infer_backend: str = Field("transformers", validation_alias=AliasChoices("infer_backend", "inferBackend"),
                               description="the serving engine of the next deploy: transformers (the built-in Hugging "
                               "Face engine) or vllm (vLLM's async engine in the replicas: pretrainedModelType x deploys as "
                               "vllm/x)")
    # Byzer-LLM's client sets these by default; they are accepted so its scripts run, and have no effect here
    master_max_concurrency: int | None = Field(
        None, ge=1, validation_alias=AliasChoices("master_max_concurrency", "masterMaxConcurrency"),
        description="Byzer: requests its master actor takes at once (no effect: Ray Serve routes; the queue limit "
                    "is max_queued_requests)")
    python_mode: str | None = Field(None, validation_alias=AliasChoices("python_mode", "pythonMode"),
                                    description="Byzer: how its Python workers start (no effect: always Ray here)")
    standalone: bool | None = Field(None, description="Byzer: one-node training without Ray (no effect: training "
                                    "always runs as a Ray job here)")

    custom: dict[str, str] = Field(default_factory=dict, description="keys no setting names (Byzer's OWNER, a "
                                   "plugin's own): passed to plugins in sys_conf as given, as Byzer does")
    HIDDEN: ClassVar[frozenset[str]] = frozenset({"custom"})  # filled from the keys no setting names

    # setup fields that are accepted for Byzer scripts and change nothing: what the statement's message says
    NO_EFFECT: ClassVar[dict[str, str]] = {
        "master_max_concurrency": "Ray Serve routes requests here; the per-caller queue limit is max_queued_requests",
        "python_mode": "workers are always Ray actors here",
        "standalone": "training always runs as a Ray job here (num_workers=1 is one worker)",
    }

    # Byzer-LLM's names of setup fields that mean the same here (said in the statement's message)
    BYZER_NAMES: ClassVar[dict[str, str]] = {"maxConcurrency": "num_workers", "max_concurrency": "num_workers",
                                             "workerMaxConcurrency": "max_ongoing_requests",
                                             "worker_max_concurrency": "max_ongoing_requests"}

    @model_validator(mode="after")
    def _num_gpus_per_worker(self):
        # Byzer's num_gpus is the GPUs of one worker unless gpus_per_worker is given (`for_task` reads it as the
        # total for sfft); set without marking gpus_per_worker as given
        if self.num_gpus is not None and "gpus_per_worker" not in self.model_fields_set:
            object.__setattr__(self, "gpus_per_worker", self.num_gpus)
        return self

    def for_task(self, task: Any) -> "SetupConfig":
        """The setup a training job of `task` (a `tasks.TrainingTask`) runs with. For a task whose
        `num_gpus_is_total` (sfft, as Byzer's sfft reads it), `num_gpus` is the total number of cards: the job
        gets num_gpus / gpus_per_worker workers (gpus_per_worker: 1 unless given) and num_gpus is consumed;
        otherwise (sft, deployments) the setup as it is. num_gpus decides the workers over a num_workers given
        before (a deployment's maxConcurrency). ConfigError when the cards do not split into whole workers."""
        if not getattr(task, "num_gpus_is_total", False) or not self.num_gpus:
            return self
        total = self.num_gpus
        per = self.gpus_per_worker if "gpus_per_worker" in self.model_fields_set else 1.0
        name = getattr(task, "name", "training")
        if per <= 0:
            raise ConfigError(f"num_gpus={total:g} is the total number of cards for {name}, but gpus_per_worker is "
                              f"{per:g}; give gpus_per_worker >= 1 (cards per worker) or leave it out (1 card each)")
        workers = total / per
        if abs(workers - round(workers)) > 1e-9 or round(workers) < 1:
            raise ConfigError(f"num_gpus={total:g} is the total number of cards for {name}: with gpus_per_worker="
                              f"{per:g} that is {workers:g} workers; make num_gpus a multiple of gpus_per_worker")
        workers = int(round(workers))
        # num_gpus decides: a num_workers (Byzer's maxConcurrency) set for an earlier deploy of the same session
        # must not turn Byzer's `!byzerllm setup "num_gpus=12"` into another number of workers or an error
        values = self.model_dump(include=self.model_fields_set - {"num_gpus"})
        values.update(num_workers=workers, gpus_per_worker=per)
        return type(self).model_validate(values)

    @field_validator("infer_backend")
    @classmethod
    def _known_backend(cls, value: str) -> str:
        name = str(value).strip().lower()
        name = BACKEND_ALIASES.get(name, name)
        if name in INFER_BACKENDS:
            return name
        if name in LATER_BACKENDS:
            raise ValueError(f"infer_backend {name!r} is not available yet in byzer-like; valid backends: "
                             f"{', '.join(INFER_BACKENDS)} (Byzer's {', '.join(LATER_BACKENDS)} are not served here)")
        raise ValueError(f"unknown infer_backend {value!r}; valid backends: {', '.join(INFER_BACKENDS)}")

    @classmethod
    def field_of(cls, key: str) -> str | None:
        """The field a setup key sets (any spelling), or None."""
        return next((name for name in cls.model_fields if key in cls.spellings(name)), None)

    @field_validator("mode")
    @classmethod
    def _known_mode(cls, value: str) -> str:
        if value not in SETUP_MODES:
            raise ValueError(f"mode must be one of {', '.join(SETUP_MODES)}")
        return value

    def with_values(self, values: Mapping[str, Any]) -> "SetupConfig":
        """This setup with `values` set. A key no setting names goes to `custom` (and so to every plugin's
        sys_conf), unless it is one edit away from a setting's spelling: then UnknownOptionError with the
        did-you-mean and the valid keys. ConfigError for a bad value."""
        known = type(self).option_names()
        custom = {k: str(values[k]) for k in own_keys(values, known)}
        merged = self.model_dump(exclude_unset=True)  # what was set stays told apart from defaults
        given = {k: v for k, v in values.items() if k not in custom}
        new = dict(type(self).parse(given, where="setup").model_dump(exclude_unset=True))
        if "num_gpus" in new and "gpus_per_worker" not in new:
            merged.pop("gpus_per_worker", None)  # a later num_gpus sets the GPUs per worker again
        merged.update(new)
        merged["custom"] = {**self.custom, **custom}
        return type(self).model_validate(merged)

    def sys_conf(self) -> dict[str, str]:
        """The plugin contract's `sys_conf`: every setting as a string, Byzer style (`num_gpus` too, Byzer's
        name of `gpus_per_worker`)."""
        d = {k: str(v) for k, v in self.model_dump(exclude={"custom", "num_gpus"}).items() if v is not None}  # unset: absent
        d["num_gpus"] = d["gpus_per_worker"]
        return {**self.custom, **d}

    @classmethod
    def from_sys_conf(cls, sys_conf: Mapping[str, Any]) -> "SetupConfig":
        """The setup a `sys_conf` dict says (the plugin contract's form: `sys_conf()`, every value a string),
        read once where the contract hands it over. Keys that are no setting (a plugin's own) are left out;
        a setting it lacks keeps its default, and `was_set(name)` tells which it had. ConfigError for a value
        that is not valid."""
        # sys_conf's num_gpus mirrors gpus_per_worker (the contract's form), so it is read as that
        known = {k: v for k, v in sys_conf.items() if k in cls.model_fields and k not in cls.HIDDEN and k != "num_gpus"}
        if "gpus_per_worker" not in known and "num_gpus" in sys_conf:
            known["gpus_per_worker"] = sys_conf["num_gpus"]
        try:
            return cls.model_validate(known)
        except ValidationError as e:
            raise ConfigError(_explain(e, "sys_conf", cls)) from None

    def was_set(self, name: str) -> bool:
        """Whether setting `name` was set (by the user, or in the sys_conf it was read from)."""
        return name in self.model_fields_set


class DeployOptions(_ActionOptions):
    """The `where` keys of `run command as LLM ... action="infer"` and `ByzerLLM.deploy(...)` keywords
    that byzer-like itself reads. Whatever the user gave is also passed to the plugin's
    `init_model` as `infer_params` (strings, Byzer style)."""

    action: Literal["infer"] = "infer"
    pretrained_model_type: str = Field(description="model plugin: llama, qwen2, gpt2, auto, or a registered name")
    model_dir: str | None = Field(
        None, validation_alias=AliasChoices("model_dir", "modelDir", "local_model_dir", "localModelDir", "model_path",
                                            "modelPath"),
        description="the Hugging Face-format model directory (Byzer's localModelDir; the client's model_path)",
    )
    udf_name: str = Field(description="the model's name in SQL and the API")
    reconnect: bool = Field(False, description="use a running deployment of that name, if it serves the model asked for")
    replace: bool = Field(False, description="undeploy a running deployment of that name first, then deploy")
    model_table: str | None = Field(None, description="'command' (Byzer: use localModelDir) or a registered model (name, name@v2)")
    adapter_dir: str | None = Field(None, description="a LoRA adapter merged into the model when it loads")
    max_adapters_per_replica: int | None = Field(
        None, ge=1, le=1024, description="LoRA adapters each replica keeps loaded (default: the setup's)")
    # init_model options understood by the built-in Hugging Face plugins
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        "auto", description="the weights' dtype when loaded (auto: float32 on CPU, the checkpoint's on a GPU)")
    load_in_4bit: bool = Field(False, description="load the weights 4-bit quantized (bitsandbytes nf4)")
    load_in_8bit: bool = Field(False, description="load the weights 8-bit quantized (bitsandbytes)")
    trust_remote_code: bool = Field(False, description="run the Python code the model directory ships (only for "
                                    "a source you trust)")
    allow_pickle_weights: bool = Field(False, description="also load weights stored as Python pickles (.bin, .pt; "
                                       "unpickling can run code), not only safetensors")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="where a replica runs the model (auto: a "
                                                   "GPU when the worker reserves one)")

    @field_validator("udf_name")
    @classmethod
    def _check_udf_name(cls, value: str) -> str:
        return check_udf_name(value)


class MergeOptions(_ActionOptions):
    """The `where` keys of `run command as LLM.`` where action="merge"` (`ByzerLLM.merge`)."""

    action: Literal["merge"] = "merge"
    model_table: str = Field(description="the registered LoRA adapter to merge (name or name@v2)")
    output_table: str = Field(description="the name the merged model is registered under")
    overwrite: bool = Field(False, description="register a new version when outputTable already exists")


# `run command as LLM.`` where action="convert"`: the source formats, and the pretrainedModelType values
# that name one (Byzer-LLM writes pretrainedModelType="deepspeed" for a ZeRO checkpoint)
SOURCE_FORMATS = ("gguf", "deepspeed")


class ConvertOptions(_ActionOptions):
    """The `where` keys of `run command as LLM.`` where action="convert"` (`ByzerLLM.convert`, `byzer-like
    models import|convert`): a GGUF file or a DeepSpeed ZeRO checkpoint made into a Hugging Face model
    directory, registered as `outputTable` and/or written to `savePath`.

    Byzer-LLM's spelling works as it is: `pretrainedModelType="deepspeed"`, `modelNameOrPath` (the model
    the run started from: its config and tokenizer), `checkpointDir`, `tag`, `savePath`."""

    action: Literal["convert"] = "convert"
    source_format: Literal["gguf", "deepspeed"] | None = Field(
        None, description="gguf or deepspeed (default: from pretrainedModelType, checkpointDir or the file)")
    pretrained_model_type: str | None = Field(
        None, description="deepspeed / gguf (Byzer: the source), or the model family recorded in the registry")
    source_path: str | None = Field(
        None, validation_alias=AliasChoices("source_path", "sourcePath", "gguf_file", "ggufFile", "file"),
        description="the GGUF file, a folder holding one, or a short name of an installed model package (smollm2)")
    model_name_or_path: str | None = Field(
        None, validation_alias=AliasChoices("model_name_or_path", "modelNameOrPath", "model_dir", "modelDir",
                                            "local_model_dir", "localModelDir", "model_path", "modelPath"),
        description="deepspeed: the model directory the run started from (config, tokenizer); gguf: the GGUF file")
    model_table: str | None = Field(None, description="deepspeed: the registered model the run started from, "
                                    "instead of modelNameOrPath")
    checkpoint_dir: str | None = Field(None, description="the DeepSpeed checkpoint folder (or an sfft run's folder "
                                       "of checkpoint_step_<n>/ folders: the newest is used)")
    tag: str | None = Field(None, description="the checkpoint's tag (default: the one its `latest` file names)")
    save_path: str | None = Field(None, description="write the model directory here (default: under the workspace's models/)")
    output_table: str | None = Field(None, description="register the model under this name (name@v1, v2, ...)")
    overwrite: bool = Field(False, description="register a new version when outputTable already exists")

    def source(self) -> str:
        """The source format, from sourceFormat, a pretrainedModelType naming one, a checkpointDir, or a
        `.gguf` path; ConfigError saying how to name it otherwise."""
        if self.source_format:
            return self.source_format
        if (self.pretrained_model_type or "").lower() in SOURCE_FORMATS:
            return self.pretrained_model_type.lower()
        if self.checkpoint_dir:
            return "deepspeed"
        if self.source_path or str(self.model_name_or_path or "").endswith(".gguf"):
            return "gguf"
        raise ConfigError('action="convert" needs its source: sourceFormat="gguf" with sourcePath="<file.gguf>", or '
                          'pretrainedModelType="deepspeed" with checkpointDir, modelNameOrPath (and tag)')


class QuantizeOptions(_ActionOptions):
    """The `where` keys of `run command as LLM.`` where action="quantize"` (`ByzerLLM.quantize`,
    `byzer-like models quantize`): a registered whole model written weight-quantized and registered."""

    action: Literal["quantize"] = "quantize"
    model_table: str = Field(description="the registered model to quantize (name or name@v2), or a `load model.` table")
    method: str = Field(description="bnb-int8, bnb-nf4, bnb-fp4, torchao-int8, gptq-int4, gptq-int8 (aliases: int8, "
                        "nf4, fp4, 4bit, 8bit, gptq)")
    output_table: str = Field(description="the name the quantized model is registered under")
    calibration_table: str | None = Field(None, description="GPTQ: a table of the session whose text calibrates it")
    calibration_column: str | None = Field(None, description="the calibration table's text column (default: text, "
                                           "or its only string column)")
    calibration_rows: int = Field(128, ge=1, le=100_000, description="GPTQ: at most this many calibration rows")
    group_size: int | None = Field(None, ge=-1, description="GPTQ: weights per scale (default: 128, or the largest of "
                                     "64, 32, 16 dividing the model's layer widths; -1: one per row)")
    overwrite: bool = Field(False, description="register a new version when outputTable already exists")


class EvalOptions(_ActionOptions):
    """The `where` keys of `run command as LLM.`` where action="eval"` (`ByzerLLM.evaluate`, `byzer-like eval
    run`): a model answers an eval set through the batched path and is measured (see `byzer_like.eval`)."""

    action: Literal["eval"] = "eval"
    model_table: str | None = Field(None, description="the registry version to evaluate (name, name@v2, name@production); "
                                    "deployed for the evaluation and removed after it")
    udf_name: str | None = Field(None, description="a deployed model to evaluate, instead of modelTable")
    input_table: str | None = Field(None, validation_alias=AliasChoices("input_table", "inputTable", "eval_table",
                                                                       "evalTable", "evalset", "evalSet"),
                                    description="the eval set: a table of this session")
    metrics: str = Field("exact_match", description="comma-separated metrics: exact_match, exact_match_strict, token_f1, "
                         "accuracy, macro_f1, rouge_l, bleu, chrf, perplexity, judge, reward")
    judge: str | None = Field(None, description="the deployed model that grades answers (metric judge)")
    reward_model: str | None = Field(None, description="the deployed reward model (trained with rm/<family>) whose mean "
                                     "score of the answers is metric reward")
    judge_mode: Literal["score", "pairwise"] = Field("score", description="score (1-10 per answer) or pairwise "
                                                     "(the answer against the reference: win rate)")
    judge_prompt: str | None = Field(None, description="replaces the judge prompt; placeholders {question}, "
                                     "{prediction}, {reference}")
    choices: str | None = Field(None, description="comma-separated labels for accuracy / macro_f1")
    reference_column: str | None = Field(None, description="the reference column (default: output, reference, answer, "
                                         "label, target)")
    prompt_column: str | None = Field(None, description="the prompt column (default: instruction, messages, prompt, question)")
    output_table: str | None = Field(None, description="the per-row table's name in the session (default: eval_rows)")
    max_new_tokens: int = Field(64, ge=1, le=32768, validation_alias=AliasChoices("max_new_tokens", "maxNewTokens",
                                                                                 "max_tokens", "maxTokens"),
                                description="answer tokens per row")
    temperature: float = Field(0.0, ge=0, le=2, description="0: greedy answers (reproducible)")
    cache: bool = Field(True, description="answers from and into the result cache (a rerun asks only for new rows)")
    report: bool = Field(True, description="write a Markdown and a PNG report under the workspace's evals/")
    keep_deployed: bool = Field(False, description="leave a modelTable's deployment running after the evaluation")


class RepartitionOptions(_Options):
    """The `where` keys of Byzer's ET `run <t> as TableRepartition.`` where partitionNum="4" as <t2>`."""

    partition_num: int = Field(description="how many partitions the table is split into", ge=1, le=100_000)
    partition_cols: str | None = Field(None, description="comma-separated columns: rows with equal values share a "
                                       "partition (hash); without them rows are dealt round-robin")
    partition_type: Literal["hash", "range"] = Field("hash", description="hash (Byzer's default) or range: "
                                                     "partitionCols sorted, then cut into equal runs")
    shuffle: bool = Field(True, description="Byzer's flag (accepted; rows are always regrouped here)")

    def columns(self) -> list[str]:
        """The partition columns, in order (empty: round-robin)."""
        return [c.strip() for c in (self.partition_cols or "").split(",") if c.strip()]


UDF_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
# SQL functions of the dialect itself: a model of one of these names could never be called
RESERVED_UDF_NAMES = frozenset({"llm_param", "llm_result", "llm_response_predict", "llm_prompt", "llm_stack", "llm_eval",
                                "llm_with_adapter", "map", "array"})


def check_udf_name(value: str) -> str:
    """A model's name is a SQL function name and a Ray Serve application name: plain ASCII words only."""
    if not isinstance(value, str) or not UDF_NAME.fullmatch(value):
        raise ValueError("a model name (udfName) is used as a SQL function name and a Ray Serve application "
                         "name: use 1 to 64 ASCII letters, digits or '_', starting with a letter or '_' "
                         "(e.g. tiny_chat)")
    if value.lower() in RESERVED_UDF_NAMES:
        raise ValueError(f"{value!r} is one of the dialect's own SQL functions ({', '.join(sorted(RESERVED_UDF_NAMES))}); "
                         "choose another model name (e.g. tiny_chat)")
    return value


# Keys of a chat request (`llm_config` in Python, `llm_param(map(...))` in SQL) besides `generation.*`.
REQUEST_KEYS = {
    "instruction", "system_msg", "user_role", "assistant_role", "history", "temperature", "top_p",
    "max_length", "max_new_tokens", "max_tokens", "stop", "seed", "top_k", "repetition_penalty",
    "embedding", "embedding_query", "response_format", "adapter",
    "response",  # a reward model's call: the answer it scores after the instruction
}
_KWARG_KEYS = {"system_msg", "user_role", "assistant_role", "stop", "seed", "top_k", "repetition_penalty"}


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: str
    content: str


class ChatRequest(BaseModel):
    """One model call as it travels to a replica: the plugin contract's stream_chat arguments."""

    model_config = ConfigDict(extra="forbid")
    ins: str
    his: list[Message] = Field(default_factory=list)
    max_length: int | None = Field(None, ge=1, description="prompt + answer tokens (Byzer semantics)")
    max_new_tokens: int | None = Field(None, ge=1, description="answer tokens (OpenAI max_tokens)")
    top_p: float = Field(0.95, gt=0, le=1, description="nucleus sampling: draw from the likeliest tokens that "
                         "make up this much probability")
    temperature: float = Field(0.1, ge=0, le=2, description="sampling temperature (0: greedy)")
    kwargs: dict[str, Any] = Field(default_factory=dict)
    # a registered LoRA adapter over the deployment's base: its reference as asked (`qa_model`, `qa_model@v2`),
    # which the runtime resolves to the registry's `{"ref", "name", "version", "path", "base_model"}` before
    # the request leaves the driver (runtime.adapters); absent from the dumped dict when not asked for
    adapter: str | dict[str, Any] | None = None

    @model_serializer(mode="wrap")
    def _without_base_adapter(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        out = handler(self)
        if out.get("adapter") is None:
            out.pop("adapter", None)
        return out


def chat_request(conversations: list[Mapping[str, Any]] | str, llm_config: Mapping[str, Any] | None = None) -> ChatRequest:
    """Build a request from OpenAI-style messages plus options.

    The last message is the instruction (`ins`); the ones before it are the history (`his`).
    `generation.x` / `gen.x` keys arrive in the plugin's kwargs as `x`. `response_format` (OpenAI's
    shape, or that as a JSON string) is checked and normalised (`structured.normalize`) into the kwargs.
    """
    cfg = dict(llm_config or {})
    if "embedding_query" in cfg:  # Byzer's embedding call: the text to embed, in place of an instruction
        if "instruction" in cfg:
            raise ConfigError("a request gives both 'instruction' and 'embedding_query'; give one (embedding_query "
                              "is the text to embed)")
        cfg["instruction"] = cfg.pop("embedding_query")
    if isinstance(conversations, str):
        msgs = [{"role": "user", "content": conversations}]
    else:
        msgs = [dict(m) if isinstance(m, Mapping) else m for m in conversations]
    if "instruction" in cfg:
        instruction = cfg.pop("instruction")
        if instruction is None:  # never the text "None": SQL answers a NULL instruction with NULL before this
            raise ConfigError("request option 'instruction' is null; give the text to answer")
        msgs.append({"role": "user", "content": as_text(instruction)})
    if "history" in cfg:
        msgs = _history(cfg.pop("history")) + msgs
    if not msgs:
        raise ConfigError("a chat request needs at least one message (or an 'instruction')")
    for m in msgs:
        if not isinstance(m, Mapping) or "role" not in m or "content" not in m:
            raise ConfigError(f"each message needs 'role' and 'content'; got {_shown(m)}")
    last = msgs[-1]
    if last["content"] is None:
        raise ConfigError("the last message's content is null; give the text to answer")
    req: dict[str, Any] = {"ins": as_text(last["content"]), "his": msgs[:-1], "kwargs": {}}
    for key, value in cfg.items():
        if value is not None:  # a NULL option (SQL map value) is an option not given
            _put_option(req, key, value)
    try:
        return ChatRequest.model_validate(req)
    except ValidationError as e:
        raise ConfigError(_explain(e, "request")) from None


def _put_option(req: dict[str, Any], key: str, value: Any) -> None:
    """One option of a request (`llm_config` / `llm_param` key) into the request dict being built: typed keys
    converted, `generation.*` / `gen.*` and Byzer's prompt keys into `kwargs`, `response_format` checked.
    UnknownOptionError listing the request keys for any other key."""
    name, _tag = split_typed_key(key)
    value = typed_value(key, value)
    if name.startswith("generation.") or name.startswith("gen."):
        req["kwargs"][name.split(".", 1)[1]] = value
    elif name in ("temperature", "top_p"):
        req[name] = _number(key, value, float)
    elif name == "max_length":
        req["max_length"] = _number(key, value, int)
    elif name in ("max_new_tokens", "max_tokens"):
        req["max_new_tokens"] = _number(key, value, int)
    elif name in _KWARG_KEYS:
        req["kwargs"][name] = value
    elif name == "response_format":  # a dict, or a JSON string in SQL; decoding is constrained to it
        fmt = structured.normalize(value)
        if fmt is not None:
            req["kwargs"]["response_format"] = fmt
    elif name == "embedding":
        return  # routed by the caller
    elif name == "adapter":  # SQL's `m@qa_model(...)` and llm_param's "adapter"; the client's adapter=
        req["adapter"] = as_text(value).strip() or None
    else:
        check_request_key(key)


def check_request_key(key: str) -> None:
    """UnknownOptionError (listing the request keys, with a did-you-mean) unless `key` is a key of a chat request
    (`llm_param(map(...))` in SQL, `llm_config` in Python): REQUEST_KEYS, `generation.*` / `gen.*`, typed or not."""
    name, _tag = split_typed_key(key)
    if name not in REQUEST_KEYS and not name.startswith(("generation.", "gen.")):
        raise UnknownOptionError("request", key, REQUEST_KEYS | {"generation.*"})


def as_text(value: Any) -> str:
    """A value that goes to a model or into training text: strings as they are, objects and lists as JSON
    text (never Python's repr), other scalars by `str()`. Callers decide about None before this."""
    if isinstance(value, str):
        return value
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _history(value: Any) -> list[Any]:
    """`history`: a list of messages, or that list as a JSON string (an empty string: none)."""
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else []
        except ValueError as e:
            raise ConfigError(f"request option 'history' is not valid JSON ({e}); give a list of "
                              '{"role": ..., "content": ...} messages') from None
    if value is None:
        return []
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"request option 'history' must be a list of {{\"role\": ..., \"content\": ...}} messages; "
                          f"got {_shown(value)}")
    return [dict(m) if isinstance(m, Mapping) else m for m in value]


def _number(key: str, value: Any, kind: type) -> Any:
    """A request's numeric option as `kind` (int or float), or a ConfigError naming it."""
    what = "an integer" if kind is int else "a number"
    if isinstance(value, bool) or value is None:
        raise ConfigError(f"request option {key!r} must be {what}; got {_shown(value)}")
    try:
        number = float(value) if kind is float or isinstance(value, float) else value
        if isinstance(number, float) and not math.isfinite(number):
            raise ValueError("not finite")
        if kind is int:
            number = int(number) if isinstance(number, float) and number.is_integer() else int(str(number).strip())
        return number
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(f"request option {key!r} must be {what}; got {_shown(value)}") from None
