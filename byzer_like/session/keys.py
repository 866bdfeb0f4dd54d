"""The Byzer key table: every key the dialect's statements take, generated from the option models.

`markdown()` is the page docs/byzer_keys.md (written by `python3 dev.py docs-keys`, i.e. `python -m
byzer_like.session.keys --write`; a test fails when the committed page differs from what the models
generate). Each option model gives one section:
the key as SQL spells it (Byzer's word where it has one), its other spellings, its type and default and what
it does here, from the field's description. `BYZER_ONLY` adds the keys Byzer-LLM's statements and client read
that no model declares: accepted, and why they change nothing here.

The training tasks' models are reached through the task table (`tasks.TASKS`, import paths resolved on use),
so this module, like the rest of the session, imports nothing of the training layer.
"""
from __future__ import annotations

import argparse
import sys
import types
import typing
from pathlib import Path
from typing import Any, Iterable, Literal, Union

from pydantic.alias_generators import to_camel
from pydantic_core import PydanticUndefined

from .. import tasks
from ..config import (REQUEST_KEYS, ConvertOptions, DeployOptions, EvalOptions, MergeOptions, QuantizeOptions,
                      RepartitionOptions, SetupConfig, _Options)
from .io import LoadOptions, SaveOptions

PAGE = Path("docs") / "byzer_keys.md"  # relative to the repository's root

# Keys Byzer-LLM's statements or client read that no option model declares: (key, where it goes, why it changes
# nothing here). Each is accepted as it is (a setup key goes to sys_conf, a deploy key to the plugin's
# infer_params); tests/test_byzer_keys.py checks that each still is.
BYZER_ONLY: tuple[tuple[str, str, str], ...] = (
    ("OWNER", "!byzerllm setup", "Byzer's user of the script: passed to every plugin in sys_conf as given; no "
     "built-in plugin reads it"),
    ("runIn", "!byzerllm setup", "where Byzer starts its Python workers (driver or executor): here every worker "
     "is a Ray actor; passed to plugins in sys_conf"),
    ("resource.<name>", "!byzerllm setup", "Byzer's custom Ray resources per worker: passed to plugins in "
     "sys_conf; workers here reserve cpus_per_worker / gpus_per_worker"),
    ("load_balance", "!byzerllm setup", "how Byzer's master actor picks a worker (lru, round_robin): Ray Serve's "
     "router picks the replica here; passed to plugins in sys_conf"),
    ("udfType", "action=\"infer\"", "Byzer's kind of registered function: every deployment is one vectorised "
     "SQL function here; passed to the plugin's infer_params"),
    ("use_fp16", "action=\"infer\"", "Byzer's half-precision switch: here dtype=\"float16\" says it; passed to "
     "the plugin's infer_params"),
    ("quantization", "action=\"infer\"", "Byzer's plugins' own switch (the guide's MOSS example): passed to the "
     "plugin's infer_params; the built-in plugins load quantized with loadIn4Bit / loadIn8Bit"),
)

# one section per option model: (title, how the statement is written, the model)
SECTIONS: tuple[tuple[str, str, Any], ...] = (
    ("!byzerllm setup", '`!byzerllm setup "key=value";` (sys_conf; `!byzerllm setup sft;` sets mode)', SetupConfig),
    ('action="infer"', '`run command as LLM.`` where action="infer" and ...;` (deploy)', DeployOptions),
    ("sft", '`run command as LLM.`` where pretrainedModelType="sft/<family>" and ...;`', "sft"),
    ("sfft", '`run command as LLM.`` where pretrainedModelType="sfft/<family>" and ...;`', "sfft"),
    ("dpo", '`run command as LLM.`` where pretrainedModelType="dpo/<family>" and ...;`', "dpo"),
    ("orpo", '`run command as LLM.`` where pretrainedModelType="orpo/<family>" and ...;`', "orpo"),
    ("kto", '`run command as LLM.`` where pretrainedModelType="kto/<family>" and ...;`', "kto"),
    ("rm", '`run command as LLM.`` where pretrainedModelType="rm/<family>" and ...;` (reward models)', "rm"),
    ("ppo", '`run command as LLM.`` where pretrainedModelType="ppo/<family>" and rewardModel="..." and ...;` '
     "(TRL's RLOO against a reward model)", "ppo"),
    ('action="merge"', '`run command as LLM.`` where action="merge" and ...;`', MergeOptions),
    ('action="convert"', '`run command as LLM.`` where action="convert" and ...;`', ConvertOptions),
    ('action="quantize"', '`run command as LLM.`` where action="quantize" and ...;`', QuantizeOptions),
    ('action="eval"', '`run command as LLM.`` where action="eval" and ...;`', EvalOptions),
    ("TableRepartition", '`run <t> as TableRepartition.`` where partitionNum="4" as <t2>;`', RepartitionOptions),
    ("load", '`load <format>.`<path>` where ... as <t>;` (keys case-insensitive, as in Spark)', LoadOptions),
    ("save", '`save <mode> <t> as <format>.`<path>` where ...;`', SaveOptions),
)


def model_of(entry: Any) -> type[_Options]:
    """A section's options model: the class itself, or a training task's (by its name in `tasks.TASKS`)."""
    return tasks.get(entry).options_model() if isinstance(entry, str) else entry


