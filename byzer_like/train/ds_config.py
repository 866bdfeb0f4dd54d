"""The DeepSpeed config of a continued-pretraining run: defaults, the user's overrides, and checks.

`validate_deepspeed_config` runs on the driver before any worker starts, so it imports neither torch nor
deepspeed: the key lists below were read from DeepSpeed 0.19.8 (`deepspeed.runtime.config` and
`DeepSpeedZeroConfig`, whose pydantic model refuses unknown keys). A mistake a user can fix is a
`ConfigError` naming the key and what is expected.

Precedence: a concrete value in the user's config wins (its `zero_optimization.stage` over `zeroStage`,
its batch sizes over `perDeviceBatchSize` / `gradientAccumulationSteps`); `"auto"` or a missing key takes
the run's options. Without an `optimizer` section the workers hand DeepSpeed a torch AdamW (DeepSpeed's
own Adam is a C++ op that takes ~36 s to compile on first use); with one, DeepSpeed builds it.
"""
from __future__ import annotations

import copy
import difflib
import math
import os
import sys
from typing import Any, Iterable

from ..errors import ConfigError
from .options import SfftOptions
from .progress import TENSORBOARD_DIR

AUTO = "auto"

# Top-level keys DeepSpeed 0.19.8 reads (collected by tracing DeepSpeedConfig's reads of the dict, plus
# the sections parsed elsewhere: optimizer, scheduler, flops_profiler, activation_checkpointing, aio, ...).
TOP_LEVEL_KEYS = frozenset(
    """
    activation_checkpointing aio amp autotuning bf16 bfloat16 checkpoint comet comms_logger
    communication_data_type compile compression_training csv_monitor curriculum_learning data_efficiency
    data_types dataloader_drop_last datastates_ckpt disable_allgather disable_python_gc dump_state eigenvalue
    elasticity expert_parallel flops_profiler fp16 gradient_accumulation_steps gradient_allreduce_op
    gradient_clipping gradient_predivide_factor graph_harvesting hybrid_engine log_level
    managed_gradient_accumulation memory_breakdown nebula optimizer pipeline prescale_gradients
    progressive_layer_drop quantize_training scheduler seq_parallel_communication_data_type
    sequence_parallel_size sparse_attention sparse_gradients steps_per_print tensor_parallel tensorboard
    timers torch_autocast train_batch_size train_micro_batch_size_per_gpu use_data_before_expert_parallelism
    vocabulary_size wall_clock_breakdown wandb weight_quantization zero_allow_untested_optimizer
    zero_force_ds_cpu_optimizer zero_optimization
    """.split()
)

# DeepSpeedZeroConfig's fields and aliases (it forbids any other key).
ZERO_KEYS = frozenset(
    """
    allgather_bucket_size allgather_partitions allgather_sequential compute_grad_norm contiguous_gradients
    cpu_offload cpu_offload_param cpu_offload_use_pin_memory elastic_checkpoint enable_sanity_checks
    gather_16bit_weights_on_model_save ignore_unused_parameters leaf_module legacy_stage1
    load_from_fp32_weights log_trace_cache_warnings max_live_parameters max_reuse_distance
    memory_efficient_linear model_persistence_threshold module_granularity_threshold offload_optimizer
    offload_param overlap_comm override_module_apply param_persistence_threshold parameter_alignment
    pipeline_loading_checkpoint prefetch_bucket_size reduce_bucket_size reduce_scatter round_robin_gradients
    save_muon_momentum_buffer_in_memory stage stage3_allgather_sequential
    stage3_gather_16bit_weights_on_model_save stage3_gather_fp16_weights_on_model_save
    stage3_max_live_parameters stage3_max_reuse_distance stage3_model_persistence_threshold
    stage3_module_granularity_threshold stage3_param_persistence_threshold stage3_prefetch_bucket_size
    stage3_use_all_reduce_for_fetch_params sub_group_size use_all_reduce_for_fetch_params
    use_multi_rank_bucket_allreduce zenflow zero_hpz_partition_size zero_quantized_gradients
    zero_quantized_nontrainable_weights zero_quantized_weights
    """.split()
)
ZERO_BOOL_KEYS = frozenset(
    """
    allgather_partitions contiguous_gradients reduce_scatter overlap_comm round_robin_gradients
    elastic_checkpoint ignore_unused_parameters gather_16bit_weights_on_model_save
    stage3_gather_16bit_weights_on_model_save stage3_gather_fp16_weights_on_model_save
    """.split()
)
ZERO_INT_KEYS = frozenset(
    """
    reduce_bucket_size allgather_bucket_size sub_group_size prefetch_bucket_size stage3_prefetch_bucket_size
    param_persistence_threshold stage3_param_persistence_threshold max_live_parameters
    stage3_max_live_parameters max_reuse_distance stage3_max_reuse_distance model_persistence_threshold
    stage3_model_persistence_threshold
    """.split()
)
OFFLOAD_DEVICES = ("none", "cpu", "nvme")
# Optimizers DeepSpeed builds by name (deepspeed.runtime.config DEEPSPEED_OPTIMIZERS, lower-cased).
DS_OPTIMIZERS = ("adagrad", "adam", "adamw", "lamb", "onebitadam", "onebitlamb", "zerooneadam", "lion", "muon",
                 "muonclip")
