"""Structured output: the `response_format` of a request, and answers read back as pydantic objects.

One request option serves every face: the Python client (`chat_oai(..., response_class=Cls)`, or
`llm_config={"response_format": ...}`), SQL (`llm_param(map("response_format", '<json>'))`) and the
HTTP API (OpenAI's `response_format`). Its shapes are OpenAI's:

    {"type": "text"}                                   no constraint (the same as none)
    {"type": "json_object"}                            any JSON object
    {"type": "json_schema", "json_schema": {"name": "person", "schema": {...JSON Schema...}}}

The replica constrains decoding to it (`backends/grammar.py`, with xgrammar), so the answer always
parses. This module only checks and normalises the option; it imports neither ray nor torch.
"""
from __future__ import annotations

import json
from typing import Any, Mapping

from .errors import ConfigError

TYPES = ("text", "json_object", "json_schema")
_HOW = ('give {"type": "json_object"} or {"type": "json_schema", "json_schema": {"name": "...", '
        '"schema": {...}}} (OpenAI\'s response_format), as a JSON string in SQL')


def normalize(value: Any) -> dict | None:
    """`value` (a dict, or the same as a JSON string, as SQL writes it) as the canonical option:
    `{"type": "json_object"}`, `{"type": "json_schema", "json_schema": {"name", "schema", "strict"}}`,
    or None for no constraint (`None`, `""`, `{"type": "text"}`).

    Raises ConfigError naming what is wrong and the shapes that are accepted."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as e:
            raise ConfigError(f"response_format is not valid JSON ({e}); {_HOW}") from None
    if not isinstance(value, Mapping):
        raise ConfigError(f"response_format must be an object, not {type(value).__name__}; {_HOW}")
    kind = value.get("type")
    if kind not in TYPES:
        raise ConfigError(f"response_format type {kind!r} is not supported; use one of {', '.join(TYPES)}: {_HOW}")
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    spec = value.get("json_schema")
    if not isinstance(spec, Mapping):
        raise ConfigError(f"response_format of type json_schema needs a 'json_schema' object; {_HOW}")
    schema = spec.get("schema")
    if not isinstance(schema, Mapping):
        raise ConfigError("response_format.json_schema needs a 'schema' that is a JSON Schema object "
                          '(e.g. {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]})')
    check_schema(schema)
    name = spec.get("name") or "response"
    if not isinstance(name, str):
        raise ConfigError(f"response_format.json_schema.name must be a string, not {type(name).__name__}")
    return {"type": "json_schema",
            "json_schema": {"name": name, "schema": dict(schema), "strict": bool(spec.get("strict", True))}}


def check_schema(schema: Mapping[str, Any]) -> None:
    """Refuse a schema that is not valid JSON Schema (checked with `jsonschema` where it is installed;
    the replica's grammar compiler refuses the rest)."""
    try:
        from jsonschema import Draft202012Validator
        from jsonschema.exceptions import SchemaError
    except ImportError:  # pragma: no cover - ray[default] brings jsonschema
        return
    try:
        Draft202012Validator.check_schema(dict(schema))
    except SchemaError as e:
        where = "/".join(str(p) for p in e.path) or "(top)"
        raise ConfigError(f"response_format's JSON schema is invalid at {where}: {e.message}; "
                          "fix the schema (https://json-schema.org)") from None


def for_class(cls: type) -> dict:
    """The response_format that constrains an answer to pydantic model `cls` (its JSON schema)."""
    schema = getattr(cls, "model_json_schema", None)
    if schema is None:
        raise ConfigError(f"response_class must be a pydantic model class (pydantic.BaseModel), not {cls!r}")
    return {"type": "json_schema", "json_schema": {"name": cls.__name__, "schema": schema(), "strict": True}}


def is_model_class(value: Any) -> bool:
    """Whether `value` is a pydantic model class (a possible response_class)."""
    return isinstance(value, type) and hasattr(value, "model_json_schema") and hasattr(value, "model_validate_json")


def instruction(cls: type) -> str:
    """Words added to a question asked with `response_class` (as Byzer-LLM does): answer with a JSON
    object of this shape. Decoding is constrained anyway; this tells the model what to put there. A
    flat class is shown as its fields (small models copy a whole JSON schema's descriptions into the
    answer); a nested one as its JSON schema."""
    schema = cls.model_json_schema()
    props = schema.get("properties") or {}
    flat = props and all(isinstance(p, dict) and p.get("type") in _SCALARS for p in props.values())
    if not flat:
        return ("\n\nAnswer with a JSON object that matches this JSON schema, and nothing else:\n"
                f"```json\n{json.dumps(schema, ensure_ascii=False)}\n```")
    fields = ", ".join(f'"{name}": <{p["type"]}{": " + p["description"] if p.get("description") else ""}>'
                       for name, p in props.items())
    return f"\n\nAnswer with only a JSON object of this form: {{{fields}}}"


_SCALARS = ("string", "integer", "number", "boolean")


def parse(text: str, cls: type) -> tuple[Any, str]:
    """An answer as an instance of `cls`: `(instance, "")`, or `(None, why)` when it does not parse
    (a model that could not be constrained, or an answer cut at max_new_tokens)."""
    body = text.strip()
    if body.startswith("```"):  # an unconstrained model may fence its JSON
        body = body.split("\n", 1)[-1].rsplit("```", 1)[0]
    try:
        return cls.model_validate_json(body), ""
    except Exception as e:  # noqa: BLE001 - pydantic's ValidationError, reported as the reason
        return None, f"the answer is not a valid {cls.__name__}: {e}".splitlines()[0]
