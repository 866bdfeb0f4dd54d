"""Where in a script a statement's error points: an error positioned at a word of the statement."""
from __future__ import annotations

import re

from ..errors import ByzerError, SqlError
from ..sql import Statement


def error_at(cls: type[SqlError], statement: Statement, word: str | None, message: str) -> SqlError:
    """A `cls` error with `message`, positioned at the first whole `word` inside `statement` (case-insensitive;
    at the statement's start when `word` is None or absent): its line, column and that line of the script."""
    return cls(message, *place(statement, word))


def located(error: ByzerError, statement: Statement) -> ByzerError:
    """`error`, raised while `statement` ran, said at the statement's line and column (`ByzerError.at`): at the
    unknown option's key when it names one, else at the statement's start. A SqlError keeps its own place."""
    key = getattr(error, "key", None)
    return error.at(*place(statement, key if isinstance(key, str) else None))


def place(statement: Statement, word: str | None) -> tuple[int, int, str]:
    """(line, column, that line of the script) of the first whole `word` inside `statement` (case-insensitive),
    or of the statement's start when `word` is None or absent."""
    line, column = statement.pos.line, statement.pos.column
    text = statement.text or ""
    offset = 0
    if word:
        m = re.search(rf"(?<![\w.]){re.escape(word)}(?![\w])", text, flags=re.IGNORECASE)
        offset = m.start() if m else 0
    before = text[:offset]
    if "\n" in before:
        line += before.count("\n")
        column = offset - before.rfind("\n")
    else:
        column += offset
    snippet = text.split("\n")[before.count("\n")] if text else ""
    if before.count("\n") == 0 and statement.pos.column > 1:
        snippet = " " * (statement.pos.column - 1) + snippet
    return line, column, snippet


__all__ = ["error_at", "located", "place"]
