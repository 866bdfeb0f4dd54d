"""The statements' handlers, in one table: `load`, `save`, `set`, `select`, `run` and the `!` commands.

`run command as LLM.`` where action="..."` goes through its own table, RUN_ACTIONS (one handler per
action); training has no action of its own: the model type (`sft/llama`) or the setup mode names the task
(`byzer_like.tasks`). `run <table> as <ET>.`` ...` runs one of Byzer's ETs (RUN_ETS). Each handler takes the
`Session` and the parsed statement and returns a `Result`; what it asks of models, jobs or the cluster is a
verb of the session's runtime.
"""
from __future__ import annotations

import json
import zlib
from typing import Any, Callable, Mapping

import pyarrow as pa

from .. import tasks
from ..config import ConvertOptions, DeployOptions, EvalOptions, MergeOptions, QuantizeOptions, RepartitionOptions
from ..display import SHOW
from ..errors import ConfigError
from ..sql import Command, Load, Run, Save, Select, Set
from .commands import command
from .io import load_table, save_table, text_dir_table
from .position import error_at
from .render import jobs_table, row_table
from .result import Partitioning, Result
from .select import select

DEFAULT_EVAL_ROWS = "eval_rows"  # action="eval": the per-row table's name when outputTable is not given
EVAL_SHOWN = ("judge_parse_failures", "failed_rows", "mean_token_logprob")  # summary keys its message shows too
ON_ERROR = ("raise", "null")  # what `set llm_on_error` may say (select reads it; default raise)


def load(session: Any, s: Load) -> Result:
    path = session.workspace.resolve(s.path, what="load path")
    notes: list[str] = []
    table = load_table(session.con, s.format, path, s.options, notes)
    session.put(s.table, table)
    return Result("load", table, s.table, f"{s.table}: {table.num_rows} rows from {path}"
                  + "".join(f" (note: {n})" for n in notes))


def save(session: Any, s: Save) -> Result:
    table = session.need_table(s.table, s)
    path = session.workspace.resolve(s.path, what="save path")
    info = save_table(table, s.format, path, s.mode, s.options)
    summary = pa.table({k: [v] for k, v in info.items()})
    note = (f" (note: repeated column names written apart: {info['renamed']}; name them in the select to "
            f"choose the names)" if info.get("renamed") else "")
    return Result("save", summary, None, f"{s.table}: {info['rows']} rows -> {info['path']} ({s.mode}){note}")


def set_variable(session: Any, s: Set) -> Result:
    if not (s.keeps_existing and s.name in session.variables):
        session.variables[s.name] = s.value
    if s.name == "llm_on_error" and session.variables[s.name] not in ON_ERROR:
        raise ConfigError(f"llm_on_error must be one of {', '.join(ON_ERROR)}, not {s.value!r}")
    if s.name == "llm_show" and session.variables[s.name] not in SHOW:
        raise ConfigError(f"llm_show must be one of {', '.join(SHOW)} (what a result table shows of a model call: "
                          f"the answer's text, or its JSON), not {s.value!r}")
    if s.name in ("llm_cache", "llm_dedupe"):
        session.flag(s.name)  # a value that is not a boolean fails here, not at the next select
    return Result("set", None, None, f"{s.name} = {session.variables[s.name]!r}")


def run(session: Any, s: Run) -> Result:
    """`run ... as LLM`: an action's handler from RUN_ACTIONS, or training when the model type (`sft/llama`)
    or the setup mode names a task; `run <t> as <ET>`: the ET's handler from RUN_ETS. An `as <table>` after
    the options names the result's table."""
    where = dict(s.options)
    et = RUN_ETS.get(s.target.lower())
    result = et(session, s, where) if et is not None else _run_llm(session, s, where)
    if s.output_table and result.table is not None and result.name != s.output_table:  # names the result row
        session.put(s.output_table, result.table)
        result.name = s.output_table
    return result


