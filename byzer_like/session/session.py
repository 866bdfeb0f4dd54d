"""A SQL session: named Arrow tables, `set` variables, a DuckDB connection, and the statements of a script
run against a runtime.

    session = Session()                       # or Session(runtime), or ByzerLLM().sql(script)
    results = session.sql(script)             # one Result per statement, in order
    session.table("answers").to_pandas()

A whole script is parsed (with its `set` variables) before its first statement runs, so a syntax error
anywhere stops it before anything is deployed or written. Each statement reaches its handler through the
table in `statements.HANDLERS` (`run ... as LLM` actions and `!byzerllm` sub-commands have tables of their
own: `statements.RUN_ACTIONS`, `commands.BYZERLLM`). Every verb that touches models, jobs or the cluster is
the runtime's (`byzer_like.runtime.Runtime`, or any object with the members of `protocol.SessionRuntime`),
so statements can be tested against a fake runtime without Ray.
"""
from __future__ import annotations

import sys
import time
import weakref
from typing import Any, Callable

import duckdb
import pyarrow as pa
from duckdb import sqltypes

from ..config import parse_bool
from ..errors import ByzerError, ConfigError, SqlError, UnknownTableError
from ..sql import Statement, parse_script
from . import functions as fx
from .check import check_script
from .position import error_at, located
from .protocol import SessionRuntime
from .result import Partitioning, Result
from .select import ModelCalls
from .statements import HANDLERS

FLAG_DEFAULTS = {"llm_cache": "false", "llm_dedupe": "true"}  # boolean `set` variables and their defaults
DUCKDB_INTERRUPTED = "Query interrupted"  # DuckDB's RuntimeError when a signal (Ctrl-C) arrives while it runs


