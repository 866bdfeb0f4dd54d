"""`run command as LLM.`` where k="v" and ... [as <table>];` (deploy, fine-tune, pretrain),
`run <table> as LLM.`` where ...;`, Byzer's alias `train <table> as LLM.`<anything>` where ...;`, and the
Byzer ETs an LLM script uses around model calls: `run <t> as TableRepartition.`` where partitionNum="4"
[and partitionCols="file"] as <t2>;`. Another ET name is an error listing these targets."""
from __future__ import annotations

from dataclasses import dataclass

from .grammar import Cursor, backquote, check_choice, options_sql, parse_options, parse_target
from .source import Node

RUN_VERBS = ("run", "train")
RUN_TARGETS = ("LLM", "TableRepartition")  # LLM, then Byzer's ETs that exist here


@dataclass(frozen=True)
class Run(Node):
    verb: str  # "run" or "train"
    input_table: str | None  # None for `run command`
    target: str  # one of RUN_TARGETS
    path: str  # the backquoted part of LLM.`...`, usually empty
    options: dict[str, str]
    output_table: str | None = None

    def to_sql(self) -> str:
        out = f" as {self.output_table}" if self.output_table else ""
        source = self.input_table or "command"
        return f"{self.verb} {source} as {self.target}.{backquote(self.path)}{options_sql(self.options)}{out}"


def parse_run(cur: Cursor) -> Run:
    verb = cur.take().text.lower()
    source = cur.name("an input table or `command`", f"`{verb}`")
    cur.keyword("as", "`as` and a target such as LLM.``", f"`{verb} {source.text}`")
    target_token, path = parse_target(cur, "a target", "`as`", "LLM.``")
    target = check_choice(cur, target_token.text, target_token, RUN_TARGETS, "run target (ET)")
    options, _ = parse_options(cur)
    output = cur.name("an output table name", "`as`").text if cur.accept("as") else None
    cur.expect_end(verb)
    input_table = None if source.text.lower() == "command" else source.text
    return Run(verb, input_table, target, path, options, output, pos=cur.pos, text=cur.source)
