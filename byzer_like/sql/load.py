"""`load <format>.`<path>` [where k="v" and ...] as <table>;` — read a file (or a model listing) into a table."""
from __future__ import annotations

from dataclasses import dataclass

from .grammar import FILE_FORMATS, Cursor, backquote, check_choice, options_sql, parse_options, parse_target
from .source import Node

LOAD_FORMATS = (*FILE_FORMATS, "model")


@dataclass(frozen=True)
class Load(Node):
    format: str  # one of LOAD_FORMATS, lower case
    path: str
    options: dict[str, str]
    table: str

    def to_sql(self) -> str:
        return f"load {self.format}.{backquote(self.path)}{options_sql(self.options)} as {self.table}"


def parse_load(cur: Cursor) -> Load:
    cur.take()  # load
    format_token, path = parse_target(cur, "a format", "`load`", "json.`data/q.jsonl`")
    format = check_choice(cur, format_token.text, format_token, LOAD_FORMATS, "load format")
    options, _ = parse_options(cur)
    cur.keyword("as", "`as <table>`", "the options" if options else "the load path")
    table = cur.name("a table name", "`as`")
    cur.expect_end("load")
    return Load(format, path, options, table.text, pos=cur.pos, text=cur.source)
