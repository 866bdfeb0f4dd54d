"""Eval sets: a table of prompts (the forms training takes) with, for reference metrics, a reference column.

    alpaca   instruction [, input, system, history], output          (the reference: output)
    chat     messages (ending with the assistant's answer: the reference; or with the user's turn)
    prompts  prompt | question | instruction, and reference | answer | output | label | target
    text     text (one column of text): only perplexity, which scores the text itself

`referenceColumn` / `promptColumn` name the columns when the table's names differ. Each row gets a key
(a hash of its prompt and reference) that pairs rows across evaluations, and the set a fingerprint
(a hash of its keys, in order), recorded with every evaluation so that results on the same set can be
compared. This module imports neither ray nor torch.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Sequence

from ..config import as_text
from ..errors import EvalSetError

PROMPT_COLUMNS = ("instruction", "prompt", "question", "query", "input_text")
REFERENCE_COLUMNS = ("output", "reference", "answer", "label", "target", "expected")
FORMS_HELP = ("alpaca form (instruction, output; optional input, system, history), chat form (messages), "
              "prompt + reference columns (prompt / question and reference / answer / output / label), "
              "or one text column (perplexity only)")


@dataclass
class EvalSet:
    """The rows of an eval set, ready to ask: `prompts[i]` is the chat messages of row i (ending with the
    user's turn), `questions[i]` its last user text (what a judge is shown), `references[i]` its
    reference (None: none), `texts` the text rows of a text-only set (perplexity). `keys` and
    `fingerprint` as in the module docstring; `name`: the table's name, when it had one."""

    prompts: list[list[dict[str, str]]]
    questions: list[str]
    references: list[str | list[str] | None]  # a list: several references, the best counts (reference_value)
    keys: list[str]
    fingerprint: str
    form: str
    name: str | None = None
    extra: dict[str, list[Any]] = field(default_factory=dict)  # the table's other columns, kept in the per-row table

    @property
    def rows(self) -> int:
        return len(self.keys)

    @property
    def has_references(self) -> bool:
        return any(r is not None for r in self.references)


def _lower(names: Sequence[str]) -> dict[str, str]:
    return {n.lower(): n for n in names}


def _messages(value: Any, row: int) -> list[dict[str, str]]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise EvalSetError(f"eval row {row}: messages is not JSON; give a list of {{\"role\", \"content\"}}") from None
    if not isinstance(value, (list, tuple)) or not value:
        raise EvalSetError(f"eval row {row}: messages must be a non-empty list of {{\"role\", \"content\"}} messages")
    out = []
    for m in value:
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise EvalSetError(f"eval row {row}: each message needs role and content, got {m!r}")
        out.append({"role": str(m["role"]), "content": as_text(m["content"])})
    return out


def from_table(table: Any, *, name: str | None = None, reference_column: str | None = None,
               prompt_column: str | None = None, need_reference: bool = False) -> EvalSet:
    """An eval set from a table (pyarrow, pandas, or a list of row dicts).

    Raises EvalSetError: an empty table, no prompt column (listing the forms), a named column that is
    missing, no reference column (or only NULL references) when `need_reference` (a reference metric
    was asked for)."""
    rows = _rows(table)
    if not rows:
        raise EvalSetError(f"eval table {name or ''} has no rows".replace("  ", " "))
    columns = list(rows[0].keys())
    cols = _lower(columns)
    what = f"eval table {name!r}" if name else "the eval table"

    def need(col: str, option: str) -> str:
        if col.lower() not in cols:
            raise EvalSetError(f"{option}={col!r} is not a column of {what}; its columns: {', '.join(columns)}")
        return cols[col.lower()]

    ref_col = need(reference_column, "referenceColumn") if reference_column else None
    form, p_col = _form(cols, columns, need(prompt_column, "promptColumn") if prompt_column else None, what)
    if ref_col is None and form != "chat":
        ref_col = next((cols[c] for c in REFERENCE_COLUMNS if c in cols and cols[c] != p_col), None)
    prompts, questions, references = [], [], []
    for i, r in enumerate(rows, 1):
        msgs, ref = _row_prompt(r, i, form, p_col, r.get(ref_col) if ref_col else None, ref_col is None)
        prompts.append(msgs)
        questions.append(msgs[-1]["content"])
        references.append(reference_value(ref))
    if need_reference and (ref_col is None and form != "chat" or not any(x is not None for x in references)):
        raise EvalSetError(f"{what} has no reference column for the reference metrics (columns: {', '.join(columns)}); "
                           f"add one named {' / '.join(REFERENCE_COLUMNS)}, name it with referenceColumn=\"<column>\", "
                           "or ask only for judge / perplexity metrics")
    keys = [_key(p, ref) for p, ref in zip(prompts, references)]
    fingerprint = hashlib.sha256("\n".join(keys).encode()).hexdigest()[:16]
    skip = {p_col, ref_col}
    extra = {c: [r.get(c) for r in rows] for c in columns if c not in skip and _scalar_column(rows, c)}
    return EvalSet(prompts, questions, references, keys, fingerprint, form, name, extra)


def reference_value(value: Any) -> str | list[str] | None:
    """A reference cell as the metrics take it: a list (an array column; SQuAD's `answers` struct, whose `text`
    list is taken) is several references, the best of which counts for every metric; None and an empty list
    are no reference; anything else is one reference as text (`config.as_text`)."""
    if isinstance(value, dict) and isinstance(value.get("text"), (list, tuple)):
        value = value["text"]
    if isinstance(value, (list, tuple)):
        refs = [as_text(v) for v in value if v is not None]
        return refs or None
    return None if value is None else as_text(value)


def shown_reference(value: str | list[str] | None) -> str | None:
    """A reference as one text (a table's cell, a judge's prompt): several references joined by " | "."""
    return " | ".join(value) if isinstance(value, list) else value


def _form(cols: dict[str, str], columns: list[str], prompt_column: str | None, what: str) -> tuple[str, str]:
    """The eval table's form and its prompt column: the named one ("prompts"), `messages` ("chat"),
    `instruction` ("alpaca"), a prompt/question column ("prompts"), else a lone `text` ("text").
    EvalSetError listing the forms when there is no prompt column."""
    if prompt_column:
        return "prompts", prompt_column
    if "messages" in cols:
        return "chat", cols["messages"]
    if "instruction" in cols:
        return "alpaca", cols["instruction"]
    p_col = next((cols[c] for c in PROMPT_COLUMNS if c in cols), None)
    if p_col is not None:
        return "prompts", p_col
    if "text" in cols and len([c for c in columns if c.lower() != "id"]) >= 1:
        return "text", cols["text"]
    raise EvalSetError(f"{what} has no prompt column (columns: {', '.join(columns)}); use the {FORMS_HELP}, "
                       "or name it with promptColumn=\"<column>\"")


def _row_prompt(r: dict, i: int, form: str, p_col: str, ref: Any, ref_from_chat: bool) -> tuple[list[dict], Any]:
    """Row `i`'s prompt as chat messages (a system message and history as the row gives them) and its reference
    (`ref`, or for a chat row without a reference column its last assistant turn when `ref_from_chat`).
    EvalSetError for a NULL prompt or chat messages that do not end with the user's turn."""
    if form == "chat":
        msgs = _messages(r[p_col], i)
        if msgs[-1]["role"] == "assistant":
            ref = msgs[-1]["content"] if ref_from_chat else ref
            msgs = msgs[:-1]
        if not msgs or msgs[-1]["role"] != "user":
            raise EvalSetError(f"eval row {i}: the messages must end with the user's turn (or with the reference "
                               "answer after it)")
        return msgs, ref
    if form == "text":
        return [{"role": "user", "content": as_text(r[p_col]) if r[p_col] is not None else ""}], ref
    if r[p_col] is None:
        raise EvalSetError(f"eval row {i}: {p_col} is NULL; every eval row needs its prompt "
                           f"(filter such rows out first: `select * from t where {p_col} is not null as t2`)")
    lr = {k.lower(): v for k, v in r.items()}
    msgs = [{"role": "system", "content": as_text(lr["system"])}] if lr.get("system") else []
    for h in _history(lr.get("history"), i):
        msgs += h
    text = as_text(r[p_col])
    extra = lr.get("input") if form == "alpaca" else None
    if extra is not None and as_text(extra).strip():
        text = f"{text}\n{as_text(extra)}"  # as training joins them (train.data.conversations)
    msgs.append({"role": "user", "content": text})
    return msgs, ref


def _scalar_column(rows: list[dict], column: str) -> bool:
    return all(v is None or isinstance(v, (str, int, float, bool)) for v in (r.get(column) for r in rows))


def _history(value: Any, row: int) -> list[list[dict[str, str]]]:
    if not value:
        return []
    if isinstance(value, str):
        value = json.loads(value)
    out = []
    for h in value:
        if isinstance(h, (list, tuple)) and len(h) == 2:
            out.append([{"role": "user", "content": as_text(h[0])}, {"role": "assistant", "content": as_text(h[1])}])
        else:
            out.append(_messages([h], row))
    return out


def _key(prompt: list[dict[str, str]], reference: str | None) -> str:
    return hashlib.sha256(json.dumps([prompt, reference], ensure_ascii=False, sort_keys=True).encode()).hexdigest()[:16]


def _rows(table: Any) -> list[dict]:
    if table is None:
        return []
    if isinstance(table, list):
        return [dict(r) if isinstance(r, dict) else {"prompt": r} for r in table]
    if hasattr(table, "to_pylist"):
        return table.to_pylist()
    if hasattr(table, "to_dict"):  # pandas
        return table.to_dict(orient="records")
    raise EvalSetError(f"an eval set is a table (pyarrow, pandas) or a list of rows, not {type(table).__name__}")


__all__ = ["EvalSet", "FORMS_HELP", "REFERENCE_COLUMNS", "from_table", "reference_value", "shown_reference"]
