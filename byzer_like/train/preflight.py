"""Pre-flight: what a training job's options need, checked on the driver before the job is submitted.

    env = Environment(nodes=cluster.node_resources())          # tests: Environment(nodes=[{"CPU": 4}], installed=...)
    plan = preflight(task, options, setup, env, resolve=workspace.resolve)
    plan.options, plan.setup, plan.method_text()   # what the job runs with: "lora (qlora needs a CUDA GPU; none here)"

Everything here is a pure function of (the options model, the setup, the `Environment`: the cluster's
nodes and their resources, which packages and tools are installed), so each check is tested without Ray.
What a check could find is never left to a worker minutes later:

- resources: Byzer's `num_gpus` read as the task reads it (sfft: the total number of cards,
  `config.SetupConfig.for_task`); the job's workers (sft: one, its runner; sfft: `num_workers`) of
  `cpus_per_worker` / `gpus_per_worker` each must fit on the cluster's live nodes, each worker on one node,
  or Ray would queue the job forever (`ClusterTooSmallError`; GPUs asked of a cluster with none:
  `DeviceNotAvailableError`);
- the method: sft without `method` trains QLoRA where its worker has a CUDA GPU and bitsandbytes is
  installed, as Byzer does, else LoRA, with the reason (`Plan.method_reason`);
- packages: torch and transformers; peft (lora, qlora), bitsandbytes (qlora), deepspeed (sfft); a DeepSpeed
  optimizer DeepSpeed builds as a C++ op (compiled on first use: ninja and a C++ compiler), nvme offload
  (libaio) (`MissingPackageError`);
- devices: DeepSpeed optimizers that exist only as CUDA kernels, asked on a CPU-only job
  (`DeviceNotAvailableError`, naming the option and what to use). QLoRA is not one: bitsandbytes' CPU back
  end trains it on CPU, and fp16 / bf16 in a deepspeedConfig are switched off on CPU with a note
  (`ds_config._precision`), so Byzer's own sfft config runs as written;
- files: paths inside a deepspeedConfig (nvme_path, a monitor's output_path) inside the workspace's allowed
  roots (`resolve`, `workspace.Workspace.resolve`: WorkspacePathError). The base model, localPathPrefix
  and evalTable are checked by `jobs.Jobs.submit` itself.
"""
from __future__ import annotations

import ctypes.util
import importlib.util
import shutil
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from .. import cluster
from ..config import SetupConfig
from ..errors import ClusterTooSmallError, DeviceNotAvailableError, MissingPackageError

# the method sft trains when none is given, by where it runs (Byzer-LLM's sft is QLoRA)
DEFAULT_GPU_METHOD = "qlora"
DEFAULT_CPU_METHOD = "lora"

# DeepSpeed optimizers (`deepspeedConfig.optimizer.type`, lower-cased) that exist only as CUDA kernels
# (DeepSpeed 0.19.8 `_configure_basic_optimizer`: FusedLamb; the 1-bit optimizers' compressed
# communication; FusedLion unless ZeRO-Offload gives it DeepSpeedCPULion)
CUDA_ONLY_OPTIMIZERS = ("lamb", "onebitadam", "onebitlamb", "zerooneadam")
CUDA_ONLY_WITHOUT_OFFLOAD = ("lion",)
# optimizers DeepSpeed builds as its own C++ op, compiled on first use (torch.utils.cpp_extension: ninja and c++)
COMPILED_OPTIMIZERS = ("adam", "adamw", "lamb", "lion", "onebitadam", "onebitlamb", "zerooneadam")


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _has_tool(name: str) -> bool:
    if name == "libaio":
        return ctypes.util.find_library("aio") is not None
    return shutil.which(name) is not None


@dataclass(frozen=True)
class Environment:
    """What the driver knows of where a job will run.

    `nodes`: each live node's total Ray resources ({"CPU": 16.0, "GPU": 2.0, ...}: `cluster.node_resources()`),
    or None when they cannot be read (the resource checks are then skipped). `installed(module)`: whether a
    Python module can be imported (default: importlib's find_spec, nothing imported). `has_tool(name)`: whether
    a program is on PATH (`ninja`, `c++`) or, for "libaio", the library is found."""

    nodes: Sequence[Mapping[str, float]] | None = None
    installed: Callable[[str], bool] = _installed
    has_tool: Callable[[str], bool] = _has_tool

    def total(self, resource: str) -> float | None:
        """The cluster's total of `resource` ("CPU", "GPU"), None when the nodes are unknown."""
        return float(sum(n.get(resource, 0) for n in self.nodes)) if self.nodes else None