DS_SCHEDULERS = ("LRRangeTest", "OneCycle", "WarmupLR", "WarmupDecayLR", "WarmupCosineLR")

# Defaults for a small run: no C++ ops, quiet logging, gradient clipping as Hugging Face does.
_BASE = {
    "gradient_clipping": 1.0,
    "steps_per_print": 10**9,  # progress goes through the Reporter, not DeepSpeed's log
    "wall_clock_breakdown": False,
}


def validate_deepspeed_config(user: dict | None, opts: SfftOptions, *, num_workers: int, on_gpu: bool) -> dict:
    """Return the DeepSpeed config the workers use (a new dict; `user` is not modified).

    Raises ConfigError for a config DeepSpeed would refuse or that contradicts itself: not a JSON object,
    an unknown key, a wrong type, ZeRO stage outside 0-3, a non-positive batch size, a `train_batch_size`
    that is not micro batch x accumulation x workers, offloading at a stage that cannot offload.
    On CPU, bf16 / fp16 are switched off (a note is printed when the user asked for them).
    """
    if user is None:
        user = {}
    if not isinstance(user, dict):
        raise ConfigError(f"deepspeedConfig must be a JSON object (a dict), got {type(user).__name__}")
    if not isinstance(num_workers, int) or isinstance(num_workers, bool) or num_workers < 1:
        raise ConfigError(f"the number of training workers must be an integer >= 1, got {num_workers!r}")
    _check_keys(user, TOP_LEVEL_KEYS, "deepspeedConfig")
    cfg: dict[str, Any] = copy.deepcopy(_BASE)
    cfg.update(copy.deepcopy(user))
    cfg["zero_optimization"] = _zero_section(cfg.get("zero_optimization", {}), opts)
    _batch_sizes(cfg, opts, num_workers)
    notes = _precision(cfg, on_gpu)
    _optimizer_section(cfg, opts)
    _scheduler_section(cfg)
    for key in ("steps_per_print",):
        if not _is_int(cfg.get(key)) or cfg[key] < 1:
            raise ConfigError(f"deepspeedConfig.{key} must be an integer >= 1, got {_show(cfg.get(key))}")
    _no_auto_left(cfg, "deepspeedConfig", allowed=_SCHEDULE_AUTO_PATHS)
    check_monitors(cfg)
    for note in notes:
        print(f"[byzer-like] note: {note}", file=sys.stderr, flush=True)
    return cfg


