"""Training data: the forms a table may take, prompts rendered with the model's chat template, loss
only on the answers, optional packing, and an eval split.

Forms (checked on the table's columns before anything expensive starts):
- alpaca: `instruction`, `output`, optional `input`, `system`, `history` (a list of [question, answer]
  pairs or of {role, content} messages, or the same as JSON text);
- chat: `messages`, a list of {role, content} (or JSON text), ending with an assistant message (OpenAI's
  chat form);
- sharegpt: `conversations`, a list of {from, value} turns (or JSON text) with `from` one of human, gpt,
  system (LLaMA-Factory's sharegpt form; also user / assistant), optional `system` column; ending with gpt;
- text (continued pretraining): one string column, `text` by default.
"""
from __future__ import annotations

import json
import random
from typing import Any, Iterable, Mapping, Sequence

import pyarrow as pa

from ..config import as_text
from ..errors import ConfigError

ALPACA_REQUIRED = ("instruction", "output")
ALPACA_OPTIONAL = ("input", "system", "history")
FORMS_HELP = ("alpaca form (columns instruction, output; optional input, system, history), "
              "chat form (a messages column of {role, content} lists) "
              "or sharegpt form (a conversations column of {from, value} lists; from: human, gpt, system)")
# sharegpt's `from` names (LLaMA-Factory's defaults: human / gpt / system; some exports say user / assistant)
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
IGNORE = -100


def sft_form(columns: Sequence[str]) -> str:
    """`alpaca`, `chat` or `sharegpt` from a table's column names; a ConfigError naming the expected forms
    otherwise."""
    cols = {c.lower() for c in columns}
    if "messages" in cols:
        return "chat"
    if "conversations" in cols:
        return "sharegpt"
    if all(c in cols for c in ALPACA_REQUIRED):
        return "alpaca"
    missing = [c for c in ALPACA_REQUIRED if c not in cols]
    raise ConfigError(f"the training table has columns {', '.join(columns) or '(none)'}; missing "
                      f"{', '.join(missing)}. Expected {FORMS_HELP}")


def text_column(schema: pa.Schema, wanted: str | None = None) -> str:
    """The column holding pretraining text: `wanted`, else `text`, else the only string column."""
    columns = {f.name: f.type for f in schema}
    found = ", ".join(f"{n} ({t})" for n, t in columns.items()) or "(none)"
    strings = [n for n, t in columns.items()
               if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)]
    if wanted:
        if wanted not in columns:
            raise ConfigError(f"the input table has no column {wanted!r} (textColumn); columns found: {found}")
        if wanted not in strings:
            raise ConfigError(f"textColumn {wanted!r} is {columns[wanted]}, not text; columns found: {found}")
        return wanted
    if "text" in strings:
        return "text"
    if len(strings) == 1:
        return strings[0]
    why = "no string column" if not strings else f"{len(strings)} string columns"
    raise ConfigError(f"cannot tell which column holds the text ({why}): name it with "
                      f"`sfft.text_column`=\"<column>\"; columns found: {found}")


def _json_list(value: Any, what: str, row: int) -> list:
    if value is None:
        return []
    if isinstance(value, str):
        if not value.strip():
            return []
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise ConfigError(f"row {row}: {what} is not JSON ({value[:60]!r})") from None
    if not isinstance(value, list):
        raise ConfigError(f"row {row}: {what} must be a list, got {type(value).__name__}")
    return value


def _text(value: Any) -> str:
    """A cell as training text: NULL is empty, a JSON object or list is JSON text (never Python's repr)."""
    return "" if value is None else as_text(value)


def _message(m: Any, row: int) -> dict[str, str]:
    if isinstance(m, Mapping) and "role" in m and "content" in m:
        return {"role": str(m["role"]), "content": _text(m["content"])}
    if isinstance(m, Mapping) and "from" in m and "value" in m:  # a sharegpt turn in a messages list
        return sharegpt_messages([m], row=row)[0]
    raise ConfigError(f"row {row}: each message needs role and content, got {m!r}")


def sharegpt_messages(turns: Any, *, system: Any = None, row: int = 1) -> list[dict[str, str]]:
    """ShareGPT turns (`[{"from": "human", "value": "..."}, {"from": "gpt", ...}]`, or that list as JSON text)
    as chat messages `[{"role": "user", "content": "..."}, {"role": "assistant", ...}]`, the form LLaMA-Factory
    reads as `formatting: sharegpt`: `from` human -> user, gpt -> assistant, system -> system (user and
    assistant are taken as they are). `system` (a row's own system column) comes first when the turns hold
    none. The last turn is not checked here: sft needs an answer last, preference data a prompt. ConfigError
    naming the row (1-based `row`) for a turn without from / value or with another `from` (function_call,
    observation: tool turns are not trained here)."""
    msgs: list[dict[str, str]] = []
    for t in _json_list(turns, "conversations", row):
        if not (isinstance(t, Mapping) and "from" in t and "value" in t):
            raise ConfigError(f"row {row}: each sharegpt turn needs from and value, got {t!r}")
        role = SHAREGPT_ROLES.get(str(t["from"]).strip().lower())
        if role is None:
            raise ConfigError(f"row {row}: sharegpt turn from {t['from']!r} is not one of "
                              f"{', '.join(sorted(set(SHAREGPT_ROLES)))}; drop tool turns (function_call, "
                              "observation) or rename the roles")
        msgs.append({"role": role, "content": _text(t["value"])})
    if system and not any(m["role"] == "system" for m in msgs):
        msgs.insert(0, {"role": "system", "content": _text(system)})
    return msgs