@dataclass(frozen=True)
class Plan:
    """What a job runs with, settled before it is submitted: its options (sft: `method` set), its setup
    (`SetupConfig.for_task`: sfft's num_gpus made workers), the method and why it was chosen (None when
    the user named it, or the task has no method), and the notes to tell the user."""

    options: Any
    setup: SetupConfig
    method: str | None = None
    method_reason: str | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)

    def method_text(self) -> str | None:
        """`lora (qlora needs a CUDA GPU; none here)`, `qlora`, or None for a task without a method."""
        if self.method is None:
            return None
        return f"{self.method} ({self.method_reason})" if self.method_reason else self.method


def preflight(task: Any, options: Any, setup: SetupConfig, env: Environment, *,
              resolve: Callable[..., Any] | None = None) -> Plan:
    """Every check of this module for a job of `task` (a `tasks.TrainingTask`) with `options` (its options
    model) and `setup`, against `env`; returns the Plan the job runs with. `resolve(path, what=...)`: the
    workspace's path check (None: paths are not checked). Raises ConfigError (sfft's num_gpus not whole
    workers), ClusterTooSmallError, DeviceNotAvailableError, MissingPackageError, WorkspacePathError."""
    given = setup
    setup = setup.for_task(task)
    notes: list[str] = []
    if setup is not given:  # Byzer's num_gpus read as the task's total number of cards
        notes.append(f"num_gpus={given.num_gpus:g} is the total number of cards for {task.name}: {setup.num_workers} "
                     f"worker(s) of {setup.gpus_per_worker:g} GPU each")
    check_resources(task, setup, env)
    options, method, reason = settle_method(task, options, setup, env)
    check_packages(task, options, env)
    check_devices(task, options, setup)
    if resolve is not None:
        check_paths(options, resolve)
    return Plan(options=options, setup=setup, method=method, method_reason=reason, notes=tuple(notes))


def workers_of(task: Any, setup: SetupConfig) -> int:
    """The workers a job of `task` places on the cluster: sft trains in its runner (one worker); sfft runs
    `num_workers` Ray Train workers (its runner reserves nothing)."""
    return 1 if task.runner_holds_worker else setup.num_workers


def check_resources(task: Any, setup: SetupConfig, env: Environment) -> None:
    """ClusterTooSmallError unless the job's workers (`workers_of`) of cpus_per_worker / gpus_per_worker each
    fit on `env`'s nodes when nothing else runs, each worker on one node; DeviceNotAvailableError when the job
    asks for GPUs and the cluster has none. Nothing when the nodes are unknown. Workers that only wait for
    resources in use now are not refused: Ray starts them when those are free."""
    if not env.nodes:  # unknown (or none listed yet)
        return
    workers = workers_of(task, setup)
    need = {"CPU": setup.cpus_per_worker, "GPU": setup.gpus_per_worker}
    have = {"CPU": env.total("CPU") or 0.0, "GPU": env.total("GPU") or 0.0}
    if setup.gpus_per_worker > 0 and have["GPU"] == 0:
        asked = _gpus_asked(task, setup, workers)
        raise DeviceNotAvailableError(
            f"{asked}, but this cluster has no GPU ({have['CPU']:g} CPUs on {len(env.nodes)} node(s)); train on "
            f'CPU with !byzerllm setup "num_gpus=0" (Python: setup_gpus_per_worker(0)), or join a cluster with '
            "GPUs (address= / RAY_ADDRESS)", option="num_gpus")
    fits = cluster.room(env.nodes, need)
    if fits >= workers:
        return
    largest = max(env.nodes, key=lambda n: (n.get("GPU", 0), n.get("CPU", 0)), default={})
    per_node = f"largest node: {largest.get('CPU', 0):g} CPUs, {largest.get('GPU', 0):g} GPUs"
    where = f"on {len(env.nodes)} node(s) ({per_node})"
    if task.runner_holds_worker:
        raise ClusterTooSmallError(
            f"{task.name} trains in one process, on one node: it needs {setup.cpus_per_worker:g} CPU(s) and "
            f"{setup.gpus_per_worker:g} GPU(s) there; the cluster has {have['CPU']:g} CPUs and {have['GPU']:g} GPUs "
            f"{where}, so Ray would queue the job forever; lower cpus_per_worker / num_gpus to fit one node, or add "
            "a larger node", need=need, have=have)
    if setup.gpus_per_worker > 0 and task.num_gpus_is_total:
        lower = f"lower num_gpus (for {task.name} the total number of cards) or cpus_per_worker, or add nodes"
    elif setup.gpus_per_worker > 0:
        lower = "lower num_workers / cpus_per_worker / num_gpus, or add nodes"
    else:
        lower = "lower num_workers / cpus_per_worker, or add nodes"
    raise ClusterTooSmallError(
        f"{task.name} needs {workers} worker(s) of {setup.cpus_per_worker:g} CPU / {setup.gpus_per_worker:g} GPU each "
        f"({workers * setup.cpus_per_worker:g} CPUs, {workers * setup.gpus_per_worker:g} GPUs in all); the cluster "
        f"has {have['CPU']:g} CPUs and {have['GPU']:g} GPUs {where}, room for "
        f"{fits}, so Ray would queue the job forever; {lower}",
        need={k: v * workers for k, v in need.items()}, have=have)


