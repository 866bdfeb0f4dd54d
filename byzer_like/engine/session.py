"""A SQL session: named Arrow tables, DuckDB for relational work, deployed models as SQL functions.

    session = Session()                       # or ByzerLLM().sql(script)
    results = session.sql(script)             # one Result per statement, in order
    session.table("answers").to_pandas()

A whole script is parsed (with its `set` variables) before its first statement runs, so a syntax
error anywhere stops it before anything is deployed or written. A model is called from `select` as
a vectorised DuckDB function: the rows of each vector go to the model's replicas in concurrent
chunks and come back in row order (`ByzerLLM.generate`), so no row is lost or duplicated.
"""
from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import duckdb
import pyarrow as pa
from duckdb import sqltypes

from .. import cluster
from ..config import parse_bool
from ..errors import ConfigError
from ..sql import Command, Load, Run, Save, Select, Set, Statement, parse_script, to_duckdb
from ..sql.errors import SqlError
from . import functions as fx
from .io import load_table, save_table

if TYPE_CHECKING:  # the client drives sessions; a session only calls back into the one it is given
    from ..client import ByzerLLM

HELPERS = ("llm_prompt", "llm_stack")
ON_ERROR = ("raise", "null")


@dataclass
class Result:
    """What one statement produced: a table (for most statements) and a short message."""

    kind: str
    table: pa.Table | None = None
    name: str | None = None
    message: str = ""

    def to_pandas(self):
        return None if self.table is None else self.table.to_pandas()


class UnknownTableError(SqlError, KeyError):
    """A statement names a table the session does not have."""

    def __str__(self) -> str:
        return SqlError.__str__(self)


class UnknownFunctionError(SqlError):
    """A select calls a function that is neither SQL's, a helper, nor a deployed model."""


class ExecutionError(SqlError):
    """DuckDB refused a select (an unknown column, a type mismatch...)."""


@dataclass
class _Call:
    """Bookkeeping of the model calls of one select (row numbers, progress)."""

    rows: int = 0
    error: BaseException | None = None
    bar: Any = None
    cached: int = 0  # rows taken from the result cache
    computed: int = 0  # rows sent to a model


