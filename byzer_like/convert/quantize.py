"""Weight-quantized exports of a Hugging Face model directory, saved with `save_pretrained`.

    quantize_model("models/smol", "models/smol-nf4", "bnb-nf4")
    quantize_model("models/smol", "models/smol-gptq", "gptq-int4", calibration=texts)

The written directory's config.json carries the method's `quantization_config`, so transformers (and
the built-in plugins, see `backends/hf.py`) load it quantized with a plain `from_pretrained`; the
method's library must be installed wherever it is deployed.

| method | library | what is stored |
| --- | --- | --- |
| `bnb-int8` | bitsandbytes | LLM.int8(): int8 linear weights with per-row scales (outlier columns run in 16-bit) |
| `bnb-nf4` / `bnb-fp4` | bitsandbytes | 4-bit NormalFloat / float linear weights, blocks of 64 with absmax scales |
| `torchao-int8` | torchao | int8 weight-only, one scale per output channel |
| `gptq-int4` / `gptq-int8` | gptqmodel (+ optimum to load) | GPTQ: weights rounded layer by layer to minimise the error on calibration text |

Embeddings, norms and the output head stay float32. gptqmodel is an optional extra (`pip install
byzer-like[gptq]`, see the README for why it is not installed by default); asking for GPTQ without it
is a QuantizeError that says so.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ..errors import ConfigError, ModelDirError, QuantizeError
from .staging import dir_size, staged, weights_size


@dataclass(frozen=True)
class Method:
    """A quantization method: its library, bits per quantized weight, whether it needs calibration text."""

    library: str
    bits: int
    summary: str
    calibration: bool = False


METHODS: dict[str, Method] = {
    "bnb-int8": Method("bitsandbytes", 8, "bitsandbytes LLM.int8(): 8-bit linear weights, per-row scales"),
    "bnb-nf4": Method("bitsandbytes", 4, "bitsandbytes 4-bit NormalFloat linear weights (QLoRA's format)"),
    "bnb-fp4": Method("bitsandbytes", 4, "bitsandbytes 4-bit float linear weights"),
    "torchao-int8": Method("torchao", 8, "torchao int8 weight-only, per output channel"),
    "gptq-int4": Method("gptqmodel", 4, "GPTQ 4-bit, calibrated on a table of text (gptqmodel)", calibration=True),
    "gptq-int8": Method("gptqmodel", 8, "GPTQ 8-bit, calibrated on a table of text (gptqmodel)", calibration=True),
}
ALIASES = {"int8": "bnb-int8", "8bit": "bnb-int8", "nf4": "bnb-nf4", "4bit": "bnb-nf4", "fp4": "bnb-fp4",
           "gptq": "gptq-int4"}
MIN_CALIBRATION_ROWS = 8
CALIBRATION_SQL = 'SQL: calibrationTable="t"'  # how the calibration option is named in errors (the CLI: --calibration)
DEFAULT_GROUP_SIZE = 128
# a method's library -> the modules it needs where the export runs (GPTQ's result loads through optimum)
MODULES = {"bitsandbytes": ("bitsandbytes",), "torchao": ("torchao",), "gptqmodel": ("gptqmodel", "optimum")}
INSTALL = {
    "bitsandbytes": "pip install bitsandbytes",
    "torchao": "pip install torchao",
    "gptqmodel": ("install the extra: pip install --no-deps 'gptqmodel==7.6.0' optimum==2.3.0 plus gptqmodel's small "
                  "dependencies (see the README: gptqmodel 7.7 needs torch>=2.14.1, 7.6 declares numpy==2.2.6 and "
                  "builds from source, so it is not installed by default)"),
}


def method_of(name: str) -> str:
    """The canonical method name for `name` (an alias such as `nf4` included); ConfigError listing the
    valid methods (with what each stores) otherwise."""
    key = str(name or "").strip().lower()
    key = ALIASES.get(key, key)
    if key not in METHODS:
        listed = "; ".join(f"{k} ({m.summary})" for k, m in METHODS.items())
        aliases = ", ".join(f"{a}={m}" for a, m in ALIASES.items())
        raise ConfigError(f"unknown quantization method {name!r}; valid methods: {listed}; aliases: {aliases}")
    return key


def require_library(method: str) -> None:
    """QuantizeError unless the library of `method` (a canonical name, see `method_of`) and what loads its
    result are installed here, saying how to install them. Looks the modules up, imports none: callers
    run it before anything slow (reading calibration data, loading the model)."""
    import importlib.util

    library = METHODS[method].library
    missing = [m for m in MODULES[library] if importlib.util.find_spec(m) is None]
    if missing:
        what = "GPTQ" if library == "gptqmodel" else f"method {method!r}"
        raise QuantizeError(f"{what} needs {' and '.join(MODULES[library])} ({', '.join(missing)} not installed "
                            f"here); {INSTALL[library]}")


def check_source(model_dir: str | os.PathLike) -> dict:
    """The source model's config.json, after checking it is a whole, not yet quantized, Hugging Face model.
    ModelDirError otherwise (no config.json; a LoRA adapter folder; already quantized, naming how)."""
    d = Path(model_dir)
    if (d / "adapter_config.json").is_file() and not (d / "config.json").is_file():
        raise ModelDirError(f"{d} is a LoRA adapter, not a whole model; merge it into its base first "
                            "(SQL: action=\"merge\"), then quantize the merged model")
    try:
        cfg = json.loads((d / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ModelDirError(f"{d} is not a Hugging Face model directory (config.json: {e})") from None
    q = cfg.get("quantization_config")
    if q:
        raise ModelDirError(f"{d} is already quantized ({q.get('quant_method', '?')}); quantize the full-precision model")
    return cfg


def quantize_model(model_dir: str | os.PathLike, out_dir: str | os.PathLike, method: str, *,
                   calibration: Sequence[str] | None = None, group_size: int | None = None,
                   batch_size: int = 8) -> dict[str, Any]:
    """Write `model_dir` quantized with `method` (see METHODS) as a new directory `out_dir`.

    `calibration`: texts GPTQ runs through the model (at least MIN_CALIBRATION_ROWS; ignored by the
    others); `group_size`: GPTQ's weights per scale (default: `gptq_group_size`; -1 one per row). Written into a staging
    folder and renamed on success. Returns {"model_dir", "method", "library", "bits", "bytes",
    "weights_bytes", "source_weights_bytes", "size_ratio", "seconds"} (sizes in bytes; ratio =
    weights_bytes / source_weights_bytes). Raises ConfigError (method, calibration), ModelDirError
    (source), QuantizeError (the library is missing or failed)."""
    from ..display import ProgressLine
    from .bars import bars_as

    name = method_of(method)
    m = METHODS[name]
    require_library(name)
    cfg = check_source(model_dir)
    texts = [str(t) for t in (calibration or []) if t and str(t).strip()]
    if m.calibration and len(texts) < MIN_CALIBRATION_ROWS:
        raise ConfigError(f"method {name!r} needs calibration text: a table with at least {MIN_CALIBRATION_ROWS} rows "
                          f"of text ({CALIBRATION_SQL}; got {len(texts)})").suggesting(calibration=CALIBRATION_SQL)
    t0 = time.monotonic()
    out = Path(out_dir)
    line = ProgressLine(f"quantizing {Path(model_dir).name} ({name})")
    with staged(out) as tmp, bars_as(line):
        if m.library == "gptqmodel":
            _gptq(model_dir, tmp, m.bits, texts, gptq_group_size(cfg, group_size), batch_size)
        else:
            _with_transformers(model_dir, tmp, name)
    src = weights_size(model_dir)
    size = weights_size(out)
    line.done(f"written in {time.monotonic() - t0:.1f} s ({size:,} bytes of weights, {src:,} before)")
    return {"model_dir": str(out), "method": name, "library": m.library, "bits": m.bits, "bytes": dir_size(out),
            "weights_bytes": size, "source_weights_bytes": src, "size_ratio": round(size / src, 4) if src else None,
            "calibration_rows": len(texts) if m.calibration else 0, "seconds": round(time.monotonic() - t0, 2)}


def gptq_group_size(config: dict, requested: int | None) -> int:
    """GPTQ's group size for a model of `config`: `requested`, else the largest of 128, 64, 32, 16 that divides
    every linear layer's input width (hidden_size and intermediate_size; the CPU int4 kernel needs that:
    SmolLM2's 576 takes 64), else -1 (one scale per row). ConfigError when `requested` does not divide them."""
    widths = [w for w in (config.get("hidden_size"), config.get("intermediate_size")) if isinstance(w, int) and w > 0]
    if requested is not None:
        if requested != -1 and any(w % requested for w in widths):
            raise ConfigError(f"groupSize {requested} must divide the model's layer widths {widths} (or be -1)"
                              ).suggesting(group_size="groupSize")
        return requested
    for g in (DEFAULT_GROUP_SIZE, 64, 32, 16):
        if all(w % g == 0 for w in widths):
            return g
    return -1