def _zero_section(zero: Any, opts: SfftOptions) -> dict:
    """The checked `zero_optimization` section (a new dict): "auto" values left to DeepSpeed's defaults, the
    stage from zeroStage unless the section gives one, 5e8-style floats of the integer keys made ints.

    ConfigError for a section that is not an object, an unknown key, a stage outside 0-3, a non-boolean flag,
    a negative or fractional size, or an offload section DeepSpeed would refuse (`_check_offload`)."""
    if zero is None:
        zero = {}
    if not isinstance(zero, dict):
        raise ConfigError(f"deepspeedConfig.zero_optimization must be an object, got {_show(zero)}")
    _check_keys(zero, ZERO_KEYS, "deepspeedConfig.zero_optimization")
    zero = {k: v for k, v in zero.items() if v != AUTO}  # DeepSpeed's own defaults for "auto"
    stage = zero.get("stage", opts.zero_stage)
    if not _is_int(stage) or not 0 <= stage <= 3:
        raise ConfigError(f"deepspeedConfig.zero_optimization.stage must be an integer 0, 1, 2 or 3, got {_show(stage)}")
    zero["stage"] = stage
    for key in sorted(ZERO_BOOL_KEYS & zero.keys()):
        if not isinstance(zero[key], bool):
            raise ConfigError(f"deepspeedConfig.zero_optimization.{key} must be true or false, got {_show(zero[key])}")
    for key in sorted(ZERO_INT_KEYS & zero.keys()):
        value = zero[key]
        if isinstance(value, float) and value.is_integer():  # 5e8 in JSON is a float
            zero[key] = value = int(value)
        if not _is_int(value) or value < 0:
            raise ConfigError(
                f"deepspeedConfig.zero_optimization.{key} must be a non-negative integer, got {_show(value)}")
    _check_offload(zero, stage)
    return zero


def _check_offload(zero: dict, stage: int) -> None:
    """ConfigError for an offload_optimizer / offload_param section that is not an object, names a device
    other than none / cpu / nvme, offloads at a ZeRO stage that cannot (optimizer: 1-3, parameters: 3) or
    names nvme without an nvme_path."""
    for section, min_stage, what in (("offload_optimizer", 1, "1, 2 or 3"), ("offload_param", 3, "3")):
        off = zero.get(section)
        if off is None:
            continue
        if not isinstance(off, dict):
            raise ConfigError(f"deepspeedConfig.zero_optimization.{section} must be an object, got {_show(off)}")
        device = off.get("device", "none")
        if device not in OFFLOAD_DEVICES:
            raise ConfigError(f"deepspeedConfig.zero_optimization.{section}.device must be one of "
                              f"{', '.join(OFFLOAD_DEVICES)}, got {_show(device)}")
        if device != "none" and stage < min_stage:
            raise ConfigError(f"deepspeedConfig.zero_optimization.{section} needs ZeRO stage {what}, but the stage is "
                              f"{stage}; raise zero_optimization.stage (or zeroStage) or remove {section}")
        if device == "nvme" and not off.get("nvme_path"):
            raise ConfigError(f"deepspeedConfig.zero_optimization.{section}.device is nvme: give nvme_path too")


def _batch_sizes(cfg: dict, opts: SfftOptions, num_workers: int) -> None:
    """Fill in cfg's micro batch (rows per worker), gradient accumulation steps and train_batch_size (rows per
    optimizer step, all workers), in place: a concrete value wins, one missing is derived from
    train_batch_size when that is given, else taken from perDeviceBatchSize / gradientAccumulationSteps.
    ConfigError for a non-positive size or a train_batch_size that is not micro x accumulation x workers."""
    micro = _batch_value(cfg, "train_micro_batch_size_per_gpu")
    accum = _batch_value(cfg, "gradient_accumulation_steps")
    total = _batch_value(cfg, "train_batch_size")
    if total is not None:
        if micro is None and accum is None:
            micro = opts.per_device_batch_size
        if micro is None:
            micro = _derive(total, accum * num_workers, "train_micro_batch_size_per_gpu", accum, num_workers, "accum")
        elif accum is None:
            accum = _derive(total, micro * num_workers, "gradient_accumulation_steps", micro, num_workers, "micro")
    micro = micro if micro is not None else opts.per_device_batch_size
    accum = accum if accum is not None else opts.gradient_accumulation_steps
    if total is not None and total != micro * accum * num_workers:
        raise ConfigError(
            f"deepspeedConfig.train_batch_size is {total}, but train_micro_batch_size_per_gpu x "
            f"gradient_accumulation_steps x workers = {micro} x {accum} x {num_workers} = {micro * accum * num_workers}; "
            "make them agree, or set train_batch_size to \"auto\"")
    cfg["train_micro_batch_size_per_gpu"] = micro
    cfg["gradient_accumulation_steps"] = accum
    cfg["train_batch_size"] = micro * accum * num_workers


