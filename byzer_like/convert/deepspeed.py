"""A DeepSpeed ZeRO checkpoint made into a plain Hugging Face model directory.

    ckpt = find_checkpoint("runs/sfft-1/ray_train/sfft-1", tag=None)   # -> ZeroCheckpoint(dir, tag, stage, ...)
    convert_checkpoint(ckpt, model_dir="models/base", out_dir="models/trained")

The layout is DeepSpeed's (`engine.save_checkpoint(dir, tag)`): `dir/latest` names the newest tag, and
`dir/<tag>/` holds `mp_rank_00_model_states.pt` (ZeRO 0-2) or `zero_pp_rank_<r>_mp_rank_00_model_states.pt`
(ZeRO-3, one per rank) plus one `*_optim_states.pt` per rank with that rank's fp32 partition (ZeRO 1-3).
The weights are consolidated by DeepSpeed's own `deepspeed.utils.zero_to_fp32
.get_fp32_state_dict_from_zero_checkpoint` (the same code as the `zero_to_fp32.py` script DeepSpeed
writes beside its checkpoints); a ZeRO-0 checkpoint (no partitions) holds the whole module in its model
states file. This project's `sfft` writes one such checkpoint per Ray Train checkpoint folder
(`<run_dir>/ray_train/<run>/checkpoint_step_<n>/`, tag `ds`); a run folder holding those is accepted and
its newest checkpoint used.

The architecture, tokenizer and generation config come from `model_dir` (the model the run started
from: Byzer's `modelNameOrPath`). The files are Python pickles (as every DeepSpeed checkpoint): convert
only checkpoints you or this project wrote.
"""
from __future__ import annotations

import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import CheckpointError, ConvertError, ModelDirError
from .staging import dir_size, set_generation_ids, staged

EXPECTED = ("a DeepSpeed checkpoint folder: a `latest` file naming a tag, and <tag>/ holding "
            "mp_rank_00_model_states.pt (ZeRO 0-2) or zero_pp_rank_<r>_mp_rank_00_model_states.pt (ZeRO-3) "
            "with the ranks' *_optim_states.pt")
_MODEL_STATES = re.compile(r"(?:zero_pp_rank_\d+_)?mp_rank_\d+_model_states\.pt")
_RAY_CHECKPOINT = re.compile(r"checkpoint_step_(\d+)")


@dataclass(frozen=True)
class ZeroCheckpoint:
    """A DeepSpeed checkpoint found on disk: `checkpoint_dir` holds `tag`/ (the tag's folder is
    `path`); `stage` 0-3 as the files show it (3: per-rank model states); `ranks`: optimizer partitions."""

    checkpoint_dir: str
    tag: str
    stage: int
    ranks: int

    @property
    def path(self) -> str:
        return os.path.join(self.checkpoint_dir, self.tag)


def _tags(d: Path) -> list[str]:
    """Sub-folders of `d` that hold DeepSpeed model states."""
    if not d.is_dir():
        return []
    return sorted(p.name for p in d.iterdir() if p.is_dir() and any(_MODEL_STATES.fullmatch(f.name) for f in p.iterdir()))


def find_checkpoint(checkpoint_dir: str | os.PathLike, tag: str | None = None) -> ZeroCheckpoint:
    """The DeepSpeed checkpoint in `checkpoint_dir` (see the module doc for the layout) at `tag`
    (default: the one `latest` names, or the only tag there). A folder of Ray Train checkpoints
    (`checkpoint_step_<n>/`, as sfft writes) resolves to its highest step.

    Raises CheckpointError saying what was expected: the folder is missing, holds no DeepSpeed
    checkpoint (its contents are listed), the tag does not exist (the tags there are listed), or
    `latest` is missing and several tags are there."""
    d = Path(checkpoint_dir)
    if not d.is_dir():
        raise CheckpointError(f"checkpointDir {str(d)!r} does not exist; expected {EXPECTED}")
    tags = _tags(d)
    if not tags and not (d / "latest").is_file():
        steps = sorted((int(m.group(1)), p) for p in d.iterdir()
                       if (m := _RAY_CHECKPOINT.fullmatch(p.name)) and p.is_dir() and _tags(p))
        if steps:
            return find_checkpoint(steps[-1][1], tag)
        shown = ", ".join(sorted(p.name + ("/" if p.is_dir() else "") for p in d.iterdir())[:12]) or "nothing"
        raise CheckpointError(f"{d} holds no DeepSpeed ZeRO checkpoint (it has: {shown}); expected {EXPECTED}, "
                              "or a folder of sfft's checkpoint_step_<n>/ folders")
    if tag is None:
        latest = d / "latest"
        if latest.is_file():
            tag = latest.read_text().strip()
        elif len(tags) == 1:
            tag = tags[0]
        else:
            raise CheckpointError(f"{d} has no `latest` file and several tags ({', '.join(tags)}); name one with tag=\"...\"")
    if tag not in tags:
        raise CheckpointError(f"tag {tag!r} does not exist in {d}: no folder {tag}/ with DeepSpeed model states; "
                              f"tags there: {', '.join(tags) or '(none)'}")
    files = [f.name for f in (d / tag).iterdir()]
    zero3 = [f for f in files if f.startswith("zero_pp_rank_") and f.endswith("_model_states.pt")]
    optim = [f for f in files if f.endswith("_optim_states.pt")]
    stage = 3 if zero3 else (_stage_of(d / tag, optim) if optim else 0)
    return ZeroCheckpoint(str(d), tag, stage, len(optim))


