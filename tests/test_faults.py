"""Faults on a real 3-node Ray cluster on this machine (`ray.cluster_utils.Cluster`): a head (no CPUs: GCS,
dashboard + Jobs API, Serve controller, drivers) and two worker nodes (2 CPUs each, where every replica,
training worker and job runner lands). Real tiny models, real Serve, Ray Train + DeepSpeed and Ray Jobs.

- a replica SIGKILLed mid-select, and a whole node removed mid-select: every row answered once, in order;
- a replica whose request hangs: the caller gets RequestTimeoutError, Serve's health check replaces it;
- an sfft training worker SIGKILLed: the run resumes from its last checkpoint and finishes;
- the client of a detached job SIGKILLed right after submitting: the job still succeeds, and its record
  and logs stay readable from a new client.

Not in the default run (`-m 'not faults'`); run them with `python -m pytest tests/test_faults.py -m faults`.
The cluster is this module's own (its own workspace and Ray temp dir), removed by handle at the end.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest

from byzer_like.errors import RequestTimeoutError

pytestmark = [pytest.mark.faults]

WORKER_CPUS = 2
GREEDY_SQL = '"temperature", "0", "max_new_tokens", "4"'


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class FaultCluster:
    """The module's cluster: the `Cluster` handle, its workspace, its dashboard (Jobs API, state API)."""

    cluster: Any
    workspace: Path
    dashboard: str
    model_dir: Path

    @property
    def address(self) -> str:
        return self.cluster.address

    def client(self):
        from byzer_like import ByzerLLM

        return ByzerLLM(address=self.address, workspace=self.workspace)

    def worker_nodes(self) -> dict[str, Any]:
        """node id -> Node, for the live worker nodes."""
        return {n.node_id: n for n in self.cluster.worker_nodes}

    def add_worker(self) -> Any:
        node = self.cluster.add_node(num_cpus=WORKER_CPUS, node_ip_address="127.0.0.1")
        self.cluster.wait_for_nodes()
        return node

    def alive_actors(self, class_name: str) -> list[Any]:
        from ray.util.state import list_actors

        return [a for a in list_actors(address=self.dashboard, filters=[("state", "=", "ALIVE")], limit=1000,
                                       detail=True) if a.class_name == class_name]

    def replicas(self, udf_name: str) -> list[Any]:
        return self.alive_actors(f"ServeReplica:{udf_name}:ByzerModel")


@pytest.fixture(scope="module")
def fc(tmp_path_factory):
    """A head + 2 worker nodes, a tiny llama, and this process connected as a driver."""
    import ray
    from ray.cluster_utils import Cluster

    from byzer_like import cluster as bl_cluster
    from byzer_like.tiny import make_tiny

    ws = tmp_path_factory.mktemp("faults_ws")
    saved = {k: os.environ.get(k) for k in ("BYZER_LIKE_HOME", "BYZER_LIKE_JOBS_ADDRESS")}
    os.environ["BYZER_LIKE_HOME"] = str(ws)
    # Ray's temp dir holds unix sockets (~107-byte paths): a short one of our own, removed at the end
    ray_tmp = tempfile.mkdtemp(prefix="blf-", dir="/tmp")
    cluster = None
    try:
        bl_cluster.as_local()  # loopback addresses and token auth, as for every local cluster of byzer-like
        dash_port = _free_port()
        cluster = Cluster(initialize_head=True, head_node_args={
            "num_cpus": 0, "include_dashboard": True, "dashboard_host": "127.0.0.1", "dashboard_port": dash_port,
            "temp_dir": ray_tmp, "node_ip_address": "127.0.0.1",
            # the Jobs API submits through the head's dashboard agent; Ray's fixed default port (52365) may be
            # taken by another cluster on this machine, so the agent binds a free one (as worker nodes' do)
            "dashboard_agent_listen_port": None})
        dashboard = f"http://127.0.0.1:{dash_port}"
        # detached jobs go through this cluster's Jobs API (not a persistent head of the workspace)
        os.environ["BYZER_LIKE_JOBS_ADDRESS"] = dashboard
        handle = FaultCluster(cluster, ws, dashboard, ws / "models" / "tiny-llama")
        for _ in range(2):
            handle.add_worker()
        handle.client().connect()
        head_id = cluster.head_node.node_id
        assert ray.get_runtime_context().get_node_id() == head_id, "the driver must sit on the head node"
        make_tiny("llama", handle.model_dir, size="tiny", seed=0)
        yield handle
    finally:
        try:
            from ray import serve

            if ray.is_initialized():
                serve.shutdown()
        except Exception:  # noqa: BLE001 - the cluster goes next anyway
            pass
        ray.shutdown()
        if cluster is not None:
            cluster.shutdown()
        shutil.rmtree(ray_tmp, ignore_errors=True)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# -- batch selects under faults -------------------------------------------------------------------------