def _precision(cfg: dict, on_gpu: bool) -> list[str]:
    """Settle cfg's fp16 / bf16 (and amp) sections in place; returns the notes to print.

    bfloat16 (DeepSpeed's old name) is merged into bf16. On GPU, "auto" means bf16 unless fp16 is enabled;
    on CPU both are switched off (and amp), with a note when the user enabled one. ConfigError for a section
    that is not an object, an `enabled` other than true / false / "auto", or fp16 and bf16 both enabled."""
    notes: list[str] = []
    for key in ("fp16", "bf16", "bfloat16"):
        section = cfg.get(key)
        if section is None:
            continue
        if not isinstance(section, dict):
            raise ConfigError(f"deepspeedConfig.{key} must be an object such as {{\"enabled\": true}}, got {_show(section)}")
        enabled = section.get("enabled", False)
        if enabled not in (True, False, AUTO):
            raise ConfigError(f"deepspeedConfig.{key}.enabled must be true, false or \"auto\", got {_show(enabled)}")
    if "bfloat16" in cfg:  # DeepSpeed's old name
        cfg["bf16"] = {**cfg.pop("bfloat16"), **cfg.get("bf16", {})}
    fp16 = dict(cfg.get("fp16") or {})
    bf16 = dict(cfg.get("bf16") or {})
    if on_gpu:
        if fp16.get("enabled") is True and bf16.get("enabled") is True:
            raise ConfigError("deepspeedConfig enables both fp16 and bf16; enable at most one")
        if fp16.get("enabled") == AUTO:
            fp16["enabled"] = False  # "auto" means bf16 when the GPU can, decided below
        if bf16.get("enabled") == AUTO:
            bf16["enabled"] = not fp16.get("enabled", False)
        if fp16 or bf16:
            cfg["fp16"], cfg["bf16"] = fp16 or {"enabled": False}, bf16 or {"enabled": False}
    else:
        for key, section in (("fp16", fp16), ("bf16", bf16)):
            if section.get("enabled") is True:
                notes.append(f"{key} is not available on CPU: training runs in fp32 (deepspeedConfig.{key} ignored)")
        cfg["fp16"] = {"enabled": False}
        cfg["bf16"] = {"enabled": False}
    if "amp" in cfg and isinstance(cfg["amp"], dict) and cfg["amp"].get("enabled") and not on_gpu:
        notes.append("amp is not available on CPU (deepspeedConfig.amp ignored)")
        cfg["amp"] = {"enabled": False}
    return notes