def _gpus_asked(task: Any, setup: SetupConfig, workers: int) -> str:
    if task.num_gpus_is_total and workers > 1:
        return (f"{task.name} asks for {workers * setup.gpus_per_worker:g} GPUs ({workers} workers of "
                f"{setup.gpus_per_worker:g})")
    return f"{task.name} asks for {setup.gpus_per_worker:g} GPU(s) per worker"


def settle_method(task: Any, options: Any, setup: SetupConfig, env: Environment) -> tuple[Any, str | None, str | None]:
    """(options with `method` set, the method, why it was chosen) for a task whose options have a `method`
    (sft); a task without one gives (options, None, None). A method the user gave is kept (reason None).
    Without one: qlora where the job's worker has a GPU (gpus_per_worker > 0, on a cluster with GPUs) and
    bitsandbytes is installed, as Byzer trains; lora otherwise, saying why."""
    if "method" not in type(options).model_fields:
        return options, None, None
    if options.method is not None:
        return options, options.method, None
    cluster_gpus = env.total("GPU")
    on_gpu = setup.gpus_per_worker > 0 and (cluster_gpus is None or cluster_gpus > 0)
    if on_gpu and env.installed("bitsandbytes"):
        method, reason = DEFAULT_GPU_METHOD, "Byzer's default for sft on a CUDA GPU"
    elif on_gpu:
        method, reason = DEFAULT_CPU_METHOD, "qlora, the default on a GPU, needs bitsandbytes, not installed here: " \
                                             "pip install bitsandbytes"
    elif cluster_gpus:
        method, reason = DEFAULT_CPU_METHOD, ('qlora needs a CUDA GPU; this job reserves none: !byzerllm setup '
                                              '"num_gpus=1" trains qlora on one')
    else:
        method, reason = DEFAULT_CPU_METHOD, "qlora needs a CUDA GPU; none here"
    return options.model_copy(update={"method": method}), method, reason


def required_packages(task: Any, options: Any) -> list[tuple[str, str, str]]:
    """(option that needs it, module, pip name) for each package a job of `task` with `options` imports."""
    need = [("training", "torch", "torch"), ("training", "transformers", "transformers")]
    method = getattr(options, "method", None)
    if task.name == "sft" and method in ("lora", "qlora", None):
        need.append((f'method="{method or "lora"}"', "peft", "peft"))
    if method == "qlora":
        need.append(('method="qlora"', "bitsandbytes", "bitsandbytes"))
    if task.name == "sfft":
        need.append(("sfft", "deepspeed", "deepspeed"))
    if task.name in ("dpo", "orpo", "kto"):  # preference training: TRL's trainers, over a peft adapter
        need.append((task.name, "trl", "trl"))
        if method in ("lora", "qlora", None):
            need.append((f'method="{method or "lora"}"', "peft", "peft"))
    return need


def check_packages(task: Any, options: Any, env: Environment) -> None:
    """MissingPackageError for the first package `required_packages` lists that is not installed, or a tool a
    deepspeedConfig option needs: DeepSpeed's own optimizers (compiled on first use: ninja and a C++
    compiler) unless params.torch_adam, nvme offloading (libaio and the compiler)."""
    for option, module, pip in required_packages(task, options):
        if not env.installed(module):
            what = f"{task.name} with {option}" if option.startswith("method") else task.name
            raise MissingPackageError(f"{what} needs the {pip} package, which is not installed here: pip install "
                                      f"{pip}" + (' (or method="lora")' if pip == "bitsandbytes" else ""),
                                      option=option, package=pip)
    cfg = getattr(options, "deepspeed_config", None) or {}
    optimizer = cfg.get("optimizer")
    kind = str(optimizer.get("type", "")).lower() if isinstance(optimizer, dict) else ""
    torch_adam = isinstance(optimizer, dict) and (optimizer.get("params") or {}).get("torch_adam") is True
    if kind in COMPILED_OPTIMIZERS and not torch_adam:
        _need_compiler(env, f"deepspeedConfig.optimizer.type {optimizer['type']!r}",
                       'leave "optimizer" out (a torch AdamW is used) or set "params": {"torch_adam": true}')
    zero = cfg.get("zero_optimization") or {}
    for section in ("offload_optimizer", "offload_param"):
        off = zero.get(section) if isinstance(zero, dict) else None
        if isinstance(off, dict) and off.get("device") == "nvme":
            option = f"deepspeedConfig.zero_optimization.{section}.device \"nvme\""
            if not env.has_tool("libaio"):
                raise MissingPackageError(
                    f"{option} needs DeepSpeed's async_io op, which needs libaio, not found here: install it "
                    '(apt-get install libaio-dev) or offload to "cpu"', option=option, package="libaio")
            _need_compiler(env, option, 'offload to "cpu"')


