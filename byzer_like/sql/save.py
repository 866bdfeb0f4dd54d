"""`save [overwrite|append|errorIfExists|ignore] <table> as <format>.`<path>` [where k="v" ...];` — write a table."""
from __future__ import annotations

from dataclasses import dataclass

from .grammar import FILE_FORMATS, Cursor, backquote, check_choice, options_sql, parse_options, parse_target
from .source import Node
from .tokens import WORD

SAVE_MODES = ("overwrite", "append", "errorIfExists", "ignore")
SAVE_FORMATS = FILE_FORMATS


@dataclass(frozen=True)
class Save(Node):
    mode: str  # one of SAVE_MODES, spelled as there; `errorIfExists` when the statement gives none
    table: str
    format: str  # one of SAVE_FORMATS, lower case
    path: str
    options: dict[str, str]

    def to_sql(self) -> str:
        return f"save {self.mode} {self.table} as {self.format}.{backquote(self.path)}{options_sql(self.options)}"


def parse_save(cur: Cursor) -> Save:
    cur.take()  # save
    first = cur.name("`[<mode>] <table>`", f"`save` (modes: {', '.join(SAVE_MODES)})")
    second, third = cur.peek(), cur.peek(1)
    # a mode comes first if it is one, or if `<word> <word> as` says so (`save overwrit t as ...`: an unknown mode)
    named_mode = first.text.lower() in (m.lower() for m in SAVE_MODES) or (third is not None and third.is_word("as"))
    if second is not None and second.kind == WORD and not second.is_word("as") and named_mode:
        mode = check_choice(cur, first.text, first, SAVE_MODES, "save mode")
        table = cur.name("a table name", f"`{first.text}`")
    else:
        mode, table = "errorIfExists", first
    cur.keyword("as", "`as <format>.`<path>``", f"the table name `{table.text}`")
    format_token, path = parse_target(cur, "a format", "`as`", "parquet.`out/answers`")
    format = check_choice(cur, format_token.text, format_token, SAVE_FORMATS, "save format")
    options, _ = parse_options(cur)
    cur.expect_end("save")
    return Save(mode, table.text, format, path, options, pos=cur.pos, text=cur.source)