def _questions(fc: FaultCluster, n: int) -> str:
    """A jsonl table of n distinct questions in the workspace; returns its SQL path."""
    f = fc.workspace / "data" / f"questions_{n}.jsonl"
    if not f.exists():
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text("".join(json.dumps({"id": i, "q": f"question number {i}: what comes after {i}?"}) + "\n"
                             for i in range(n)))
    return str(f)


def _select(llm, model: str, path: str, max_new_tokens: int = 4) -> list[dict]:
    greedy = GREEDY_SQL.replace('"max_new_tokens", "4"', f'"max_new_tokens", "{max_new_tokens}"')
    df = llm.sql(f"""
        load json.`{path}` as questions;
        select id, q, {model}(llm_param(map("instruction", q, {greedy}))) as r from questions as answered;
    """)
    return df.to_dict("records")


def _check_rows(rows: list[dict], n: int, expected: list[dict] | None = None) -> set[str]:
    """Every row answered exactly once, in order: row i is question i, its result's input is its own
    instruction, and (given a fault-free run) its answer is the answer the model gives to that question.
    Returns the replicas that answered."""
    assert len(rows) == n, f"{len(rows)} rows for {n} questions"
    assert [r["id"] for r in rows] == list(range(n)), "rows out of order, lost or duplicated"
    replicas = set()
    for i, row in enumerate(rows):
        assert row["r"] is not None, f"row {i} has no answer"
        result = json.loads(row["r"])
        assert result["input"] == row["q"] == f"question number {i}: what comes after {i}?", (i, result)
        assert isinstance(result["output"], str) and "error" not in result, (i, result)
        replicas.add(result["metadata"]["replica"])
        if expected is not None:
            want = json.loads(expected[i]["r"])
            assert (result["output"], result["metadata"]["input_tokens"]) == \
                   (want["output"], want["metadata"]["input_tokens"]), f"row {i}: {result} != fault-free {want}"
    return replicas


@pytest.fixture
def retried(monkeypatch) -> list[str]:
    """The errors for which a chunk was sent again (a replica died under it), as they happen."""
    from byzer_like.serving import manager

    seen: list[str] = []
    original = manager._retriable

    def recording(e: BaseException) -> bool:
        ok = original(e)
        if ok:
            seen.append(type(e).__name__)
        return ok

    monkeypatch.setattr(manager, "_retriable", recording)
    return seen


def _when_rows_done(llm, at_least: int, action: Callable[[], None]) -> threading.Thread:
    """Run `action` on its own thread once `at_least` rows of the next batch have been answered (the batch
    is well under way)."""
    reached = threading.Event()
    lock = threading.Lock()
    done = [0]
    original = llm.runtime.generate

    def generate(name, requests, *, on_rows=None, **options):
        def rows_done(k: int) -> None:
            with lock:
                done[0] += k
                if done[0] >= at_least:
                    reached.set()
            if on_rows:
                on_rows(k)

        return original(name, requests, on_rows=rows_done, **options)

    llm.runtime.generate = generate  # the session calls its runtime's generate
    thread = threading.Thread(target=lambda: (reached.wait(300), action()), daemon=True)
    thread.start()
    return thread


