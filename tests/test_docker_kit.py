"""The scale-out kit in docker/: compose files, Dockerfile, .dockerignore, the entrypoint's roles, docs.

No Docker engine is needed: the compose files are read with PyYAML, and docker/entrypoint.sh runs with
fake `ray` and `byzer-like` commands on PATH that record their arguments (and the health checks talk
to a small HTTP server standing in for Ray's dashboard, its node agent and the HTTP API).
"""
from __future__ import annotations

import fnmatch
import http.server
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"
ENTRYPOINT = DOCKER / "entrypoint.sh"
DOCS = ROOT / "docs" / "cluster.md"
API_KEY = "k" * 20 + "-test-key"
TOKEN = "0123456789abcdef" * 4


# -- compose -------------------------------------------------------------------------------------------
def _compose(name: str = "compose.yaml") -> dict:
    return yaml.safe_load((DOCKER / name).read_text())


def _env(service: dict) -> dict:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return env


def test_compose_has_a_head_two_workers_and_the_api():
    services = _compose()["services"]
    assert set(services) == {"head", "worker-1", "worker-2", "api"}
    roles = {name: s["command"] for name, s in services.items()}
    assert roles == {"head": ["head"], "worker-1": ["worker"], "worker-2": ["worker"], "api": ["api"]}
    for name, s in services.items():
        assert s["image"].startswith("${BYZER_LIKE_IMAGE:-byzer-like:cpu}"), name
        assert s["build"]["dockerfile"] == "docker/Dockerfile" and s["build"]["context"] == ".."
        assert _env(s)["RAY_HEAD_ADDRESS"] == "head:6379"
        assert s.get("shm_size"), f"{name}: Ray's object store needs more than Docker's 64 MB of /dev/shm"
        if name != "head":
            assert s["depends_on"]["head"]["condition"] == "service_healthy", name


def test_compose_shares_one_workspace_volume_and_mounts_models_read_only():
    doc = _compose()
    assert "workspace" in doc["volumes"]
    for name, s in doc["services"].items():
        vols = s["volumes"]
        assert "workspace:/workspace" in vols, f"{name} must see the shared workspace at /workspace"
        models = [v for v in vols if v.split(":")[-2:] == ["/models", "ro"]]
        assert len(models) == 1, f"{name} must mount the models read-only at /models"
        env = _env(s)
        assert env["BYZER_LIKE_HOME"] == "/workspace" and env["BYZER_LIKE_ALLOWED_ROOTS"] == "/models"
        assert env["BYZER_LIKE_JOBS_ADDRESS"] == "http://head:8265"


def test_compose_publishes_only_the_api_on_loopback_and_requires_its_key():
    services = _compose()["services"]
    for name, s in services.items():
        if name != "api":
            assert not s.get("ports"), f"{name} must not publish Ray's ports"
    ports = services["api"]["ports"]
    assert ports and all(str(p).startswith("127.0.0.1:") and str(p).endswith(":8000") for p in ports)
    env = _env(services["api"])
    assert re.fullmatch(r"\$\{BYZER_LIKE_API_KEY:\?.+\}", env["BYZER_LIKE_API_KEY"]), "the key must be required"
    assert env["BYZER_LIKE_API_HOST"] == "0.0.0.0" and str(env["BYZER_LIKE_API_PORT"]) == "8000"
    assert str(env["RAY_NUM_CPUS"]) == "0", "no model replica on the API's node"
    assert "BYZER_LIKE_API_KEY" not in _env(services["head"]), "only the API container holds the key"


def test_compose_turns_on_ray_token_auth_everywhere():
    for name, s in _compose()["services"].items():
        env = _env(s)
        assert env["RAY_AUTH_MODE"] == "token", name
        assert re.fullmatch(r"\$\{RAY_AUTH_TOKEN:\?.+\}", env["RAY_AUTH_TOKEN"]), name
        assert env["RAY_ADDRESS"] == "head:6379", f"{name}: drivers run with `docker compose exec` need it"


def test_compose_healthchecks_use_the_entrypoint():
    for name, s in _compose()["services"].items():
        role = "worker" if name.startswith("worker") else name
        assert s["healthcheck"]["test"] == ["CMD", "/usr/local/bin/byzer-like-entrypoint", "health", role]


