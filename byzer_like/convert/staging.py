"""Write a model directory aside and rename it into place on success.

    with staged(out_dir) as tmp:     # tmp: `.<name>.tmp-<pid>-<random>` beside out_dir
        model.save_pretrained(tmp)
    # out_dir exists now, complete; on an exception tmp is removed and out_dir is untouched

Also the small pieces every conversion shares: the size of a directory on disk and the generation
config's special token ids taken from the tokenizer.
"""
from __future__ import annotations

import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from ..errors import ConvertError


@contextmanager
def staged(out_dir: str | os.PathLike) -> Iterator[Path]:
    """A fresh staging folder beside `out_dir`, renamed to `out_dir` when the block succeeds.

    Raises ConvertError when `out_dir` already exists (a conversion never writes over a directory);
    on any exception in the block the staging folder is removed and the exception goes on."""
    out = Path(out_dir)
    if out.exists():
        raise ConvertError(f"{out} already exists; a conversion writes a new directory (remove it or choose another)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        yield tmp
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def dir_size(path: str | os.PathLike) -> int:
    """Bytes of every file under `path` (weights, config, tokenizer)."""
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def weights_size(path: str | os.PathLike) -> int:
    """Bytes of the weight files (`*.safetensors`) under `path`."""
    return sum(f.stat().st_size for f in Path(path).glob("*.safetensors"))


def set_generation_ids(model: Any, tokenizer: Any) -> None:
    """The generation config's eos / bos / pad token ids from the tokenizer, where it has them (a model
    made from a GGUF file or a bare config otherwise stops at the wrong token or pads with None). The
    tokenizer gets a pad token (its eos) when it has none."""
    if tokenizer.pad_token_id is None and tokenizer.eos_token_id is not None:
        tokenizer.pad_token = tokenizer.eos_token
    gen = model.generation_config
    for key in ("eos_token_id", "bos_token_id", "pad_token_id"):
        value = getattr(tokenizer, key, None)
        if value is not None:
            setattr(gen, key, value)
            setattr(model.config, key, value)


__all__ = ["dir_size", "set_generation_ids", "staged", "weights_size"]