def _deploy_llama(fc: FaultCluster, llm, name: str, workers: int = 2) -> list[Any]:
    llm.setup_num_workers(workers).setup_cpus_per_worker(1)
    llm.deploy(fc.model_dir, "llama", name, {})
    reps = fc.replicas(name)
    assert len(reps) == workers, reps
    assert set(fc.worker_nodes()) >= {r.node_id for r in reps}, "a replica landed on the head"
    return reps


def _busy_replica(replicas: list[Any], polls: int = 20) -> tuple[Any, int]:
    """One of `replicas` working on a chunk right now, and how many chunks it holds: asked of each replica
    actor directly (Serve answers this on its own thread, not behind the model calls). One holding two
    chunks is preferred, so that the chunk cannot finish in the moment between this answer and the kill."""
    import ray

    actors = [(r, ray.get_actor(r.name, namespace="serve")) for r in replicas]
    deadline = time.monotonic() + 60
    seen = 0
    while True:
        counts = [(ray.get(a.get_num_ongoing_requests.remote(), timeout=10), r) for r, a in actors]
        ongoing, replica = max(counts, key=lambda c: c[0])
        if ongoing >= 2 or (ongoing >= 1 and seen >= polls):
            return replica, ongoing
        assert time.monotonic() < deadline, f"no replica was working on a chunk: {counts}"
        seen += 1
        time.sleep(0.005)


def _wait_replicas(fc: FaultCluster, name: str, count: int, not_on: set[str] = frozenset(),
                   gone: set[str] = frozenset(), timeout_s: float = 120) -> list[Any]:
    """Wait until `name` is RUNNING with `count` live replicas, none on `not_on` nodes, none of `gone` ids."""
    from ray import serve

    deadline = time.monotonic() + timeout_s
    while True:
        reps = fc.replicas(name)
        status = str(getattr(serve.status().applications[name].status, "value", ""))
        if (status == "RUNNING" and len(reps) == count and not {r.node_id for r in reps} & set(not_on)
                and not {r.actor_id for r in reps} & set(gone)):
            return reps
        assert time.monotonic() < deadline, (
            f"{name}: after {timeout_s:.0f} s status {status}, replicas {[(r.actor_id, r.node_id) for r in reps]}")
        time.sleep(0.5)


@pytest.mark.timeout(240)
def test_replica_killed_mid_select_loses_no_row(fc, retried):
    llm = fc.client()
    name = "f_kill"
    reps = _deploy_llama(fc, llm, name)
    path = _questions(fc, 1000)
    killed: dict[str, Any] = {}
    try:
        expected = _select(llm, name, path)
        _check_rows(expected, 1000)
        assert not retried

        def kill() -> None:
            try:
                killed["replica"], killed["ongoing"] = _busy_replica(reps)
                os.kill(killed["replica"].pid, signal.SIGKILL)
            except BaseException as e:  # noqa: BLE001 - reported by the main thread
                killed["error"] = e

        killer = _when_rows_done(llm, 250, kill)
        rows = _select(llm, name, path)
        killer.join(60)
        assert "replica" in killed and "error" not in killed, killed
        victim = killed["replica"]
        answered_by = _check_rows(rows, 1000, expected)
        print(f"killed replica pid {victim.pid} working on {killed['ongoing']} chunk(s); chunks sent again after: "
              f"{retried}; answered by {answered_by}")
        assert retried, "no chunk was sent again after the replica died under it"
        # Serve replaces the dead replica
        _wait_replicas(fc, name, 2, gone={victim.actor_id})
    finally:
        llm.undeploy(name)


