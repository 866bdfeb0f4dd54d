"""Training jobs: submit, watch, stop and resume a training task (`byzer_like.tasks`: sft, sfft, ...).

    jobs = Jobs(workspace, setup=SetupConfig())          # or runtime.jobs / ByzerLLM().jobs
    row = jobs.submit(tasks.get("sft"), options, params, table)   # the runtime's `train` builds the options
    jobs.status(row["job_id"]); jobs.logs(row["job_id"]); jobs.stop(...); jobs.resume(...)

Every check that can fail (plugin, base model, output name, the table's form, max_seq_length, the DeepSpeed
config) runs before anything starts. The task's options model, built once when the job is submitted, is
stored whole in the job's record, with the user's keys as given and the setup it runs with; the runner and
`resume` read it back. The input table is written once, as parquet, into the job's folder in the
workspace; the runner and the training workers read it from there (resume needs it after the client is
gone). A detached job is a Ray Jobs job (it outlives the client); a blocking one runs the same runner
(`train.runner`) as a Ray task while the client shows a progress bar. Either way the job's record lives
in the catalog (parameters, options, state, step, metrics, artifact), and its log in the job's folder,
after Ray has forgotten it.
"""
from __future__ import annotations

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

from .. import cluster
from ..catalog import FINISHED, Catalog
from ..config import SetupConfig
from ..errors import ClusterError, ConfigError, JobError, NotSupportedError
from ..plugins import registry
from ..tasks import TrainingTask, split_model_type
from ..workspace import Workspace
from .preflight import Environment, Plan, check_devices, check_packages, check_resources, preflight
from .progress import TENSORBOARD_DIR
from .runner import LOG_FILE, PARTITIONS_FILE, run_task

if TYPE_CHECKING:  # pyarrow is imported where a table is made: `byzer-like jobs list` needs none
    import pyarrow as pa

    from .options import TrainOptions

# a job's row, as SQL, the client and the CLI show it
ROW_FIELDS = ("job_id", "kind", "method", "state", "step", "total_steps", "output_table", "model_version", "artifact",
              "metrics", "error", "detached", "ray_job_id", "created_at", "finished_at")