def _stage_of(tag_dir: Path, optim: list[str]) -> int:
    """ZeRO 1 or 2, from the first optimizer partition's own record (a small read of one pickle)."""
    import torch

    try:
        sd = torch.load(tag_dir / sorted(optim)[0], map_location="cpu", weights_only=False)
        return int(sd["optimizer_state_dict"].get("zero_stage", 2))
    except Exception:  # noqa: BLE001 - DeepSpeed's own loader says what is wrong later
        return 2


def checkpoint_state_dict(ckpt: ZeroCheckpoint) -> dict[str, Any]:
    """The checkpoint's full fp32 weights (name -> tensor, on the CPU).

    ZeRO 1-3: DeepSpeed's `get_fp32_state_dict_from_zero_checkpoint` merges the ranks' fp32 partitions.
    ZeRO 0: the model states file's `module`. Raises CheckpointError when DeepSpeed cannot read it."""
    import torch

    if ckpt.stage == 0:
        sd = torch.load(Path(ckpt.path, "mp_rank_00_model_states.pt"), map_location="cpu", weights_only=False)
        return {k: v.float() for k, v in sd["module"].items()}
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    try:
        return get_fp32_state_dict_from_zero_checkpoint(ckpt.checkpoint_dir, tag=ckpt.tag)
    except (ValueError, FileNotFoundError, KeyError, RuntimeError) as e:
        raise CheckpointError(f"DeepSpeed could not consolidate {ckpt.path} (ZeRO-{ckpt.stage}, {ckpt.ranks} ranks): "
                              f"{e}; expected {EXPECTED}") from None


def convert_checkpoint(ckpt: ZeroCheckpoint, *, model_dir: str | os.PathLike, out_dir: str | os.PathLike) -> dict[str, Any]:
    """Write the weights of `ckpt` as a Hugging Face model directory `out_dir` (must not exist yet), with
    the config, tokenizer and generation config of `model_dir`.

    Every weight of the model must be in the checkpoint (tied ones may be left out); a checkpoint of
    another architecture or size is a ConvertError naming the first mismatches. Written in a staging
    folder, renamed on success. Returns {"model_dir", "checkpoint", "tag", "zero_stage", "ranks",
    "parameters", "bytes", "seconds"}."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    t0 = time.monotonic()
    base = Path(model_dir)
    if not (base / "config.json").is_file():
        raise ModelDirError(f"modelNameOrPath {str(base)!r} is not a Hugging Face model directory (no config.json); "
                            "give the model the run started from (its config and tokenizer are used)")
    state = checkpoint_state_dict(ckpt)
    config = AutoConfig.from_pretrained(str(base))
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    expected = model.state_dict()
    shapes = [f"{k}: checkpoint {tuple(v.shape)}, model {tuple(expected[k].shape)}"
              for k, v in state.items() if k in expected and tuple(v.shape) != tuple(expected[k].shape)]
    unexpected = [k for k in state if k not in expected]
    if shapes or unexpected:
        raise ConvertError(f"the checkpoint in {ckpt.path} does not fit the model of {base}: "
                           f"{'; '.join((shapes + [f'unexpected {k}' for k in unexpected])[:4])}; "
                           "give the model the run started from as modelNameOrPath")
    result = model.load_state_dict(state, strict=False)
    tied = set(getattr(model, "_tied_weights_keys", None) or [])
    missing = [k for k in result.missing_keys if k not in tied and not _is_tied(model, k)]
    if missing:
        raise ConvertError(f"the checkpoint in {ckpt.path} lacks weights of the model of {base}: "
                           f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
    model.tie_weights()
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(str(base))
    out = Path(out_dir)
    with staged(out) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        gen = base / "generation_config.json"
        if gen.is_file():
            shutil.copyfile(gen, tmp / "generation_config.json")
        else:
            set_generation_ids(model, tokenizer)
            model.generation_config.save_pretrained(tmp)
    return {"model_dir": str(out), "checkpoint": ckpt.checkpoint_dir, "tag": ckpt.tag, "zero_stage": ckpt.stage,
            "ranks": ckpt.ranks, "parameters": int(sum(p.numel() for p in model.parameters())),
            "bytes": dir_size(out), "seconds": round(time.monotonic() - t0, 2)}


def _is_tied(model: Any, key: str) -> bool:
    """A weight left out of a checkpoint because it is the same tensor as another (lm_head = embeddings)."""
    if key != "lm_head.weight" or not getattr(model.config, "tie_word_embeddings", False):
        return False
    return True


__all__ = ["EXPECTED", "ZeroCheckpoint", "checkpoint_state_dict", "convert_checkpoint", "find_checkpoint"]
