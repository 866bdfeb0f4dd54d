"""`select ... as <table>;` and `with ... select ... as <table>;` — Spark SQL, as in Byzer notebooks.

The trailing top-level `as <name>` names the output table and is not part of the SQL; a select
that does not end with `as <name>` has no table (None). The SQL is checked with sqlglot here, so
its syntax errors point into the script; `transpile.to_duckdb` turns it into DuckDB SQL.
"""
from __future__ import annotations

from dataclasses import dataclass

from .grammar import Cursor
from .source import Node
from .tokens import WORD
from .transpile import check_spark

_SET_OPERATORS = ("union", "all", "distinct", "intersect", "except", "minus")


@dataclass(frozen=True)
class Select(Node):
    sql: str  # Spark SQL without the trailing `as <table>`; full-width commas made ASCII
    table: str | None

    def to_sql(self) -> str:
        return f"{self.sql} as {self.table}" if self.table else self.sql


def parse_select(cur: Cursor) -> Select:
    tokens = cur.tokens
    table, end = None, tokens[-1].end
    if len(tokens) >= 3 and tokens[-2].is_word("as") and tokens[-1].kind == WORD:
        table, end = tokens[-1].text, tokens[-3].end
    _check_no_missing_semicolon(cur)
    sql, _ = check_spark(cur.text[:end], cur.origin)
    return Select(sql, table, pos=cur.pos, text=cur.source)


def _check_no_missing_semicolon(cur: Cursor) -> None:
    """A line that starts with a statement keyword, outside parentheses, is a new statement
    (`select` only when it does not follow union/intersect/except)."""
    depth = 0
    for i, t in enumerate(cur.tokens):
        depth += t.is_punct("(") - t.is_punct(")")
        if i == 0 or depth or not cur.at_line_start(t) or not cur.starts_statement(t) or t.is_word("with"):
            continue
        if t.is_word("select") and cur.tokens[i - 1].is_word(*_SET_OPERATORS):
            continue
        raise cur.error(t, f"missing `;` before `{t.text}`: end the select statement with `;`")