def _optimizer_section(cfg: dict, opts: SfftOptions) -> None:
    """Check cfg's gradient_clipping ("auto": 1.0) and optimizer section in place: "auto" params take the run's
    learning rate and weight decay (betas 0.9, 0.999; eps 1e-8), lr defaults to the run's. Without an optimizer
    section and with ZeRO-Offload of the optimizer, our torch AdamW is allowed (zero_force_ds_cpu_optimizer).
    ConfigError for a negative clip, a section without a "type" DeepSpeed builds, or a negative lr / weight_decay
    / eps."""
    clip = cfg.get("gradient_clipping")
    if clip == AUTO:
        cfg["gradient_clipping"] = clip = 1.0
    if not _is_number(clip) or clip < 0:
        raise ConfigError(f"deepspeedConfig.gradient_clipping must be a number >= 0, got {_show(clip)}")
    optimizer = cfg.get("optimizer")
    if optimizer is None:
        offload = (cfg["zero_optimization"].get("offload_optimizer") or {}).get("device", "none") != "none"
        if offload:  # ZeRO-Offload with our torch AdamW: allowed, DeepSpeed just warns it is slower
            cfg.setdefault("zero_force_ds_cpu_optimizer", False)
        return
    if not isinstance(optimizer, dict) or not isinstance(optimizer.get("type"), str):
        raise ConfigError('deepspeedConfig.optimizer must be an object with a "type" (e.g. "AdamW") and '
                          f"\"params\", got {_show(optimizer)}")
    if optimizer["type"].lower() not in DS_OPTIMIZERS:
        raise ConfigError(f"deepspeedConfig.optimizer.type {optimizer['type']!r} is not one DeepSpeed builds; "
                          f"use one of {', '.join(DS_OPTIMIZERS)} (or leave optimizer out: AdamW is used)")
    params = optimizer.setdefault("params", {})
    if not isinstance(params, dict):
        raise ConfigError(f"deepspeedConfig.optimizer.params must be an object, got {_show(params)}")
    for key, value in (("lr", opts.lr()), ("weight_decay", opts.weight_decay), ("betas", [0.9, 0.999]),
                       ("eps", 1e-8)):
        if params.get(key) == AUTO:
            params[key] = value
    params.setdefault("lr", opts.lr())
    for key in ("lr", "weight_decay", "eps"):
        if key in params and (not _is_number(params[key]) or params[key] < 0):
            raise ConfigError(f"deepspeedConfig.optimizer.params.{key} must be a number >= 0, got {_show(params[key])}")


def _scheduler_section(cfg: dict) -> None:
    """ConfigError unless cfg's scheduler section, when there is one, names a scheduler DeepSpeed builds and
    its params (added when missing) are an object."""
    scheduler = cfg.get("scheduler")
    if scheduler is None:
        return
    if not isinstance(scheduler, dict) or scheduler.get("type") not in DS_SCHEDULERS:
        raise ConfigError(f"deepspeedConfig.scheduler.type must be one of {', '.join(DS_SCHEDULERS)}, "
                          f"got {_show(scheduler.get('type') if isinstance(scheduler, dict) else scheduler)}")
    if not isinstance(scheduler.setdefault("params", {}), dict):
        raise ConfigError(f"deepspeedConfig.scheduler.params must be an object, got {_show(scheduler['params'])}")


# DeepSpeed's monitors (deepspeed.monitor, 0.19.8): section -> (the module it imports, what it needs here).
# tensorboard and csv_monitor write files (placed in the job's folder by `place_monitors`); wandb and comet
# send to a service, which needs their package and the network.
MONITORS = {
    "tensorboard": ("tensorboard", "the tensorboard package (a training dependency: pip install tensorboard)"),
    "csv_monitor": (None, ""),
    "wandb": ("wandb", "the wandb package and a network connection to Weights & Biases"),
    "comet": ("comet_ml", "the comet_ml package and a network connection to Comet"),
}


def enabled_monitors(cfg: dict) -> list[str]:
    """The monitor sections of a DeepSpeed config that are enabled (`{"enabled": true}`), in MONITORS order."""
    return [name for name in MONITORS if isinstance(cfg.get(name), dict) and cfg[name].get("enabled") is True]


def check_monitors(cfg: dict) -> None:
    """ConfigError for a monitor section that is not an object with a boolean `enabled`, or an enabled
    monitor whose package is not installed in this environment (found with importlib, nothing imported).
    Runs on the driver, so a monitor that cannot run is refused before any worker starts."""
    import importlib.util

    for name, (module, needs) in MONITORS.items():
        section = cfg.get(name)
        if section is None:
            continue
        if not isinstance(section, dict) or not isinstance(section.get("enabled", False), bool):
            raise ConfigError(f'deepspeedConfig.{name} must be an object such as {{"enabled": true}}, got {_show(section)}')
        if section.get("enabled") and module and importlib.util.find_spec(module) is None:
            raise ConfigError(
                f"deepspeedConfig.{name} turns on DeepSpeed's {name} monitor, which needs {needs}; {module} is not "
                f'installed here. Set "{name}": {{"enabled": false}} (or remove the section); the loss is also in '
                "`byzer-like jobs status` and, with \"tensorboard\": {\"enabled\": true}, in TensorBoard")


