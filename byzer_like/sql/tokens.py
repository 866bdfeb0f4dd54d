"""The lexer shared by the statement splitter, `${name}` substitution and the Byzer statement
parsers. It knows just enough of the Byzer-LLM / Spark lexical rules to tell where strings,
backquoted names and comments begin and end; selects themselves are left to sqlglot."""
from __future__ import annotations

import re
from dataclasses import dataclass

from .source import Origin, RawStatement

WORD, NUMBER, STRING, BACKQUOTED, PUNCT, COMMENT = "word", "number", "string", "backquoted", "punct", "comment"

_TOKEN = re.compile(
    r"""
      (?P<space>\s+)
    | (?P<comment>--[^\n]*|/\*.*?\*/)
    | (?P<string>'''.*?'''|\"\"\".*?\"\"\"
                 |'(?!'')[^'\\]*(?:\\.[^'\\]*)*'|"(?!"")[^"\\]*(?:\\.[^"\\]*)*")
    | (?P<backquoted>`[^`]*(?:``[^`]*)*`)
    | (?P<number>\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)
    | (?P<word>[^\W\d]\w*)
    | (?P<punct>.)
    """,
    re.DOTALL | re.VERBOSE,
)
_UNTERMINATED = (  # (opener, what, closer), longest opener first
    ("'''", "triple-quoted string", "'''"),
    ('"""', "triple-quoted string", '"""'),
    ("/*", "block comment", "*/"),
    ("'", "string", "'"),
    ('"', "string", '"'),
    ("`", "backquoted name", "`"),
)
_ESCAPE = re.compile(r"\\([\\'\"])")


@dataclass(frozen=True, slots=True)
class Token:
    kind: str
    text: str
    start: int
    end: int

    def is_word(self, *words: str) -> bool:
        """A word token equal (case-insensitively) to one of `words` (given in lower case)."""
        return self.kind == WORD and self.text.lower() in words

    def is_punct(self, chars: str) -> bool:
        return self.kind == PUNCT and self.text in chars

    @property
    def value(self) -> str:
        """The text a string or backquoted token stands for; other tokens' text as is.
        Triple-quoted strings are verbatim; in '...' and "..." a backslash escapes a quote or a backslash."""
        if self.kind == STRING:
            if self.text[:3] in ("'''", '"""'):
                return self.text[3:-3]
            return _ESCAPE.sub(r"\1", self.text[1:-1])
        if self.kind == BACKQUOTED:
            return self.text[1:-1].replace("``", "`")
        return self.text


def tokenize(text: str, origin: Origin) -> list[Token]:
    """All tokens of `text` but whitespace, comments included. An unterminated string, backquoted
    name or block comment is an error at its first character."""
    tokens = []
    for m in _TOKEN.finditer(text):
        kind = m.lastgroup
        if kind == "space":
            continue
        if kind == "punct":
            for opener, what, closer in _UNTERMINATED:
                if text.startswith(opener, m.start()):
                    raise origin.error(m.start(), f"unterminated {what}: it starts here and has no closing {closer}")
        tokens.append(Token(kind, m.group(), m.start(), m.end()))
    return tokens


def split_statements(script: str) -> list[RawStatement]:
    """Split a script at the `;` that are not inside strings, backquotes or comments.
    Empty statements are skipped; the last statement may omit its `;`."""
    origin = Origin(RawStatement(script))
    statements: list[RawStatement] = []
    first = last = None
    for token in [*tokenize(script, origin), None]:
        if token is not None and token.kind == COMMENT:
            continue
        if token is None or token.is_punct(";"):
            if first is not None and last is not None:
                line_start = script.rfind("\n", 0, first.start) + 1
                line_end = script.find("\n", last.end)
                prefix = script[line_start : first.start]
                suffix = script[last.end : line_end if line_end >= 0 else None]
                text = script[first.start : last.end]
                statements.append(RawStatement(text, origin.position(first.start), prefix, suffix))
            first = last = None
        else:
            first = first or token
            last = token
    return statements

