"""`${name}` substitution, Byzer style: textual, anywhere in a statement (strings and backquoted
paths included) except inside comments, before the statement is parsed."""
from __future__ import annotations

import re
from types import MappingProxyType
from typing import Mapping

from .source import Edit, Origin, Position, RawStatement
from .tokens import COMMENT, tokenize

NO_VARIABLES: Mapping[str, str] = MappingProxyType({})
_VARIABLE = re.compile(r"\$\{\s*([^\W\d][\w.]*)\s*\}")


def substitute_with_origin(raw: RawStatement, variables: Mapping[str, str]) -> tuple[str, Origin]:
    """The statement's text with every `${name}` replaced, and the `Origin` that maps offsets in
    that text back to the script (inside a substituted value, to its `${`)."""
    text = raw.text
    if "${" not in text:
        return text, Origin(raw)
    plain = Origin(raw)
    comments = [(t.start, t.end) for t in tokenize(text, plain) if t.kind == COMMENT]
    parts: list[str] = []
    edits: list[Edit] = []
    done = shift = 0
    for m in _VARIABLE.finditer(text):
        if any(start <= m.start() < end for start, end in comments):
            continue
        name = m.group(1)
        if name not in variables:
            raise plain.error(m.start(), _unknown(name, variables))
        value = str(variables[name])
        parts += [text[done : m.start()], value]
        edits.append(Edit(m.start() + shift, m.start() + shift + len(value), m.start(), m.end()))
        shift += len(value) - (m.end() - m.start())
        done = m.end()
    parts.append(text[done:])
    return "".join(parts), Origin(raw, tuple(edits))


def substitute(text: str, variables: Mapping[str, str], pos: Position = Position(1, 1)) -> str:
    """`text` (which starts at `pos` in its script) with every `${name}` outside comments replaced."""
    return substitute_with_origin(RawStatement(text, pos), variables)[0]


def _unknown(name: str, variables: Mapping[str, str]) -> str:
    known = ", ".join(sorted(variables)) or "(none)"
    return (
        f"unknown variable `${{{name}}}`: set it earlier in the script with `set {name} = \"...\";` "
        f"or pass it with `--set {name}=...`; variables set so far: {known}"
    )