def conversations(rows: Iterable[Mapping[str, Any]], form: str) -> list[list[dict[str, str]]]:
    """Each row as a list of chat messages ending with the assistant's answer."""
    out = []
    for i, r in enumerate(rows, 1):
        r = {k.lower(): v for k, v in r.items()}
        if form == "chat":
            msgs = [_message(m, i) for m in _json_list(r.get("messages"), "messages", i)]
        elif form == "sharegpt":
            msgs = sharegpt_messages(r.get("conversations"), system=r.get("system"), row=i)
        else:
            msgs = [{"role": "system", "content": _text(r["system"])}] if r.get("system") else []
            for h in _json_list(r.get("history"), "history", i):
                if isinstance(h, (list, tuple)) and len(h) == 2:
                    msgs += [{"role": "user", "content": _text(h[0])}, {"role": "assistant", "content": _text(h[1])}]
                else:
                    msgs.append(_message(h, i))
            if r.get("output") is None:
                raise ConfigError(f"row {i}: output is NULL; every training row needs the answer to learn "
                                  "(filter such rows out first: `select * from t where output is not null as t2`)")
            instruction, extra = _text(r.get("instruction")), _text(r.get("input"))
            question = f"{instruction}\n{extra}" if extra.strip() else instruction
            msgs += [{"role": "user", "content": question}, {"role": "assistant", "content": _text(r["output"])}]
        if not msgs or msgs[-1]["role"] != "assistant":
            raise ConfigError(f"row {i}: the conversation must end with an assistant message (the answer to learn)")
        out.append(msgs)
    return out


def encode(tokenizer: Any, messages: list[dict[str, str]], max_seq_length: int,
           stop_ids: Sequence[int] = ()) -> tuple[list[int], list[int]] | None:
    """Token ids and labels of one conversation: prompts are -100, every assistant answer (with the
    template's end-of-turn) is learnt. Segments are encoded apart, the way generation sees them: the
    prompt is the template's text up to its generation prompt. None if no answer token fits."""
    def render(msgs: list[dict[str, str]], gen: bool) -> str:
        return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)

    stops = set(stop_ids) or ({tokenizer.eos_token_id} - {None})
    ids: list[int] = []
    labels: list[int] = []
    done = ""
    turns = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    for i in turns:
        prompt, full = render(messages[:i], True), render(messages[: i + 1], False)
        if not (prompt.startswith(done) and full.startswith(prompt)):
            if i != turns[-1]:
                continue  # a template that rewrites earlier turns: learn the last answer only
            ids, labels = [], []
            done = ""
        p = tokenizer(prompt[len(done):], add_special_tokens=False)["input_ids"]
        a = tokenizer(full[len(prompt):], add_special_tokens=False)["input_ids"]
        if not any(t in stops for t in a) and tokenizer.eos_token_id is not None:
            a = a + [tokenizer.eos_token_id]  # the template has no end-of-turn token: teach the model to stop
        ids += p + a
        labels += [IGNORE] * len(p) + a
        done = full
    ids, labels = ids[:max_seq_length], labels[:max_seq_length]
    if all(t == IGNORE for t in labels):
        return None
    return ids, labels


def encode_all(tokenizer: Any, convs: list[list[dict[str, str]]], max_seq_length: int,
               stop_ids: Sequence[int] = ()) -> tuple[list[tuple[list[int], list[int]]], int]:
    """Encode every conversation; return the examples and how many were dropped (no answer token fits).
    A ConfigError if none fits."""
    examples = [e for e in (encode(tokenizer, c, max_seq_length, stop_ids) for c in convs) if e is not None]
    if convs and not examples:
        shortest = min(len(tokenizer(tokenizer.apply_chat_template(c[:-1], tokenize=False, add_generation_prompt=True),
                                     add_special_tokens=False)["input_ids"]) for c in convs)
        raise ConfigError(f"max_seq_length={max_seq_length} is too small for every row: the shortest prompt alone "
                          f"has {shortest} tokens; raise sft.int.max_seq_length above {shortest}")
    return examples, len(convs) - len(examples)


def pack(examples: list[tuple[list[int], list[int]]], max_seq_length: int) -> list[tuple[list[int], list[int]]]:
    """Concatenate examples and cut the stream into blocks of max_seq_length (the last one may be shorter)."""
    ids: list[int] = []
    labels: list[int] = []
    for a, b in examples:
        ids += a
        labels += b
    return [(ids[i:i + max_seq_length], labels[i:i + max_seq_length]) for i in range(0, len(ids), max_seq_length)
            if any(t != IGNORE for t in labels[i:i + max_seq_length])]


def split(items: list, fraction: float, seed: int) -> tuple[list, list]:
    """(train, eval): a seeded random `fraction` held out, at least one row when fraction > 0."""
    if fraction <= 0 or len(items) < 2:
        return items, []
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    n_eval = min(max(1, round(len(items) * fraction)), len(items) - 1)
    held = set(order[:n_eval])
    return [x for i, x in enumerate(items) if i not in held], [x for i, x in enumerate(items) if i in held]


__all__ = ["FORMS_HELP", "IGNORE", "SHAREGPT_ROLES", "conversations", "encode", "encode_all", "pack", "sft_form",
           "sharegpt_messages", "split", "text_column"]
