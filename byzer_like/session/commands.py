"""The `!` commands: `!show tables`, `!desc <table>`, and `!byzerllm <sub> [<action>] ...` through one table,
BYZERLLM (sub-command and action -> handler). The parser has checked each form against
`sql.command.COMMANDS`; each handler takes the `Session`, the words after the action and the command, and
returns a `Result` made from the runtime's verbs."""
from __future__ import annotations

from typing import Any, Callable

import pyarrow as pa

from .. import tasks
from ..config import SetupConfig
from ..errors import ByzerError, ConfigError
from ..sql import Command
from .position import error_at
from .render import adapters_table, deployments_table, evals_table, jobs_table, registry_table, row_table
from .result import Result


def command(session: Any, c: Command) -> Result:
    """Run `!show`, `!desc` or a `!byzerllm` sub-command (its handler from BYZERLLM)."""
    if c.name == "show":
        rows = [{"table": k, "rows": t.num_rows, "columns": t.num_columns} for k, t in sorted(session.tables.items())]
        return Result("show", pa.Table.from_pylist(rows, schema=pa.schema(
            [("table", pa.string()), ("rows", pa.int64()), ("columns", pa.int64())])))
    if c.name == "desc":
        t = session.need_table(c.args[0], c)
        return Result("desc", pa.table({"column": t.schema.names, "type": [str(x) for x in t.schema.types]}))
    sub, rest = c.args[0], c.args[1:]
    handler = BYZERLLM.get((sub, rest[0] if rest else None)) or BYZERLLM.get((sub, None))
    if handler is None:
        raise error_at(ConfigError, c, sub, f"`!byzerllm {' '.join(c.args)}` has no handler")
    return handler(session, rest, c)


# -- setup -------------------------------------------------------------------------------------------
def setup(session: Any, args: tuple[str, ...], c: Command) -> Result:
    """`!byzerllm setup single|sft|...;` (the mode) or `!byzerllm setup "key=value";`: the runtime's setup."""
    pairs = setup_pairs(args)
    notes = []
    for key, value in pairs:
        session.runtime.setup({key: value})
        field = SetupConfig.field_of(key)
        if field in SetupConfig.NO_EFFECT:
            notes.append(f"{key} is accepted for Byzer scripts and has no effect here: {SetupConfig.NO_EFFECT[field]}")
        elif key in SetupConfig.BYZER_NAMES:
            notes.append(f"{key} sets {field} here")
        elif field == "num_gpus" and session.runtime.setup_config.mode in tasks.TASKS:
            notes.append(_num_gpus_note(session.runtime.setup_config))
    message = ", ".join(f"{k}={v}" for k, v in pairs)
    return Result("setup", message=message + "".join(f" (note: {n})" for n in notes))


def setup_pairs(args: tuple[str, ...]) -> list[tuple[str, str]]:
    """The (key, value) pairs `!byzerllm setup` sets: `single` -> [("mode", "single")], `"a=1" "b=2"` -> both."""
    if len(args) == 1 and "=" not in args[0]:
        return [("mode", args[0])]
    return [(k.strip(), v.strip()) for k, _, v in (a.partition("=") for a in args)]


def _num_gpus_note(setup: SetupConfig) -> str:
    """What num_gpus means for the training task of the setup's mode: sfft's total number of cards (as
    workers, `SetupConfig.for_task`), or sft's GPUs of its one worker."""
    task = tasks.get(setup.mode)
    if not task.num_gpus_is_total:
        return f"num_gpus is the GPUs of {task.name}'s one worker"
    try:
        settled = setup.for_task(task)
    except ConfigError as e:
        return str(e)
    return (f"num_gpus is the total number of cards for {task.name}: {settled.num_workers} worker(s) of "
            f"{settled.gpus_per_worker:g} GPU each")


# -- jobs --------------------------------------------------------------------------------------------
def job_list(session: Any, args: tuple[str, ...], c: Command) -> Result:
    return Result("job", jobs_table(session.runtime.jobs.list()))


def _job_id(session: Any, args: tuple[str, ...], c: Command) -> str:
    """The job named after the action, else the most recent one."""
    if len(args) > 1:
        return args[1]
    recent = session.runtime.catalog.jobs(limit=1)
    if not recent:
        raise error_at(ConfigError, c, None, "no training job in this workspace yet")
    return recent[0]["id"]


def job_logs(session: Any, args: tuple[str, ...], c: Command) -> Result:
    job_id = _job_id(session, args, c)
    text = session.runtime.jobs.logs(job_id)
    return Result("job", pa.table({"job_id": [job_id] * len(text.splitlines()), "line": text.splitlines()}),
                  message=text)


def job_control(session: Any, args: tuple[str, ...], c: Command) -> Result:
    """`status`, `stop`, `resume`: the verb of the same name on the jobs; the job's row."""
    job_id = _job_id(session, args, c)
    row = getattr(session.runtime.jobs, args[0])(job_id)
    return Result("job", jobs_table([row]), message=f"job {job_id}: {row['state']}")


# -- the result cache --------------------------------------------------------------------------------
def cache_status(session: Any, args: tuple[str, ...], c: Command) -> Result:
    """`!byzerllm cache status [<udf>]`: the result cache's rows per model."""
    counts = session.runtime.result_cache.count(args[1] if len(args) > 1 else None)
    return Result("cache", pa.table({"model": pa.array(list(counts), type=pa.string()),
                                     "rows": pa.array(list(counts.values()), type=pa.int64())}))