def _run_llm(session: Any, s: Run, where: dict[str, str]) -> Result:
    action = where.get("action")
    if action is None:
        model_type = DeployOptions.given(where, "pretrained_model_type") or ""
        if s.verb == "train" or tasks.task_of(model_type, session.runtime.setup_config.mode)[0]:
            return train(session, s, where)
        action = "infer"
    handler = RUN_ACTIONS.get(action)
    if handler is None:
        valid = ", ".join(f'"{a}"' for a in RUN_ACTIONS)
        raise error_at(ConfigError, s, None, f"unknown action {action!r}; run command as LLM supports action={valid}, "
                       f"or a training pretrainedModelType ({', '.join(f'{t}/...' for t in tasks.TASKS)})")
    return handler(session, s, where)


def deploy(session: Any, s: Run, where: dict[str, str]) -> Result:
    """action="infer": deploy (the runtime checks every option, in either spelling)."""
    if s.input_table:
        session.need_table(s.input_table, s)
    spec = session.runtime.deploy_spec(where, session_models=session.model_dir_of)
    info = session.runtime.deploy(spec)
    note = (f" (ignored by the built-in plugin {spec.plugin!r}, which reads none of them: {', '.join(spec.ignored)})"
            if spec.ignored else "")
    return Result("run", pa.table({k: [v] for k, v in info.items()}), None, f"{spec.udf_name}: {info['status']}{note}")


def train(session: Any, s: Run, where: dict[str, str]) -> Result:
    """A training task: its options parsed here, once; the input table goes to a job; the result is the job's
    row (a detached job returns at once)."""
    rt = session.runtime
    task = tasks.require_task(DeployOptions.given(where, "pretrained_model_type") or "", rt.setup_config.mode)
    opts = task.parse_options(where)
    name = opts.input_table or s.input_table
    data_dir = getattr(opts, "local_data_dir", None)  # sfft: a folder of raw text files instead of a table
    if data_dir and name not in (None, "command"):
        raise error_at(ConfigError, s, None, f"give inputTable or localDataDir, not both (inputTable={name!r}, "
                       f"localDataDir={data_dir!r})")
    if data_dir:
        name, table = data_dir, text_dir_table(session.workspace, data_dir)
    elif not name or name == "command":
        raise error_at(ConfigError, s, None, 'training needs inputTable="<table>" (a table loaded in this session)'
                       + ('; sfft also takes localDataDir="<folder of text files>"' if task.name == "sfft" else ""))
    else:
        table = session.need_table(name, s)
    extra: dict[str, Any] = {}
    if getattr(opts, "eval_table", None):  # measured at each evaluation step
        extra["eval_table"] = session.need_table(opts.eval_table, s)
    if getattr(opts, "predict_table", None):  # answered by the trained model before the job ends
        extra["predict_table"] = session.need_table(opts.predict_table, s)
    parts = None if data_dir else session.partitioning.get(name.lower())
    keep = getattr(opts, "keep_partition_num", False) and parts is not None
    if keep and task.name == "sfft":  # each worker takes whole partitions (train/sfft_data.py)
        extra["partitions"] = parts.sizes
    row = rt.train(task.name, where, table, options=opts, progress=session.progress, **extra)
    message = f"job {row['job_id']}: {row['state']}"
    if row.get("method"):  # sft: which method trains, and why when it was not named
        message += f" (method: {row['method']})"
    if keep:
        workers = rt.setup_config.num_workers
        if task.name == "sfft":
            message += (f" (keepPartitionNum: {name} has {parts.num} partitions, each kept whole on one of "
                        f"{workers} training worker(s): partition i -> worker i % {workers})")
        else:
            message += f" (keepPartitionNum: {name} has {parts.num} partitions; {task.name} trains in one process)"
    if getattr(opts, "predict_table", None):
        message += _predictions(session, opts.predict_table, row)
    return Result("run", jobs_table([row]), None, message)