def rows(model: type[_Options]) -> list[dict[str, str]]:
    """One row per key of `model`: {"key", "also", "type", "default", "what"} (`also`: its other names, besides
    the key's camelCase and snake_case spellings).
    Fields a model hides from users (`HIDDEN`, e.g. setup's `custom`) are left out."""
    out = []
    snake = model.spelling == "snake"
    for name, field in model.model_fields.items():
        if name in model.HIDDEN or name == "action":  # action="..." names the section itself
            continue
        key = name if snake else model.sql_key(name)
        also = sorted(model.spellings(name) - {key, name, to_camel(name)})  # Byzer's and the client's other names
        what = field.description or ""
        if name in getattr(model, "NO_EFFECT", {}) and "no effect" not in what:
            what = f"{what} — accepted, no effect: {model.NO_EFFECT[name]}"
        out.append({"key": key, "also": also, "type": type_name(field.annotation),
                    "default": _default(field), "what": what})
    return out


def type_name(annotation: Any) -> str:
    """A field's type as the table shows it: `int`, `number`, `bool`, `text`, `list`, `JSON object`, `a | b`
    for a Literal; `| None` (optional) is left out, since the default column says it."""
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return " | ".join(str(a) for a in typing.get_args(annotation))
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return " | ".join(type_name(a) for a in args)
    if origin in (list, tuple):
        return "list"
    if origin is dict or annotation is dict:
        return "JSON object"
    return {str: "text", int: "int", float: "number", bool: "bool"}.get(annotation, getattr(annotation, "__name__", str(annotation)))


def _default(field: Any) -> str:
    if field.default is PydanticUndefined and field.default_factory is None:
        return "required"
    value = field.default_factory() if field.default_factory is not None else field.default
    if value is None or value == {} or value == []:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return f"`{value}`"


def _cell(text: str) -> str:
    """A table cell: `|` escaped, one line, and `<` outside code spans written `&lt;` (no HTML tag)."""
    parts = text.replace("|", "\\|").replace("\n", " ").split("`")
    return "`".join(p if i % 2 else p.replace("<", "&lt;") for i, p in enumerate(parts))


def _table(header: Iterable[str], body: Iterable[Iterable[str]]) -> list[str]:
    header = list(header)
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in body]
    return lines


def markdown() -> str:
    """docs/byzer_keys.md, generated: a section per statement (SECTIONS), then Byzer's keys accepted with no
    effect (BYZER_ONLY) and the request keys of `llm_param(map(...))`."""
    out = [
        "# Byzer keys",
        "",
        "<!-- generated by `python3 dev.py docs-keys` from the option models "
        "(byzer_like/config.py, byzer_like/train/options.py, byzer_like/session/io.py); "
        "tests/test_byzer_keys.py fails when this page differs from what they generate: edit the models' "
        "descriptions, then regenerate -->",
        "",
        "Every key the statements of the [SQL dialect](sql.md) take, as Byzer-LLM spells it, with what it does here. "
        "A `where` key is accepted in camelCase (`localModelDir`) or snake_case (`local_model_dir`), a setup key in "
        "snake_case or Byzer's camelCase; the *also* column lists the other names Byzer-LLM and its client use. "
        "A key no statement takes is an error with a \"did you mean\" and the valid keys, except where a section "
        "says otherwise. Training keys may carry Byzer's typed prefix: `` `sft.int.max_seq_length`=\"512\" ``.",
        "",
    ]
    for title, how, entry in SECTIONS:
        model = model_of(entry)
        out += [f"## {title}", "", f"{how}", ""]
        if model is SetupConfig:
            out += ["A key no setting names (Byzer's `OWNER`, a plugin's own) is passed to every plugin in "
                    "`sys_conf` as given; one that is one edit away from a setting is a typo (an error).", ""]
        if model is DeployOptions:
            out += ["A key no option names is passed to the plugin's `init_model` in `infer_params` as given (a "
                    "built-in plugin reads none of them: the statement's message names them); one that is one "
                    "edit away from an option is a typo (an error).", ""]
        out += _table(("key", "also", "type", "default", "what it does here"),
                      ([f"`{r['key']}`", ", ".join(f"`{a}`" for a in r["also"]), r["type"],
                        r["default"], r["what"]] for r in rows(model)))
        out.append("")
    out += ["## Byzer's keys accepted with no effect", "",
            "Keys Byzer-LLM's statements and client read that byzer-like has no use for. Each is accepted (so "
            "Byzer scripts run as they are) and handed on as Byzer hands it.", ""]
    out += _table(("key", "where", "why it changes nothing here"), ([f"`{k}`", w, why] for k, w, why in BYZER_ONLY))
    out += ["", "## Request keys", "",
            "The keys of a model call, `llm_param(map(\"instruction\", ..., \"temperature\", 0.1))` in SQL "
            "(`llm_config` in the client): " + ", ".join(f"`{k}`" for k in sorted(REQUEST_KEYS))
            + "; `generation.<x>` / `gen.<x>` reach the plugin's `stream_chat` as the keyword argument `x`. "
            "Any other key is an error listing these.", ""]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    """`python -m byzer_like.session.keys [--write] [--root DIR]`: print the page, or write docs/byzer_keys.md."""
    p = argparse.ArgumentParser(prog="python -m byzer_like.session.keys", description="the Byzer key table")
    p.add_argument("--write", action="store_true", help=f"write {PAGE} under --root instead of printing it")
    p.add_argument("--root", default=".", help="the repository's root (default: the current directory)")
    args = p.parse_args(argv)
    text = markdown()
    if args.write:
        (Path(args.root) / PAGE).write_text(text, encoding="utf-8")
        print(f"wrote {Path(args.root) / PAGE}")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["BYZER_ONLY", "PAGE", "SECTIONS", "markdown", "model_of", "rows", "type_name"]