def test_gpu_override_builds_cuda_and_gives_each_worker_its_own_gpu():
    base, gpu = _compose()["services"], _compose("compose.gpu.yaml")["services"]
    assert set(gpu) <= set(base)
    for name, s in gpu.items():
        assert s["build"]["args"]["VARIANT"] == "cuda" and "cuda" in s["image"], name
    ids = []
    for name in ("worker-1", "worker-2"):
        (device,) = gpu[name]["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
        ids.append(tuple(device["device_ids"]))
        assert str(_env(gpu[name])["RAY_NUM_GPUS"]) == "1"
    assert ids[0] != ids[1], "the two workers must not share one GPU"
    assert "deploy" not in gpu.get("head", {}) and "deploy" not in gpu.get("api", {})


# -- Dockerfile and .dockerignore ----------------------------------------------------------------------
def _dockerfile() -> list[str]:
    text = (DOCKER / "Dockerfile").read_text()
    return [line.strip() for line in text.replace("\\\n", " ").splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_dockerfile_variants_torch_first_non_root():
    lines = _dockerfile()
    assert "ARG VARIANT=cpu" in lines
    froms = [line for line in lines if line.startswith("FROM ")]
    assert any(" AS base-cpu" in f for f in froms) and any(" AS base-cuda" in f for f in froms)
    assert froms[-1] == "FROM base-${VARIANT}"
    assert any(line.startswith("ARG CUDA_BASE=nvidia/cuda:") and "runtime" in line for line in lines)
    assert any(line.startswith("ARG CPU_BASE=python:3.11") for line in lines)
    text = "\n".join(lines)
    assert "https://download.pytorch.org/whl/cpu" in text and "https://download.pytorch.org/whl/${TORCH_CUDA}" in text
    assert text.index('"torch==${TORCH_VERSION}"') < text.index("pip install /tmp/src"), "torch is installed first"
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0"), "the image runs as a non-root user"
    env = " ".join(line for line in lines if line.startswith("ENV "))
    assert "BYZER_LIKE_HOME=/workspace" in env and "BYZER_LIKE_ALLOWED_ROOTS=/models" in env
    assert "RAY_AUTH_MODE=token" in env, "Ray's token authentication is on unless turned off"
    assert "trust_remote_code" not in env.lower()
    assert 'VOLUME ["/workspace"]' in lines
    assert any(line.startswith("COPY docker/entrypoint.sh ") for line in lines)
    (entry,) = [line for line in lines if line.startswith("ENTRYPOINT ")]
    assert "byzer-like-entrypoint" in entry and "tini" in entry


def _ignored(patterns: list[str], path: str) -> bool:
    result = False
    for p in patterns:
        negate = p.startswith("!")
        p = p.lstrip("!").rstrip("/")
        if fnmatch.fnmatch(path, p) or fnmatch.fnmatch(path, p.replace("**/", "")) or path.startswith(p + "/"):
            result = not negate
    return result


def test_dockerignore_keeps_the_context_small_and_secret_free():
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    for out in (".git", ".venv", "byzer_workspace", "test-artifacts", ".pytest_cache", "docker/.env",
                "models/llama/model.safetensors", "byzer_like/__pycache__"):
        assert _ignored(patterns, out), f"{out} must stay out of the build context"
    copied = [line.split()[1:-1] for line in _dockerfile() if line.startswith("COPY ")]
    for sources in copied:
        for src in sources:
            assert not _ignored(patterns, src), f"the Dockerfile copies {src}, which .dockerignore leaves out"
            assert (ROOT / src).exists(), src


# -- the entrypoint ------------------------------------------------------------------------------------
def test_entrypoint_is_valid_bash():
    subprocess.run(["bash", "-n", str(ENTRYPOINT)], check=True)


FAKE = r'''#!{python}
"""A stand-in for `{name}`: records its arguments, then behaves as FAKE_* variables say."""
import json, os, signal, sys, time

name = {name!r}
log = os.environ["FAKE_LOG"]
keys = ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "BYZER_LIKE_API_KEY", "BYZER_LIKE_HOME")


def record(**extra):
    with open(log, "a") as f:
        f.write(json.dumps({{"cmd": name, "argv": sys.argv[1:], "pid": os.getpid(),
                            "env": {{k: os.environ[k] for k in keys if k in os.environ}}, **extra}}) + "\n")


record(sigint_default=signal.getsignal(signal.SIGINT) is signal.default_int_handler)
if name == "ray":
    if "--block" in sys.argv and os.environ.get("FAKE_RAY_BLOCK"):
        signal.signal(signal.SIGTERM, lambda *a: (record(event="term"), sys.exit(0)))
        time.sleep(60)
    sys.exit(int(os.environ.get("FAKE_RAY_RC", "0")))
if os.environ.get("FAKE_SERVE_MODE") == "wait":
    try:
        time.sleep(60)
    except KeyboardInterrupt:  # the way `byzer-like serve` is told to stop
        record(event="interrupted")
        sys.exit(0)
sys.exit(int(os.environ.get("FAKE_RC", "0")))
'''


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - the http.server API
        ok = {"/api/gcs_healthz", "/api/local_raylet_healthz"}
        if self.path in ok or (self.path == "/health" and self.headers.get("Authorization") == f"Bearer {API_KEY}"):
            self.send_response(200)
            body = b'{"status": "ok", "models": 0}'
        else:
            self.send_response(401 if self.path == "/health" else 404)
            body = b"{}"
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def fake_server():
    """One port answering as Ray's dashboard (gcs_healthz), node agent (local_raylet_healthz) and the API."""
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv.server_address[1]
    srv.shutdown()


class Kit:
    def __init__(self, tmp: Path, port: int):
        self.bin = tmp / "bin"
        self.bin.mkdir()
        self.log = tmp / "calls.jsonl"
        self.home = tmp / "home"
        self.home.mkdir()
        self.port = port
        for name in ("ray", "byzer-like"):
            f = self.bin / name
            f.write_text(FAKE.format(python=sys.executable, name=name))
            f.chmod(0o755)

    def env(self, **extra: str) -> dict[str, str]:
        env = {
            "PATH": os.pathsep.join([str(self.bin), str(Path(sys.executable).parent), "/usr/bin", "/bin"]),
            "HOME": str(self.home),
            "FAKE_LOG": str(self.log),
            "RAY_AUTH_TOKEN": TOKEN,
            "RAY_DASHBOARD_AGENT_LISTEN_PORT": str(self.port),
            "RAY_DASHBOARD_PORT": str(self.port),
        }
        env.update(extra)
        return {k: v for k, v in env.items() if v is not None}

    def run(self, *args: str, timeout: float = 60, **env: str) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", str(ENTRYPOINT), *args], env=self.env(**env), capture_output=True,
                              text=True, timeout=timeout)

    def calls(self, cmd: str | None = None) -> list[dict]:
        if not self.log.exists():
            return []
        rows = [json.loads(line) for line in self.log.read_text().splitlines()]
        return [r for r in rows if cmd is None or r["cmd"] == cmd]


@pytest.fixture
def kit(tmp_path, fake_server):
    return Kit(tmp_path, fake_server)


def _starts(kit: Kit) -> list[list[str]]:
    return [c["argv"] for c in kit.calls("ray") if "event" not in c]


def test_head_role(kit):
    r = kit.run("head")
    assert r.returncode == 0, r.stderr
    (argv,) = _starts(kit)
    assert argv == ["start", "--head", "--block", "--port=6379", "--dashboard-host=0.0.0.0",
                    f"--dashboard-port={kit.port}", "--ray-client-server-port=10001",
                    "--disable-usage-stats", f"--dashboard-agent-listen-port={kit.port}"]
    env = kit.calls("ray")[0]["env"]
    assert env["RAY_AUTH_MODE"] == "token" and env["RAY_AUTH_TOKEN"] == TOKEN, "a token turns token mode on"


def test_head_role_resources_and_extra_flags(kit):
    r = kit.run("head", RAY_NUM_CPUS="0", RAY_NUM_GPUS="2", RAY_PORT="6380",
                RAY_START_ARGS="--object-store-memory=1000000000 --labels={}")
    assert r.returncode == 0, r.stderr
    (argv,) = _starts(kit)
    assert "--port=6380" in argv and "--num-cpus=0" in argv and "--num-gpus=2" in argv
    assert argv[-2:] == ["--object-store-memory=1000000000", "--labels={}"]


def test_worker_role(kit):
    assert kit.run("worker").returncode == 0
    assert kit.run("worker", RAY_HEAD_ADDRESS="10.0.0.5:6380", RAY_NUM_GPUS="1", RAY_NUM_CPUS="8").returncode == 0
    first, second = _starts(kit)
    assert first[:3] == ["start", "--address=head:6379", "--block"] and "--head" not in first
    assert not any(a.startswith("--num-") for a in first), "Ray counts the node's CPUs and GPUs itself unless told"
    assert second[:3] == ["start", "--address=10.0.0.5:6380", "--block"]
    assert "--num-gpus=1" in second and "--num-cpus=8" in second


@pytest.mark.parametrize("env, message", [
    ({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": None}, "RAY_AUTH_TOKEN"),
    ({"RAY_AUTH_TOKEN": None, "RAY_AUTH_TOKEN_PATH": "/nonexistent/token"}, "RAY_AUTH_TOKEN_PATH"),
    ({"RAY_AUTH_MODE": "tokn"}, "neither token nor disabled"),
])
@pytest.mark.parametrize("role", ["head", "worker", "api"])
def test_token_mode_without_a_token_is_refused(kit, env, message, role):
    r = kit.run(role, BYZER_LIKE_API_KEY=API_KEY, **env)
    assert r.returncode != 0 and message in r.stderr
    assert kit.calls() == [], "nothing may start"


def test_token_from_a_file_or_the_default_path(kit, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    assert kit.run("worker", RAY_AUTH_TOKEN=None, RAY_AUTH_TOKEN_PATH=str(token_file)).returncode == 0
    (kit.home / ".ray").mkdir()
    (kit.home / ".ray" / "auth_token").write_text(TOKEN)
    assert kit.run("worker", RAY_AUTH_TOKEN=None, RAY_AUTH_MODE="token").returncode == 0
    assert [c["env"]["RAY_AUTH_MODE"] for c in kit.calls("ray")] == ["token", "token"]


def test_auth_disabled_starts_with_a_warning(kit):
    r = kit.run("worker", RAY_AUTH_TOKEN=None, RAY_AUTH_MODE="disabled")
    assert r.returncode == 0 and "token authentication is off" in r.stderr


@pytest.mark.parametrize("key, message", [(None, "needs BYZER_LIKE_API_KEY"), ("", "needs BYZER_LIKE_API_KEY"),
                                          ("short", "at least 16")])
def test_api_refuses_to_start_without_a_key(kit, key, message):
    r = kit.run("api", BYZER_LIKE_API_KEY=key)
    assert r.returncode != 0 and message in r.stderr
    assert kit.calls() == [], "neither Ray nor the server may start"


def test_api_role_joins_then_serves_then_leaves(kit):
    r = kit.run("api", BYZER_LIKE_API_KEY=API_KEY, FAKE_RAY_BLOCK="1")
    assert r.returncode == 0, r.stderr
    calls = kit.calls()
    assert [c["cmd"] for c in calls] == ["ray", "byzer-like", "ray"]
    join, serve, left = calls
    assert join["argv"] == ["start", "--address=head:6379", "--block", "--disable-usage-stats",
                            f"--dashboard-agent-listen-port={kit.port}", "--num-cpus=0"]
    assert serve["argv"] == ["serve", "--host", "0.0.0.0", "--port", "8000", "--replace"]
    assert serve["env"]["RAY_ADDRESS"] == "head:6379" and serve["env"]["BYZER_LIKE_API_KEY"] == API_KEY
    assert serve["env"]["RAY_AUTH_MODE"] == "token"
    assert serve["sigint_default"], "`byzer-like serve` must be stoppable with SIGINT"
    assert left["event"] == "term" and left["pid"] == join["pid"], "the node leaves when the API ends"


def test_api_role_settings_and_exit_status(kit):
    r = kit.run("api", BYZER_LIKE_API_KEY=API_KEY, FAKE_RAY_BLOCK="1", FAKE_RC="3", RAY_ADDRESS="10.1.1.1:6379",
                BYZER_LIKE_API_PORT="9000", BYZER_LIKE_API_HOST="::", RAY_NUM_CPUS="1",
                BYZER_LIKE_SERVE_ARGS="--max-tokens-cap 1024")
    assert r.returncode == 3, "the server's exit status is the container's"
    join, serve = _starts(kit)[0], kit.calls("byzer-like")[0]
    assert "--num-cpus=1" in join
    assert serve["argv"] == ["serve", "--host", "::", "--port", "9000", "--replace", "--max-tokens-cap", "1024"]
    assert serve["env"]["RAY_ADDRESS"] == "10.1.1.1:6379"


def test_api_role_stops_cleanly_on_sigterm(kit):
    proc = subprocess.Popen(["bash", str(ENTRYPOINT), "api"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=kit.env(BYZER_LIKE_API_KEY=API_KEY, FAKE_RAY_BLOCK="1",
                                                   FAKE_SERVE_MODE="wait"))
    try:
        deadline = time.monotonic() + 30
        while not kit.calls("byzer-like"):
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.poll() else ""
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    events = [(c["cmd"], c.get("event")) for c in kit.calls() if c.get("event")]
    assert events == [("byzer-like", "interrupted"), ("ray", "term")], "the API is stopped first, then the node"


def test_api_role_gives_up_when_the_node_does_not_start(kit):
    r = kit.run("api", BYZER_LIKE_API_KEY=API_KEY, FAKE_RAY_RC="1", RAY_DASHBOARD_AGENT_LISTEN_PORT="9")
    assert r.returncode != 0 and "did not start" in r.stderr
    assert kit.calls("byzer-like") == []


def test_api_role_under_kuberay_uses_its_ray_start_command(kit):
    cmd = "ray start --address=demo-head-svc.default.svc.cluster.local:6379 --block --num-cpus=0"
    r = kit.run("api", BYZER_LIKE_API_KEY=API_KEY, FAKE_RAY_BLOCK="1", KUBERAY_GEN_RAY_START_CMD=cmd,
                RAY_ADDRESS="demo-head-svc.default.svc.cluster.local:6379")
    assert r.returncode == 0, r.stderr
    assert _starts(kit) == [cmd.split()[1:]]
    assert kit.calls("byzer-like")[0]["env"]["RAY_ADDRESS"] == "demo-head-svc.default.svc.cluster.local:6379"


def test_health_checks(kit):
    assert kit.run("health", "head").returncode == 0
    assert kit.run("health", "worker").returncode == 0
    assert kit.run("health", "api", BYZER_LIKE_API_KEY=API_KEY, BYZER_LIKE_API_PORT=str(kit.port)).returncode == 0
    wrong = kit.run("health", "api", BYZER_LIKE_API_KEY="x" * 20, BYZER_LIKE_API_PORT=str(kit.port))
    assert wrong.returncode != 0 and "401" in wrong.stderr
    assert kit.run("health", "worker", RAY_DASHBOARD_AGENT_LISTEN_PORT="9").returncode != 0
    assert kit.run("health").returncode != 0
    assert kit.calls() == []


def test_other_commands_pass_through(kit):
    r = kit.run("byzer-like", "run", "sql/report.sql", "--set", "day=2026-11-22", FAKE_RC="1")
    assert r.returncode == 1
    (call,) = kit.calls()
    assert call["cmd"] == "byzer-like" and call["argv"] == ["run", "sql/report.sql", "--set", "day=2026-11-22"]
    assert call["env"]["RAY_AUTH_MODE"] == "token", "drivers get token mode from the token too"
    assert kit.run("bash", "-c", "exit 7").returncode == 7
    none = kit.run()
    assert none.returncode != 0 and "no role" in none.stderr


# -- docs ----------------------------------------------------------------------------------------------
def test_docs_mention_every_variable_the_kit_reads():
    docs = DOCS.read_text()
    script = ENTRYPOINT.read_text()
    used = set(re.findall(r"\$\{?([A-Z][A-Z0-9_]{2,})", script)) - {"HOME", "PATH", "SECONDS"}
    assert {"BYZER_LIKE_API_KEY", "RAY_AUTH_TOKEN", "RAY_HEAD_ADDRESS", "RAY_NUM_GPUS"} <= used
    compose_vars = set()
    for name in ("compose.yaml", "compose.gpu.yaml"):
        text = (DOCKER / name).read_text()
        compose_vars |= set(re.findall(r"\$\{([A-Z][A-Z0-9_]+)", text))
        for s in yaml.safe_load(text)["services"].values():
            compose_vars |= set(_env(s))
    missing = sorted(v for v in used | compose_vars if v not in docs)
    assert not missing, f"docs/cluster.md does not mention {missing}"
    for needed in ("ray://", "nvidia.com/gpu", "RayCluster", "num_gpus=1", "setup_gpus_per_worker(1)",
                   "byzer-like jobs", "docker/compose.gpu.yaml", "PersistentVolumeClaim"):
        assert needed in docs, needed


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
def test_entrypoint_passes_shellcheck():
    subprocess.run(["shellcheck", "-S", "warning", str(ENTRYPOINT)], check=True)
