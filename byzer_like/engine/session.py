"""A SQL session: named Arrow tables, DuckDB for relational work, deployed models as SQL functions.

    session = Session()                       # or Session(runtime), or ByzerLLM().sql(script)
    results = session.sql(script)             # one Result per statement, in order
    session.table("answers").to_pandas()

Statements reach their handlers through tables: one handler per statement type, per `run ... as LLM`
action (`RUN_ACTIONS`; a training task is found from the model type, see `byzer_like.tasks`) and per
`!byzerllm` sub-command. Every verb that touches models, jobs or the cluster is the runtime's
(`byzer_like.runtime.Runtime`, or any object with the members of `EngineRuntime`), so the engine's
statements can be tested against a fake runtime without Ray.

A whole script is parsed (with its `set` variables) before its first statement runs, so a syntax
error anywhere stops it before anything is deployed or written. A model is called from `select` as
a vectorised DuckDB function: the rows of each vector go to the model's replicas in concurrent
chunks and come back in row order (`Runtime.generate`), so no row is lost or duplicated.
"""
from __future__ import annotations

import re
import sys
import threading
from concurrent import futures
from concurrent.futures import ThreadPoolExecutor
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable

import duckdb
import pyarrow as pa
from duckdb import sqltypes

from .. import tasks
from ..config import (ConvertOptions, DeployOptions, EvalOptions, MergeOptions, QuantizeOptions, RepartitionOptions,
                      SetupConfig, parse_bool)
from ..errors import ConfigError, ExecutionError, SqlError, UnknownFunctionError, UnknownTableError
from ..sql import Command, Load, Run, Save, Select, Set, Statement, parse_script, to_duckdb
from . import functions as fx
from .io import load_table, save_table
from .protocol import EngineRuntime

HELPERS = ("llm_prompt", "llm_stack", "llm_eval", "llm_with_adapter")
ON_ERROR = ("raise", "null")
FLAG_DEFAULTS = {"llm_cache": "false", "llm_dedupe": "true"}  # boolean `set` variables and their defaults
DUCKDB_INTERRUPTED = "Query interrupted"  # DuckDB's RuntimeError when a signal (Ctrl-C) arrives while it runs
# `run command as LLM.`` where action="..."`: the actions, each with its handler (Session._<name>) and
# its options model; training has no action of its own (the model type or setup mode names the task)
RUN_ACTIONS: dict[str, str] = {"infer": "deploy", "merge": "merge", "convert": "convert", "quantize": "quantize",
                               "eval": "eval"}
DEFAULT_EVAL_ROWS = "eval_rows"  # action="eval": the per-row table's name when outputTable is not given
# `run <t> as <ET>.`` ...`: Byzer's ETs that exist here (lower-cased target -> handler Session._<name>); the
# parser lists them (sql.run.RUN_TARGETS) when a script names another
RUN_ETS: dict[str, str] = {"tablerepartition": "repartition"}


@dataclass(frozen=True)
class Partitioning:
    """How `TableRepartition` split a table: `num` partitions by `columns` (empty: round-robin); `sizes`:
    rows per partition, in the table's row order (the rows of partition 0 first)."""

    num: int
    columns: tuple[str, ...]
    sizes: tuple[int, ...]


@dataclass
class Result:
    """What one statement produced: a table (for most statements) and a short message."""

    kind: str
    table: pa.Table | None = None
    name: str | None = None
    message: str = ""

    def to_pandas(self):
        return None if self.table is None else self.table.to_pandas()