def place_monitors(cfg: dict, run_dir: str, run_name: str) -> dict:
    """A copy of cfg whose file-writing monitors (tensorboard, csv_monitor) write into
    `<run_dir>/tensorboard/<run_name>/` (DeepSpeed's default is the worker's current directory), unless the
    section names its own output_path."""
    cfg = copy.deepcopy(cfg)
    for name in ("tensorboard", "csv_monitor"):
        section = cfg.get(name)
        if isinstance(section, dict) and section.get("enabled") is True:
            if not section.get("output_path"):
                section["output_path"] = os.path.join(run_dir, TENSORBOARD_DIR)
            section.setdefault("job_name", run_name)
    return cfg


# "auto" values that depend on the number of steps, filled in by the workers (fill_schedule).
_SCHEDULE_AUTO_PATHS = frozenset({
    ("scheduler", "params", "total_num_steps"), ("scheduler", "params", "warmup_num_steps"),
    ("scheduler", "params", "warmup_max_lr"), ("scheduler", "params", "warmup_min_lr"),
    ("scheduler", "params", "cos_min_ratio"), ("scheduler", "params", "warmup_min_ratio"),
})


def fill_schedule(cfg: dict, *, total_steps: int, warmup_steps: int, lr: float) -> dict:
    """Fill the step-dependent "auto" values of a DeepSpeed scheduler section (a copy of cfg)."""
    cfg = copy.deepcopy(cfg)
    params = (cfg.get("scheduler") or {}).get("params") or {}
    values = {"total_num_steps": max(total_steps, 1), "warmup_num_steps": warmup_steps, "warmup_max_lr": lr,
              "warmup_min_lr": 0.0, "cos_min_ratio": 0.0001, "warmup_min_ratio": 0.0}
    for key, value in values.items():
        if params.get(key) == AUTO:
            params[key] = value
    return cfg


def uses_client_optimizer(cfg: dict) -> bool:
    """True when the workers must build the optimizer (the config names none)."""
    return cfg.get("optimizer") is None


def _batch_value(cfg: dict, key: str) -> int | None:
    value = cfg.get(key)
    if value is None or value == AUTO:
        return None
    if not _is_int(value) or value < 1:
        raise ConfigError(f"deepspeedConfig.{key} must be a positive integer or \"auto\", got {_show(value)}")
    return value


def _derive(total: int, per: int, key: str, known: int, workers: int, known_name: str) -> int:
    if total % per:
        other = "gradient_accumulation_steps" if known_name == "accum" else "train_micro_batch_size_per_gpu"
        raise ConfigError(
            f"deepspeedConfig.train_batch_size {total} is not a multiple of {other} x workers = "
            f"{known} x {workers}, so {key} cannot be derived; make them agree")
    return total // per


def _check_keys(section: dict, known: Iterable[str], where: str) -> None:
    known = set(known)
    for key in section:
        if not isinstance(key, str):
            raise ConfigError(f"{where} has a non-string key {key!r}")
        if key not in known:
            close = difflib.get_close_matches(key, known, n=3, cutoff=0.75)
            hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
            raise ConfigError(f"{where} has an unknown key {key!r} that DeepSpeed does not accept{hint}")


def _no_auto_left(value: Any, where: str, *, allowed: frozenset, path: tuple = ()) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _no_auto_left(v, f"{where}.{k}", allowed=allowed, path=(*path, k))
    elif value == AUTO and path not in allowed:
        raise ConfigError(f"{where} is \"auto\", which byzer-like cannot fill in; give a value")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _show(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


__all__ = ["MONITORS", "check_monitors", "enabled_monitors", "fill_schedule", "place_monitors", "uses_client_optimizer", "validate_deepspeed_config"]
