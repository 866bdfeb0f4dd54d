"""Byzer-style scripts (tests/byzer_scripts/*.sql), written the way Byzer-LLM's documentation writes them with
only paths changed (`${models}`, `${data}`, `${out}`, `${saas_url}`), run end to end.

Each script says in its comment header what it must give:

    -- expect: ok                          every statement runs
    -- expect-error: UnknownOptionError    the script stops with that typed error (a class name in its MRO)
    -- expect-rows: answers=2, nulls=1     tables of the session and their row counts once it ran
    -- needs: ray                          it deploys or trains: run on the test session's Ray cluster
    -- expect-jobs: SUCCEEDED              the jobs it submits (detached) end in that state (waited for)
    -- marks: heavy                        run with -m heavy only (a long training job, a network timeout)

Scripts named NN_readme_* are Byzer-LLM's README SQL blocks as its README writes them, with only paths
changed; where a block asks for GPUs this CPU cluster lacks, the block as written must end in a one-line typed
error naming them, and a copy with num_gpus=0 must run.

Scripts without `needs: ray` run on a runtime that never starts a cluster (their errors come before one).
"""
from __future__ import annotations

import json
import re
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from byzer_like.session import Session
from byzer_like.errors import ByzerError

SCRIPTS = Path(__file__).resolve().parent / "byzer_scripts"
ALL = sorted(SCRIPTS.glob("*.sql"))


def header(script: Path) -> dict[str, str]:
    """The `-- key: value` lines at the top of a script."""
    out: dict[str, str] = {}
    for line in script.read_text(encoding="utf-8").splitlines():
        m = re.match(r"--\s*(expect|expect-error|expect-rows|expect-jobs|needs|marks):\s*(.+)", line.strip())
        if m:
            out[m.group(1)] = m.group(2).strip()
        elif line.strip() and not line.startswith("--"):
            break
    return out


def param(script: Path):
    """The script as a test parameter, with the marks its header names."""
    marks = [getattr(pytest.mark, m.strip()) for m in header(script).get("marks", "").split(",") if m.strip()]
    return pytest.param(script, marks=marks, id=script.stem)


def test_every_script_says_what_it_expects():
    assert len(ALL) >= 30
    for script in ALL:
        h = header(script)
        assert ("expect" in h) != ("expect-error" in h), f"{script.name}: one of expect / expect-error"


class FakeOpenAI(BaseHTTPRequestHandler):
    """An OpenAI-compatible endpoint (and an Azure one under /openai/deployments/<name>/): answers
    `echo: <last message>` and records each request's path and key header."""

    seen: list[dict] = []

    def log_message(self, *args):
        pass

    def _send(self, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):  # noqa: N802
        self._send({"object": "list", "data": [{"id": m, "object": "model", "created": 0, "owned_by": "x"}
                                               for m in ("deepseek-chat", "gpt-4o-prod")]})

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).seen.append({"path": self.path, "auth": self.headers.get("Authorization"),
                                "api_key": self.headers.get("api-key"), "model": body.get("model")})
        text = "echo: " + body["messages"][-1]["content"]
        self._send({"id": "c1", "object": "chat.completion", "created": 0, "model": body.get("model"),
                    "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}],
                    "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}})


@pytest.fixture(scope="module")
def saas_server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), FakeOpenAI)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


@pytest.fixture(scope="module")
def variables(workspace, tiny_models, saas_server, tmp_path_factory) -> dict[str, str]:
    data = workspace / "byzer_scripts_data"
    shutil.copytree(SCRIPTS / "data", data, dirs_exist_ok=True)
    out = workspace / "byzer_scripts_out"
    out.mkdir(exist_ok=True)
    return {"models": str(tiny_models["llama"].parent), "data": str(data), "out": str(out),
            "saas_url": saas_server + "/v1", "saas_root": saas_server}


def _run(script: Path, runtime, variables: dict[str, str]) -> Session:
    h = header(script)
    session = Session(runtime, variables=variables, progress=False)
    text = script.read_text(encoding="utf-8")
    if "expect-error" in h:
        with pytest.raises(ByzerError) as e:
            session.sql(text)
        names = [c.__name__ for c in type(e.value).__mro__]
        assert h["expect-error"] in names, f"{script.name}: {type(e.value).__name__}: {e.value}"
        assert "\n" not in getattr(e.value, "message", str(e.value)), "a user's error is one line"
        return session
    results = session.sql(text)
    for pair in filter(None, (p.strip() for p in h.get("expect-rows", "").split(","))):
        table, _, rows = pair.partition("=")
        assert session.table(table).num_rows == int(rows), f"{script.name}: {table}"
    if "expect-jobs" in h:
        jobs = [job for r in results if r.table is not None and "job_id" in r.table.column_names
                for job in r.table.column("job_id").to_pylist()]
        assert jobs, f"{script.name}: expected jobs, none was submitted"
        for job in jobs:
            row = session.runtime.jobs.wait(job, timeout_s=900)
            assert row["state"] == h["expect-jobs"], f"{script.name}: {job}: {row['state']} {row.get('error')}"
    return session


@pytest.mark.timeout(120)
@pytest.mark.parametrize("script", [param(s) for s in ALL if header(s).get("needs") != "ray"])
def test_script_without_a_cluster(script, variables, workspace):
    from byzer_like.runtime import Runtime

    runtime = Runtime(workspace=workspace)
    _run(script, runtime, variables).close()


@pytest.mark.ray
@pytest.mark.timeout(600)
@pytest.mark.parametrize("script", [param(s) for s in ALL if header(s).get("needs") == "ray"])
def test_script_on_the_cluster(script, variables, llm):
    before = set(llm.list_models())
    setup = llm.runtime.setup_config
    FakeOpenAI.seen = []
    try:
        session = _run(script, llm, variables)
        session.close()
    finally:
        llm.runtime.setup_config = setup
        for name in set(llm.list_models()) - before:
            llm.undeploy(name)
    if script.stem.endswith("saas_providers"):
        deepseek, azure = FakeOpenAI.seen[-2:] if FakeOpenAI.seen[-2]["model"] == "deepseek-chat" else FakeOpenAI.seen[-2:][::-1]
        assert deepseek["path"] == "/v1/chat/completions" and deepseek["auth"] == "Bearer sk-test"
        assert azure["path"].startswith("/openai/deployments/gpt-4o-prod/chat/completions")
        assert azure["api_key"] == "az-test"
