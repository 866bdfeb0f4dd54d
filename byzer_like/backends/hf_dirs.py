"""What a Hugging Face model directory holds, read and checked before anything loads: its config.json, its
weight and tokenizer files, how its weights are stored quantized, and a loaded model's facts. Every
Hugging Face back end (transformers, vLLM, encoder) checks directories with these. This module imports
neither torch nor transformers."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Mapping

from ..config import parse_bool
from ..errors import ModelDirError

# Weight files that are Python pickles (unpickling can run code): loaded only with allow_pickle_weights.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
# Code a model directory ships for transformers to import (only with trust_remote_code).
_REMOTE_CODE = re.compile(r"(?:modeling|configuration|tokenization|processing|image_processing)_\w+\.py")

def model_config(model_dir: str | os.PathLike) -> dict:
    """A Hugging Face model directory's config.json as a dict; ModelDirError when the directory or its
    config.json is missing or the file is not a JSON object."""
    d = Path(model_dir)
    if not d.is_dir():
        raise ModelDirError(f"model directory {str(model_dir)!r} does not exist; give the folder that holds config.json")
    cfg_file = d / "config.json"
    if not cfg_file.is_file():
        raise ModelDirError(
            f"{str(model_dir)!r} is not a Hugging Face model directory (no config.json); "
            "build one with `byzer-like models make-tiny` or point at a downloaded model"
        )
    return json_object(cfg_file)


def model_facts(model: Any) -> dict:
    """What every Hugging Face plugin's `get_meta` says of a loaded torch model: `model_type`, `vocab_size`
    (from its config; None when absent), `num_parameters`, `dtype` (e.g. "float32")."""
    return {
        "model_type": getattr(model.config, "model_type", None),
        "vocab_size": getattr(model.config, "vocab_size", None),
        "num_parameters": int(sum(p.numel() for p in model.parameters())),
        "dtype": str(getattr(model, "dtype", "")).replace("torch.", ""),
    }


def check_model_files(model_dir: str | os.PathLike, cfg: Mapping[str, Any], infer_params: Mapping[str, Any]) -> None:
    """The checks every Hugging Face plugin makes of a directory's files, before anything loads: no code
    of its own runs without trust_remote_code, weights are safetensors (pickles only with
    allow_pickle_weights), and there is a tokenizer. ModelDirError saying what to do otherwise."""
    allow_pickle = parse_bool(infer_params.get("allow_pickle_weights", False))
    trust = parse_bool(infer_params.get("trust_remote_code", False))
    d = Path(model_dir)
    names = os.listdir(d)
    if not trust:  # transformers would import the directory's own modules (auto_map, modeling_*.py)
        tokenizer_cfg = d / "tokenizer_config.json"
        configs = [(d / "config.json", cfg)] + ([(tokenizer_cfg, json_object(tokenizer_cfg))] if tokenizer_cfg.is_file() else [])
        asks = [f"auto_map in {f.name}" for f, c in configs if c.get("auto_map")]
        asks += sorted(n for n in names if _REMOTE_CODE.fullmatch(n))
        if asks:
            raise ModelDirError(
                f"{str(model_dir)!r} asks to run its own Python code ({', '.join(asks[:3])}); deploy it with "
                "trust_remote_code=true only if you trust its source"
            )
    if not any(n.endswith(".safetensors") for n in names):
        pickled = [n for n in names if n.endswith(PICKLE_SUFFIXES)]
        if pickled and not allow_pickle:
            raise ModelDirError(
                f"{str(model_dir)!r} holds only pickle weights ({', '.join(sorted(pickled)[:3])}), which can run code "
                "when loaded; convert them to safetensors or deploy with allow_pickle_weights=true"
            )
        if not pickled:
            raise ModelDirError(f"{str(model_dir)!r} has no model weights (*.safetensors)")
    if not any(n in names for n in ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt",
                                    "sentencepiece.bpe.model", "tokenizer_config.json")):
        raise ModelDirError(f"{str(model_dir)!r} has no tokenizer files")


def saved_quantization(model_dir: str | os.PathLike) -> str | None:
    """How a model directory's weights are stored quantized, from the `quantization_config` of its
    config.json (written by `save_pretrained` of a quantized model): `bitsandbytes-8bit`,
    `bitsandbytes-nf4`, `bitsandbytes-fp4`, `torchao`, `gptq-4bit`, ...; None for full precision."""
    cfg_file = Path(model_dir, "config.json")
    if not cfg_file.is_file():
        return None
    q = json_object(cfg_file).get("quantization_config")
    if not isinstance(q, dict) or not q:
        return None
    kind = str(q.get("quant_method", "unknown"))
    if kind == "bitsandbytes":
        return "bitsandbytes-8bit" if q.get("load_in_8bit") else f"bitsandbytes-{q.get('bnb_4bit_quant_type', '4bit')}"
    return f"{kind}-{q['bits']}bit" if q.get("bits") else kind


def json_object(file: Path) -> dict:
    """A model directory's JSON file (config.json, tokenizer_config.json) as a dict, or a ModelDirError."""
    try:
        value = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ModelDirError(f"{file} is not valid JSON: {e}") from None
    if not isinstance(value, dict):
        raise ModelDirError(f"{file} must hold a JSON object, not {type(value).__name__}")
    return value


def context_length(config: Any) -> int:
    for attr in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    return 2048


def worker_device(setup: Any, want: str = "auto") -> str:
    """The device a replica loads its model on: "cuda" when asked (`want`), or for "auto" when the worker holds
    GPUs (`setup.gpus_per_worker`) and torch sees CUDA; else "cpu". Sets torch's threads to the worker's CPUs
    when the setup gave them (`setup`: the `config.SetupConfig` read from the contract's sys_conf)."""
    import torch

    if setup.was_set("cpus_per_worker") and setup.cpus_per_worker >= 1:
        torch.set_num_threads(int(setup.cpus_per_worker))
    if want == "cuda" or (want == "auto" and setup.gpus_per_worker > 0 and torch.cuda.is_available()):
        return "cuda"
    return "cpu"


__all__ = ["PICKLE_SUFFIXES", "check_model_files", "context_length", "json_object", "model_config", "model_facts",
           "saved_quantization", "worker_device"]
