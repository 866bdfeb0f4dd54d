"""The SQL session: a script's statements run against the runtime's verbs, over named Arrow tables and
DuckDB, with deployed models as SQL functions.

Modules: `session` (the `Session`: tables, variables, DuckDB), `statements` (the handler of each statement
and of each `run` action), `select` (DuckDB selects and the model functions), `commands` (the `!byzerllm`
sub-command table), `render` (the tables statements answer with), `functions` (the dialect's SQL helper
functions), `io` (load and save formats), `protocol` (what a session needs from a runtime).
"""
from ..errors import ExecutionError, UnknownFunctionError, UnknownTableError
from .result import Result
from .session import Session

__all__ = ["ExecutionError", "Result", "Session", "UnknownFunctionError", "UnknownTableError"]
