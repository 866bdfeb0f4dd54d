"""The SQL functions around model calls, as DuckDB vectorised (Arrow) Python functions.

A model call `m(llm_param(map(...)))` returns one JSON string per row (Byzer-LLM's form):

    {"output": "...", "input": "<instruction>", "history": [...], "metadata": {...}}

`output` is the answer text (a list of floats for `"embedding", "true"` or `"embedding_query", text`), or
null with an `"error"` key when the row failed and `llm_on_error` is "null". `llm_result(r)` / `llm_response_predict(r)` read
`output`; `llm_stack(r, llm_param(...))` continues the conversation of `r`; `llm_prompt(template,
array(...))` fills `{0}`, `{1}`... placeholders.
"""
from __future__ import annotations

import json
import re
from typing import Any, Callable

import pyarrow as pa

from ..config import as_text, chat_request, parse_bool
from ..errors import ConfigError

_PLACEHOLDER = re.compile(r"\{(\d+)\}")


def llm_prompt(template: str | None, values: list | None) -> str | None:
    """Fill `{0}`, `{1}`... with the array's values; other braces are left alone. NULL when a value it
    uses is NULL."""
    if template is None:
        return None
    values = values or []

    used = {int(m.group(1)) for m in _PLACEHOLDER.finditer(template)}
    for i in sorted(used):
        if i >= len(values):
            raise ConfigError(f"llm_prompt: the template uses {{{i}}} but the array has {len(values)} value(s)")
    if any(values[i] is None for i in used):
        return None  # a NULL value makes a NULL prompt (as concat does), never the text "None" or a hole
    return _PLACEHOLDER.sub(lambda m: as_text(values[int(m.group(1))]), template)


def llm_stack(previous: str | None, params: str | None) -> str | None:
    """`params` plus a history made of `previous`'s history, its question and its answer."""
    if params is None:
        return None
    p = json.loads(params)
    if previous:
        prev = json.loads(previous)
        history = list(prev.get("history") or [])
        if prev.get("input") is not None:
            history.append({"role": "user", "content": as_text(prev["input"])})
        if prev.get("output") is not None:
            history.append({"role": "assistant", "content": as_text(prev["output"])})
        p["history"] = history + list(_history(p.get("history")))
    return json.dumps(p, ensure_ascii=False)


def llm_with_adapter(params: str | None, adapter: str | None) -> str | None:
    """`params` (a request's JSON, from llm_param) answered through LoRA adapter `adapter`: SQL's
    `m@qa_model(llm_param(...))` is `m(llm_with_adapter(llm_param(...), 'qa_model'))`. NULL stays NULL."""
    if params is None:
        return None
    p = _params_object(params)
    p["adapter"] = adapter
    return json.dumps(p, ensure_ascii=False)


def _params_object(raw: str) -> dict:
    """A model function's argument (llm_param's JSON text) as a dict; ConfigError when it is not one."""
    try:
        p = json.loads(raw)
    except ValueError:
        raise ConfigError(f"a model function takes llm_param(map(...)); got {raw[:80]!r}") from None
    if not isinstance(p, dict):
        raise ConfigError(f"a model function takes llm_param(map(...)); got {raw[:80]!r}")
    return p


def _history(value: Any) -> list:
    if not value:
        return []
    return json.loads(value) if isinstance(value, str) else list(value)


def arrow_function2(fn: Callable[[Any, Any], str | None]) -> Callable[[pa.Array, pa.Array], pa.Array]:
    """Wrap a two-argument row function as a DuckDB Arrow function (one call per vector of rows)."""

    def vectorised(a: pa.Array, b: pa.Array) -> pa.Array:
        return pa.array([fn(x, y) for x, y in zip(a.to_pylist(), b.to_pylist())], type=pa.string())

    return vectorised


def build_requests(params: list[str | None]) -> tuple[list[dict | None], list[bool], list[str | None]]:
    """Per row: the chat request (None for a NULL row), whether it asks for an embedding (`"embedding", "true"`,
    or Byzer's `"embedding_query", text`), the instruction (the text to embed for an embedding)."""
    requests: list[dict | None] = []
    embedding: list[bool] = []
    inputs: list[str | None] = []
    for raw in params:
        if raw is None:
            requests.append(None)
            embedding.append(False)
            inputs.append(None)
            continue
        cfg = _params_object(raw)
        text_key = "embedding_query" if "embedding_query" in cfg else "instruction"
        if text_key in cfg and cfg[text_key] is None:  # NULL in, NULL out (never the text "None")
            requests.append(None)
            embedding.append(False)
            inputs.append(None)
            continue
        embedding.append(text_key == "embedding_query" or parse_bool(cfg.get("embedding", False)))
        req = chat_request([], cfg).model_dump()
        requests.append(req)
        inputs.append(req["ins"])
    return requests, embedding, inputs


def reward_pairs(params: list[str | None]) -> list[dict | None]:
    """Per row of a reward model's call: the pair to score, `{"instruction", "response"}` (with `system` and
    `input` when the map has them), or None for a NULL row, instruction or response (a NULL score).
    ConfigError for a row whose map has no response."""
    pairs: list[dict | None] = []
    for n, raw in enumerate(params, 1):
        if raw is None:
            pairs.append(None)
            continue
        cfg = _params_object(raw)
        if "response" not in cfg and "answer" not in cfg:
            raise ConfigError(f"row {n}: a reward model scores an answer: call it with "
                              'llm_param(map("instruction", question, "response", answer)); this row has '
                              f"{', '.join(sorted(cfg)) or 'no keys'}")
        response = cfg.get("response", cfg.get("answer"))
        instruction = cfg.get("instruction", cfg.get("prompt"))
        if response is None or instruction is None:
            pairs.append(None)
            continue
        pair = {"instruction": as_text(instruction), "response": as_text(response)}
        pair.update({k: as_text(cfg[k]) for k in ("system", "input") if cfg.get(k) is not None})
        pairs.append(pair)
    return pairs


def result_json(request: dict, result: dict) -> str:
    out = {
        "output": result.get("output"),
        "input": request["ins"],
        "history": request.get("his") or [],
        "metadata": result.get("metadata", {}),
    }
    if "error" in result:
        out["error"] = result["error"]
    return json.dumps(out, ensure_ascii=False)