class Session:
    """Named tables, `set` variables and a DuckDB connection; statements run against `runtime`.

    `runtime`: a `byzer_like.runtime.Runtime` (default: a new one on the default workspace), or a face
    that holds one as `.runtime` (a `ByzerLLM`); it stays reachable as `session.llm`. `progress`:
    progress bars for model calls and training (default: when stderr is a terminal)."""

    def __init__(self, runtime: Any = None, *, variables: dict[str, str] | None = None,
                 progress: bool | None = None):
        if runtime is None:
            from ..runtime import Runtime

            runtime = Runtime()
        self.llm = runtime  # what the session was made with (a face keeps working as before)
        self.runtime: SessionRuntime = getattr(runtime, "runtime", runtime)
        self.workspace = self.runtime.workspace
        self.tables: dict[str, pa.Table] = {}
        self.partitioning: dict[str, Partitioning] = {}  # lower-cased table name -> its TableRepartition
        self.variables: dict[str, str] = dict(variables or {})
        self.progress = sys.stderr.isatty() if progress is None else progress
        self.con = duckdb.connect()
        # closed by close(), or at the latest when the interpreter exits: an open connection with Python
        # functions left to interpreter teardown makes DuckDB's binding print dozens of `nanobind: leaked` lines
        self._close = weakref.finalize(self, self.con.close)
        # a second wall behind the path checks: DuckDB itself reads and writes only inside the allowed
        # roots (and nothing remote); once external access is off it cannot be turned back on
        roots = ", ".join("'" + str(r).replace("'", "''") + "/'" for r in self.workspace.allowed_roots)
        self.con.execute(f"SET allowed_directories=[{roots}]")
        self.con.execute("SET enable_external_access=false")
        self.models = ModelCalls(self)
        self._register_helpers()

    def _register_helpers(self) -> None:
        """The dialect's SQL functions that call no model: llm_prompt, llm_stack, llm_with_adapter, llm_eval."""
        helpers = {"llm_prompt": (fx.llm_prompt, [sqltypes.VARCHAR, duckdb.list_type(sqltypes.VARCHAR)]),
                   "llm_stack": (fx.llm_stack, [sqltypes.VARCHAR, sqltypes.VARCHAR]),
                   "llm_with_adapter": (fx.llm_with_adapter, [sqltypes.VARCHAR, sqltypes.VARCHAR])}
        for name, (fn, args) in helpers.items():
            self.con.create_function(name, fx.arrow_function2(fn), args, sqltypes.VARCHAR, type="arrow",
                                     null_handling="special")
        # llm_eval's reference is a text or a list of them (array(...), a list column): a macro hands either to
        # the Python function as JSON, as DuckDB functions have no overloads by argument type
        self.con.create_function("llm_eval_json", self.models.llm_eval, [sqltypes.VARCHAR, sqltypes.VARCHAR,
                                 sqltypes.VARCHAR], sqltypes.DOUBLE, type="arrow", null_handling="special")
        self.con.execute("CREATE MACRO llm_eval(prediction, reference, metric) AS "
                         "llm_eval_json(prediction, to_json(reference)::VARCHAR, metric)")
        self.models.registered.update((*helpers, "llm_eval", "llm_eval_json"))

    def close(self) -> None:
        """Close the session's DuckDB connection (its tables stay readable as Arrow tables)."""
        self._close()

    # -- scripts -----------------------------------------------------------------------------------
    def sql(self, script: str, *, on_result: Callable[[int, Result], Any] | None = None) -> list[Result]:
        """Run a script; return one Result per statement, each with the seconds it ran.

        The whole script is parsed, then checked (`check.check_script`: options, paths, files, request keys,
        adapters), before its first statement runs. `on_result(i, result)` (i from 1) is called as each
        statement finishes, so a face can show it at once. A ByzerError raised by the check or by a
        statement carries `results` (the Results of the statements that finished before it, in order) and
        `tables` (name -> pyarrow Table of the tables they made); the session keeps those tables too."""
        statements = parse_script(script, self.variables)
        results: list[Result] = []
        try:
            check_script(self, statements)
            for statement in statements:
                start = time.monotonic()
                result = self.execute(statement)
                result.seconds = time.monotonic() - start
                results.append(result)
                if on_result is not None:
                    on_result(len(results), result)
        except ByzerError as e:
            e.results = list(results)
            e.tables = {r.name: r.table for r in results if r.name and r.table is not None}
            raise
        return results

    def execute(self, statement: Statement) -> Result:
        """Run one parsed statement. A ByzerError it raises is said at the statement's line and column
        (`position.located`). Ctrl-C (SIGINT) while DuckDB runs it raises KeyboardInterrupt, as anywhere
        else in Python; the session and its tables stay usable."""
        try:
            return HANDLERS[type(statement)](self, statement)
        except ByzerError as e:
            raise located(e, statement)
        except RuntimeError as e:
            if str(e) == DUCKDB_INTERRUPTED:
                raise KeyboardInterrupt(f"statement at line {statement.pos.line} interrupted") from None
            raise

    # -- tables ------------------------------------------------------------------------------------
    def table(self, name: str) -> pa.Table:
        """The session's table `name` (case-insensitive); KeyError without one."""
        for key, t in self.tables.items():
            if key.lower() == name.lower():
                return t
        raise KeyError(name)

    def has_table(self, name: str) -> bool:
        return any(k.lower() == name.lower() for k in self.tables)

    def put(self, name: str, table: pa.Table, partitioning: Partitioning | None = None) -> None:
        """Keep `table` as `name` (replacing a table of that name in any case), readable from SQL."""
        for key in [k for k in self.tables if k.lower() == name.lower()]:
            del self.tables[key]
        self.partitioning.pop(name.lower(), None)
        if partitioning is not None:
            self.partitioning[name.lower()] = partitioning
        self.tables[name] = table
        self.con.register(name, table)

    def need_table(self, name: str, statement: Statement) -> pa.Table:
        """The table `name`, or an UnknownTableError positioned in `statement` listing the session's tables."""
        try:
            return self.table(name)
        except KeyError:
            raise self.unknown_table(name, statement) from None

    def unknown_table(self, name: str, statement: Statement) -> SqlError:
        known = ", ".join(sorted(self.tables)) or "(none yet: create one with load or select ... as <table>)"
        return error_at(UnknownTableError, statement, name, f"unknown table {name!r}; tables in this session: {known}")

    def model_dir_of(self, name: str) -> str | None:
        """The model directory of a `load model.` table of this session; None if there is no such table."""
        if not self.has_table(name):
            return None
        table = self.table(name)
        if "model_dir" not in table.column_names or table.num_rows != 1:
            raise ConfigError(f"modelTable {name!r} must be a table from `load model.`<dir>` as {name}`, "
                              'or "command" to use localModelDir')
        return table.column("model_dir")[0].as_py()

    # -- set variables -----------------------------------------------------------------------------
    def flag(self, name: str) -> bool:
        """A boolean `set` variable: `llm_cache` (default false), `llm_dedupe` (default true)."""
        value = self.variables.get(name, FLAG_DEFAULTS[name])
        try:
            return parse_bool(value)
        except ConfigError:
            raise ConfigError(f'{name} must be "true" or "false", not {value!r}') from None


__all__ = ["Partitioning", "Result", "Session"]