def cache_clear(session: Any, args: tuple[str, ...], c: Command) -> Result:
    """`!byzerllm cache clear [<udf>]`: forget a model's cached answers (all models without one)."""
    model = args[1] if len(args) > 1 else None
    n = session.runtime.result_cache.clear(model)
    return Result("cache", pa.table({"model": [model or "*"], "removed": [n]}), message=f"result cache: {n} rows removed")


# -- models and deployments --------------------------------------------------------------------------
def registry_list(session: Any, args: tuple[str, ...], c: Command) -> Result:
    return Result("model", registry_table(session.runtime.catalog.models()))


def deployment_list(session: Any, args: tuple[str, ...], c: Command) -> Result:
    """`!byzerllm model deployed;`: each deployment with its engine and load (`render.deployments_table`)."""
    rt = session.runtime
    return Result("model", deployments_table({name: _fresh_meta(rt, name) for name in sorted(rt.deployments())}))


def _fresh_meta(rt: Any, name: str) -> dict:
    """A deployment's meta with its counters asked again; {} when its replicas do not answer (it is starting
    or failing: the list still shows its name)."""
    try:
        return rt.meta(name, refresh=True)
    except ByzerError:
        return {}


def deployment_exists(session: Any, args: tuple[str, ...], c: Command) -> Result:
    name = args[1]
    return Result("model", pa.table({"udf_name": [name], "exists": [session.runtime.deployment_exists(name)]}))


def undeploy(session: Any, args: tuple[str, ...], c: Command) -> Result:
    name = args[1]
    session.runtime.undeploy(name)
    session.models.forget(name)
    return Result("model", pa.table({"udf_name": [name], "removed": [True]}), message=f"{name}: undeployed")


def adapter_list(session: Any, args: tuple[str, ...], c: Command) -> Result:
    """`!byzerllm adapter list <udf>`: the LoRA adapters each replica of the deployment holds now (one row
    per replica and adapter; a replica holding none has a row with a null adapter)."""
    name = args[1]
    rows = session.runtime.loaded_adapters(name)
    held = sorted({r["ref"] for r in rows if r["ref"]})
    replicas = len({r["replica"] for r in rows})
    return Result("adapter", adapters_table(rows), message=f"{name}: {len(held)} adapter(s) loaded on {replicas} "
                  "replica(s)" + (f": {', '.join(held)}" if held else ""))


# -- evaluations -------------------------------------------------------------------------------------
def promote(session: Any, args: tuple[str, ...], c: Command) -> Result:
    """`!byzerllm model promote m@v3 [if|where <conditions>] [on <eval set>];`: production stage for the
    version when every condition holds on stored (or, for a table of this session, fresh) results."""
    ref, words = args[1], list(args[2:])
    evalset = None
    if len(words) >= 2 and words[-2].lower() == "on":
        evalset, words = words[-1], words[:-2]
    if words and words[0].lower() in ("if", "where"):
        words = words[1:]
    elif words:
        raise error_at(ConfigError, c, words[0], f"unexpected `{words[0]}` after `promote {ref}`; write "
                       f"`!byzerllm model promote {ref} if <metric> >= <value> [on <eval set>]`")
    row = session.runtime.promote(ref, " ".join(words) or None, evalset=evalset, tables=session.tables)
    return Result("model", row_table(row), message=f"{row['model']}@v{row['version']}: {row['reason']}")


def eval_list(session: Any, args: tuple[str, ...], c: Command) -> Result:
    """`!byzerllm eval list [<model>|<model>@vN];`: stored evaluations, newest first."""
    return Result("eval", evals_table(session.runtime.eval_list(args[1] if len(args) > 1 else None)))


def eval_compare(session: Any, args: tuple[str, ...], c: Command) -> Result:
    """`!byzerllm eval compare <a> <b> [on <eval set>];`: metric deltas of b over a with bootstrap intervals."""
    if len(args) < 3:
        raise error_at(ConfigError, c, None, "`!byzerllm eval compare` needs two models: eval compare m@v1 m@v2 "
                       "[on <eval set>]")
    rest = list(args[3:])
    evalset = None
    if len(rest) == 2 and rest[0].lower() == "on":
        evalset = rest[1]
    elif rest:
        raise error_at(ConfigError, c, rest[0], "write `!byzerllm eval compare m@v1 m@v2 [on <eval set>]`")
    rows = session.runtime.eval_compare(args[1], args[2], evalset=evalset)
    table = pa.Table.from_pylist(rows) if rows else pa.table({"metric": pa.array([], pa.string())})
    shown = "; ".join(f"{r['metric']} {r['delta']:+.4g} [{r['ci_low']:+.4g}, {r['ci_high']:+.4g}]" for r in rows)
    return Result("eval", table, message=f"{args[2]} vs {args[1]}: {shown or 'no metric in common'}")


# `!byzerllm <sub> [<action>]` -> handler(session, the words after the action, the command); None: any action
BYZERLLM: dict[tuple[str, str | None], Callable[[Any, tuple[str, ...], Command], Result]] = {
    ("setup", None): setup,
    ("model", "list"): registry_list,
    ("model", "deployed"): deployment_list,
    ("model", "exists"): deployment_exists,
    ("model", "remove"): undeploy,
    ("model", "promote"): promote,
    ("job", "list"): job_list,
    ("job", "logs"): job_logs,
    ("job", "status"): job_control,
    ("job", "stop"): job_control,
    ("job", "resume"): job_control,
    ("cache", "status"): cache_status,
    ("cache", "clear"): cache_clear,
    ("eval", "list"): eval_list,
    ("eval", "compare"): eval_compare,
    ("adapter", "list"): adapter_list,
}

__all__ = ["BYZERLLM", "command"]
