"""Where statements come from: positions in the script, raw statements, and the mapping from a
statement's (substituted) text back to script lines and columns, used by every error."""
from __future__ import annotations

from dataclasses import dataclass, field

from .errors import SqlSyntaxError


@dataclass(frozen=True)
class Position:
    """1-based line and column of a character in the original script."""

    line: int
    column: int

    def __str__(self) -> str:
        return f"line {self.line}, column {self.column}"


@dataclass(frozen=True)
class RawStatement:
    """One statement as split from a script: its source text (from its first token to its last,
    comments inside kept, without the closing `;`) and the position of its first character."""

    text: str
    pos: Position = Position(1, 1)
    # the script's text around `text` on its first and last lines: only used to show whole lines in errors
    prefix: str = field(default="", repr=False, compare=False)
    suffix: str = field(default="", repr=False, compare=False)


@dataclass(frozen=True, kw_only=True)
class Node:
    """What every parsed statement carries besides its own fields. Neither takes part in `==`,
    so a statement parsed from its own `to_sql()` compares equal to the original."""

    pos: Position = field(default=Position(1, 1), compare=False)
    text: str = field(default="", compare=False, repr=False)


@dataclass(frozen=True)
class Edit:
    """`text[old_start:old_end]` of the raw statement became `[new_start:new_end]` (a `${name}` substitution)."""

    new_start: int
    new_end: int
    old_start: int
    old_end: int


class Origin:
    """Turns offsets in a statement's text (after substitutions) into script positions and errors."""

    def __init__(self, raw: RawStatement, edits: tuple[Edit, ...] = ()):
        self.raw = raw
        self.edits = edits

    def source_offset(self, offset: int) -> int:
        """The offset in the raw text; anything inside a substituted value maps to its `${`."""
        for e in reversed(self.edits):
            if offset >= e.new_start:
                return e.old_start if offset < e.new_end else offset - e.new_end + e.old_end
        return offset

    def position(self, offset: int) -> Position:
        text, start = self.raw.text, self.raw.pos
        o = min(self.source_offset(offset), len(text))
        newlines = text.count("\n", 0, o)
        if newlines == 0:
            return Position(start.line, start.column + o)
        return Position(start.line + newlines, o - text.rfind("\n", 0, o))

    def error(self, offset: int, message: str) -> SqlSyntaxError:
        pos = self.position(offset)
        lines = self.raw.text.split("\n")
        index = pos.line - self.raw.pos.line
        line = lines[index]
        if index == 0:
            line = (self.raw.prefix or " " * (self.raw.pos.column - 1)) + line
        if index == len(lines) - 1:
            line += self.raw.suffix
        return SqlSyntaxError(message, pos.line, pos.column, line.rstrip("\r"))
