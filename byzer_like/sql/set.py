"""`set <name> = <value> [where k="v" ...];` — a script variable, substituted as `${name}` in later statements.

Byzer's `type` option is honoured for `text` (the default) and `defaultParam` (keep a value given
from outside, e.g. `--set name=...`). `type="shell"` is refused: byzer-like never runs shell commands.
"""
from __future__ import annotations

from dataclasses import dataclass

from .grammar import Cursor, check_choice, options_sql, parse_options, parse_value, quote
from .source import Node
from .tokens import BACKQUOTED

SET_TYPES = ("text", "defaultParam")


@dataclass(frozen=True)
class Set(Node):
    name: str
    value: str  # raw: the string's content, or the number / word as written
    options: dict[str, str]

    @property
    def keeps_existing(self) -> bool:
        """`type="defaultParam"`: a value the variable already has wins over this one."""
        return self.options.get("type", "").lower() == "defaultparam"

    def to_sql(self) -> str:
        return f"set {self.name} = {quote(self.value)}{options_sql(self.options)}"


def parse_set(cur: Cursor) -> Set:
    cur.take()  # set
    name = cur.name("a variable name", "`set`")
    cur.expect(lambda t: t.is_punct("="), "`=`", f"`set {name.text}`")
    token = cur.peek()
    if token is not None and token.kind == BACKQUOTED:  # Byzer's form for shell commands and SQL
        value = cur.take().value
    else:
        value = parse_value(cur, f"`set {name.text} =`")
    options, keys = parse_options(cur)
    if "type" in options:
        if options["type"].lower() == "shell":
            raise cur.error(
                keys["type"],
                'type="shell" would run a shell command, and byzer-like never executes shell commands; '
                f'set the value itself instead: set {name.text} = "...";',
            )
        check_choice(cur, options["type"], keys["type"], SET_TYPES, "set type")
    cur.expect_end("set")
    return Set(name.text, value, options, pos=cur.pos, text=cur.source)
