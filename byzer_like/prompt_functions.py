"""Byzer-LLM's prompt functions: a function whose docstring is the prompt (`@llm.prompt()`).

    @llm.prompt(model="chat")                    # render="jinja2" (default): {{ name }} placeholders
    def answer(context: str, question: str) -> str:
        '''
        Answer from this context only: {{ context }}
        Question: {{ question }}
        '''

    @llm.prompt(render="simple")                 # {name} placeholders
    def extract(text: str) -> Person: ...        # a pydantic model: the answer as a validated Person

The call's arguments (defaults applied) fill the template. The body runs first: a dict it returns
adds or overrides template variables (Byzer's way to prepare values in Python); None changes nothing.
The return annotation says what the call gives back: `str` (or none) the answer's text, a pydantic
model class an instance of it (decoding constrained to its JSON schema), `Generator[str, None, None]`
(or `Iterator[str]`) the answer's text as it streams. `fn.prompt(...)` gives the rendered prompt only.

This module renders and shapes the answer; the client (`ByzerLLM.prompt`) hands it the calls that ask the
model. It imports neither ray nor torch.
"""
from __future__ import annotations

import collections.abc
import functools
import inspect
import re
import textwrap
import typing
import warnings
from typing import Any, Callable, Mapping

from . import structured
from .errors import ConfigError

RENDERS = ("jinja2", "simple")
_SIMPLE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


def template_of(func: Callable) -> str:
    """The function's docstring, dedented (its first and last blank lines dropped)."""
    doc = func.__doc__
    if not doc or not doc.strip():
        raise ConfigError(f"prompt function {func.__name__!r} has no docstring: write the prompt as its docstring")
    return textwrap.dedent(doc).strip("\n")


def render(template: str, variables: Mapping[str, Any], how: str = "jinja2") -> str:
    """`template` filled from `variables`: jinja2 (`{{ name }}`, loops, filters) or simple (`{name}`;
    other braces are left as they are, so JSON examples need no escaping)."""
    if how == "jinja2":
        import jinja2

        try:
            return jinja2.Template(template, undefined=jinja2.StrictUndefined).render(**variables)
        except jinja2.TemplateError as e:
            raise ConfigError(f"prompt template does not render: {e}; check its placeholders "
                              f"(variables: {', '.join(sorted(variables)) or 'none'})") from None
    if how == "simple":
        def fill(m: re.Match) -> str:
            return str(variables[m.group(1)]) if m.group(1) in variables else m.group(0)

        return _SIMPLE.sub(fill, template)
    raise ConfigError(f"render={how!r} is not supported; use one of {', '.join(RENDERS)}")


def variables(func: Callable, args: tuple, kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The call's arguments by name (defaults applied), updated with the dict the body returns;
    `self` / `cls` of a method are not template variables."""
    sig = inspect.signature(func)
    try:
        bound = sig.bind(*args, **kwargs)
    except TypeError as e:
        raise ConfigError(f"prompt function {func.__name__!r}: {e}") from None
    bound.apply_defaults()
    values = dict(bound.arguments)
    extra = func(*bound.args, **bound.kwargs)
    if extra is not None:
        if not isinstance(extra, Mapping):
            raise ConfigError(f"prompt function {func.__name__!r} returned {type(extra).__name__}; its body may "
                              "return a dict of template variables, or nothing")
        values.update(extra)
    for name in ("self", "cls"):
        values.pop(name, None)
    return values


def answer_kind(func: Callable) -> tuple[str, Any]:
    """What a call of the function gives back, from its return annotation: ("text", None),
    ("stream", None) or ("class", the pydantic model class)."""
    try:
        hints = typing.get_type_hints(func)
    except Exception:  # noqa: BLE001 - an annotation that cannot be resolved: read it as written
        hints = getattr(func, "__annotations__", {})
    ret = hints.get("return", inspect.Signature.empty)
    if ret in (inspect.Signature.empty, None, str, type(None), "str"):
        return "text", None
    if structured.is_model_class(ret):
        return "class", ret
    origin = typing.get_origin(ret)
    if origin in (collections.abc.Generator, collections.abc.Iterator, collections.abc.Iterable):
        return "stream", None
    raise ConfigError(f"prompt function {func.__name__!r} returns {ret!r}; annotate it -> str, -> a pydantic "
                      "model class, or -> Generator[str, None, None] (streamed)")


def prompt_function(func: Callable, render_with: str, *, chat: Callable[[list[dict], Any], list],
                    stream: Callable[[list[dict]], Any], check_result: bool = False,
                    return_origin_response: bool = False) -> Callable:
    """`func` as a prompt function: its docstring rendered with the call's arguments (`render_with`: jinja2 or
    simple) is the user message; `chat(messages, response_class)` answers it (a chat_oai list) or, for a
    streaming annotation, `stream(messages)` (pairs of text and metadata). The return annotation picks what
    the call gives (see the module docstring); `return_origin_response` gives chat's list (or the pairs)
    instead; `check_result` warns when a class answer did not parse. `fn.prompt(...)` renders only.
    ConfigError for a function without a docstring or with an annotation that is not supported."""
    template = template_of(func)
    kind, cls = answer_kind(func)

    def text_of(*args: Any, **kwargs: Any) -> str:
        return render(template, variables(func, args, kwargs), render_with)

    @functools.wraps(func)
    def call(*args: Any, **kwargs: Any) -> Any:
        messages = [{"role": "user", "content": text_of(*args, **kwargs)}]
        if kind == "stream":
            pairs = stream(messages)
            return pairs if return_origin_response else (text for text, _meta in pairs)
        answers = chat(messages, cls)
        if return_origin_response:
            return answers
        if kind == "class":
            if answers[0].value is None and check_result:
                warnings.warn(f"{func.__name__} gave no {cls.__name__}: {answers[0].metadata.get('reason')}",
                              stacklevel=2)
            return answers[0].value
        return answers[0].output

    call.prompt = text_of  # type: ignore[attr-defined]
    return call