@dataclass
class _Call:
    """Bookkeeping of the model calls of one select (row numbers, progress)."""

    rows: int = 0
    error: BaseException | None = None
    bar: Any = None
    cached: int = 0  # rows taken from the result cache
    computed: int = 0  # rows sent to a model
    shared: int = 0  # rows answered with the answer of an identical request (not sent again)
    known: dict = field(default_factory=dict)  # per model: answers of deterministic requests (runtime.batching)


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
        self.runtime: EngineRuntime = getattr(runtime, "runtime", runtime)
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
        self._threads = int(self.con.sql("select current_setting('threads')").fetchall()[0][0])
        self._functions = {r[0].lower() for r in self.con.sql("select distinct function_name from duckdb_functions()").fetchall()}
        self._registered: set[str] = set()
        self._call = _Call()
        helpers = {"llm_prompt": (fx.llm_prompt, [sqltypes.VARCHAR, duckdb.list_type(sqltypes.VARCHAR)]),
                   "llm_stack": (fx.llm_stack, [sqltypes.VARCHAR, sqltypes.VARCHAR]),
                   "llm_with_adapter": (fx.llm_with_adapter, [sqltypes.VARCHAR, sqltypes.VARCHAR])}
        for name, (fn, args) in helpers.items():
            self.con.create_function(name, fx.arrow_function2(fn), args, sqltypes.VARCHAR, type="arrow",
                                     null_handling="special")
            self._registered.add(name)
        self.con.create_function("llm_eval", self._llm_eval, [sqltypes.VARCHAR, sqltypes.VARCHAR, sqltypes.VARCHAR],
                                 sqltypes.DOUBLE, type="arrow", null_handling="special")
        self._registered.add("llm_eval")
        self._handlers: dict[type, Callable[[Any], Result]] = {
            Load: self._load, Save: self._save, Select: self._select, Set: self._set, Run: self._run,
            Command: self._command,
        }
        # `!byzerllm <sub> [<action>]` -> handler(args after the action, command); None: any action
        self._byzerllm: dict[tuple[str, str | None], Callable[[tuple[str, ...], Command], Result]] = {
            ("setup", None): self._setup,
            ("model", "list"): self._registry_list,
            ("model", "deployed"): self._deployment_list,
            ("model", "exists"): self._deployment_exists,
            ("model", "remove"): self._undeploy,
            ("job", "list"): self._job_list,
            ("job", "logs"): self._job_logs,
            ("job", "status"): self._job_control,
            ("job", "stop"): self._job_control,
            ("job", "resume"): self._job_control,
            ("cache", "status"): self._cache_status,
            ("cache", "clear"): self._cache_clear,
            ("model", "promote"): self._promote,
            ("eval", "list"): self._eval_list,
            ("eval", "compare"): self._eval_compare,
            ("adapter", "list"): self._adapter_list,
        }

    def close(self) -> None:
        """Close the session's DuckDB connection (its tables stay readable as Arrow tables)."""
        self._close()

    # -- scripts -----------------------------------------------------------------------------------
    def sql(self, script: str) -> list[Result]:
        """Run a script; return one Result per statement."""
        statements = parse_script(script, self.variables)
        return [self.execute(s) for s in statements]

    def execute(self, statement: Statement) -> Result:
        """Run one parsed statement. Ctrl-C (SIGINT) while DuckDB runs it raises KeyboardInterrupt, as
        anywhere else in Python; the session and its tables stay usable."""
        try:
            return self._handlers[type(statement)](statement)
        except RuntimeError as e:
            if str(e) == DUCKDB_INTERRUPTED:
                raise KeyboardInterrupt(f"statement at line {statement.pos.line} interrupted") from None
            raise

    def table(self, name: str) -> pa.Table:
        for key, t in self.tables.items():
            if key.lower() == name.lower():
                return t
        raise KeyError(name)

    def _put(self, name: str, table: pa.Table, partitioning: Partitioning | None = None) -> None:
        for key in [k for k in self.tables if k.lower() == name.lower()]:
            del self.tables[key]
        self.partitioning.pop(name.lower(), None)
        if partitioning is not None:
            self.partitioning[name.lower()] = partitioning
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
        notes: list[str] = []
        table = load_table(self.con, s.format, path, s.options, notes)
        self._put(s.table, table)
        return Result("load", table, s.table, f"{s.table}: {table.num_rows} rows from {path}"
                      + "".join(f" (note: {n})" for n in notes))

    def _save(self, s: Save) -> Result:
        table = self._need_table(s.table, s)
        path = self.workspace.resolve(s.path, what="save path")
        info = save_table(table, s.format, path, s.mode, s.options)
        summary = pa.table({k: [v] for k, v in info.items()})
        note = (f" (note: repeated column names written apart: {info['renamed']}; name them in the select to "
                f"choose the names)" if info.get("renamed") else "")
        return Result("save", summary, None, f"{s.table}: {info['rows']} rows -> {info['path']} ({s.mode}){note}")

    def _set(self, s: Set) -> Result:
        if not (s.keeps_existing and s.name in self.variables):
            self.variables[s.name] = s.value
        if s.name == "llm_on_error" and self.variables[s.name] not in ON_ERROR:
            raise ConfigError(f"llm_on_error must be one of {', '.join(ON_ERROR)}, not {s.value!r}")
        if s.name in ("llm_cache", "llm_dedupe"):
            self._flag(s.name)  # a value that is not a boolean fails here, not at the next select
        return Result("set", None, None, f"{s.name} = {self.variables[s.name]!r}")

    def _select(self, s: Select) -> Result:
        tr = to_duckdb(s.sql)
        models = self._prepare_functions(tr.functions, s)
        for name in tr.tables:
            self._need_table(name, s)
        self._check_ambiguous(tr.columns, s)
        self._call = _Call()
        if models and self.progress:
            from tqdm import tqdm

            self._call.bar = tqdm(desc="model rows", unit="row", leave=False)
        self.con.execute(f"SET threads={1 if models else self._threads}")  # one vector at a time: row numbers
        try:
            query = lambda: self.con.sql(tr.sql).to_arrow_table()  # noqa: E731
            # model functions run in this thread, where Ctrl-C reaches them; DuckDB alone runs aside
            table = query() if models else self._interruptible(query)
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
        notes = []
        if self._call.cached:
            notes.append(f"{self._call.cached} model answers from the result cache, {self._call.computed} computed")
        if self._call.shared:
            notes.append(f"{self._call.shared} duplicate requests answered once: "
                         f"{self._call.computed - self._call.shared} sent to the model")
        if notes:
            message += f" ({'; '.join(notes)})"
        return Result("select", table, s.table, message)

    def _check_ambiguous(self, columns: tuple[tuple[str, tuple[str, ...]], ...], s: Select) -> None:
        """Spark's rule: a column name that a table holds twice (a `select *` over a join, `select 1 as x,
        2 as x`) cannot be referenced; DuckDB would silently read the first one."""
        for column, sources in columns:
            for name in sources:
                if not self._has_table(name):
                    continue
                same = [c for c in self.table(name).column_names if c.lower() == column.lower()]
                if len(same) > 1:
                    raise _at(ExecutionError, s, column,
                              f"ambiguous reference to column {column!r}: table {name} has {len(same)} columns of that "
                              f"name (from a join or a select that repeated it); name them apart where {name} is made, "
                              f"e.g. `select a.{column} as a_{column}, b.{column} as b_{column} ...`")

    def _interruptible(self, query: Callable[[], pa.Table]) -> pa.Table:
        """Run a DuckDB query in a helper thread while this (main) thread waits, so that Ctrl-C
        interrupts it at once (DuckDB notices signals only now and then while it runs)."""
        if threading.current_thread() is not threading.main_thread():
            return query()
        future = ThreadPoolExecutor(max_workers=1, thread_name_prefix="byzer-like-select").submit(query)
        try:
            return future.result()
        except KeyboardInterrupt:
            while not futures.wait([future], timeout=0.05).done:  # until it stopped (it may not have started yet)
                self.con.interrupt()
            raise

    def _cache_on(self) -> bool:
        return self._flag("llm_cache")

    def _flag(self, name: str) -> bool:
        """A boolean `set` variable: `llm_cache` (default false), `llm_dedupe` (default true)."""
        value = self.variables.get(name, FLAG_DEFAULTS[name])
        try:
            return parse_bool(value)
        except ConfigError:
            raise ConfigError(f'{name} must be "true" or "false", not {value!r}') from None

    def _run(self, s: Run) -> Result:
        """`run ... as LLM`: the action's handler from RUN_ACTIONS, or training when the model type
        (`sft/llama`) or the setup mode names a task."""
        where = dict(s.options)
        et = RUN_ETS.get(s.target.lower())
        if et is not None:  # `run <t> as TableRepartition.`` ...`: one of Byzer's ETs
            result = getattr(self, f"_{et}")(s, where)
        else:
            result = self._run_llm(s, where)
        if s.output_table and result.table is not None and result.name != s.output_table:  # names the result row
            self._put(s.output_table, result.table)
            result.name = s.output_table
        return result

    def _run_llm(self, s: Run, where: dict[str, str]) -> Result:
        """`run ... as LLM`: an action's handler, or training."""
        action = where.get("action")
        if action is None:
            model_type = DeployOptions.given(where, "pretrained_model_type") or ""
            if s.verb == "train" or tasks.task_of(model_type, self.runtime.setup_config.mode)[0]:
                return self._train(s, where)
            action = "infer"
        handler = RUN_ACTIONS.get(action)
        if handler is None:
            valid = ", ".join(f'"{a}"' for a in RUN_ACTIONS)
            raise _at(ConfigError, s, None, f"unknown action {action!r}; run command as LLM supports action={valid}, "
                      f"or a training pretrainedModelType ({', '.join(f'{t}/...' for t in tasks.TASKS)})")
        return getattr(self, f"_{handler}")(s, where)

    def _repartition(self, s: Run, where: dict[str, str]) -> Result:
        """Byzer's ET TableRepartition: the rows regrouped into `partitionNum` partitions (rows with equal
        `partitionCols` values together, else dealt round-robin), the partitioning recorded on the output
        table. The partitions are what a later step splits across workers: sfft with keepPartitionNum="true"
        keeps each whole on one worker. A select that calls a model does not need them: its rows go to every
        replica in concurrent chunks already (what Byzer users repartition for), sorted by prompt length
        across the whole select, and the message says so."""
        opts = RepartitionOptions.parse(where, where="TableRepartition")
        if not s.input_table:
            raise _at(ConfigError, s, "command", "TableRepartition needs an input table: run <table> as "
                      'TableRepartition.`` where partitionNum="4" as <new table>')
        if not s.output_table:
            raise _at(ConfigError, s, None, "TableRepartition needs `as <new table>` after its options")
        table = self._need_table(s.input_table, s)
        columns = opts.columns()
        missing = [c for c in columns if c not in table.column_names]
        if missing:
            raise _at(ConfigError, s, missing[0], f"partitionCols names {', '.join(map(repr, missing))}, not a column "
                      f"of {s.input_table}; its columns: {', '.join(table.column_names)}")
        parts = _partition_ids(table, columns, opts.partition_num, opts.partition_type)
        order = sorted(range(table.num_rows), key=lambda i: parts[i])  # stable: rows keep their order within one
        out = table.take(pa.array(order, type=pa.int64())) if table.num_rows else table
        sizes = tuple(parts.count(p) for p in range(opts.partition_num))
        self._put(s.output_table, out, Partitioning(opts.partition_num, tuple(columns), sizes))
        by = f" by {', '.join(columns)} ({opts.partition_type})" if columns else " (round-robin)"
        return Result("run", out, s.output_table,
                      f"{s.output_table}: {out.num_rows} rows in {opts.partition_num} partitions{by}; "
                      f"largest {max(sizes)} rows, {sizes.count(0)} empty (sfft keeps them whole with "
                      f"keepPartitionNum=\"true\"; a model call spreads any table's rows over every replica)")

    def _deploy(self, s: Run, where: dict[str, str]) -> Result:
        """action="infer": deploy (the runtime checks every option, in either spelling)."""
        if s.input_table:
            self._need_table(s.input_table, s)
        spec = self.runtime.deploy_spec(where, session_models=lambda ref: self._model_dir_of(ref, s))
        info = self.runtime.deploy(spec)
        return Result("run", pa.table({k: [v] for k, v in info.items()}), None, f"{spec.udf_name}: {info['status']}")

    def _train(self, s: Run, where: dict[str, str]) -> Result:
        """A training task: the input table goes to a job; the result is the job's row (a detached job
        returns at once)."""
        from ..jobs import rows_table

        model_type = DeployOptions.given(where, "pretrained_model_type") or ""
        task = tasks.require_task(model_type, self.runtime.setup_config.mode)
        opts = task.parse_options(where)
        name = opts.input_table or s.input_table
        if not name or name == "command":
            raise _at(ConfigError, s, None, 'training needs inputTable="<table>" (a table loaded in this session)')
        table = self._need_table(name, s)
        extra: dict[str, Any] = {}
        if getattr(opts, "eval_table", None):  # measured at each evaluation step
            extra["eval_table"] = self._need_table(opts.eval_table, s)
        parts = self.partitioning.get(name.lower())
        keep = getattr(opts, "keep_partition_num", False) and parts is not None
        if keep and task.name == "sfft":  # each worker takes whole partitions (train/sfft.py)
            extra["partitions"] = parts.sizes
        row = self.runtime.train(task.name, where, table, options=opts, progress=self.progress, **extra)
        message = f"job {row['job_id']}: {row['state']}"
        if keep:
            workers = self.runtime.setup_config.num_workers
            if task.name == "sfft":
                message += (f" (keepPartitionNum: {name} has {parts.num} partitions, each kept whole on one of "
                            f"{workers} training worker(s): partition i -> worker i % {workers})")
            else:
                message += f" (keepPartitionNum: {name} has {parts.num} partitions; {task.name} trains in one process)"
        return Result("run", rows_table([row]), None, message)

    def _merge(self, s: Run, where: dict[str, str]) -> Result:
        """action="merge": a registered LoRA adapter into its base model, registered as a new model."""
        opts = MergeOptions.parse(where, where='action="merge"')
        info = self.runtime.merge(opts.model_table, opts.output_table, overwrite=opts.overwrite)
        return Result("run", pa.table({k: [v] for k, v in info.items()}), None,
                      f"{info['merged_from']} merged -> {info['name']}@v{info['version']}")

    def _convert(self, s: Run, where: dict[str, str]) -> Result:
        """action="convert": a GGUF file or a DeepSpeed ZeRO checkpoint -> a Hugging Face model, registered
        as outputTable (Byzer's keys: pretrainedModelType="deepspeed", modelNameOrPath, checkpointDir, tag,
        savePath)."""
        opts = ConvertOptions.parse(where, where='action="convert"')
        info = self.runtime.convert(opts, session_models=lambda ref: self._model_dir_of(ref, s))
        what = f"{info['name']}@v{info['version']}" if info.get("name") else info["path"]
        return Result("run", _row_table(info), None, f"{info['source_format']} converted -> {what}")

    def _quantize(self, s: Run, where: dict[str, str]) -> Result:
        """action="quantize": a registered whole model written weight-quantized and registered as outputTable;
        GPTQ reads its calibration text from calibrationTable (a table of this session)."""
        opts = QuantizeOptions.parse(where, where='action="quantize"')
        table = self._need_table(opts.calibration_table, s) if opts.calibration_table else None
        info = self.runtime.quantize(opts.model_table, opts.output_table, opts.method, calibration=table,
                                     calibration_column=opts.calibration_column,
                                     calibration_rows=opts.calibration_rows, group_size=opts.group_size,
                                     overwrite=opts.overwrite, session_models=lambda ref: self._model_dir_of(ref, s))
        return Result("run", _row_table(info), None,
                      f"{info['quantized_from']} quantized ({info['method']}) -> {info['name']}@v{info['version']}")

    def _eval(self, s: Run, where: dict[str, str]) -> Result:
        """action="eval": a model (modelTable, or a deployed udfName) answers the eval set inputTable through
        the batched path; the result is the summary row, the per-row table goes to outputTable (default
        eval_rows); both are recorded in the catalog with a report (see byzer_like.eval)."""
        opts = EvalOptions.parse(where, where='action="eval"')
        name = opts.input_table or (s.input_table if s.input_table not in (None, "command") else None)
        if not name:
            raise _at(ConfigError, s, None, 'action="eval" needs its eval set: inputTable="<table>" (a table of this '
                      "session with prompt and reference columns)")
        table = self._need_table(name, s)
        result = self.runtime.evaluate(table, udf_name=opts.udf_name, model_table=opts.model_table,
                          metrics=opts.metrics, judge=opts.judge, judge_mode=opts.judge_mode,
                          judge_prompt=opts.judge_prompt, choices=opts.choices, reference_column=opts.reference_column,
                          prompt_column=opts.prompt_column, max_new_tokens=opts.max_new_tokens,
                          temperature=opts.temperature, cache=opts.cache, evalset=name, report=opts.report,
                          keep_deployed=opts.keep_deployed, session_models=lambda ref: self._model_dir_of(ref, s))
        out = opts.output_table or DEFAULT_EVAL_ROWS
        self._put(out, result.rows)
        shown = " ".join(f"{k}={_short(v)}" for k, v in result.summary.items()
                         if k in (*EVAL_SHOWN, *(opts.metrics.split(","))) and v is not None)
        return Result("run", result.summary_table(), None,
                      f"eval of {result.summary['model_ref']} on {name}: {shown} ({result.summary['rows']} rows; "
                      f"per-row table {out})")

    def _llm_eval(self, predictions: pa.Array, references: pa.Array, metric_names: pa.Array) -> pa.Array:
        """`llm_eval(prediction, reference, 'rouge_l')`: one row's value of a per-row metric (NULL when an
        argument is NULL)."""
        from ..eval.metrics import row_value

        try:
            return pa.array([None if r is None or m is None else row_value(m, p, r)
                             for p, r, m in zip(predictions.to_pylist(), references.to_pylist(),
                                                metric_names.to_pylist())], type=pa.float64())
        except BaseException as e:  # noqa: BLE001 - DuckDB would flatten it to text; kept and re-raised
            self._call.error = e
            raise

    def _promote(self, args: tuple[str, ...], c: Command) -> Result:
        """`!byzerllm model promote m@v3 [if|where <conditions>] [on <eval set>];`: production stage for the
        version when every condition holds on stored (or, for a table of this session, fresh) results."""
        ref, words = args[1], list(args[2:])
        evalset = None
        if len(words) >= 2 and words[-2].lower() == "on":
            evalset, words = words[-1], words[:-2]
        if words and words[0].lower() in ("if", "where"):
            words = words[1:]
        elif words:
            raise _at(ConfigError, c, words[0], f"unexpected `{words[0]}` after `promote {ref}`; write "
                      f"`!byzerllm model promote {ref} if <metric> >= <value> [on <eval set>]`")
        row = self.runtime.promote(ref, " ".join(words) or None, evalset=evalset, tables=self.tables)
        return Result("model", _row_table(row), message=f"{row['model']}@v{row['version']}: {row['reason']}")

    def _eval_list(self, args: tuple[str, ...], c: Command) -> Result:
        """`!byzerllm eval list [<model>|<model>@vN];`: stored evaluations, newest first."""
        return Result("eval", evals_table(self.runtime.eval_list(args[1] if len(args) > 1 else None)))

    def _eval_compare(self, args: tuple[str, ...], c: Command) -> Result:
        """`!byzerllm eval compare <a> <b> [on <eval set>];`: metric deltas of b over a with bootstrap intervals."""
        if len(args) < 3:
            raise _at(ConfigError, c, None, "`!byzerllm eval compare` needs two models: eval compare m@v1 m@v2 [on <eval set>]")
        rest = list(args[3:])
        evalset = None
        if len(rest) == 2 and rest[0].lower() == "on":
            evalset = rest[1]
        elif rest:
            raise _at(ConfigError, c, rest[0], "write `!byzerllm eval compare m@v1 m@v2 [on <eval set>]`")
        rows = self.runtime.eval_compare(args[1], args[2], evalset=evalset)
        table = pa.Table.from_pylist(rows) if rows else pa.table({"metric": pa.array([], pa.string())})
        shown = "; ".join(f"{r['metric']} {r['delta']:+.4g} [{r['ci_low']:+.4g}, {r['ci_high']:+.4g}]" for r in rows)
        return Result("eval", table, message=f"{args[2]} vs {args[1]}: {shown or 'no metric in common'}")

    def _adapter_list(self, args: tuple[str, ...], c: Command) -> Result:
        """`!byzerllm adapter list <udf>`: the LoRA adapters each replica of the deployment holds now (one row
        per replica and adapter; a replica holding none has a row with a null adapter)."""
        from ..display import local_timestamp

        name = args[1]
        rows = self.runtime.loaded_adapters(name)
        for r in rows:
            r["loaded_at"] = local_timestamp(r["loaded_at"]) if r["loaded_at"] is not None else None
        schema = pa.schema([("replica", pa.string()), ("adapter", pa.string()), ("version", pa.int64()),
                            ("ref", pa.string()), ("loaded_at", pa.timestamp("s")), ("requests", pa.int64()),
                            ("capacity", pa.int64())])
        table = pa.Table.from_pylist([{k: r.get(k) for k in schema.names} for r in rows], schema=schema)
        held = sorted({r["ref"] for r in rows if r["ref"]})
        replicas = len({r["replica"] for r in rows})
        return Result("adapter", table, message=f"{name}: {len(held)} adapter(s) loaded on {replicas} replica(s)"
                                                + (f": {', '.join(held)}" if held else ""))

    def _has_table(self, name: str) -> bool:
        return any(k.lower() == name.lower() for k in self.tables)

    def _model_dir_of(self, name: str, s: Run) -> str | None:
        """The model directory of a `load model.` table of this session; None if there is no such table."""
        if not self._has_table(name):
            return None
        table = self._need_table(name, s)
        if "model_dir" not in table.column_names or table.num_rows != 1:
            raise ConfigError(f"modelTable {name!r} must be a table from `load model.`<dir>` as {name}`, "
                              'or "command" to use localModelDir')
        return table.column("model_dir")[0].as_py()

    def _command(self, c: Command) -> Result:
        """`!show tables`, `!desc <t>`, and `!byzerllm <sub> ...` through the `_byzerllm` table (the
        parser has checked each form against `sql.command.COMMANDS`)."""
        if c.name == "show":
            rows = [{"table": k, "rows": t.num_rows, "columns": t.num_columns} for k, t in sorted(self.tables.items())]
            return Result("show", pa.Table.from_pylist(rows, schema=pa.schema(
                [("table", pa.string()), ("rows", pa.int64()), ("columns", pa.int64())])))
        if c.name == "desc":
            t = self._need_table(c.args[0], c)
            return Result("desc", pa.table({"column": t.schema.names, "type": [str(x) for x in t.schema.types]}))
        sub, rest = c.args[0], c.args[1:]
        handler = self._byzerllm.get((sub, rest[0] if rest else None)) or self._byzerllm.get((sub, None))
        if handler is None:
            raise _at(ConfigError, c, sub, f"`!byzerllm {' '.join(c.args)}` has no handler")
        return handler(rest, c)

    def _setup(self, args: tuple[str, ...], c: Command) -> Result:
        if len(args) == 1 and "=" not in args[0]:
            pairs = [("mode", args[0])]
        else:
            pairs = [(k.strip(), v.strip()) for k, _, v in (a.partition("=") for a in args)]
        notes = []
        for key, value in pairs:
            self.runtime.setup({key: value})
            field = SetupConfig.field_of(key)
            if field in SetupConfig.NO_EFFECT:
                notes.append(f"{key} is accepted for Byzer scripts and has no effect here: {SetupConfig.NO_EFFECT[field]}")
            elif key in SetupConfig.BYZER_NAMES:
                notes.append(f"{key} sets {field} here")
        message = ", ".join(f"{k}={v}" for k, v in pairs)
        return Result("setup", message=message + "".join(f" (note: {n})" for n in notes))

    def _job_list(self, args: tuple[str, ...], c: Command) -> Result:
        from ..jobs import rows_table

        return Result("job", rows_table(self.runtime.jobs.list()))

    def _job_id(self, args: tuple[str, ...], c: Command) -> str:
        """The job named after the action, else the most recent one."""
        if len(args) > 1:
            return args[1]
        recent = self.runtime.catalog.jobs(limit=1)
        if not recent:
            raise _at(ConfigError, c, None, "no training job in this workspace yet")
        return recent[0]["id"]

    def _job_logs(self, args: tuple[str, ...], c: Command) -> Result:
        job_id = self._job_id(args, c)
        text = self.runtime.jobs.logs(job_id)
        return Result("job", pa.table({"job_id": [job_id] * len(text.splitlines()), "line": text.splitlines()}),
                      message=text)

    def _job_control(self, args: tuple[str, ...], c: Command) -> Result:
        """`status`, `stop`, `resume`: the verb of the same name on the jobs; the job's row."""
        from ..jobs import rows_table

        job_id = self._job_id(args, c)
        row = getattr(self.runtime.jobs, args[0])(job_id)
        return Result("job", rows_table([row]), message=f"job {job_id}: {row['state']}")

    def _cache_status(self, args: tuple[str, ...], c: Command) -> Result:
        """`!byzerllm cache status [<udf>]`: the result cache's rows per model."""
        counts = self.runtime.result_cache.count(args[1] if len(args) > 1 else None)
        return Result("cache", pa.table({"model": pa.array(list(counts), type=pa.string()),
                                         "rows": pa.array(list(counts.values()), type=pa.int64())}))

    def _cache_clear(self, args: tuple[str, ...], c: Command) -> Result:
        """`!byzerllm cache clear [<udf>]`: forget a model's cached answers (all models without one)."""
        model = args[1] if len(args) > 1 else None
        n = self.runtime.result_cache.clear(model)
        return Result("cache", pa.table({"model": [model or "*"], "removed": [n]}), message=f"result cache: {n} rows removed")

    def _registry_list(self, args: tuple[str, ...], c: Command) -> Result:
        return Result("model", registry_table(self.runtime.catalog.models()))

    def _deployment_list(self, args: tuple[str, ...], c: Command) -> Result:
        names = sorted(self.runtime.deployments())
        return Result("model", pa.table({"udf_name": pa.array(names, type=pa.string())}))

    def _deployment_exists(self, args: tuple[str, ...], c: Command) -> Result:
        name = args[1]
        return Result("model", pa.table({"udf_name": [name], "exists": [self.runtime.deployment_exists(name)]}))

    def _undeploy(self, args: tuple[str, ...], c: Command) -> Result:
        name = args[1]
        self.runtime.undeploy(name)
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
        deployed = {m.lower(): m for m in self.runtime.deployments(start=False)}
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
            results = self.runtime.generate(model, [requests[i] for i in chat],
                                            on_rows=bar.update if bar is not None else None, cache=cache,
                                            rows=[self._call.rows + i for i in chat], on_cached=self._note_cached,
                                            dedupe=self._flag("llm_dedupe"), on_shared=self._note_shared,
                                            known=self._call.known.setdefault(model.lower(), {}))
            self._call.computed += len(chat)
            for i, res in zip(chat, results):
                if "error" in res and on_error != "null":
                    raise fx.RowError(model, self._call.rows + i + 1, res["error"], inputs[i])
                out[i] = fx.result_json(requests[i], res)
        embed = [i for i, r in enumerate(requests) if r is not None and embedding[i]]
        if embed:
            vectors = self.runtime.embed(model, [requests[i]["ins"] for i in embed])
            for i, v in zip(embed, vectors):
                out[i] = fx.result_json(requests[i], {"output": v, "metadata": {"dimensions": len(v)}})
        self._call.rows += len(params)
        return out

    def _note_shared(self, n: int) -> None:
        self._call.shared += n

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