class Session:
    def __init__(self, llm: "ByzerLLM | None" = None, *, variables: dict[str, str] | None = None,
                 progress: bool | None = None):
        if llm is None:
            from ..client import ByzerLLM

            llm = ByzerLLM()
        self.llm = llm
        self.workspace = self.llm.workspace
        self.tables: dict[str, pa.Table] = {}
        self.variables: dict[str, str] = dict(variables or {})
        self.progress = sys.stderr.isatty() if progress is None else progress
        self.con = duckdb.connect()
        # a second wall behind the path checks: DuckDB itself reads and writes only inside the allowed
        # roots (and nothing remote); once external access is off it cannot be turned back on
        roots = ", ".join("'" + str(r).replace("'", "''") + "/'" for r in self.workspace.allowed_roots)
        self.con.execute(f"SET allowed_directories=[{roots}]")
        self.con.execute("SET enable_external_access=false")
        self._threads = int(self.con.sql("select current_setting('threads')").fetchall()[0][0])
        self._functions = {r[0].lower() for r in self.con.sql("select distinct function_name from duckdb_functions()").fetchall()}
        self._registered: set[str] = set()
        self._call = _Call()
        helpers = {"llm_prompt": (fx.llm_prompt, [sqltypes.VARCHAR, duckdb.list_type(sqltypes.VARCHAR)]),
                   "llm_stack": (fx.llm_stack, [sqltypes.VARCHAR, sqltypes.VARCHAR])}
        for name, (fn, args) in helpers.items():
            self.con.create_function(name, fx.arrow_function2(fn), args, sqltypes.VARCHAR, type="arrow",
                                     null_handling="special")
            self._registered.add(name)
        self._handlers: dict[type, Callable[[Any], Result]] = {
            Load: self._load, Save: self._save, Select: self._select, Set: self._set, Run: self._run,
            Command: self._command,
        }

    def close(self) -> None:
        self.con.close()

    # -- scripts -----------------------------------------------------------------------------------
    def sql(self, script: str) -> list[Result]:
        """Run a script; return one Result per statement."""
        statements = parse_script(script, self.variables)
        return [self.execute(s) for s in statements]

    def execute(self, statement: Statement) -> Result:
        return self._handlers[type(statement)](statement)

    def table(self, name: str) -> pa.Table:
        for key, t in self.tables.items():
            if key.lower() == name.lower():
                return t
        raise KeyError(name)

    def _put(self, name: str, table: pa.Table) -> None:
        for key in [k for k in self.tables if k.lower() == name.lower()]:
            del self.tables[key]
        self.tables[name] = table
        self.con.register(name, table)

    def _need_table(self, name: str, statement: Statement) -> pa.Table:
        try:
            return self.table(name)
        except KeyError:
            raise self._unknown_table(name, statement) from None

    def _unknown_table(self, name: str, statement: Statement) -> SqlError:
        known = ", ".join(sorted(self.tables)) or "(none yet: create one with load or select ... as <table>)"
        return _at(UnknownTableError, statement, name, f"unknown table {name!r}; tables in this session: {known}")

    # -- statements --------------------------------------------------------------------------------
    def _load(self, s: Load) -> Result:
        path = self.workspace.resolve(s.path, what="load path")
        table = load_table(self.con, s.format, path, s.options)
        self._put(s.table, table)
        return Result("load", table, s.table, f"{s.table}: {table.num_rows} rows from {path}")

    def _save(self, s: Save) -> Result:
        table = self._need_table(s.table, s)
        path = self.workspace.resolve(s.path, what="save path")
        info = save_table(table, s.format, path, s.mode, s.options)
        summary = pa.table({k: [v] for k, v in info.items()})
        return Result("save", summary, None, f"{s.table}: {info['rows']} rows -> {info['path']} ({s.mode})")

    def _set(self, s: Set) -> Result:
        if not (s.keeps_existing and s.name in self.variables):
            self.variables[s.name] = s.value
        if s.name == "llm_on_error" and self.variables[s.name] not in ON_ERROR:
            raise ConfigError(f"llm_on_error must be one of {', '.join(ON_ERROR)}, not {s.value!r}")
        if s.name == "llm_cache":
            self._cache_on()  # a value that is not a boolean fails here, not at the next select
        return Result("set", None, None, f"{s.name} = {self.variables[s.name]!r}")

    def _select(self, s: Select) -> Result:
        tr = to_duckdb(s.sql)
        models = self._prepare_functions(tr.functions, s)
        for name in tr.tables:
            self._need_table(name, s)
        self._call = _Call()
        if models and self.progress:
            from tqdm import tqdm

            self._call.bar = tqdm(desc="model rows", unit="row", leave=False)
        self.con.execute(f"SET threads={1 if models else self._threads}")  # one vector at a time: row numbers
        try:
            table = self.con.sql(tr.sql).to_arrow_table()
        except duckdb.Error as e:
            if self._call.error is not None:
                raise self._call.error from None
            raise self._explain(e, s) from None
        finally:
            if self._call.bar is not None:
                self._call.bar.close()
        if s.table:
            self._put(s.table, table)
        message = f"{s.table or 'result'}: {table.num_rows} rows"
        if self._call.cached:
            message += (f" ({self._call.cached} model answers from the result cache, "
                        f"{self._call.computed} computed)")
        return Result("select", table, s.table, message)

    def _cache_on(self) -> bool:
        value = self.variables.get("llm_cache", "false")
        try:
            return parse_bool(value)
        except ConfigError:
            raise ConfigError(f'llm_cache must be "true" or "false", not {value!r}') from None

    def _run(self, s: Run) -> Result:
        opts = dict(s.options)
        action = opts.get("action")
        if action == "merge":
            return self._merge(s, opts)
        if action is None:  # a training task in the model type (sft/llama), or from `!byzerllm setup sft|sfft`
            from ..jobs import task_of

            model_type = opts.get("pretrainedModelType") or opts.get("pretrained_model_type") or ""
            if s.verb == "train" or (model_type and task_of(model_type, self.llm.setup_config.mode)[0]):
                return self._train(s, opts)
        elif action != "infer":
            raise ConfigError(f'unknown action {action!r}; run command as LLM supports action="infer" (deploy), '
                              '"merge" (a LoRA adapter into its base), or a training pretrainedModelType (sft/..., sfft/...)')
        opts.pop("action", None)
        model_type = _take(opts, "pretrainedModelType", "pretrained_model_type") or ""
        if s.input_table:
            self._need_table(s.input_table, s)
        model_table = _take(opts, "modelTable", "model_table")
        if model_table and model_table != "command":
            if self._has_table(model_table):
                opts["localModelDir"] = self._model_dir_from_table(model_table, s)
            else:
                opts["modelTable"] = model_table  # a registered model
        udf_name = _take(opts, "udfName", "udf_name")
        if not udf_name:
            raise ConfigError('run command as LLM with action="infer" needs udfName="<name>"')
        if not model_type:
            raise ConfigError('run command as LLM with action="infer" needs pretrainedModelType="<type>"')
        info = self.llm.deploy(None, model_type, udf_name, opts)
        table = pa.table({k: [v] for k, v in info.items()})
        if s.output_table:
            self._put(s.output_table, table)
        return Result("run", table, s.output_table, f"{udf_name}: {info['status']}")

    def _train(self, s: Run, opts: dict[str, str]) -> Result:
        """sft / sfft: the input table goes to a job; the result is the job's row (a detached job returns at once)."""
        from ..jobs import rows_table

        name = opts.get("inputTable") or opts.get("input_table") or s.input_table
        if not name or name == "command":
            raise _at(ConfigError, s, None, 'training needs inputTable="<table>" (a table loaded in this session)')
        table = self._need_table(name, s)
        row = self.llm.jobs.submit(opts, table, progress=self.progress)
        out = rows_table([row])
        return Result("run", out, None, f"job {row['job_id']}: {row['state']}")

    def _merge(self, s: Run, opts: dict[str, str]) -> Result:
        ref = opts.get("modelTable") or opts.get("model_table")
        output = opts.get("outputTable") or opts.get("output_table")
        if not ref or not output:
            raise ConfigError('action="merge" needs modelTable="<registered adapter>" and outputTable="<new name>"')
        info = self.llm.merge(ref, output, overwrite=parse_bool(opts.get("overwrite", False)))
        return Result("run", pa.table({k: [v] for k, v in info.items()}), None,
                      f"{info['merged_from']} merged -> {info['name']}@v{info['version']}")

    def _has_table(self, name: str) -> bool:
        return any(k.lower() == name.lower() for k in self.tables)

    def _model_dir_from_table(self, name: str, s: Run) -> str:
        table = self._need_table(name, s)
        if "model_dir" not in table.column_names or table.num_rows != 1:
            raise ConfigError(f"modelTable {name!r} must be a table from `load model.`<dir>` as {name}`, "
                              'or "command" to use localModelDir')
        return table.column("model_dir")[0].as_py()

    def _command(self, c: Command) -> Result:
        if c.name == "show":
            rows = [{"table": k, "rows": t.num_rows, "columns": t.num_columns} for k, t in sorted(self.tables.items())]
            return Result("show", pa.Table.from_pylist(rows, schema=pa.schema(
                [("table", pa.string()), ("rows", pa.int64()), ("columns", pa.int64())])))
        if c.name == "desc":
            t = self._need_table(c.args[0], c)
            return Result("desc", pa.table({"column": t.schema.names, "type": [str(x) for x in t.schema.types]}))
        sub, rest = c.args[0], c.args[1:]
        if sub == "setup":
            return self._setup(rest)
        if sub == "model":
            return self._model_command(rest[0], rest[1:], c)
        if sub == "cache":
            return self._cache_command(rest[0], rest[1:])
        return self._job_command(rest[0], rest[1:], c)

    def _setup(self, args: tuple[str, ...]) -> Result:
        if len(args) == 1 and args[0] in ("single", "sft", "sfft"):
            pairs = [("mode", args[0])]
        else:
            pairs = [(k.strip(), v.strip()) for k, _, v in (a.partition("=") for a in args)]
        for key, value in pairs:
            self.llm.setup(key, value)
        return Result("setup", message=", ".join(f"{k}={v}" for k, v in pairs))

    def _job_command(self, action: str, args: tuple[str, ...], c: Command) -> Result:
        from ..jobs import rows_table

        jobs = self.llm.jobs
        if action == "list":
            return Result("job", rows_table(jobs.list()))
        if args:
            job_id = args[0]
        else:  # the most recent job
            recent = self.llm.catalog.jobs(limit=1)
            if not recent:
                raise _at(ConfigError, c, None, "no training job in this workspace yet")
            job_id = recent[0]["id"]
        if action == "logs":
            text = jobs.logs(job_id)
            return Result("job", pa.table({"job_id": [job_id] * len(text.splitlines()), "line": text.splitlines()}),
                          message=text)
        row = {"status": jobs.status, "stop": jobs.stop, "resume": jobs.resume}[action](job_id)
        return Result("job", rows_table([row]), message=f"job {job_id}: {row['state']}")

    def _cache_command(self, action: str, args: tuple[str, ...]) -> Result:
        """`!byzerllm cache status|clear [<udf>]`: the result cache's rows per model, or forget them."""
        model = args[0] if args else None
        store = self.llm.result_cache
        if action == "clear":
            n = store.clear(model)
            return Result("cache", pa.table({"model": [model or "*"], "removed": [n]}),
                          message=f"result cache: {n} rows removed")
        counts = store.count(model)
        return Result("cache", pa.table({"model": pa.array(list(counts), type=pa.string()),
                                         "rows": pa.array(list(counts.values()), type=pa.int64())}))

    def _model_command(self, action: str, args: tuple[str, ...], c: Command) -> Result:
        if action == "list":
            return Result("model", registry_table(self.llm.catalog.models()))
        if action == "deployed":
            names = self.llm.list_models()
            return Result("model", pa.table({"udf_name": pa.array(names, type=pa.string())}))
        name = args[0]
        if action == "exists":
            return Result("model", pa.table({"udf_name": [name], "exists": [self.llm.is_model_exist(name)]}))
        self.llm.undeploy(name)
        self._registered.discard(name.lower())
        return Result("model", pa.table({"udf_name": [name], "removed": [True]}), message=f"{name}: undeployed")

    # -- model functions ---------------------------------------------------------------------------
    def _prepare_functions(self, names: frozenset[str], s: Select) -> set[str]:
        """Register a DuckDB function for every deployed model the select calls; return those models."""
        unknown = [n for n in names if n not in self._registered and n not in self._functions]
        models = {n for n in names if n in self._registered and n not in HELPERS}
        if not unknown:
            return models
        # a typo should not start a cluster: with none running, nothing is deployed
        live = cluster.reachable(self.llm.address, self.workspace)
        deployed = {m.lower(): m for m in self.llm.list_models()} if live else {}
        for n in unknown:
            if n not in deployed:
                listed = ", ".join(sorted(deployed.values())) or "(none)"
                raise _at(UnknownFunctionError, s, n,
                          f"unknown function {n!r}: not a SQL function, not one of {', '.join(HELPERS)}, "
                          f"and no model of that name is deployed; deployed models: {listed}")
            self._register_model(deployed[n])
            models.add(n)
        return models

    def _register_model(self, name: str) -> None:
        def call(params: pa.Array) -> pa.Array:
            try:
                return pa.array(self._answer(name, params.to_pylist()), type=pa.string())
            except BaseException as e:  # noqa: BLE001 - DuckDB would flatten it to text; kept and re-raised
                self._call.error = e
                raise

        self.con.create_function(name, call, [sqltypes.VARCHAR], sqltypes.VARCHAR, type="arrow",
                                 null_handling="special", side_effects=True)
        self._registered.add(name.lower())

    def _answer(self, model: str, params: list[str | None]) -> list[str | None]:
        on_error = self.variables.get("llm_on_error", "raise")
        requests, embedding, inputs = fx.build_requests(params)
        out: list[str | None] = [None] * len(params)
        chat = [i for i, r in enumerate(requests) if r is not None and not embedding[i]]
        bar = self._call.bar
        if chat:
            cache = self._cache_on()
            results = self.llm.generate([requests[i] for i in chat], model=model,
                                        on_rows=bar.update if bar is not None else None, cache=cache,
                                        rows=[self._call.rows + i for i in chat], on_cached=self._note_cached)
            self._call.computed += len(chat)
            for i, res in zip(chat, results):
                if "error" in res and on_error != "null":
                    raise fx.RowError(model, self._call.rows + i + 1, res["error"], inputs[i])
                out[i] = fx.result_json(requests[i], res)
        embed = [i for i, r in enumerate(requests) if r is not None and embedding[i]]
        if embed:
            vectors = self.llm.emb(model, [requests[i]["ins"] for i in embed])
            for i, v in zip(embed, vectors):
                out[i] = fx.result_json(requests[i], {"output": v, "metadata": {"dimensions": len(v)}})
        self._call.rows += len(params)
        return out

    def _note_cached(self, n: int) -> None:
        self._call.cached += n
        self._call.computed -= n
        if self._call.bar is not None:
            self._call.bar.update(n)

    def _explain(self, e: duckdb.Error, s: Select) -> SqlError:
        message = str(e).split("\n", 1)[0]
        names = re.findall(r'"([^"]+)"', message) or re.findall(r"name (\w+)", message)
        if isinstance(e, duckdb.CatalogException) and "Table with name" in message and names:
            return self._unknown_table(names[0], s)
        return _at(ExecutionError, s, names[0] if names else None, message)