def _quantization_config(name: str) -> Any:
    import torch

    if name.startswith("bnb-"):
        from transformers import BitsAndBytesConfig

        if name == "bnb-int8":
            return BitsAndBytesConfig(load_in_8bit=True)
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=name.split("-")[1],
                                  bnb_4bit_compute_dtype=torch.float32)
    from transformers import TorchAoConfig

    try:
        from torchao.quantization import Int8WeightOnlyConfig
    except ImportError as e:
        raise QuantizeError(f"method {name!r} needs torchao (pip install torchao): {e}") from None
    return TorchAoConfig(Int8WeightOnlyConfig())


def _with_transformers(model_dir: str | os.PathLike, tmp: Path, name: str) -> None:
    """bitsandbytes and torchao: quantize while loading (transformers' quantizers), then save_pretrained."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    qc = _quantization_config(name)
    try:
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32, quantization_config=qc,
                                                     device_map={"": "cpu"}, use_safetensors=True)
        model.save_pretrained(tmp)
    except (ImportError, RuntimeError, ValueError, NotImplementedError) as e:
        raise QuantizeError(f"{name} quantization of {model_dir} failed: {str(e).splitlines()[0]}") from None
    AutoTokenizer.from_pretrained(str(model_dir)).save_pretrained(tmp)


def _gptq(model_dir: str | os.PathLike, tmp: Path, bits: int, texts: list[str], group_size: int,
          batch_size: int) -> None:
    """GPTQ through gptqmodel on the CPU (its worker pool needs >= 2 CPU workers: GPTQMODEL_CPU_WORKERS)."""
    os.environ.setdefault("GPTQMODEL_CPU_WORKERS", str(max(2, (os.cpu_count() or 2) // 2)))
    try:
        import optimum  # noqa: F401 - transformers needs it to load the result
        from gptqmodel import GPTQModel, QuantizeConfig
    except ImportError as e:  # installed (require_library) but broken
        raise QuantizeError(f"GPTQ needs gptqmodel and optimum ({e}); {INSTALL['gptqmodel']}") from None
    from transformers import AutoTokenizer

    try:
        model = GPTQModel.load(str(model_dir), QuantizeConfig(bits=bits, group_size=group_size), device="cpu")
        model.quantize(texts, batch_size=batch_size)
        model.save(str(tmp))
    except (RuntimeError, ValueError) as e:
        raise QuantizeError(f"GPTQ quantization of {model_dir} failed: {str(e).splitlines()[0]}") from None
    AutoTokenizer.from_pretrained(str(model_dir)).save_pretrained(tmp)


__all__ = ["ALIASES", "METHODS", "Method", "check_source", "gptq_group_size", "method_of", "quantize_model",
           "require_library"]
