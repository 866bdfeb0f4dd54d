"""Statements from scripts: one table maps each statement keyword to its parse function."""
from __future__ import annotations

from typing import Callable, Mapping, Union

from .command import Command, parse_command
from .grammar import Cursor, shorten
from .load import Load, parse_load
from .run import Run, parse_run
from .save import Save, parse_save
from .select import Select, parse_select
from .set import Set, parse_set
from .source import RawStatement
from .tokens import WORD, split_statements
from .variables import NO_VARIABLES, substitute_with_origin

Statement = Union[Load, Save, Select, Set, Run, Command]

STATEMENTS: dict[str, Callable[[Cursor], Statement]] = {
    "load": parse_load,
    "save": parse_save,
    "select": parse_select,
    "with": parse_select,
    "set": parse_set,
    "run": parse_run,
    "train": parse_run,
    "!": parse_command,
}


def parse_statement(raw: RawStatement, variables: Mapping[str, str] = NO_VARIABLES) -> Statement:
    """Parse one statement after replacing its `${name}`s with `variables`."""
    text, origin = substitute_with_origin(raw, variables)
    cur = Cursor(text, origin, STATEMENTS)
    first = cur.peek()
    if first is None:
        raise origin.error(0, "empty statement")
    keyword = "!" if first.is_punct("!") else first.text.lower() if first.kind == WORD else ""
    parse = STATEMENTS.get(keyword)
    if parse is None:
        starts = ", ".join(STATEMENTS)
        raise cur.error(first, f"unknown statement `{shorten(first.text)}`; a statement starts with one of: {starts}")
    return parse(cur)


def parse_script(script: str, variables: Mapping[str, str] = NO_VARIABLES) -> list[Statement]:
    """Parse every statement of a script in order; each `set` defines `${name}` for the statements
    after it (one with `type="defaultParam"` does not replace a value the variable already has)."""
    values = dict(variables)
    statements = []
    for raw in split_statements(script):
        statement = parse_statement(raw, values)
        if isinstance(statement, Set) and not (statement.keeps_existing and statement.name in values):
            values[statement.name] = statement.value
        statements.append(statement)
    return statements
