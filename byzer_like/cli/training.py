"""`byzer-like train TASK ...` (a training job of a task of `byzer_like.tasks` on a data file) and
`byzer-like jobs ...` (list, status, logs, stop, resume)."""
from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
from typing import Any

from ..config import SetupConfig
from ..display import local_time
from ..errors import ConfigError
from ..tasks import TASKS
from ..tasks import get as get_task
from .common import (
    JOB_EXIT, METRIC_HEADERS, NOTHING_TO_DO, OK, Parents, data_file, job_line, kv, metric_cells, note_empty, path_arg,
    print_table, runtime,
)
from .flags import WORKER_FIELDS, ModelFlags, add_model_flags, given, unflagged

# the fields of the tasks' options models that `train` takes as flags (each task's model checks them); other
# keys, and Byzer's typed ones (`sft.int.max_seq_length=64`), go in `--option key=value`
TRAIN_FIELDS = (
    "output_table", "detached", "overwrite", "method", "max_seq_length", "max_length", "text_column", "packing",
    "learning_rate", "num_train_epochs", "max_steps", "per_device_batch_size", "gradient_accumulation_steps",
    "warmup_ratio", "weight_decay", "lora_r", "lora_alpha", "lora_dropout", "zero_stage", "max_failures",
    "checkpoint_steps", "save_total_limit", "logging_steps", "seed", "eval_split", "eval_metrics",
    "beta", "loss_type", "max_prompt_length", "reward_model", "num_generations", "max_new_tokens", "temperature",
)
# how `train` has always spelled these: `--detach` (on when given, off otherwise)
TRAIN_SPELLING = {"flags": {"detached": ("--detach",)}, "defaults": {"detached": False}, "switches": ("detached",)}
# the workers a job runs on (`deploy` also takes Byzer's spellings)
WORKERS = ModelFlags(SetupConfig, WORKER_FIELDS)


@functools.cache
def train_flags() -> tuple[ModelFlags, ...]:
    """TRAIN_FIELDS, each from the first task's options model that has it; a field not every task has says
    which do, and a shared one whose default differs says the others' default."""
    models = {name: task.options_model() for name, task in TASKS.items()}
    specs, taken = [], set()
    for name, model in models.items():
        fields = tuple(f for f in TRAIN_FIELDS if f in model.model_fields and f not in taken)
        taken.update(fields)
        notes = {f: _task_note(f, name, models) for f in fields}
        specs.append(ModelFlags(model, fields, notes=notes, **TRAIN_SPELLING))
    return tuple(specs)


def _task_note(field: str, first: str, models: dict[str, Any]) -> str:
    """`sfft only` where some tasks lack the field, and `sfft default: 8` for each task whose default differs from
    the `first` one's (`dpo, orpo, kto, ppo only; ppo default: 0.05`)."""
    having = [t for t, m in models.items() if field in m.model_fields]
    default = models[first].model_fields[field].default
    notes = [f"{', '.join(having)} only"] if len(having) < len(models) else []
    return "; ".join(notes + [f"{t} default: {models[t].model_fields[field].default}" for t in having
                              if models[t].model_fields[field].default != default])


def cmd_train(args: argparse.Namespace) -> int:
    """Submit a training job of a task from `byzer_like.tasks` on a data file (json, jsonl, csv, parquet)."""
    task = get_task(args.task)
    rt = runtime(args, running=False)
    rt.setup(given(args, WORKERS))
    table = data_file(rt, args.data, "--data")
    model_dir = str(path_arg(rt.workspace, args.model_path, "--model-path"))
    flags = given(args, *train_flags())
    options = unflagged(kv(args.option, "--option"), task.options_model(), flags, prefix=f"{task.name}.")
    params: dict[str, Any] = {**options, **flags,
                              "pretrained_model_type": f"{task.name}/{args.type}", "model_dir": model_dir}
    row = rt.train(task.name, params, table, progress=not flags["detached"] and sys.stderr.isatty())
    print(job_line(row))
    return JOB_EXIT[row["state"]]


def cmd_jobs(args: argparse.Namespace) -> int:
    rt = runtime(args, running=False)
    jobs = rt.jobs
    if args.action == "list":
        return _list_jobs(rt, args.limit)
    job_id = args.job_id or (jobs.catalog.jobs(limit=1) or [{"id": None}])[0]["id"]
    if job_id is None:
        note_empty(rt.workspace, "no training jobs")
        raise ConfigError(f"no training job in workspace {rt.workspace.root} yet")
    if args.action == "logs":
        return _print_logs(jobs, job_id, args.follow)
    if args.action == "status":
        record = jobs.record(job_id)
        record.pop("history", None)
        for key in ("created_at", "updated_at", "started_at", "finished_at"):
            record[key] = local_time(record.get(key)) or None
        print(json.dumps(record, indent=2, default=str))
        return JOB_EXIT[record["state"]]
    if args.action == "stop":
        return _stop_job(jobs, job_id)
    if args.action == "tensorboard":
        return _tensorboard(jobs, job_id, args.port)
    row = jobs.resume(job_id, detached=not args.wait, progress=args.wait and sys.stderr.isatty())
    print(job_line(row))
    return JOB_EXIT[row["state"]]


