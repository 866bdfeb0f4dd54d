"""Preference data: the forms a table may take for dpo / orpo (pairs) and kto (labelled completions), read
into TRL's conversational examples, and the checks a job runs before it is submitted.

Pair forms (dpo, orpo), by the table's columns:
- prompt: `prompt`, `chosen`, `rejected` (optional `system`); `prompt` is the user's message, or a list of
  {role, content} messages (or the same as JSON text) ending with the user's turn;
- alpaca: `instruction`, `chosen`, `rejected` (optional `input`, `system`, `history`), as sft's alpaca form
  with two answers in place of `output` (LLaMA-Factory's preference form);
- chat: `messages` (the conversation before the answers), `chosen`, `rejected`.
`chosen` / `rejected` are the answer's text, or an assistant message list (or its JSON).

KTO forms: the same prompt columns with `completion` (the answer) and `label` (boolean: true = desirable;
also 1/0 or the text true/false/yes/no).

Examples are TRL's conversational form (`{"prompt": [messages], "chosen": [assistant message], ...}`): TRL
renders them with the tokenizer's chat template, the one serving applies. This module imports no torch.
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

import pyarrow as pa

from ..errors import ConfigError
from .data import _json_list, _message, _text

PAIR_ANSWERS = ("chosen", "rejected")
PAIR_FORMS_HELP = ("prompt, chosen, rejected (optional system); or instruction, chosen, rejected (optional input, "
                   "system, history); or messages (the conversation before the answers), chosen, rejected")
KTO_FORMS_HELP = ("prompt (or instruction with optional input, or messages), completion, label (boolean: true "
                  "for a desirable completion)")
SHOWN_ROWS = 5  # row numbers quoted in an error
TRUE = {"true", "1", "yes", "y", "t"}
FALSE = {"false", "0", "no", "n", "f"}


def prompt_form(columns: Sequence[str]) -> str | None:
    """`chat` (messages), `prompt` or `alpaca` (instruction) from a table's columns; None when none is there."""
    cols = {c.lower() for c in columns}
    for form, column in (("chat", "messages"), ("prompt", "prompt"), ("alpaca", "instruction")):
        if column in cols:
            return form
    return None


def pair_form(columns: Sequence[str]) -> str:
    """The pair form of a dpo / orpo table (see the module docstring); a ConfigError naming the accepted forms
    and what is missing otherwise."""
    cols = {c.lower() for c in columns}
    form = prompt_form(columns)
    missing = [c for c in PAIR_ANSWERS if c not in cols] + ([] if form else ["prompt"])
    if missing:
        hint = (" (an sft table: its `output` is one answer; a preference table needs a chosen and a rejected "
                "answer per prompt)" if "output" in cols else "")
        raise ConfigError(f"the preference table has columns {', '.join(columns) or '(none)'}; missing "
                          f"{', '.join(missing)}{hint}. Accepted forms: {PAIR_FORMS_HELP}")
    return form


def kto_form(columns: Sequence[str]) -> str:
    """The prompt form of a kto table; a ConfigError naming the accepted form and what is missing otherwise."""
    cols = {c.lower() for c in columns}
    form = prompt_form(columns)
    missing = [c for c in ("completion", "label") if c not in cols] + ([] if form else ["prompt"])
    if missing:
        hint = (" (a pair table: train it with dpo or orpo, or give one row per answer with label true for the "
                "chosen and false for the rejected one)" if {"chosen", "rejected"} <= cols else "")
        raise ConfigError(f"the kto table has columns {', '.join(columns) or '(none)'}; missing "
                          f"{', '.join(missing)}{hint}. Expected: {KTO_FORMS_HELP}")
    return form


def prompt_messages(row: Mapping[str, Any], form: str, i: int) -> list[dict[str, str]]:
    """The messages before the answer of row `i` (1-based, for errors), ending with the user's turn."""
    if form == "chat":
        msgs = [_message(m, i) for m in _json_list(row.get("messages"), "messages", i)]
    else:
        msgs = [{"role": "system", "content": _text(row["system"])}] if row.get("system") else []
        if form == "alpaca":
            for h in _json_list(row.get("history"), "history", i):
                if isinstance(h, (list, tuple)) and len(h) == 2:
                    msgs += [{"role": "user", "content": _text(h[0])}, {"role": "assistant", "content": _text(h[1])}]
                else:
                    msgs.append(_message(h, i))
            if row.get("instruction") is None:
                raise ConfigError(f"row {i}: instruction is NULL; every row needs its prompt")
            instruction, extra = _text(row.get("instruction")), _text(row.get("input"))
            msgs.append({"role": "user", "content": f"{instruction}\n{extra}" if extra.strip() else instruction})
        else:
            value = row.get("prompt")
            if value is None:
                raise ConfigError(f"row {i}: prompt is NULL; every row needs its prompt")
            looks_json = isinstance(value, str) and value.lstrip().startswith("[{")
            if isinstance(value, (list, tuple)) or looks_json:
                msgs += [_message(m, i) for m in _json_list(value, "prompt", i)]
            else:
                msgs.append({"role": "user", "content": _text(value)})
    if not msgs or msgs[-1]["role"] != "user":
        raise ConfigError(f"row {i}: the prompt must end with a user message (the answers follow it)")
    return msgs


def answer_messages(value: Any, what: str, i: int) -> list[dict[str, str]]:
    """`chosen` / `rejected` / `completion` of row `i` as assistant messages: a text, or messages (or JSON)."""
    if value is None:
        raise ConfigError(f"row {i}: {what} is NULL; every row needs it (filter such rows out first: "
                          f"`select * from t where {what} is not null as t2`)")
    looks_json = isinstance(value, str) and value.lstrip().startswith("[{")
    if isinstance(value, (list, tuple)) or looks_json:
        msgs = [_message(m, i) for m in _json_list(value, what, i)]
        if not msgs or any(m["role"] != "assistant" for m in msgs):
            raise ConfigError(f"row {i}: {what} must be the answer: a text, or assistant messages only")
        return msgs
    return [{"role": "assistant", "content": _text(value)}]