def _predictions(session: Any, predict_table: str, row: Mapping[str, Any]) -> str:
    """A finished job's predictions of `predict_table` as the session's table `<predict_table>_predictions`,
    and what the statement's message says of them (a detached job: where they will be)."""
    import pyarrow.parquet as pq

    metrics = row.get("metrics") or {}
    metrics = json.loads(metrics) if isinstance(metrics, str) else metrics
    path = metrics.get("predictions")
    if not path:
        if row.get("state") in ("FAILED", "STOPPED"):
            return ""
        return (f" (the answers to {predict_table} will be in predictions.parquet in the job's folder; "
                "`!byzerllm job status` names it once the job ends)")
    name = f"{predict_table}_predictions"
    session.put(name, pq.read_table(path))
    return f" (answers to {predict_table}: table {name}, {metrics.get('predict_rows')} row(s), in {path})"


def merge(session: Any, s: Run, where: dict[str, str]) -> Result:
    """action="merge": a registered LoRA adapter into its base model, registered as a new model."""
    opts = MergeOptions.parse(where, where='action="merge"')
    info = session.runtime.merge(opts.model_table, opts.output_table, overwrite=opts.overwrite)
    return Result("run", pa.table({k: [v] for k, v in info.items()}), None,
                  f"{info['merged_from']} merged -> {info['name']}@v{info['version']}")


def convert(session: Any, s: Run, where: dict[str, str]) -> Result:
    """action="convert": a GGUF file or a DeepSpeed ZeRO checkpoint -> a Hugging Face model, registered as
    outputTable (Byzer's keys: pretrainedModelType="deepspeed", modelNameOrPath, checkpointDir, tag, savePath)."""
    opts = ConvertOptions.parse(where, where='action="convert"')
    info = session.runtime.convert(opts, session_models=session.model_dir_of)
    what = f"{info['name']}@v{info['version']}" if info.get("name") else info["path"]
    return Result("run", row_table(info), None, f"{info['source_format']} converted -> {what}")


def quantize(session: Any, s: Run, where: dict[str, str]) -> Result:
    """action="quantize": a registered whole model written weight-quantized and registered as outputTable;
    GPTQ reads its calibration text from calibrationTable (a table of this session)."""
    opts = QuantizeOptions.parse(where, where='action="quantize"')
    table = session.need_table(opts.calibration_table, s) if opts.calibration_table else None
    info = session.runtime.quantize(opts.model_table, opts.output_table, opts.method, calibration=table,
                                    calibration_column=opts.calibration_column,
                                    calibration_rows=opts.calibration_rows, group_size=opts.group_size,
                                    overwrite=opts.overwrite, session_models=session.model_dir_of)
    return Result("run", row_table(info), None,
                  f"{info['quantized_from']} quantized ({info['method']}) -> {info['name']}@v{info['version']}")


def evaluate(session: Any, s: Run, where: dict[str, str]) -> Result:
    """action="eval": a model (modelTable, or a deployed udfName) answers the eval set inputTable through the
    runtime's evaluation; the result is the summary row, the per-row table goes to outputTable (default
    eval_rows); both are recorded in the catalog with a report (see byzer_like.runtime.evaluation)."""
    opts = EvalOptions.parse(where, where='action="eval"')
    name = opts.input_table or (s.input_table if s.input_table not in (None, "command") else None)
    if not name:
        raise error_at(ConfigError, s, None, 'action="eval" needs its eval set: inputTable="<table>" (a table of this '
                       "session with prompt and reference columns)")
    table = session.need_table(name, s)
    result = session.runtime.evaluate(
        table, udf_name=opts.udf_name, model_table=opts.model_table, metrics=opts.metrics, judge=opts.judge,
        judge_mode=opts.judge_mode, judge_prompt=opts.judge_prompt, choices=opts.choices,
        reference_column=opts.reference_column, prompt_column=opts.prompt_column, max_new_tokens=opts.max_new_tokens,
        temperature=opts.temperature, cache=opts.cache, evalset=name, report=opts.report,
        keep_deployed=opts.keep_deployed, session_models=session.model_dir_of, reward_model=opts.reward_model)
    out = opts.output_table or DEFAULT_EVAL_ROWS
    session.put(out, result.rows)
    shown = " ".join(f"{k}={_short(v)}" for k, v in result.summary.items()
                     if k in (*EVAL_SHOWN, *(opts.metrics.split(","))) and v is not None)
    return Result("run", result.summary_table(), None,
                  f"eval of {result.summary['model_ref']} on {name}: {shown} ({result.summary['rows']} rows; "
                  f"per-row table {out})")