@pytest.mark.timeout(300)
def test_node_removed_mid_select_loses_no_row(fc, retried):
    llm = fc.client()
    name = "f_node"
    reps = _deploy_llama(fc, llm, name)
    path = _questions(fc, 2000)  # long enough that the node goes while the select runs (after 500 rows)
    removed: dict[str, Any] = {}
    try:
        t0 = time.monotonic()
        # longer answers than the replica-kill test's: a whole node's processes take a moment to die, and
        # with 4-token chunks the doomed replica could still finish the two it held and send them back
        expected = _select(llm, name, path, max_new_tokens=24)
        print(f"fault-free select: {time.monotonic() - t0:.1f} s")
        _check_rows(expected, 2000)
        assert not retried
        # Serve spreads replicas over nodes: the removed node takes one replica, the other lives on
        assert len({r.node_id for r in reps}) == 2, f"both replicas on one node: {reps}"
        nodes = fc.worker_nodes()

        def remove() -> None:
            try:
                replica, removed["ongoing"] = _busy_replica(reps)
                removed["node_id"] = replica.node_id
                removed["t"] = time.monotonic()
                # abruptly, as a crashed machine goes: every process of the node SIGKILLed (a graceful removal
                # lets the replica finish its chunks and exit cleanly, which is the easy case)
                fc.cluster.remove_node(nodes[replica.node_id], allow_graceful=False)
                removed["done"] = time.monotonic()
            except BaseException as e:  # noqa: BLE001 - reported by the main thread
                removed["error"] = e

        remover = _when_rows_done(llm, 500, remove)
        rows = _select(llm, name, path, max_new_tokens=24)
        end = time.monotonic()
        remover.join(60)
        assert "done" in removed and "error" not in removed, removed
        node_id = removed["node_id"]
        answered_by = _check_rows(rows, 2000, expected)
        print(f"removed node {node_id[:8]}, its replica working on {removed['ongoing']} chunk(s) "
              f"({removed['done'] - removed['t']:.1f} s; the select ended {end - removed['t']:.1f} s after the "
              f"removal began); chunks sent again after: {retried}; answered by {answered_by}")
        assert retried, "no chunk was sent again after the node went with the replica working on it"
        assert node_id not in fc.worker_nodes()
        # Serve brings the lost replica back on a live node
        _wait_replicas(fc, name, 2, not_on={node_id})
    finally:
        llm.undeploy(name)
        while len(fc.worker_nodes()) < 2:  # the next tests get two worker nodes again
            fc.add_worker()


# -- a hung request ------------------------------------------------------------------------------------------
@pytest.mark.timeout(180)
def test_hung_request_times_out_and_the_replica_is_replaced(fc):
    from byzer_like.plugins import registry

    registry.register("hang", "hang_plugin", replace=True)
    llm = fc.client()
    llm.setup_num_workers(1).setup_cpus_per_worker(0.5)
    llm.setup("request_timeout_s", 3).setup("health_check_period_s", 1).setup("health_check_timeout_s", 5)
    name = "f_hang"
    llm.deploy(None, "hang", name, {})
    try:
        before = llm.get_meta(name)
        [old] = fc.replicas(name)
        assert llm.chat_oai("hello", model=name)[0].output == "echo: hello"

        t0 = time.monotonic()
        with pytest.raises(RequestTimeoutError) as e:
            llm.chat_oai("please HANG now", model=name)
        waited = time.monotonic() - t0
        assert str(e.value) == f"model {name!r} did not answer within 3 s", str(e.value)

        # the request still runs on the replica; past 2 x request_timeout_s its health check fails and
        # Serve starts a new replica and ends the old one
        [new] = _wait_replicas(fc, name, 1, gone={old.actor_id}, timeout_s=90)
        why = _controller_log_line(fc, f"{before['replica']}", "failed health check", timeout_s=30)
        assert why, "Serve's controller did not log the old replica's failed health check"
        after = llm.get_meta(name, refresh=True)
        assert (after["replica"], after["replica_pid"]) != (before["replica"], before["replica_pid"])
        assert after["replica_pid"] == new.pid and after["requests_in_flight"] == 0
        assert llm.chat_oai("hello again", model=name)[0].output == "echo: hello again"
        print(f"hung replica {before['replica']} (pid {before['replica_pid']}) replaced by {after['replica']} "
              f"(pid {after['replica_pid']}); timeout raised after {waited:.1f} s")
    finally:
        llm.undeploy(name)