def _lower(row: Mapping[str, Any]) -> dict[str, Any]:
    return {k.lower(): v for k, v in row.items()}


def pairs(rows: Iterable[Mapping[str, Any]], form: str) -> list[dict[str, list[dict[str, str]]]]:
    """Each row as TRL's conversational preference example `{"prompt", "chosen", "rejected"}`. A ConfigError for
    NULLs, for a bad message, and for rows whose chosen answer equals the rejected one (they teach nothing:
    counted, their row numbers quoted)."""
    out, same = [], []
    for i, r in enumerate(rows, 1):
        r = _lower(r)
        ex = {"prompt": prompt_messages(r, form, i), "chosen": answer_messages(r.get("chosen"), "chosen", i),
              "rejected": answer_messages(r.get("rejected"), "rejected", i)}
        if [m["content"].strip() for m in ex["chosen"]] == [m["content"].strip() for m in ex["rejected"]]:
            same.append(i)
        out.append(ex)
    if same:
        shown = ", ".join(map(str, same[:SHOWN_ROWS])) + (", ..." if len(same) > SHOWN_ROWS else "")
        raise ConfigError(f"{len(same)} of {len(out)} rows have the chosen answer equal to the rejected one (rows "
                          f"{shown}): such a pair teaches nothing; filter them out first "
                          "(`select * from t where chosen != rejected as t2`)")
    return out


def label(value: Any, i: int) -> bool:
    """A KTO label: a boolean, 1/0, or the text true/false/yes/no; ConfigError otherwise."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in TRUE | FALSE:
        return value.strip().lower() in TRUE
    raise ConfigError(f"row {i}: label must be a boolean (true: a desirable completion, false: an undesirable "
                      f"one), got {value!r}")


def kto_examples(rows: Iterable[Mapping[str, Any]], form: str) -> list[dict[str, Any]]:
    """Each row as TRL's conversational KTO example `{"prompt", "completion", "label"}`; ConfigError for NULLs,
    bad messages and labels that are no boolean."""
    out = []
    for i, r in enumerate(rows, 1):
        r = _lower(r)
        out.append({"prompt": prompt_messages(r, form, i),
                    "completion": answer_messages(r.get("completion"), "completion", i),
                    "label": label(r.get("label"), i)})
    return out


def examples(task: str, table: pa.Table) -> list[dict[str, Any]]:
    """The table's rows as TRL examples for `task` (dpo, orpo: pairs; kto: labelled completions)."""
    rows = table.to_pylist()
    if task == "kto":
        return kto_examples(rows, kto_form(table.column_names))
    return pairs(rows, pair_form(table.column_names))


# -- the checks of the task table (`tasks.TASKS`), run before a job is submitted ------------------------------
SAMPLE_ROWS = 2000  # rows whose prompts are tokenized up front


def _check(task: str, opts: Any, table: pa.Table, base_dir: str, plugin: Any) -> None:
    """Every row reads as `task`'s form; the tokenizer renders prompts (a chat template, or the plugin's
    fallback); some of the first SAMPLE_ROWS prompts leave room for an answer within maxLength."""
    from .sft import prepare_tokenizer

    exs = examples(task, table)
    if task == "kto" and opts.loss_type == "kto" and table.num_rows < 2:
        raise ConfigError("KTO's loss needs at least 2 rows (it estimates its KL term from the other rows of a "
                          "batch); add rows or use lossType=\"apo_zero_unpaired\"")
    tok = prepare_tokenizer(base_dir, getattr(plugin.target, "fallback_chat_template", None))
    if not tok.chat_template:
        raise ConfigError(f"the tokenizer of {base_dir} has no chat template to render the prompts with, and the "
                          f"{plugin.name!r} plugin has none either; use a chat model or a plugin with a template")
    if opts.max_prompt_length is not None:
        return  # prompts are cut to maxPromptLength < maxLength: every row keeps room for its answer
    lengths = [len(tok.apply_chat_template(e["prompt"], tokenize=True, add_generation_prompt=True,
                                           return_dict=True)["input_ids"]) for e in exs[:SAMPLE_ROWS]]
    if lengths and min(lengths) >= opts.max_length:
        raise ConfigError(f"maxLength={opts.max_length} is too small for every row: the shortest prompt alone has "
                          f"{min(lengths)} tokens; raise maxLength above {min(lengths)} or set maxPromptLength")


def check_dpo(opts: Any, table: pa.Table, base_dir: str, plugin: Any, setup: Any) -> None:
    """dpo's check (the task table's `check`): a pair form, no NULLs, chosen != rejected, prompts that fit."""
    _check("dpo", opts, table, base_dir, plugin)


def check_orpo(opts: Any, table: pa.Table, base_dir: str, plugin: Any, setup: Any) -> None:
    """orpo's check: as dpo's."""
    _check("orpo", opts, table, base_dir, plugin)


def check_kto(opts: Any, table: pa.Table, base_dir: str, plugin: Any, setup: Any) -> None:
    """kto's check: prompt / completion / boolean label rows, prompts that fit, 2 rows for the kto loss."""
    _check("kto", opts, table, base_dir, plugin)


__all__ = ["KTO_FORMS_HELP", "PAIR_FORMS_HELP", "answer_messages", "check_dpo", "check_kto", "check_orpo",
           "examples", "kto_examples", "kto_form", "label", "pair_form", "pairs", "prompt_form", "prompt_messages"]