def _need_compiler(env: Environment, option: str, instead: str) -> None:
    """MissingPackageError unless ninja (the Python package or the program) and a C++ compiler are here:
    DeepSpeed compiles its ops with torch.utils.cpp_extension on first use."""
    if not (env.installed("ninja") or env.has_tool("ninja")):
        raise MissingPackageError(f"{option} is a DeepSpeed C++ op compiled on first use, which needs ninja, not "
                                  f"installed here: pip install ninja; or {instead}", option=option, package="ninja")
    if not any(env.has_tool(cc) for cc in ("c++", "g++", "clang++")):
        raise MissingPackageError(f"{option} is a DeepSpeed C++ op compiled on first use, which needs a C++ compiler "
                                  f"(c++), none on PATH: install one (apt-get install g++); or {instead}",
                                  option=option, package="g++")


def check_devices(task: Any, options: Any, setup: SetupConfig) -> None:
    """DeviceNotAvailableError for a deepspeedConfig optimizer that exists only as CUDA kernels
    (CUDA_ONLY_OPTIMIZERS; lion without ZeRO-Offload of the optimizer) on a job without GPUs."""
    if setup.gpus_per_worker > 0:
        return
    cfg = getattr(options, "deepspeed_config", None) or {}
    optimizer = cfg.get("optimizer")
    if not isinstance(optimizer, dict):
        return
    kind = str(optimizer.get("type", "")).lower()
    zero = cfg.get("zero_optimization") if isinstance(cfg.get("zero_optimization"), dict) else {}
    offload = (zero.get("offload_optimizer") or {}).get("device", "none") not in ("none", None)
    if kind in CUDA_ONLY_OPTIMIZERS or (kind in CUDA_ONLY_WITHOUT_OFFLOAD and not offload):
        raise DeviceNotAvailableError(
            f"deepspeedConfig.optimizer.type {optimizer['type']!r} runs only on CUDA GPUs, and this {task.name} job "
            'has none (num_gpus=0); use "AdamW" or leave "optimizer" out (a torch AdamW is used)'
            + (', or offload the optimizer to "cpu" (zero_optimization.offload_optimizer)' if kind == "lion" else ""),
            option="deepspeedConfig.optimizer.type")


def deepspeed_paths(cfg: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(where, path) for each path a DeepSpeed config names: offload nvme_path, monitors' output_path."""
    out: list[tuple[str, str]] = []
    zero = cfg.get("zero_optimization") if isinstance(cfg.get("zero_optimization"), dict) else {}
    for section in ("offload_optimizer", "offload_param"):
        off = zero.get(section)
        if isinstance(off, dict) and isinstance(off.get("nvme_path"), str) and off["nvme_path"]:
            out.append((f"deepspeedConfig.zero_optimization.{section}.nvme_path", off["nvme_path"]))
    for monitor in ("tensorboard", "csv_monitor", "wandb", "comet"):
        section = cfg.get(monitor)
        if isinstance(section, dict) and isinstance(section.get("output_path"), str) and section["output_path"]:
            out.append((f"deepspeedConfig.{monitor}.output_path", section["output_path"]))
    return out


def check_paths(options: Any, resolve: Callable[..., Any]) -> None:
    """Each path of the options' deepspeedConfig (`deepspeed_paths`) through `resolve(path, what=...)`, the
    workspace's check that it lies inside an allowed root (WorkspacePathError otherwise)."""
    for where, path in deepspeed_paths(getattr(options, "deepspeed_config", None) or {}):
        resolve(path, what=where)


__all__ = ["COMPILED_OPTIMIZERS", "CUDA_ONLY_OPTIMIZERS", "Environment", "Plan", "check_devices", "check_packages",
           "check_paths", "check_resources", "deepspeed_paths", "preflight", "required_packages", "settle_method",
           "workers_of"]