def _controller_log_line(fc: FaultCluster, *needles: str, timeout_s: float) -> str:
    """The first line of the Serve controller's log holding every needle (waiting for it to be written)."""
    logs = Path(fc.cluster.head_node.get_session_dir_path()) / "logs" / "serve"
    deadline = time.monotonic() + timeout_s
    while True:
        for f in sorted(logs.glob("controller_*.log")):
            for line in f.read_text(errors="replace").splitlines():
                if all(n in line for n in needles):
                    return line
        if time.monotonic() > deadline:
            return ""
        time.sleep(0.5)


# -- training -----------------------------------------------------------------------------------------------
KILL_STEPS = 9
CHECKPOINT_STEPS = 3


def _corpus(fc: FaultCluster) -> Path:
    """Prose lines from the standard library's docstrings, as a parquet text table."""
    import argparse
    import inspect
    import logging

    import pyarrow as pa
    import pyarrow.parquet as pq

    lines: list[str] = []
    for mod in (argparse, logging, json, subprocess, threading):
        for obj in [mod, *(getattr(mod, n) for n in sorted(dir(mod)) if not n.startswith("_"))]:
            for line in (inspect.getdoc(obj) or "").splitlines() if callable(obj) or obj is mod else ():
                line = line.strip()
                if len(line) > 30 and not line.startswith((">>>", "...")) and line not in lines:
                    lines.append(line)
    f = fc.workspace / "data" / "corpus.parquet"
    f.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"text": lines[:400]}), f)
    return f


@pytest.mark.timeout(420)
def test_sfft_worker_killed_resumes_from_its_last_checkpoint(fc):
    from byzer_like.train.options import SfftOptions
    from byzer_like.train.sfft import latest_checkpoint_state, sfft_train

    corpus = _corpus(fc)
    run_dir = fc.workspace / "sfft" / "run"
    out_dir = fc.workspace / "sfft" / "out"
    opts = SfftOptions.from_params({
        "pretrainedModelType": "sfft/llama", "localModelDir": str(fc.model_dir), "sfft.int.max_length": "64",
        "perDeviceBatchSize": "4", "learningRate": "3e-3", "loggingSteps": "1",
        "checkpointSteps": str(CHECKPOINT_STEPS),
        "saveTotalLimit": "2", "maxFailures": "2", "maxSteps": str(KILL_STEPS), "zeroStage": "2"})
    outcome: dict = {}

    def train() -> None:
        try:
            # 1.5 CPUs a worker on 2-CPU nodes: one worker per node (and room left for the data reads)
            outcome["result"] = sfft_train(model_dir=str(fc.model_dir), data_path=str(corpus), output_dir=str(out_dir),
                                           run_dir=str(run_dir), run_name="kill", options=opts, num_workers=2,
                                           cpus_per_worker=1.5)
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            outcome["error"] = e

    thread = threading.Thread(target=train, daemon=True)
    t0 = time.monotonic()
    thread.start()
    run_path = run_dir / "ray_train" / "kill"
    deadline = time.monotonic() + 180
    while (state := latest_checkpoint_state(str(run_path))) is None:
        assert thread.is_alive(), outcome
        assert time.monotonic() < deadline, "no checkpoint appeared within 180 s"
        time.sleep(0.2)
    killed_at = state["step"]
    workers = fc.alive_actors("RayTrainWorker")
    assert len(workers) == 2, workers
    nodes = {w.node_id for w in workers}
    assert len(nodes) == 2 and nodes <= set(fc.worker_nodes()), f"workers not one per worker node: {workers}"
    victim = max(workers, key=lambda a: a.pid)
    os.kill(victim.pid, signal.SIGKILL)
    t_kill = time.monotonic()
    thread.join(timeout=220)
    assert not thread.is_alive(), "training did not finish after the worker was killed"
    assert "error" not in outcome, outcome.get("error")
    m = outcome["result"]["metrics"]
    print(f"killed a training worker (pid {victim.pid}) after the checkpoint at step {killed_at} "
          f"({t_kill - t0:.0f} s in; the run finished {time.monotonic() - t_kill:.0f} s later):", json.dumps(m))
    assert m["steps"] == KILL_STEPS
    assert KILL_STEPS > m["resumed_from_step"] >= killed_at > 0 and m["resumed_from_step"] % CHECKPOINT_STEPS == 0
    assert m["tokens"] == (KILL_STEPS - m["resumed_from_step"]) * 4 * 64 * 2  # only the steps after the checkpoint
    assert (out_dir / "model.safetensors").is_file()
    final = latest_checkpoint_state(str(run_path))
    assert final["step"] == KILL_STEPS and final["world_size"] == 2