def registry_table(models: list) -> pa.Table:
    """The model registry as a table (`!byzerllm model list`)."""
    import json

    rows = [{"name": m.name, "version": m.version, "ref": m.ref, "kind": m.kind, "model_type": m.model_type,
             "method": m.method, "base_model": m.base_model, "path": m.path, "job_id": m.job_id,
             "metrics": json.dumps(m.metrics, sort_keys=True), "created_at": m.created_at} for m in models]
    schema = pa.schema([("name", pa.string()), ("version", pa.int64()), ("ref", pa.string()), ("kind", pa.string()),
                        ("model_type", pa.string()), ("method", pa.string()), ("base_model", pa.string()),
                        ("path", pa.string()), ("job_id", pa.string()), ("metrics", pa.string()),
                        ("created_at", pa.float64())])
    return pa.Table.from_pylist(rows, schema=schema)


def _take(opts: dict[str, str], camel: str, snake: str) -> str | None:
    """Remove and return an option given in either spelling."""
    for key in (camel, snake):
        if key in opts:
            return opts.pop(key)
    return None


def _at(cls: type[SqlError], statement: Statement, word: str | None, message: str) -> SqlError:
    """An error positioned at `word` inside the statement (or at the statement's start)."""
    line, column = statement.pos.line, statement.pos.column
    text = statement.text or ""
    offset = 0
    if word:
        m = re.search(rf"(?<![\w.]){re.escape(word)}(?![\w])", text, flags=re.IGNORECASE)
        offset = m.start() if m else 0
    before = text[:offset]
    if "\n" in before:
        line += before.count("\n")
        column = offset - before.rfind("\n")
    else:
        column += offset
    snippet = text.split("\n")[before.count("\n")] if text else ""
    if before.count("\n") == 0 and statement.pos.column > 1:
        snippet = " " * (statement.pos.column - 1) + snippet
    return cls(message, line, column, snippet)


__all__ = ["ExecutionError", "Result", "Session", "UnknownFunctionError", "UnknownTableError"]
