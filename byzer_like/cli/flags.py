"""Flags made from an option model's fields: each command group declares, in a small table (`ModelFlags`),
which model it fills and which of its fields it takes; `add_model_flags` adds them to its parser, `given`
collects what the command line gave, `unflagged` lets a flag win over a key=value pair of the same field.
The option models are pydantic models (`config.py`, `train/options.py`): a command group imports this module
when its parser is built, not before (see `cli/__init__.py`)."""
from __future__ import annotations

import argparse
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping

from pydantic import BaseModel
from pydantic.alias_generators import to_snake
from pydantic_core import PydanticUndefined

from ..config import split_typed_key


@dataclass(frozen=True)
class ModelFlags:
    """The fields of one option model that a command takes as flags: the command's declarative table.

    Each field becomes `--kebab-case` of its name (or the spellings `flags` gives it, the first one shown),
    with `dest` the field's name, `type` and `choices` from its annotation and help from its description and
    default. A flag not given is absent from the parsed arguments, so that only what the user gave reaches
    the model, which applies its own defaults and checks; `defaults` are the command's own defaults, which
    always reach it. `required`: fields the command needs although the model does not. `switches`: booleans
    that are one flag, on when given (as the CLI has always had them); other booleans are `--x / --no-x`.
    `notes`: text added to a field's help."""

    model: type[BaseModel]
    fields: tuple[str, ...]
    flags: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    required: tuple[str, ...] = ()
    defaults: Mapping[str, Any] = field(default_factory=dict)
    switches: tuple[str, ...] = ()
    notes: Mapping[str, str] = field(default_factory=dict)


# the setup values that say which workers a deployment or a job runs on (flags of `deploy` and `train`)
WORKER_FIELDS = ("num_workers", "cpus_per_worker", "gpus_per_worker")


def add_model_flags(parser: argparse.ArgumentParser, spec: ModelFlags) -> None:
    """Add a flag to `parser` for each field of `spec` (see ModelFlags)."""
    for name in spec.fields:
        info = spec.model.model_fields[name]
        flags = spec.flags.get(name) or ("--" + name.replace("_", "-"),)
        kind, choices = flag_type(info.annotation, f"{spec.model.__name__}.{name}")
        default = spec.defaults.get(name, info.default)
        kwargs: dict[str, Any] = {"dest": name, "default": spec.defaults.get(name, argparse.SUPPRESS),
                                  "required": name in spec.required or info.is_required()}
        if kind is bool and name in spec.switches:
            kwargs["action"], default = "store_true", None  # off unless given: no default to show
        elif kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs.update(type=kind, choices=choices)
            if choices is None:  # argparse's own metavar is the dest's; the flag's reads better (--type TYPE)
                kwargs["metavar"] = flags[0].lstrip("-").replace("-", "_").upper()
        parser.add_argument(*flags, help=_help(info.description, default, spec.notes.get(name)), **kwargs)


def given(args: argparse.Namespace, *specs: ModelFlags) -> dict[str, Any]:
    """The fields of `specs` the command line gave (or the command defaults), by field name."""
    return {name: getattr(args, name) for spec in specs for name in spec.fields if hasattr(args, name)}


def unflagged(values: Mapping[str, str], model: type[BaseModel], flags: Mapping[str, Any], *,
              prefix: str = "") -> dict[str, str]:
    """`values` (`--param` / `--option` key=value pairs) less the keys that set a field a flag gave: the flag
    wins, whichever way the key spells the field (`maxSeqLength`, an alias such as `epochs`, Byzer's typed
    `sft.int.max_seq_length`, with `prefix` the task's `sft.`)."""
    def flagged(key: str) -> bool:
        name = split_typed_key(key)[0].removeprefix(prefix)
        return any(f in model.model_fields and (name in model.spellings(f) or to_snake(name) == f) for f in flags)

    return {k: v for k, v in values.items() if not flagged(k)}


def flag_type(annotation: Any, where: str) -> tuple[type, tuple | None]:
    """A field's annotation as argparse's (type, choices): int, float, str, bool, or a Literal of one of them
    (its values are the choices), each also `| None`. TypeError for any other: such a field takes no flag."""
    options = [annotation]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(annotation) if a is not type(None)]
    if len(options) == 1 and typing.get_origin(options[0]) is Literal:
        values = typing.get_args(options[0])
        return type(values[0]), values
    if len(options) == 1 and options[0] in (int, float, str, bool):
        return options[0], None
    raise TypeError(f"{where}: a flag takes int, float, str, bool or a Literal of them, not {annotation!r}")


def _help(description: str | None, default: Any, note: str | None) -> str:
    """A flag's help: the field's description, then its default (unless the description says it, or there
    is none) and the command's note; `%` escaped for argparse."""
    extra = [note] if note else []
    if "default" not in (description or "") and default is not None and default is not PydanticUndefined:
        shown = ("on" if default else "off") if isinstance(default, bool) else (
            f"{default:g}" if isinstance(default, float) else str(default))
        extra.insert(0, f"default: {shown}")
    text = (description or "") + (f" ({'; '.join(extra)})" if extra else "")
    return text.strip().replace("%", "%%")