class Jobs:
    """The jobs of one workspace.

    `address`: the Ray cluster the caller joined (None: this workspace's own); `setup`: the resources
    and mode a submitted job runs with (recorded with it as its sys_conf); `connect()`: joins the
    cluster (a blocking job runs as a Ray task on it); `deployed`: what runs on the cluster, an object with
    `deployments(start=False) -> {name: status}` and `meta(name) -> dict` (the runtime), for the options
    that name a deployment (ppo's rewardModel); None: no deployment is known."""

    def __init__(self, workspace: Workspace, *, address: str | None = None, setup: SetupConfig | None = None,
                 connect: Callable[[], Any] | None = None, deployed: Any = None):
        self.workspace = workspace
        self.deployed = deployed
        self.address = address
        self.setup = setup or SetupConfig()
        self._connect = connect or (lambda: cluster.connect(self.address, self.workspace))
        self.catalog = Catalog(self.workspace)

    # -- submit ----------------------------------------------------------------------------------
    def submit(self, task: TrainingTask, options: TrainOptions, params: Mapping[str, Any], table: pa.Table | None, *,
               progress: bool = False, eval_table: pa.Table | None = None,
               partitions: Sequence[int] | None = None, predict_table: pa.Table | None = None) -> dict:
        """Check everything, store the table, record the job, then run it (detached: return at once).

        `task`: the task table's row; `options`: its options model, parsed from `params` (the user's keys,
        recorded as given and handed to the plugin's entry point) by the runtime. `eval_table`: the
        evalTable (measured with evalMetrics at each evaluation step), stored beside the input as
        `eval.parquet`. `partitions`: the sizes of the table's partitions, in row order (TableRepartition's),
        stored as `partitions.json` for sfft's keepPartitionNum. `predict_table`: the predictTable, stored as
        `predict.parquet` and answered by the trained model before the job ends (`train.predict`). Returns the job's row (see ROW_FIELDS).
        Raises ConfigError, NotSupportedError (the plugin cannot run the task), ModelExistsError, JobError."""
        model_type = split_model_type(options.pretrained_model_type)[1]
        plugin = registry.load(model_type)
        if not plugin.has(task.entry_point):
            raise NotSupportedError(f"plugin {model_type!r} has no {task.entry_point}: it cannot be trained with {task.name}")
        base_dir = self._base_model(options, plugin)
        if options.output_table:
            self.catalog.check_new_name(options.output_table, overwrite=options.overwrite)
        if table is None:
            raise ConfigError(f"{task.name} needs inputTable=\"<table>\" (a table of this session)")
        if table.num_rows == 0:
            raise ConfigError("the training table is empty: nothing to train on")
        options = task.prepare_options(options, self.catalog, self.deployed)  # ppo: the reward model's folder
        # the data first: a bad table is refused before the cluster is asked anything
        task.check_function()(options, table, base_dir, plugin, self.setup.for_task(task))
        plan = preflight(task, options, self.setup, self.environment(options.detached), resolve=self.workspace.resolve)
        options, setup = plan.options, plan.setup
        if eval_table is not None:
            from ..eval.measure import plan as eval_plan

            eval_plan(eval_table, metrics=options.eval_metric_names(), name=options.eval_table)
        if predict_table is not None:
            from .predict import check as check_predict

            check_predict(predict_table, options)
        elif options.predict_table:
            raise ConfigError(f"predictTable {options.predict_table!r} was named but no table was given for it")
        if partitions is not None and sum(partitions) != table.num_rows:
            raise ConfigError(f"the partition sizes add up to {sum(partitions)} rows, the table has {table.num_rows}")

        job_id = f"{task.name}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
        run_dir = self._run_dir(options, job_id)
        _write_inputs(run_dir, table, eval_table, partitions, predict_table)
        self.catalog.create_job(
            job_id, task.name, model_type=model_type, base_model=base_dir, output_table=options.output_table,
            params={k: _jsonable(v) for k, v in params.items()}, options=options.model_dump(mode="json"),
            sys_conf=setup.sys_conf(), detached=options.detached, run_dir=str(run_dir),
        )
        self.catalog.update_job(job_id, metrics={"input_rows": table.num_rows, **_plan_metrics(plan)})
        for note in plan.notes:
            print(f"[byzer-like] {note}", file=sys.stderr, flush=True)
        return self._launch(job_id, detached=options.detached, resume=False, progress=progress)

    def environment(self, detached: bool) -> Environment:
        """Where a job would run, for the pre-flight checks (`train.preflight`): the live nodes' resources of
        the cluster a blocking job runs on (joined now, as the job would be) or of the Ray Jobs API a detached
        job goes to when one is known (its address, or this workspace's running head); nodes unknown (the
        resource checks skipped) when they cannot be read or the head is yet to be started."""
        nodes = None
        if detached:
            address = os.environ.get("BYZER_LIKE_JOBS_ADDRESS") or ""
            if not address:
                info = cluster.head_info(self.workspace)
                address = info.dashboard_url if info and info.alive() else ""
            if address:
                try:
                    cluster.check_answers(address, timeout_s=2.0)
                    nodes = cluster.node_resources_at(address)
                except ClusterError:
                    nodes = None  # submitting says why
        else:
            self._connect()
            try:
                nodes = cluster.node_resources()
            except Exception:  # noqa: BLE001 - a Ray client that cannot list nodes: the check is skipped
                nodes = None
        return Environment(nodes=nodes or None)  # no node listed yet: unknown, not a cluster of nothing

    def _run_dir(self, options: TrainOptions, job_id: str) -> Path:
        """The job's folder (created): under localPathPrefix when given, else the workspace's jobs/."""
        if options.local_path_prefix:
            run_dir = self.workspace.resolve(options.local_path_prefix, what="localPathPrefix") / job_id
        else:
            run_dir = self.workspace.path("jobs", job_id)
        run_dir.mkdir(parents=True, exist_ok=False)
        return run_dir

    def _base_model(self, opts: TrainOptions, plugin: registry.Plugin) -> str:
        if opts.model_table not in (None, "command"):
            m = self.catalog.model(opts.model_table)
            if m.kind == "reward":
                raise ConfigError(f"{m.ref} is a reward model (a sequence classifier), not a base to train from; "
                                  "start from the model it was trained on")
            if m.kind != "model":
                raise ConfigError(f"{m.ref} is a LoRA adapter; merge it first "
                                  f'(run command as LLM.`` where action="merge" and modelTable="{m.ref}" and outputTable="...")')
            base = m.path
        else:
            base = str(self.workspace.resolve(opts.model_dir, what="localModelDir"))
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
            entry = [sys.executable, "-m", "byzer_like.train.runner", "run", job_id, "--workspace", str(self.workspace.root)]
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

        remote = ray.remote(run_task).options(num_cpus=cpus, num_gpus=gpus, max_retries=0,
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
        """Everything the catalog holds about a job (parameters, sys_conf, metric history), its id named
        `job_id` as in `list()` / `status()` rows (the CLI's `jobs status` prints this), its `method` as the rows
        say it (`lora (qlora needs a CUDA GPU; none here)`), and `tensorboard_dir`:
        the folder of its TensorBoard event files (None until the job writes some)."""
        job = self._reconcile(self.catalog.job(job_id))
        job = {"job_id": job.pop("id"), **job}
        job["method"] = _method_text(job.get("metrics") or {})  # as the row says it
        job["history"] = self.catalog.metric_history(job_id)
        job["tensorboard_dir"] = self.tensorboard_dir(job)
        return job

    @staticmethod
    def tensorboard_dir(job: Mapping[str, Any]) -> str | None:
        """The folder under a job's run_dir that holds its TensorBoard event files, or None when it has none."""
        folder = Path(job["run_dir"]) / TENSORBOARD_DIR
        return str(folder) if any(folder.rglob("events.out.tfevents*")) else None

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
            self.catalog.end_job(job_id, state, error)

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
        self._check_resumable(job, detached)
        self.catalog.update_job(job_id, state="PENDING", error=None, finished_at=None)
        return self._launch(job_id, detached=detached, resume=True, progress=progress)

    def _check_resumable(self, job: dict, detached: bool) -> None:
        """Before a resume: the base model and the stored evalTable are still there, and the job's packages,
        devices and workers (its stored options and setup) still fit this environment (`train.preflight`)."""
        from ..tasks import get

        if not Path(job["base_model"]).is_dir():
            raise JobError(f"job {job['id']} cannot resume: its base model {job['base_model']} is gone; put it back "
                           "or submit the job again with another localModelDir")
        task = get(job["kind"])
        opts = task.stored_options(job["options"], job["params"])
        if getattr(opts, "eval_table", None) and not (Path(job["run_dir"]) / "eval.parquet").is_file():
            raise JobError(f"job {job['id']} cannot resume: its evalTable ({job['run_dir']}/eval.parquet) is gone; "
                           "submit the job again")
        setup = SetupConfig.from_sys_conf(job["sys_conf"])
        env = self.environment(detached)
        check_resources(task, setup, env)
        check_packages(task, opts, env)
        check_devices(task, opts, setup)

    @staticmethod
    def _row(job: dict) -> dict:
        row = {k: job.get(k) for k in ROW_FIELDS if k not in ("job_id", "method")}
        row["job_id"] = job["id"]
        row["method"] = _method_text(job.get("metrics") or {})
        row["metrics"] = json.dumps(job.get("metrics") or {}, sort_keys=True)
        return {k: row[k] for k in ROW_FIELDS}


# -- helpers ----------------------------------------------------------------------------------------
def _runner_resources(job: dict) -> tuple[float, float]:
    """(CPUs, GPUs) the job's runner reserves: sft trains inside the runner (it holds one worker's CPUs and
    GPUs, as the job's setup gives them); sfft's runner only drives Ray Train workers and reserves none."""
    from ..tasks import get

    if not get(job["kind"]).runner_holds_worker:
        return 0.0, 0.0
    setup = SetupConfig.from_sys_conf(job["sys_conf"])
    return setup.cpus_per_worker, setup.gpus_per_worker


def _plan_metrics(plan: Plan) -> dict:
    """What the job's record keeps of its Plan, in its metrics: the method and why it was chosen."""
    out: dict[str, Any] = {}
    if plan.method:
        out["method"] = plan.method
        if plan.method_reason:
            out["method_reason"] = plan.method_reason
    return out


def _method_text(metrics: Mapping[str, Any]) -> str | None:
    """The row's `method`: `lora (qlora needs a CUDA GPU; none here)`, `qlora`, or None (sfft, older jobs)."""
    method = metrics.get("method")
    if not method:
        return None
    return f"{method} ({metrics['method_reason']})" if metrics.get("method_reason") else str(method)


def _write_inputs(run_dir: Path, table: pa.Table, eval_table: pa.Table | None, partitions: Sequence[int] | None,
                  predict_table: pa.Table | None = None) -> None:
    """The job's inputs in its folder: input.parquet, eval.parquet (the evalTable), partitions.json,
    predict.parquet (the predictTable)."""
    import pyarrow.parquet as pq

    pq.write_table(table, run_dir / "input.parquet")
    if eval_table is not None:
        pq.write_table(eval_table, run_dir / "eval.parquet")
    if partitions is not None:
        (run_dir / PARTITIONS_FILE).write_text(json.dumps({"sizes": [int(n) for n in partitions]}))
    if predict_table is not None:
        from .predict import PREDICT_INPUT

        pq.write_table(predict_table, run_dir / PREDICT_INPUT)


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


__all__ = ["Jobs", "ROW_FIELDS"]
