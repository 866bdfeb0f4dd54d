"""Errors that point into the user's script: the parser raises `SqlSyntaxError`; the engine's errors share the base."""
from __future__ import annotations

import unicodedata

from ..errors import ByzerError


class SqlError(ByzerError):
    """An error at a place in a script. `line` and `column` are 1-based, in the original script;
    `snippet` is that source line. `str()` shows the message, the line and a caret under the column:

        line 3, column 26: expected `as <table>` after the load path, found `questions`
          load json.`data/q.jsonl` questions;
                                   ^
    """

    def __init__(self, message: str, line: int, column: int, snippet: str = ""):
        super().__init__(message, line, column, snippet)  # all in args, so the error pickles
        self.message = message
        self.line = line
        self.column = column
        self.snippet = snippet

    def __str__(self) -> str:
        head = f"line {self.line}, column {self.column}: {self.message}"
        if not self.snippet:
            return head
        return f"{head}\n  {self.snippet}\n  {_caret_indent(self.snippet, self.column)}^"


class SqlSyntaxError(SqlError, ValueError):
    """A script cannot be parsed."""


def _caret_indent(line: str, column: int) -> str:
    """Blanks as wide on screen as the first `column - 1` characters of `line`: tabs stay tabs,
    wide (CJK) characters take two blanks, and a column past the line's end is padded."""
    before = line[: column - 1].ljust(column - 1)
    return "".join(_blank(c) for c in before)


def _blank(c: str) -> str:
    if c == "\t":
        return c
    return "  " if unicodedata.east_asian_width(c) in ("W", "F") else " "