# -- a detached job whose client dies ----------------------------------------------------------------------------
DETACHED_CLIENT = textwrap.dedent("""
    import json, sys, time
    from byzer_like import ByzerLLM
    llm = ByzerLLM(address=sys.argv[2])
    llm.setup_cpus_per_worker(1)
    rows = [{"instruction": f"question {i}", "output": f"answer {i}"} for i in range(40)]
    job = llm.sft(rows, model_path=sys.argv[1], pretrained_model_type="sft/llama", output_table="f_detached",
                  detached=True, epochs=4, batch_size=8, max_seq_length=32, checkpoint_steps=10, logging_steps=2,
                  learning_rate=1e-3)
    print(json.dumps(job), flush=True)
    time.sleep(600)  # killed long before this
""")


def _first_line(proc: subprocess.Popen, timeout_s: float) -> str:
    box: list[str] = []
    reader = threading.Thread(target=lambda: box.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout_s)
    return box[0] if box else ""


@pytest.mark.timeout(300)
def test_detached_job_survives_its_killed_client(fc):
    from ray.job_submission import JobSubmissionClient

    env = {**os.environ, "BYZER_LIKE_HOME": str(fc.workspace), "BYZER_LIKE_JOBS_ADDRESS": fc.dashboard}
    err_file = fc.workspace / "detached_client.err"
    with open(err_file, "w") as err:
        proc = subprocess.Popen([sys.executable, "-c", DETACHED_CLIENT, str(fc.model_dir), fc.address], env=env,
                                stdout=subprocess.PIPE, stderr=err, text=True)
    try:
        line = _first_line(proc, 120)
        assert line, f"the client printed no job (exit {proc.poll()}): {err_file.read_text()[-2000:]}"
        submitted = json.loads(line)
        os.kill(proc.pid, signal.SIGKILL)  # right after submission
        assert proc.wait(30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(30)
        proc.stdout.close()
    job_id = submitted["job_id"]
    assert submitted["detached"] and submitted["state"] in ("PENDING", "RUNNING"), submitted

    llm = fc.client()  # a new client
    done = llm.jobs.wait(job_id, timeout_s=240)
    assert done["state"] == "SUCCEEDED", (done, llm.jobs.logs(job_id)[-3000:])
    record = llm.jobs.record(job_id)
    assert record["ray_job_id"] == submitted["ray_job_id"] and record["jobs_address"] == fc.dashboard
    assert record["step"] == 20 and record["history"], record  # 40 rows / batch 8 x 4 epochs
    assert llm.catalog.model("f_detached").job_id == job_id
    logs = llm.jobs.logs(job_id)
    assert f"job {job_id} SUCCEEDED" in logs and "registered f_detached@v1" in logs, logs[-3000:]

    # the Ray job ran on a worker node (the head has no CPUs), and Ray agrees it succeeded
    jobs_api = JobSubmissionClient(fc.dashboard)
    deadline = time.monotonic() + 60  # the runner records SUCCEEDED just before its process exits
    while str((info := jobs_api.get_job_info(submitted["ray_job_id"])).status.value) != "SUCCEEDED":
        assert str(info.status.value) == "RUNNING" and time.monotonic() < deadline, info
        time.sleep(0.5)
    if info.driver_node_id:
        assert info.driver_node_id in fc.worker_nodes(), info
    # and from SQL in yet another client
    status_table = fc.client().session.sql(f"!byzerllm job status {job_id};")[0].table.to_pylist()
    assert status_table[0]["state"] == "SUCCEEDED"