def _list_jobs(rt: Any, limit: int | None) -> int:
    jobs = rt.jobs
    rows = jobs.list(limit=limit)
    if not rows:
        note_empty(rt.workspace, "no training jobs")
    print_table(("job", "state", "step", "model", *METRIC_HEADERS.values(), "created", "finished", "method", "error"), [
        (r["job_id"], r["state"], f"{r['step']}/{r['total_steps'] or '?'}",
         f"{r['output_table']}@v{r['model_version']}" if r["model_version"] else r["output_table"],
         *metric_cells(json.loads(r["metrics"])), local_time(r["created_at"]),
         local_time(r["finished_at"]), r["method"], r["error"]) for r in rows])
    return OK


def _print_logs(jobs: Any, job_id: str, follow: bool) -> int:
    """The job's log without the libraries' noise (`logs.readable_log`; --verbose: all of it), then on
    stderr how many lines were hidden; with `follow`, more of it each second until the job ends (whole
    lines only, so a line being written is shown once it is done)."""
    from .. import logs

    shown, hidden = 0, {}
    while True:
        text = jobs.logs(job_id)
        ended = not follow or jobs.status(job_id)["state"] in ("SUCCEEDED", "FAILED", "STOPPED")
        upto = len(text) if ended else text.rfind("\n", shown) + 1 or shown
        part = text[shown:upto]
        if not logs.is_verbose():
            part, dropped = logs.readable_log(part)
            for kind, n in dropped.items():
                hidden[kind] = hidden.get(kind, 0) + n
        print(part, end="", flush=True)
        shown = upto
        if ended:
            break
        time.sleep(1)
    if hidden:
        print(f"({sum(hidden.values())} lines of library output hidden: {', '.join(sorted(hidden))}; "
              "--verbose shows the whole log)", file=sys.stderr, flush=True)
    return 0


def _tensorboard(jobs: Any, job_id: str, port: int) -> int:
    """TensorBoard on 127.0.0.1:`port` over the job's event files, in the foreground until Ctrl-C: this process
    becomes TensorBoard (exec), so a signal that stops the command stops TensorBoard too and leaves no server
    behind. ConfigError when the job wrote none or the tensorboard package is missing."""
    import importlib.util

    folder = jobs.record(job_id)["tensorboard_dir"]
    if folder is None:
        raise ConfigError(f"job {job_id} has written no TensorBoard event files (sft jobs write them as they log; "
                          'an sfft job when its deepspeedConfig has "tensorboard": {"enabled": true})')
    if importlib.util.find_spec("tensorboard") is None:
        raise ConfigError("TensorBoard is not installed in this environment: pip install tensorboard")
    print(f"TensorBoard for job {job_id} ({folder}): http://127.0.0.1:{port}/ (Ctrl-C stops it)", flush=True)
    os.execv(sys.executable, [sys.executable, "-m", "tensorboard.main", "--logdir", folder, "--host", "127.0.0.1",
                              "--port", str(port)])
    return OK  # not reached: exec replaces this process


def _stop_job(jobs: Any, job_id: str) -> int:
    from ..catalog import FINISHED

    before = jobs.status(job_id)
    if before["state"] in FINISHED:
        print(f"{job_line(before)}; it had already ended, nothing to stop")
        return NOTHING_TO_DO
    row = jobs.stop(job_id)
    print(job_line(row))
    return OK if row["state"] == "STOPPED" else NOTHING_TO_DO  # it ended by itself meanwhile


def add_train(sub: Any, parents: Parents) -> None:
    tr = sub.add_parser("train", parents=[parents.common])
    tr.add_argument("task", choices=list(TASKS), help="; ".join(f"{t.name}: {t.summary}" for t in TASKS.values()))
    tr.add_argument("--data", required=True, help="the training table: a .jsonl, .json, .csv, .parquet or .txt file")
    tr.add_argument("--model-path", required=True, help="the base model's directory (from the current directory)")
    tr.add_argument("--type", default="auto", help="the model family (plugin), default auto")
    tr.add_argument("--option", action="append", metavar="KEY=VALUE",
                    help="a training option as in SQL (method=lora, max_seq_length=256, ...; repeatable)")
    add_model_flags(tr, WORKERS)
    for spec in train_flags():
        add_model_flags(tr, spec)
    tr.set_defaults(func=cmd_train)


def add_jobs(sub: Any, parents: Parents) -> None:
    j = sub.add_parser("jobs", parents=[parents.common])
    j.add_argument("action", choices=("list", "status", "logs", "stop", "resume", "tensorboard"))
    j.add_argument("job_id", nargs="?", help="the job (default: the most recent one)")
    j.add_argument("--follow", "-f", action="store_true", help="logs: keep printing until the job ends")
    j.add_argument("--limit", type=int, help="list: at most this many jobs")
    j.add_argument("--wait", action="store_true", help="resume: run in the foreground with a progress bar")
    j.add_argument("--port", type=int, default=6006, help="tensorboard: the port on 127.0.0.1 (default 6006)")
    j.set_defaults(func=cmd_jobs)