def _partition_ids(table: pa.Table, columns: list[str], num: int, kind: str) -> list[int]:
    """The partition of each row: a stable hash of its `columns` values (the same in every process), their
    sorted order cut into `num` equal runs (`kind="range"`), or round-robin without columns."""
    import json
    import zlib

    n = table.num_rows
    if not columns:
        return [i % num for i in range(n)]
    keys = [json.dumps(list(v), sort_keys=True, default=str, ensure_ascii=False)
            for v in zip(*(table.column(c).to_pylist() for c in columns))]
    if kind == "range":
        rank = {k: r for r, k in enumerate(sorted(set(keys)))}
        distinct = max(1, len(rank))
        return [min(num - 1, rank[k] * num // distinct) for k in keys]
    return [zlib.crc32(k.encode("utf-8")) % num for k in keys]


def _row_table(info: dict) -> pa.Table:
    """A verb's result dict as a one-row table (nested values as JSON text, None kept as null)."""
    import json

    row = {k: (json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else v) for k, v in info.items()}
    return pa.Table.from_pylist([row])


def registry_table(models: list) -> pa.Table:
    """The model registry as a table (`!byzerllm model list`): `created_at` a local timestamp, the main
    metrics (`loss`, `tokens_per_s`) as columns beside the whole `metrics` JSON."""
    import json

    from ..display import local_timestamp
    from ..jobs import main_metrics

    rows = [{"name": m.name, "version": m.version, "ref": m.ref, "stage": m.stage, "kind": m.kind,
             "model_type": m.model_type,
             "method": m.method, "base_model": m.base_model, "path": m.path, "job_id": m.job_id,
             **main_metrics(m.metrics), "metrics": json.dumps(m.metrics, sort_keys=True),
             "created_at": local_timestamp(m.created_at)} for m in models]
    schema = pa.schema([("name", pa.string()), ("version", pa.int64()), ("ref", pa.string()), ("stage", pa.string()),
                        ("kind", pa.string()),
                        ("model_type", pa.string()), ("method", pa.string()), ("base_model", pa.string()),
                        ("path", pa.string()), ("job_id", pa.string()), ("loss", pa.float64()),
                        ("tokens_per_s", pa.float64()), ("metrics", pa.string()), ("created_at", pa.timestamp("s"))])
    return pa.Table.from_pylist(rows, schema=schema)


EVAL_SHOWN = ("judge_parse_failures", "failed_rows", "mean_token_logprob")


def _short(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def evals_table(records: list[dict]) -> pa.Table:
    """Stored evaluations as a table (`!byzerllm eval list`): one row each, a column per metric found
    (in the order of `eval.metrics.METRICS`), the whole summary as `metrics` JSON, the report's paths."""
    import json

    from ..display import local_timestamp
    from ..eval.metrics import METRICS

    found = [m for m in (*METRICS, "judge_parse_failures") if any(m in (r.get("metrics") or {}) for r in records)]
    rows = []
    for r in records:
        ms = r.get("metrics") or {}
        rows.append({"eval_id": r["id"], "model": r["model"], "version": r["version"],
                     "evalset": r.get("evalset"), "fingerprint": r["fingerprint"], "rows": r["rows"],
                     **{m: (float(ms[m]) if isinstance(ms.get(m), (int, float)) else None) for m in found},
                     "judge": r.get("judge"), "metrics": json.dumps(ms, sort_keys=True),
                     "report_md": (r.get("report") or {}).get("markdown"),
                     "created_at": local_timestamp(r["created_at"])})
    schema = pa.schema([("eval_id", pa.string()), ("model", pa.string()), ("version", pa.int64()),
                        ("evalset", pa.string()), ("fingerprint", pa.string()), ("rows", pa.int64()),
                        *[(m, pa.float64()) for m in found], ("judge", pa.string()), ("metrics", pa.string()),
                        ("report_md", pa.string()), ("created_at", pa.timestamp("s"))])
    return pa.Table.from_pylist(rows, schema=schema)


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