def repartition(session: Any, s: Run, where: dict[str, str]) -> Result:
    """Byzer's ET TableRepartition: the rows regrouped into `partitionNum` partitions (rows with equal
    `partitionCols` values together, else dealt round-robin), the partitioning recorded on the output
    table. The partitions are what a later step splits across workers: sfft with keepPartitionNum="true"
    keeps each whole on one worker. A select that calls a model does not need them: its rows go to every
    replica in concurrent chunks already (what Byzer users repartition for), sorted by prompt length
    across the whole select, and the message says so."""
    opts = RepartitionOptions.parse(where, where="TableRepartition")
    if not s.input_table:
        raise error_at(ConfigError, s, "command", "TableRepartition needs an input table: run <table> as "
                       'TableRepartition.`` where partitionNum="4" as <new table>')
    if not s.output_table:
        raise error_at(ConfigError, s, None, "TableRepartition needs `as <new table>` after its options")
    table = session.need_table(s.input_table, s)
    columns = opts.columns()
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise error_at(ConfigError, s, missing[0], f"partitionCols names {', '.join(map(repr, missing))}, not a "
                       f"column of {s.input_table}; its columns: {', '.join(table.column_names)}")
    parts = partition_ids(table, columns, opts.partition_num, opts.partition_type)
    order = sorted(range(table.num_rows), key=lambda i: parts[i])  # stable: rows keep their order within one
    out = table.take(pa.array(order, type=pa.int64())) if table.num_rows else table
    sizes = tuple(parts.count(p) for p in range(opts.partition_num))
    session.put(s.output_table, out, Partitioning(opts.partition_num, tuple(columns), sizes))
    by = f" by {', '.join(columns)} ({opts.partition_type})" if columns else " (round-robin)"
    return Result("run", out, s.output_table,
                  f"{s.output_table}: {out.num_rows} rows in {opts.partition_num} partitions{by}; "
                  f"largest {max(sizes)} rows, {sizes.count(0)} empty (sfft keeps them whole with "
                  f"keepPartitionNum=\"true\"; a model call spreads any table's rows over every replica)")


def partition_ids(table: pa.Table, columns: list[str], num: int, kind: str) -> list[int]:
    """The partition of each row: a stable hash of its `columns` values (the same in every process), their
    sorted order cut into `num` equal runs (`kind="range"`), or round-robin without columns."""
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


def _short(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


# `run command as LLM.`` where action="..."`: the actions and their handlers (training has no action: the
# model type or setup mode names the task)
RUN_ACTIONS: dict[str, Callable[[Any, Run, dict[str, str]], Result]] = {
    "infer": deploy, "merge": merge, "convert": convert, "quantize": quantize, "eval": evaluate}
# `run <t> as <ET>.`` ...`: Byzer's ETs that exist here (lower-cased target -> handler); the parser lists
# them (sql.run.RUN_TARGETS) when a script names another
RUN_ETS: dict[str, Callable[[Any, Run, dict[str, str]], Result]] = {"tablerepartition": repartition}
# one handler per statement type
HANDLERS: dict[type, Callable[[Any, Any], Result]] = {
    Load: load, Save: save, Select: select, Set: set_variable, Run: run, Command: command}

__all__ = ["HANDLERS", "RUN_ACTIONS", "RUN_ETS", "partition_ids"]
