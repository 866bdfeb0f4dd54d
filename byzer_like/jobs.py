"""Training jobs: submit, watch, stop and resume fine-tuning (sft) and continued pretraining (sfft).

    jobs = Jobs(workspace, setup=SetupConfig())          # or runtime.jobs / ByzerLLM().jobs
    row = jobs.submit({"pretrainedModelType": "sft/llama", "localModelDir": d, "outputTable": "m",
                       "detached": "true"}, table)
    jobs.status(row["job_id"]); jobs.logs(row["job_id"]); jobs.stop(...); jobs.resume(...)

The training methods (sft, sfft, ...) come from one table, `byzer_like.tasks.TASKS`: its options
model, the plugin entry point that runs it, the checks made before submitting.

Every check that can fail (plugin, options, base model, output name, the table's form, max_seq_length,
the DeepSpeed config) runs before anything starts. The input table is written once, as parquet, into
the job's folder in the workspace; the runner and the training workers read it from there (resume
needs it after the client is gone). A detached job is a Ray Jobs job (it outlives the client); a
blocking one runs the same runner as a Ray task while the client shows a progress bar. Either way
the job's record lives in the catalog (parameters, state, step, metrics, artifact), and its log in
the job's folder, after Ray has forgotten it.

`python -m byzer_like.jobs run <job_id> --workspace <dir> [--resume]` is the runner.
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import shlex
import signal
import socket
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from . import cluster, tasks
from .catalog import FINISHED, Catalog
from .config import SetupConfig
from .display import local_timestamp
from .errors import ByzerError, ClusterError, ConfigError, JobError, NotSupportedError
from .plugins import registry
from .train import options as train_options
from .train.context import INTERNAL
from .workspace import Workspace

if TYPE_CHECKING:  # pyarrow is imported where a table is made: `byzer-like jobs list` needs none
    import pyarrow as pa

TASKS = tuple(tasks.TASKS)  # the task names, for older imports; the table is byzer_like.tasks.TASKS
LOG_FILE = "log.txt"
PARTITIONS_FILE = "partitions.json"  # the input table's partition sizes (TableRepartition), for keepPartitionNum
# a job's row, as SQL, the client and the CLI show it
ROW_FIELDS = ("job_id", "kind", "state", "step", "total_steps", "output_table", "model_version", "artifact",
              "metrics", "error", "detached", "ray_job_id", "created_at", "finished_at")




task_of = tasks.task_of  # (task or None, family) from `sft/llama` or the setup mode


class Jobs:
    """The jobs of one workspace.

    `address`: the Ray cluster the caller joined (None: this workspace's own); `setup`: the resources
    and mode a submitted job runs with (recorded with it as its sys_conf); `connect()`: joins the
    cluster (a blocking job runs as a Ray task on it)."""

    def __init__(self, workspace: Workspace, *, address: str | None = None, setup: SetupConfig | None = None,
                 connect: Callable[[], Any] | None = None):
        self.workspace = workspace
        self.address = address
        self.setup = setup or SetupConfig()
        self._connect = connect or (lambda: cluster.connect(self.address, self.workspace))
        self.catalog = Catalog(self.workspace)

    # -- submit ----------------------------------------------------------------------------------
    def submit(self, train_params: Mapping[str, Any], table: pa.Table | None, *, task: str | None = None,
               options: Any = None, progress: bool = False, eval_table: pa.Table | None = None,
               partitions: Sequence[int] | None = None) -> dict:
        """Check everything, store the table, record the job, then run it (detached: return at once).

        `task`: a name of `byzer_like.tasks.TASKS`, else the model type's prefix (`sft/llama`) or the
        setup mode; `options`: the task's options model when the caller has parsed `train_params`
        already. `eval_table`: the evalTable (measured with evalMetrics at each evaluation step), stored
        beside the input as `eval.parquet`. `partitions`: the sizes of the table's partitions, in row
        order (TableRepartition's), stored as `partitions.json` for sfft's keepPartitionNum. Returns the
        job's row (see ROW_FIELDS). Raises ConfigError, UnknownOptionError, NotSupportedError (the plugin
        cannot run the task), ModelExistsError, JobError."""
        params = {k: v for k, v in train_params.items() if not k.startswith(INTERNAL)}
        model_type = str(options.pretrained_model_type if options is not None
                         else train_options.TrainOptions.given(params, "pretrained_model_type") or "")
        spec = tasks.require_task(model_type, self.setup.mode, task)
        task, family = spec.name, tasks.split_model_type(model_type)[1]
        opts = options if options is not None else spec.parse_options(params)
        plugin = registry.load(family)
        if not plugin.has(spec.entry_point):
            raise NotSupportedError(f"plugin {family!r} has no {spec.entry_point}: it cannot be trained with {task}")
        base_dir = self._base_model(opts, plugin)
        if opts.output_table:
            self.catalog.check_new_name(opts.output_table, overwrite=opts.overwrite)
        if table is None:
            raise ConfigError(f"{task} needs inputTable=\"<table>\" (a table of this session)")
        if table.num_rows == 0:
            raise ConfigError("the training table is empty: nothing to train on")
        sys_conf = self.setup.sys_conf()
        spec.check_function()(opts, table, base_dir, plugin, sys_conf)
        if eval_table is not None:
            from .eval.measure import plan

            plan(eval_table, metrics=opts.eval_metric_names(), name=opts.eval_table)
        if partitions is not None and sum(partitions) != table.num_rows:
            raise ConfigError(f"the partition sizes add up to {sum(partitions)} rows, the table has {table.num_rows}")

        job_id = f"{task}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
        if opts.local_path_prefix:
            run_dir = self.workspace.resolve(opts.local_path_prefix, what="localPathPrefix") / job_id
        else:
            run_dir = self.workspace.path("jobs", job_id)
        run_dir.mkdir(parents=True, exist_ok=False)
        import pyarrow.parquet as pq

        pq.write_table(table, run_dir / "input.parquet")
        if eval_table is not None:
            pq.write_table(eval_table, run_dir / "eval.parquet")
        if partitions is not None:
            (run_dir / PARTITIONS_FILE).write_text(json.dumps({"sizes": [int(n) for n in partitions]}))
        self.catalog.create_job(
            job_id, task, model_type=family, base_model=base_dir, output_table=opts.output_table,
            params={k: _jsonable(v) for k, v in params.items()}, sys_conf=sys_conf, detached=opts.detached,
            run_dir=str(run_dir),
        )
        self.catalog.update_job(job_id, metrics={"input_rows": table.num_rows})
        return self._launch(job_id, detached=opts.detached, resume=False, progress=progress)

    def _base_model(self, opts: train_options.TrainOptions, plugin: registry.Plugin) -> str:
        if opts.model_table not in (None, "command"):
            m = self.catalog.model(opts.model_table)
            if m.kind != "model":
                raise ConfigError(f"{m.ref} is a LoRA adapter; merge it first "
                                  f'(run command as LLM.`` where action="merge" and modelTable="{m.ref}" and outputTable="...")')
            base = m.path
        else:
            base = str(self.workspace.resolve(opts.local_model_dir, what="localModelDir"))
        plugin.check_model_dir(base, {})
        return base

    # -- run -------------------------------------------------------------------------------------
    def _launch(self, job_id: str, *, detached: bool, resume: bool, progress: bool) -> dict:
        """Start the runner; a job that cannot even start is recorded as FAILED (and can be resumed)."""
        try:
            return self._start(job_id, detached=detached, resume=resume, progress=progress)
        except Exception as e:
            self._finish_if_running(job_id, "FAILED", f"could not start: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
            raise

    def _start(self, job_id: str, *, detached: bool, resume: bool, progress: bool) -> dict:
        job = self.catalog.job(job_id)
        cpus, gpus = _runner_resources(job)
        if detached:
            client, address = self._job_client()
            attempt = job["attempts"] + 1
            submission = f"{job_id}-a{attempt}"
            entry = [sys.executable, "-m", "byzer_like.jobs", "run", job_id, "--workspace", str(self.workspace.root)]
            if resume:
                entry.append("--resume")
            env = {k: v for k, v in os.environ.items()
                   if k in ("PYTHONPATH", "TORCH_EXTENSIONS_DIR", "BYZER_LIKE_ALLOWED_ROOTS", "HF_HOME")}
            env["BYZER_LIKE_HOME"] = str(self.workspace.root)
            client.submit_job(entrypoint=" ".join(shlex.quote(p) for p in entry), submission_id=submission,
                              entrypoint_num_cpus=cpus, entrypoint_num_gpus=gpus or None,
                              runtime_env={"env_vars": env}, metadata={"byzer_like_job": job_id})
            self.catalog.update_job(job_id, ray_job_id=submission, jobs_address=address, detached=1)
            return self.status(job_id)
        self._connect()
        import ray

        remote = ray.remote(_run_task).options(num_cpus=cpus, num_gpus=gpus, max_retries=0,
                                               runtime_env={"env_vars": {"BYZER_LIKE_HOME": str(self.workspace.root)}})
        ref = remote.remote(str(self.workspace.root), job_id, resume)
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(desc=job_id, unit="step")
        try:
            while not ray.wait([ref], timeout=1.0)[0]:
                if bar is not None:
                    _update_bar(bar, self.catalog.job(job_id))
            ray.get(ref)
        except KeyboardInterrupt:
            ray.cancel(ref, force=True)
            self._finish_if_running(job_id, "STOPPED", "interrupted by the client")
            raise
        except ray.exceptions.RayError as e:
            self._finish_if_running(job_id, "FAILED", str(e).splitlines()[0])
            job = self.catalog.job(job_id)
            if job["state"] == "STOPPED":  # stopped from elsewhere (`jobs stop`): not a failure
                return self.status(job_id)
            raise JobError(f"job {job_id} failed: {job['error'] or e}; logs: {Path(job['run_dir']) / LOG_FILE}") from None
        finally:
            if bar is not None:
                _update_bar(bar, self.catalog.job(job_id))
                bar.close()
        return self.status(job_id)

    def _job_client(self) -> tuple[Any, str]:
        """The Ray Jobs API of the cluster detached jobs run on: JOBS address, else this workspace's
        persistent head (started now if needed: an embedded cluster would end with this process)."""
        address = os.environ.get("BYZER_LIKE_JOBS_ADDRESS") or ""
        joined = self.address or os.environ.get("RAY_ADDRESS")
        if not address and joined and not cluster.is_loopback(joined):
            address = _dashboard_of_connected(self._connect)
        if not address:
            info = cluster.head_info(self.workspace)
            if not (info and info.alive()):
                print("[byzer-like] detached jobs need a cluster that outlives this process: starting this "
                      "workspace's Ray head (stop it with `byzer-like cluster stop`)", file=sys.stderr, flush=True)
                info = cluster.start_head(self.workspace)
            address = info.dashboard_url
        try:
            return _jobs_api(address), address
        except Exception as e:  # ConnectionError and friends from requests / Ray
            raise ClusterError(f"cannot reach the Ray Jobs API at {address}: {str(e).splitlines()[0]}") from e

    def _client_for(self, job: dict) -> Any | None:
        if not job.get("jobs_address"):
            return None
        try:
            return _jobs_api(job["jobs_address"])
        except Exception:  # noqa: BLE001 - the cluster is gone; the catalog still answers
            return None

    # -- watch -----------------------------------------------------------------------------------
    def list(self, limit: int | None = None) -> list[dict]:
        return [self._row(self._reconcile(j)) for j in self.catalog.jobs(limit)]

    def status(self, job_id: str) -> dict:
        return self._row(self._reconcile(self.catalog.job(job_id)))

    def record(self, job_id: str) -> dict:
        """Everything the catalog holds about a job (parameters, sys_conf, metric history)."""
        job = self._reconcile(self.catalog.job(job_id))
        job["history"] = self.catalog.metric_history(job_id)
        return job

    def logs(self, job_id: str, tail: int | None = None) -> str:
        job = self.catalog.job(job_id)
        f = Path(job["run_dir"]) / LOG_FILE
        if f.exists():
            text = f.read_text(errors="replace")
        else:
            client = self._client_for(job)
            text = ""
            if client is not None and job.get("ray_job_id"):
                try:
                    text = client.get_job_logs(job["ray_job_id"])
                except Exception:  # noqa: BLE001
                    text = ""
        if tail:
            text = "\n".join(text.splitlines()[-tail:])
        return text

    def wait(self, job_id: str, timeout_s: float = 3600, poll_s: float = 1.0) -> dict:
        deadline = time.monotonic() + timeout_s
        while True:
            row = self.status(job_id)
            if row["state"] in FINISHED:
                return row
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} is still {row['state']} after {timeout_s:.0f} s")
            time.sleep(poll_s)

    def _reconcile(self, job: dict) -> dict:
        """A job the catalog thinks is running, whose Ray job or runner process has ended, gets its real state."""
        if job["state"] in FINISHED:
            return job
        ended = None
        if job.get("ray_job_id"):
            client = self._client_for(job)
            if client is None:
                ended = ("FAILED", f"the Ray cluster at {job['jobs_address']} is gone")
            else:
                try:
                    ray_state = str(client.get_job_status(job["ray_job_id"]).value)
                except Exception:  # noqa: BLE001 - Ray no longer knows it
                    ray_state = "UNKNOWN"
                if ray_state in ("FAILED", "STOPPED", "SUCCEEDED", "UNKNOWN"):
                    ended = ("STOPPED" if ray_state == "STOPPED" else "FAILED",
                             f"the Ray job ended ({ray_state}) before the runner reported; see its logs")
        elif job.get("runner") and not _runner_alive(job["runner"]):
            ended = ("FAILED", "the runner process ended without reporting (was its client killed?)")
        if ended:
            self._finish_if_running(job["id"], *ended)
            return self.catalog.job(job["id"])
        return job

    def _finish_if_running(self, job_id: str, state: str, error: str) -> None:
        job = self.catalog.job(job_id)  # re-read: the runner may have finished meanwhile
        if job["state"] not in FINISHED:
            _ended(self.catalog, job_id, state, error)

    # -- control ---------------------------------------------------------------------------------
    def stop(self, job_id: str, timeout_s: float = 60) -> dict:
        job = self.catalog.job(job_id)
        if job["state"] in FINISHED:
            return self._row(job)
        client = self._client_for(job)
        if client is not None and job.get("ray_job_id"):
            try:
                client.stop_job(job["ray_job_id"])
            except Exception:  # noqa: BLE001 - already gone
                pass
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                try:
                    if str(client.get_job_status(job["ray_job_id"]).value) in ("STOPPED", "FAILED", "SUCCEEDED"):
                        break
                except Exception:  # noqa: BLE001
                    break
                time.sleep(0.5)
        elif job.get("runner"):
            host, _, pid = job["runner"].rpartition(":")
            if host == socket.gethostname():
                try:
                    os.kill(int(pid), signal.SIGTERM)
                except ProcessLookupError:
                    pass
        _wait_runner_gone(job.get("runner"), timeout_s=30)
        self._finish_if_running(job_id, "STOPPED", "stopped by request")
        return self.status(job_id)

    def resume(self, job_id: str, *, detached: bool = True, progress: bool = False) -> dict:
        """Run a stopped or failed job again from its last checkpoint (same step, optimizer state, data position)."""
        job = self._reconcile(self.catalog.job(job_id))
        if job["state"] not in ("STOPPED", "FAILED"):
            raise JobError(f"job {job_id} is {job['state']}; only a STOPPED or FAILED job can be resumed")
        if not (Path(job["run_dir"]) / "input.parquet").exists():
            raise JobError(f"job {job_id} has lost its input table ({job['run_dir']}/input.parquet); submit it again")
        self.catalog.update_job(job_id, state="PENDING", error=None, finished_at=None)
        return self._launch(job_id, detached=detached, resume=True, progress=progress)

    @staticmethod
    def _row(job: dict) -> dict:
        row = {k: job.get(k) for k in ROW_FIELDS if k != "job_id"}
        row["job_id"] = job["id"]
        row["metrics"] = json.dumps(job.get("metrics") or {}, sort_keys=True)
        return {k: row[k] for k in ROW_FIELDS}


def rows_table(rows: list[dict]) -> pa.Table:
    """Job rows (see ROW_FIELDS) as the table SQL shows: times as local timestamps, and the main
    metrics (`loss`: the final loss, else the last one logged; `tokens_per_s`) as columns beside the
    whole `metrics` JSON."""
    import pyarrow as pa

    schema = pa.schema([
        ("job_id", pa.string()), ("kind", pa.string()), ("state", pa.string()), ("step", pa.int64()),
        ("total_steps", pa.int64()), ("output_table", pa.string()), ("model_version", pa.int64()),
        ("artifact", pa.string()), ("loss", pa.float64()), ("tokens_per_s", pa.float64()), ("metrics", pa.string()),
        ("error", pa.string()), ("detached", pa.bool_()), ("ray_job_id", pa.string()),
        ("created_at", pa.timestamp("s")), ("finished_at", pa.timestamp("s")),
    ])
    shown = []
    for row in rows:
        metrics = row.get("metrics") or {}
        metrics = json.loads(metrics) if isinstance(metrics, str) else metrics
        shown.append({**row, **main_metrics(metrics), "created_at": local_timestamp(row.get("created_at")),
                      "finished_at": local_timestamp(row.get("finished_at"))})
    return pa.Table.from_pylist(shown, schema=schema)


def main_metrics(metrics: Mapping[str, Any]) -> dict[str, float | None]:
    """The metrics a table shows as columns: `loss` (the final loss, else the last one logged) and `tokens_per_s`."""
    loss = metrics.get("final_loss", metrics.get("loss"))
    return {"loss": _float(loss), "tokens_per_s": _float(metrics.get("tokens_per_s"))}


def _float(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


# -- helpers ----------------------------------------------------------------------------------------
def _runner_resources(job: dict) -> tuple[float, float]:
    """sft trains inside the runner (it holds the worker's CPUs/GPUs); sfft's runner only drives Ray Train."""
    sc = job["sys_conf"]
    if not tasks.get(job["kind"]).runner_holds_worker:
        return 0.0, 0.0
    return float(sc.get("cpus_per_worker", 1) or 0), float(sc.get("gpus_per_worker", 0) or 0)


def _jsonable(v: Any) -> Any:
    return v if isinstance(v, (str, int, float, bool, type(None), list, dict)) else str(v)


def _jobs_api(address: str) -> Any:
    from ray.job_submission import JobSubmissionClient

    if cluster.is_loopback(address):
        cluster.as_local()
    return JobSubmissionClient(address)


def _dashboard_of_connected(connect: Callable[[], Any]) -> str:
    import ray

    connect()
    url = ray._private.worker.get_dashboard_url()
    if not url:
        raise ClusterError("cannot find the Ray Jobs API of this cluster; set BYZER_LIKE_JOBS_ADDRESS=http://<head>:8265")
    return url if url.startswith("http") else f"http://{url}"


def _runner_alive(runner: str) -> bool:
    host, _, pid = runner.rpartition(":")
    if host != socket.gethostname():
        return True  # another machine: trust the catalog
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, ValueError):
        return False
    except PermissionError:
        return True
    return True


def _wait_runner_gone(runner: str | None, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while runner and _runner_alive(runner) and time.monotonic() < deadline:
        time.sleep(0.2)


def _update_bar(bar: Any, job: dict) -> None:
    if job.get("total_steps") and bar.total != job["total_steps"]:
        bar.total = job["total_steps"]
    bar.n = job.get("step") or 0
    m = job.get("metrics") or {}
    bar.set_postfix({k: m[k] for k in ("loss", "tokens_per_s", "eta_s") if m.get(k) is not None}, refresh=True)


# -- the runner ---------------------------------------------------------------------------------------
class _Tee:
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


def _run_task(ws_root: str, job_id: str, resume: bool) -> dict:
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
        _ended(catalog, job_id, "STOPPED", "stopped by request")
        print(f"[byzer-like] job {job_id} STOPPED", flush=True)
        raise
    except BaseException as e:
        _ended(catalog, job_id, "FAILED", f"{type(e).__name__}: {e}".splitlines()[0][:2000])
        print(f"[byzer-like] job {job_id} FAILED: {type(e).__name__}: {e}", flush=True)
        raise
    finally:
        sys.stdout, sys.stderr = old
        log.close()


def _ended(catalog: Catalog, job_id: str, state: str, error: str) -> None:
    """Record a job that ended before finishing (STOPPED, FAILED): nothing is left to wait for, so its
    metrics lose their ETA."""
    metrics = {k: v for k, v in catalog.job(job_id)["metrics"].items() if k != "eta_s"}
    catalog.update_job(job_id, state=state, error=error, finished_at=time.time(), metrics=metrics)


def _stop_signal(signum: int, frame: Any) -> None:
    from .train.progress import STOP

    STOP.request(signum)  # at once, or at the training loop's next safe point


def _train(catalog: Catalog, job: dict, resume: bool) -> dict:
    from .train.plot import loss_curve
    from .train.progress import final_metrics

    kind, run_dir = job["kind"], Path(job["run_dir"])
    plugin = registry.load(job["model_type"])
    output_dir = run_dir / "model"
    params = {
        **job["params"],
        f"{INTERNAL}model_dir": job["base_model"], f"{INTERNAL}output_dir": str(output_dir),
        f"{INTERNAL}run_dir": str(run_dir), f"{INTERNAL}workspace": str(catalog.workspace.root),
        f"{INTERNAL}job_id": job["id"], f"{INTERNAL}resume": "true" if resume else "false",
    }
    if (run_dir / PARTITIONS_FILE).is_file():
        params[f"{INTERNAL}partitions"] = json.dumps(json.loads((run_dir / PARTITIONS_FILE).read_text())["sizes"])
    out = getattr(plugin.target, tasks.get(kind).entry_point)([str(run_dir / "input.parquet")], params, dict(job["sys_conf"]))
    out = out if isinstance(out, dict) else {}
    model_dir = str(out.get("model_dir") or output_dir)
    model_kind = out.get("kind", "model")
    metrics = final_metrics(catalog.job(job["id"])["metrics"], out.get("metrics") or {})
    history = catalog.metric_history(job["id"])
    png = loss_curve(history, Path(model_dir) / "loss.png", title=f"{job['id']} ({kind})")
    if png:
        metrics["loss_curve"] = png
    result: dict[str, Any] = {"artifact": model_dir, "metrics": metrics}
    if isinstance(metrics.get("steps"), int):  # finished: the final step is the last one
        result["step"] = result["total_steps"] = metrics["steps"]
    opts = train_options.options_for(kind, job["params"])
    if job["output_table"]:
        method = getattr(opts, "method", "pretrain")
        m = catalog.register_model(
            job["output_table"], kind=model_kind, path=model_dir, base_model=job["base_model"],
            model_type=job["model_type"], method=method, params=job["params"], metrics=metrics, job_id=job["id"],
            overwrite=opts.overwrite)
        result["model_version"] = m.version
        print(f"[byzer-like] registered {m.ref} ({model_kind}) -> {model_dir}", flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m byzer_like.jobs", description="run one training job (the runner)")
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
