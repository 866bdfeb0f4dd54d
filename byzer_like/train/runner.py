"""The runner of one training job: the process (a Ray Jobs job when detached, a Ray task otherwise) that
trains, reports and registers.

    python -m byzer_like.train.runner run <job_id> --workspace <dir> [--resume]

It reads everything from the job's record in the catalog: the task, the options model stored whole at
submit, the user's keys, the setup (sys_conf) and the base model; it tees its output into the job's log,
calls the plugin's entry point of the task (`sft_train(data_refs, train_params, sys_conf)`, the plugin
contract) with the input table's path and `byzer.*` keys saying where the run lives, then records the
result and registers the trained model. SIGTERM stops it at the training loop's next safe point.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

from ..catalog import Catalog
from ..errors import ByzerError, PluginError
from ..plugins import registry
from ..tasks import get as get_task
from .context import INTERNAL

LOG_FILE = "log.txt"
OUTPUT_FILE = "output.parquet"  # the rows a plugin's entry point returned that are no model files
PARTITIONS_FILE = "partitions.json"  # the input table's partition sizes (TableRepartition), for keepPartitionNum


class _Tee:
    """A stream that writes to several (the console and the job's log), each flushed at once."""

    def __init__(self, *streams: Any):
        self.streams = streams

    def write(self, s: str) -> int:
        for st in self.streams:
            try:
                st.write(s)
                st.flush()
            except ValueError:  # a closed stream
                pass
        return len(s)

    def flush(self) -> None:
        for st in self.streams:
            try:
                st.flush()
            except ValueError:
                pass

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        """The console's descriptor: what code that writes below Python (faulthandler, ray.init) asks for."""
        return self.streams[0].fileno()

    @property
    def encoding(self) -> str:
        return getattr(self.streams[0], "encoding", None) or "utf-8"


def run_task(ws_root: str, job_id: str, resume: bool) -> dict:
    """`run_job` as a Ray task runs it (a blocking job): the job's record when it ended."""
    return run_job(ws_root, job_id, resume=resume)


def run_job(ws_root: str, job_id: str, *, resume: bool = False) -> dict:
    """Run one job to its end and record everything in the catalog (the runner's whole life)."""
    catalog = Catalog(ws_root)
    job = catalog.job(job_id)
    run_dir = Path(job["run_dir"])
    log = open(run_dir / LOG_FILE, "a", buffering=1)
    old = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _Tee(old[0], log), _Tee(old[1], log)
    try:
        signal.signal(signal.SIGTERM, _stop_signal)
    except ValueError:  # not the main thread (a Ray task): Ray cancels it by killing the worker
        pass
    catalog.update_job(job_id, state="RUNNING", started_at=time.time(), attempts=job["attempts"] + 1,
                       error=None, finished_at=None, runner=f"{socket.gethostname()}:{os.getpid()}")
    print(f"[byzer-like] job {job_id} ({job['kind']}/{job['model_type']}) attempt {job['attempts'] + 1}"
          f"{' resuming' if resume else ''} on {socket.gethostname()} pid {os.getpid()}", flush=True)
    try:
        result = _train(catalog, job, resume)
        catalog.update_job(job_id, **result, state="SUCCEEDED", finished_at=time.time())
        print(f"[byzer-like] job {job_id} SUCCEEDED: {result.get('artifact')}", flush=True)
        return catalog.job(job_id)
    except (KeyboardInterrupt, SystemExit):
        catalog.end_job(job_id, "STOPPED", "stopped by request")
        print(f"[byzer-like] job {job_id} STOPPED", flush=True)
        raise
    except BaseException as e:
        catalog.end_job(job_id, "FAILED", f"{type(e).__name__}: {e}".splitlines()[0][:2000])
        print(f"[byzer-like] job {job_id} FAILED: {type(e).__name__}: {e}", flush=True)
        raise
    finally:
        sys.stdout, sys.stderr = old
        log.close()


def _stop_signal(signum: int, frame: Any) -> None:
    from .progress import STOP

    STOP.request(signum)  # at once, or at the training loop's next safe point


def _train(catalog: Catalog, job: dict, resume: bool) -> dict:
    from .plot import loss_curve
    from .progress import final_metrics

    kind, run_dir = job["kind"], Path(job["run_dir"])
    task = get_task(kind)
    opts = task.stored_options(job["options"], job["params"])
    plugin = registry.load(job["model_type"])
    output_dir = run_dir / "model"
    params = {
        **job["params"],
        f"{INTERNAL}model_dir": job["base_model"], f"{INTERNAL}output_dir": str(output_dir),
        f"{INTERNAL}run_dir": str(run_dir), f"{INTERNAL}workspace": str(catalog.workspace.root),
        f"{INTERNAL}job_id": job["id"], f"{INTERNAL}resume": "true" if resume else "false",
        f"{INTERNAL}options": json.dumps(opts.model_dump(mode="json")),
    }
    if (run_dir / PARTITIONS_FILE).is_file():
        params[f"{INTERNAL}partitions"] = json.dumps(json.loads((run_dir / PARTITIONS_FILE).read_text())["sizes"])
    out = getattr(plugin.target, task.entry_point)([str(run_dir / "input.parquet")], params, dict(job["sys_conf"]))
    out = _entry_result(out, task.entry_point, output_dir, run_dir)
    model_dir = str(out.get("model_dir") or output_dir)
    model_kind = out.get("kind", "model")
    if job["output_table"] and not Path(model_dir).is_dir():
        raise PluginError(f"{task.entry_point} left no model at {model_dir} to register as {job['output_table']!r}: "
                          "return the model's files (pyjava's streaming_tar.build_rows_from_file), write them to "
                          f"train_params['{INTERNAL}output_dir'], or return {{'model_dir': <folder>}}")
    metrics = final_metrics(catalog.job(job["id"])["metrics"], out.get("metrics") or {})
    history = catalog.metric_history(job["id"])
    png = loss_curve(history, Path(model_dir) / "loss.png", title=f"{job['id']} ({kind})")
    if png:
        metrics["loss_curve"] = png
    result: dict[str, Any] = {"artifact": model_dir, "metrics": metrics}
    if isinstance(metrics.get("steps"), int):  # finished: the final step is the last one
        result["step"] = result["total_steps"] = metrics["steps"]
    if job["output_table"]:
        method = opts.registered_method()
        m = catalog.register_model(
            job["output_table"], kind=model_kind, path=model_dir, base_model=job["base_model"],
            model_type=job["model_type"], method=method, params=job["params"], metrics=metrics, job_id=job["id"],
            overwrite=opts.overwrite)
        result["model_version"] = m.version
        print(f"[byzer-like] registered {m.ref} ({model_kind}) -> {model_dir}", flush=True)
    if getattr(opts, "predict_table", None):  # llm-module's predict step: the trained model answers predictTable
        from .predict import run as predict

        metrics.update(predict(plugin, run_dir, opts, model_kind, model_dir, job["base_model"], job["sys_conf"]))
    return result


def _entry_result(out: Any, entry_point: str, output_dir: Path, run_dir: Path) -> dict:
    """What the plugin's entry point returned, as the runner reads it: a dict (`model_dir`, `kind`, `metrics`),
    or Byzer's generator of rows, consumed here. Rows of the model's files (pyjava's streaming_tar rows:
    `start`, `offset`, `value` bytes) are unpacked into `output_dir`; any other rows are the job's output table,
    written to `run_dir/output.parquet` (its row count in the metrics as `output_rows`)."""
    if out is None or isinstance(out, dict):
        return out or {}
    if isinstance(out, (str, bytes)) or not hasattr(out, "__iter__"):
        raise PluginError(f"{entry_point} returned {type(out).__name__}; return a dict (model_dir, metrics) or "
                          "a generator of rows (Byzer's)")
    from ..plugins.pyjava import is_tar_row, save_rows_to_file

    rows = [r._asdict() if hasattr(r, "_asdict") else r for r in out]  # a generator's body runs here
    if rows and all(is_tar_row(r) for r in rows):
        files = save_rows_to_file(rows, output_dir)
        print(f"[byzer-like] {entry_point} returned the model as {len(rows)} row(s): {len(files)} file(s) -> "
              f"{output_dir}", flush=True)
        return {"model_dir": str(output_dir)}
    if not all(isinstance(r, dict) for r in rows):
        bad = next(r for r in rows if not isinstance(r, dict))
        raise PluginError(f"{entry_point} yielded {type(bad).__name__}; each row must be a dict of column -> value")
    if rows:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), run_dir / OUTPUT_FILE)
        print(f"[byzer-like] {entry_point} returned {len(rows)} row(s) -> {run_dir / OUTPUT_FILE}", flush=True)
    return {"metrics": {"output_rows": len(rows)}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m byzer_like.train.runner", description="run one training job (the runner)")
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("job_id")
    r.add_argument("--workspace", required=True)
    r.add_argument("--resume", action="store_true")
    args = p.parse_args(argv)
    try:
        run_job(args.workspace, args.job_id, resume=args.resume)
    except SystemExit as e:
        return int(e.code or 1)
    except ByzerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
