"""The Byzer-LLM SQL dialect: scripts -> typed statements (with line:column), selects -> DuckDB SQL.

Pure Python: imports neither ray, torch nor duckdb (sqlglot parses the selects).

    from byzer_like.sql import parse_script, to_duckdb
    for statement in parse_script(script, {"model_dir": "/models/tiny"}):
        ...
"""
from .command import COMMANDS, Command
from .errors import SqlSyntaxError
from .load import LOAD_FORMATS, Load
from .parser import STATEMENTS, Statement, parse_script, parse_statement
from .run import RUN_TARGETS, Run
from .save import SAVE_FORMATS, SAVE_MODES, Save
from .select import Select
from .set import SET_TYPES, Set
from .source import Position, RawStatement
from .tokens import split_statements
from .transpile import Transpiled, to_duckdb
from .variables import substitute

__all__ = [
    "COMMANDS", "LOAD_FORMATS", "RUN_TARGETS", "SAVE_FORMATS", "SAVE_MODES", "SET_TYPES", "STATEMENTS",
    "Command", "Load", "Position", "RawStatement", "Run", "Save", "Select", "Set", "SqlSyntaxError",
    "Statement", "Transpiled", "parse_script", "parse_statement", "split_statements", "substitute", "to_duckdb",
]
