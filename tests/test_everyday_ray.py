"""Everyday use without surprises, on the session's real Ray cluster: a blocking training run or a
`jobs resume --wait` that ends STOPPED exits non-zero; a finished job's metrics describe its final
step; CLI errors name CLI flags (`--reconnect`, `--replace`); interactive chat survives an error."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from byzer_like.catalog import Catalog

CLI = str(Path(sys.executable).with_name("byzer-like"))


def run(*args, ws, timeout=240, input=None):
    env = {**os.environ, "BYZER_LIKE_HOME": str(ws)}
    return subprocess.run([CLI, *args], capture_output=True, text=True, timeout=timeout, env=env, input=input)


def start(*args, ws) -> subprocess.Popen:
    env = {**os.environ, "BYZER_LIKE_HOME": str(ws)}
    return subprocess.Popen([CLI, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


@pytest.fixture(scope="module")
def qa_data(workspace):
    data = workspace / "data" / "everyday_qa.jsonl"
    data.parent.mkdir(parents=True, exist_ok=True)
    data.write_text("".join(json.dumps({"instruction": f"Say {i}.", "output": str(i)}) + "\n" for i in range(32)))
    return data


def _train_args(data: Path, model: Path, *options: str) -> list[str]:
    args = ["train", "sft", "--data", str(data), "--model-path", str(model), "--type", "llama",
            "--cpus-per-worker", "0.5", "--option", "batch_size=8", "--option", "max_seq_length=32"]
    for option in options:
        args += ["--option", option]
    return args


def _running(catalog: Catalog, wanted, timeout: float = 240) -> dict:
    """The first job that `wanted(job)` picks once its runner runs it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for job in catalog.jobs(limit=5):
            if job["state"] == "RUNNING" and job["runner"] and wanted(job):
                return job
        time.sleep(0.5)
    raise AssertionError(f"no job started running: {catalog.jobs(limit=3)}")


def _ended(proc: subprocess.Popen, timeout: float = 180) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def _says(out: str, line: str) -> bool:
    """Whether a line of `out` starts with `line` (Ray's own messages may come before or after it)."""
    return any(row.startswith(line) for row in out.splitlines())


@pytest.mark.heavy  # two CLI training jobs; job states and exit codes are in the default run (test_everyday)
@pytest.mark.timeout(600)
def test_a_finished_job_reports_its_final_step_and_a_stopped_one_exits_non_zero(ray_cluster, workspace, tiny_models,
                                                                                qa_data):
    model = tiny_models["llama"]
    # 32 rows in batches of 8: 4 steps an epoch, 8 in all; progress is logged at step 5 only (epoch 1.25)
    done = run(*_train_args(qa_data, model, "epochs=2", "logging_steps=5"), "--output-table", "everyday_done",
               ws=workspace)
    (job_line,) = [line for line in done.stdout.splitlines() if line.endswith(": SUCCEEDED")]
    assert done.returncode == 0, done.stderr[-3000:]
    job_id = job_line.split(":")[0]
    status = run("jobs", "status", job_id, ws=workspace)
    assert status.returncode == 0
    record = json.loads(status.stdout)
    m = record["metrics"]
    assert record["step"] == record["total_steps"] == 8 == m["steps"]
    assert m["progress"] == 1.0 and m["eta_s"] == 0 and m["epoch"] == 2.0 and m["loss"] == m["final_loss"], m
    listed = run("jobs", "list", ws=workspace).stdout
    line = next(row for row in listed.splitlines() if row.startswith(job_id)).split("\t")
    assert line[1:4] == ["SUCCEEDED", "8/8", "everyday_done@v1"] and float(line[4]) == pytest.approx(m["final_loss"],
                                                                                                    rel=1e-3)

    # a blocking run stopped from another terminal: `jobs stop` did what was asked (0), `train` did not (4)
    catalog = Catalog(workspace)
    known = {j["id"] for j in catalog.jobs()}
    train = start(*_train_args(qa_data, model, "epochs=500", "logging_steps=1", "checkpoint_steps=1000"),
                  ws=workspace)
    try:
        job = _running(catalog, lambda j: j["id"] not in known and j["step"] >= 1)
        stop = run("jobs", "stop", job["id"], ws=workspace)
        assert stop.returncode == 0 and stop.stdout.strip().startswith(f"{job['id']}: STOPPED"), stop.stdout + stop.stderr
        code, out, err = _ended(train)
    finally:
        train.kill()
    assert code == 4 and _says(out, f"{job['id']}: STOPPED"), (code, out, err[-3000:])
    again = run("jobs", "stop", job["id"], ws=workspace)
    assert again.returncode == 3 and "already ended" in again.stdout
    status = run("jobs", "status", job["id"], ws=workspace)
    assert status.returncode == 4 and "eta_s" not in json.loads(status.stdout)["metrics"]  # nothing left to wait for

    # `jobs resume --wait` that ends STOPPED: 4 as well
    resume = start("jobs", "resume", job["id"], "--wait", ws=workspace)
    try:
        _running(catalog, lambda j: j["id"] == job["id"] and j["attempts"] == 2)
        assert run("jobs", "stop", job["id"], ws=workspace).returncode == 0
        code, out, err = _ended(resume)
    finally:
        resume.kill()
    assert code == 4 and _says(out, f"{job['id']}: STOPPED"), (code, out, err[-3000:])


@pytest.mark.timeout(400)
def test_cli_errors_name_cli_flags_and_interactive_chat_survives_an_error(ray_cluster, workspace, tiny_models):
    model = str(tiny_models["gpt2"])
    first = run("deploy", model, "--type", "gpt2", "--name", "everyday_chat", "--num-workers", "1",
                "--cpus-per-worker", "0.5", ws=workspace)
    assert first.returncode == 0, first.stderr[-3000:]
    try:
        dup = run("deploy", model, "--type", "gpt2", "--name", "everyday_chat", ws=workspace)
        assert dup.returncode == 1 and "pass --reconnect to use it as it is" in dup.stderr, dup.stderr
        assert "reconnect=True" not in dup.stderr and "SQL:" not in dup.stderr
        bound = run("deploy", model, "--type", "gpt2", "--name", "everyday_chat", "--reconnect", ws=workspace)
        assert bound.returncode == 0, bound.stderr

        # a message that fails (far longer than the model's context) is reported; the chat goes on
        long = " ".join(["word"] * 5000)
        chat = run("chat", "everyday_chat", "--temperature", "0", "--max-new-tokens", "4", ws=workspace,
                   input=f"{long}\nhello\n\n")
        assert chat.returncode == 0, chat.stderr[-3000:]
        assert chat.stderr.count("error: ") == 1 and chat.stdout.count("> ") == 3, (chat.stdout, chat.stderr)
        missing = run("chat", "everyday_nope", ws=workspace, input="hello\n")
        assert missing.returncode == 1 and "deployed models: " in missing.stderr and "> " not in missing.stdout

        served = run("serve", "--port", "0", "--detach", ws=workspace)
        assert served.returncode == 0, served.stderr[-3000:]
        try:
            second = run("serve", "--port", "0", ws=workspace)
            assert second.returncode == 1 and "--replace" in second.stderr and "replace=True" not in second.stderr
            assert "`byzer-like serve --stop`" in second.stderr and "stop_serving" not in second.stderr
        finally:
            assert run("serve", "--stop", ws=workspace).returncode == 0
        assert run("serve", "--stop", ws=workspace).returncode == 3  # nothing left to stop
    finally:
        run("undeploy", "everyday_chat", ws=workspace)
