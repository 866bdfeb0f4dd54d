"""Connecting to Ray: an embedded local cluster, a persistent local head, or a real cluster.

- `address=` (or `RAY_ADDRESS`) joins an existing cluster (`ray://host:10001` or `host:6379`).
- Otherwise, if `byzer-like cluster start` left a persistent head running for this workspace,
  drivers join it, so deployments and detached jobs outlive one process.
- Otherwise an embedded cluster starts inside this process, bound to 127.0.0.1, and ends with it.

The persistent head is `ray start --head --block` in its own process group, loopback only, with its
temp dir inside the workspace; `stop` ends exactly that process group (never a machine-wide kill).

A workspace finds its head only through its own `cluster/head.json`, never through Ray's machine-wide
defaults (`address="auto"`, the fixed port 6379, /tmp/ray): every port is a free one picked at start,
and the recorded head counts only if its temp dir is this workspace's (a workspace copied with its
head.json does not join, or stop, the original's head). One process joins one cluster: a second
workspace in a process already joined to another workspace's head is refused when it has a head of
its own, and told where its work runs when it has none.
"""
from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from . import logs
from .errors import ClusterError
from .workspace import Workspace

LOOPBACK = "127.0.0.1"
NAMESPACE = "byzer_like"
HEAD_FILE = ("cluster", "head.json")
# With this set, Ray takes 127.0.0.1 as this node's address instead of the external interface
# (Ray 2.60 reads it once, when ray is imported, so it is set as soon as byzer_like is imported).
# A driver joining a remote cluster without ray:// must run with RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=1.
_LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
if not os.environ.get("RAY_ADDRESS"):
    for _k, _v in _LOOPBACK_ENV.items():
        os.environ.setdefault(_k, _v)

# Unix socket paths are limited to ~107 bytes; Ray adds ~70 to its temp dir.
_MAX_TEMP_DIR = 36
CONNECT_CHECK_S = 5.0  # how long an address may take to accept a connection before it counts as unreachable


@dataclass
class HeadInfo:
    """The persistent head of a workspace, as `start_head` left it in the workspace's head.json."""
    pid: int
    address: str
    dashboard_url: str
    client_address: str
    temp_dir: str
    num_cpus: int
    started_at: float
    workspace: str = ""  # the workspace root that started it (heads recorded before this field: "")

    def alive(self) -> bool:
        """Whether its process exists and its GCS port answers."""
        try:
            os.kill(self.pid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        host, port = self.address.rsplit(":", 1)
        try:
            socket.create_connection((host, int(port)), timeout=1).close()
        except OSError:
            return False
        return True


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def _loopback_only() -> None:
    """Take 127.0.0.1 as this node's address, even if ray was imported before byzer_like."""
    from ray._private import ray_constants

    os.environ.update(_LOOPBACK_ENV)
    ray_constants.ENABLE_RAY_CLUSTER = False  # what the environment variable sets at import time


def _local_token_auth() -> None:
    """Local clusters run with Ray's token auth (Ray's default for them) unless RAY_AUTH_MODE says otherwise.

    Ray turns it on by itself only for a cluster it finds without an address; the persistent head is
    joined by address, and Ray caches the mode when imported, so it is set (and refreshed) here."""
    if "RAY_AUTH_MODE" in os.environ:
        return
    from ray._private.authentication.authentication_token_setup import _enable_token_auth

    _enable_token_auth()


def _ensure_token() -> None:
    """Save a new auth token (~/.ray/auth_token) unless one is available. `ray.init` makes one for a new
    local cluster, but `ray start --head` in token mode refuses to start without one (a fresh machine)."""
    from ray._private.authentication.authentication_token_setup import generate_and_save_token
    from ray._raylet import AuthenticationTokenLoader

    loader = AuthenticationTokenLoader.instance()
    if not loader.has_token(ignore_auth_mode=True):
        generate_and_save_token()
        loader.reset_cache()


def as_local() -> None:
    """Talk to a cluster on this machine as to our own: loopback addresses and the local auth token."""
    _loopback_only()
    _local_token_auth()


def head_info(ws: Workspace) -> HeadInfo | None:
    """The workspace's persistent head as recorded (running or not), or None: also None when the record
    is another workspace's (its temp dir is not this workspace's `cluster/ray`, e.g. a copied workspace)."""
    f = ws.path(*HEAD_FILE)
    if not f.exists():
        return None
    try:
        info = HeadInfo(**json.loads(f.read_text()))
    except (ValueError, TypeError):
        return None
    return info if _owns(ws, info) else None


def _owns(ws: Workspace, info: HeadInfo) -> bool:
    """Whether the head recorded in `info` is `ws`'s own: its temp dir (a short link in /tmp or the folder
    itself) leads to this workspace's `cluster/ray`."""
    own = os.path.realpath(ws.path("cluster", "ray"))
    return os.path.realpath(info.temp_dir) == own and (not info.workspace or info.workspace == str(ws.root))


def _short_temp_dir(ws: Workspace) -> str:
    """The head's temp dir lives in the workspace; a short symlink to it keeps socket paths legal."""
    real = ws.dir("cluster", "ray")
    if len(str(real)) <= _MAX_TEMP_DIR:
        return str(real)
    link = Path("/tmp") / f"byzer-like-{hashlib.sha256(str(real).encode()).hexdigest()[:10]}"
    if link.is_symlink() and os.readlink(link) != str(real):
        link.unlink()
    if not link.exists():
        link.symlink_to(real, target_is_directory=True)
    return str(link)


def start_head(ws: Workspace, *, num_cpus: int | None = None, num_gpus: int | None = None,
               port: int | None = None, dashboard_port: int | None = None, timeout_s: float = 90) -> HeadInfo:
    """Start the persistent local head for this workspace (or return the running one)."""
    info = head_info(ws)
    if info and info.alive():
        return info
    ray_bin = Path(sys.executable).with_name("ray")
    if not ray_bin.exists():
        raise ClusterError(f"the `ray` command is not next to {sys.executable}; reinstall byzer-like")
    num_cpus = num_cpus or max(os.cpu_count() or 1, 4)
    gcs_port, dash_port = port or _free_port(), dashboard_port or _free_port()
    client_port = _free_port()
    temp_dir = _short_temp_dir(ws)
    cmd = [
        str(ray_bin), "start", "--head", "--block", "--disable-usage-stats",
        "--node-ip-address", LOOPBACK, "--port", str(gcs_port),
        "--dashboard-host", LOOPBACK, "--dashboard-port", str(dash_port),
        "--ray-client-server-port", str(client_port),
        "--dashboard-agent-listen-port", str(_free_port()), "--dashboard-agent-grpc-port", str(_free_port()),
        "--runtime-env-agent-port", str(_free_port()), "--metrics-export-port", str(_free_port()),
        "--temp-dir", temp_dir, "--num-cpus", str(num_cpus),
    ]
    if num_gpus is not None:
        cmd += ["--num-gpus", str(num_gpus)]
    log = ws.dir("cluster") / "head.log"
    env = {**os.environ, **_LOOPBACK_ENV, "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "token")}
    if env["RAY_AUTH_MODE"].lower() == "token":
        _ensure_token()
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, start_new_session=True)
    info = HeadInfo(pid=proc.pid, address=f"{LOOPBACK}:{gcs_port}", dashboard_url=f"http://{LOOPBACK}:{dash_port}",
                    client_address=f"ray://{LOOPBACK}:{client_port}", temp_dir=temp_dir, num_cpus=num_cpus,
                    started_at=time.time(), workspace=str(ws.root))
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ClusterError(f"ray head exited with code {proc.returncode}; see {log}")
        if _head_ready(info):
            ws.path(*HEAD_FILE).write_text(json.dumps(asdict(info), indent=2))
            return info
        time.sleep(0.5)
    _kill_group(proc.pid, grace_s=5)
    raise ClusterError(f"ray head did not become ready within {timeout_s:.0f} s; see {log}")


def _head_ready(info: HeadInfo) -> bool:
    """GCS and dashboard answer and the head node has registered (its raylet is up)."""
    import urllib.request

    try:
        with urllib.request.urlopen(f"{info.dashboard_url}/api/gcs_healthz", timeout=2) as r:
            if r.status != 200:
                return False
    except OSError:
        return False
    sessions = Path(info.temp_dir) / "session_latest" / "sockets" / "raylet"
    return sessions.exists()


def _kill_group(pgid: int, grace_s: float) -> None:
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def stop_head(ws: Workspace, *, grace_s: float = 10) -> bool:
    """Stop this workspace's persistent head; True if one was running."""
    info = head_info(ws)
    if info is None:
        return False
    running = info.alive()
    _kill_group(info.pid, grace_s)
    ws.path(*HEAD_FILE).unlink(missing_ok=True)
    return running


def connect(address: str | None = None, ws: Workspace | None = None, *, num_cpus: int | None = None) -> dict[str, Any]:
    """Connect this process to Ray (once); return where it is connected."""
    import ray

    ws = ws or Workspace.from_env()
    if ray.is_initialized():
        if not (address or os.environ.get("RAY_ADDRESS")):
            _check_joined(ws)
        return {"address": ray.get_runtime_context().gcs_address, "mode": "connected"}
    address = address or os.environ.get("RAY_ADDRESS")
    mode = "address"
    if not address:
        info = head_info(ws)
        if info and info.alive():
            address, mode = info.address, "persistent"
    common: dict[str, Any] = {"namespace": NAMESPACE, **logs.ray_init_options()}
    sigterm = logs.sigterm_handler()
    if address:
        check_answers(address)  # an address nothing listens on: one line now, not minutes of Ray retries
    try:
        if address:
            if mode == "persistent" or is_loopback(address):  # a cluster on this machine: as ours
                as_local()
            elif os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH"):
                _local_token_auth()  # a token given for a remote cluster is sent only in token mode
            ray.init(address=address, **common)
        else:
            mode = "embedded"
            as_local()
            # address="local": always a new cluster of our own, never one another program started here
            ray.init(address="local", num_cpus=num_cpus or max(os.cpu_count() or 1, 4), include_dashboard=False,
                     _node_ip_address=LOOPBACK, **common)
    except Exception as e:  # ConnectionError, AuthenticationError, RuntimeError from Ray
        where = address or "an embedded local cluster"
        raise ClusterError(f"cannot connect to Ray at {where}: {e}".splitlines()[0]) from e
    logs.after_ray_init(sigterm)
    gcs = ray.get_runtime_context().gcs_address
    _joined.clear()
    _joined.update(mode=mode, address=gcs, workspace=str(ws.root), told=set())
    return {"address": gcs, "mode": mode}


# what this process joined in `connect`: mode, address, the workspace it was joined for, workspaces told
_joined: dict[str, Any] = {}


def _check_joined(ws: Workspace) -> None:
    """This process is joined to a cluster already; `ws` asks for the cluster its workspace would join.
    ClusterError when `ws` has a running head other than the one joined (a process joins one cluster);
    a line on stderr, once, when `ws` has none and the joined one is another workspace's head."""
    if not _joined or _joined["workspace"] == str(ws.root):
        return
    info = head_info(ws)
    own = info.address if info and info.alive() else None
    where = (f"workspace {_joined['workspace']}'s Ray cluster" if _joined["mode"] == "persistent"
             else "an embedded Ray cluster" if _joined["mode"] == "embedded" else "the Ray cluster")
    if own and own != _joined["address"]:
        raise ClusterError(
            f"this process is joined to {where} at {_joined['address']}, and one process joins one cluster: "
            f"workspace {ws.root} has its own, at {own}; use that workspace from another process (a new "
            "notebook kernel, another script), or stop its cluster (`byzer-like cluster stop`)")
    if not own and _joined["mode"] == "persistent" and str(ws.root) not in _joined["told"]:
        _joined["told"].add(str(ws.root))
        print(f"[byzer-like] workspace {ws.root} has no Ray cluster of its own; this process is joined to {where} "
              f"at {_joined['address']}, so what it deploys runs there", file=sys.stderr, flush=True)


def check_answers(address: str, timeout_s: float = CONNECT_CHECK_S) -> None:
    """ClusterError unless something accepts a TCP connection at `address` (`host:port`,
    `ray://host:port`) within `timeout_s` seconds; `auto` and addresses without a port are left to Ray."""
    if address.strip().lower() in ("auto", "local"):
        return
    netloc = address.strip().split("://", 1)[-1].split("/", 1)[0].rpartition("@")[2]
    host, _, port = netloc.rpartition(":")
    if not host or not port.isdigit():
        return
    host = host.strip("[]")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as e:
        why = f"no answer within {timeout_s:g} s" if isinstance(e, TimeoutError) else (e.strerror or type(e).__name__).lower()
        raise ClusterError(f"no Ray cluster answers at {address} ({why}): check the address "
                           "(--address / RAY_ADDRESS), or start one with `byzer-like cluster start`") from None


def disconnect() -> None:
    """Disconnect this process from Ray now, if it is connected (an embedded cluster ends with it).

    Ray's own exit hook does the same but first sleeps half a second for log lines still on their way
    to the driver; with `log_to_driver` off (unless verbose, see `logs`) none are, so a command that
    is done calls this instead."""
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized() and not logs.is_verbose():
        ray.shutdown()
        _joined.clear()


def is_loopback(address: str | None) -> bool:
    """Whether `address` is on this machine's loopback: `localhost`, 127.0.0.0/8 or ::1, given as a bare
    host (`::1`, `[::1]`), as host:port (`127.0.0.1:6379`, `[::1]:8000`) or in a URL (`ray://localhost:10001`,
    `http://[::1]:8000/v1`). `0.0.0.0` and `::` (every interface) are not loopback."""
    host = _host(address or "")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _host(address: str) -> str:
    """The host of a bare host, host:port or URL, without IPv6 brackets; a bare IPv6 address as it is."""
    netloc = address.strip().split("://", 1)[-1].split("/", 1)[0].rpartition("@")[2]
    if netloc.startswith("["):
        return netloc[1:].partition("]")[0]
    return netloc.partition(":")[0] if netloc.count(":") == 1 else netloc


def reachable(address: str | None, ws: Workspace) -> bool:
    """Whether a cluster is connected or could be joined without starting an embedded one."""
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        return True
    if address or os.environ.get("RAY_ADDRESS"):
        return True
    info = head_info(ws)
    return bool(info and info.alive())


def room(nodes: Any, need: dict[str, float]) -> int:
    """How many workers each needing `need` (Ray resources: {"CPU": 1, "GPU": 1}) fit on `nodes` (each
    node's total resources, as `ray.nodes()` gives them under "Resources") when nothing else runs, each worker
    on one node. A need of 0 for a resource does not limit; needing nothing fits without bound (a large number)."""
    asked = {k: v for k, v in need.items() if v > 0}
    if not asked:
        return 1 << 30
    return sum(min(int(res.get(k, 0) / v + 1e-9) for k, v in asked.items()) for res in nodes)


def node_resources() -> list[dict[str, float]]:
    """The total resources of each live node of the cluster this process is connected to (`ray.nodes()`)."""
    import ray

    return [dict(n.get("Resources", {})) for n in ray.nodes() if n.get("Alive")]


def node_resources_at(dashboard_url: str, timeout_s: float = 10.0) -> list[dict[str, float]] | None:
    """The total resources of each live node of the cluster whose dashboard (Jobs API) is at `dashboard_url`,
    read through Ray's state API without joining the cluster; None when it cannot be read or lists no node."""
    try:
        from ray.util.state import list_nodes

        if is_loopback(dashboard_url):
            as_local()
        nodes = list_nodes(address=dashboard_url, timeout=int(timeout_s), raise_on_missing_output=False)
    except Exception:  # noqa: BLE001 - an older dashboard, auth, a network hiccup: the check is skipped
        return None
    alive = [dict(getattr(n, "resources_total", None) or {}) for n in nodes if str(getattr(n, "state", "")) == "ALIVE"]
    return alive or None  # a head that has just started may list no node yet


def status(ws: Workspace) -> dict[str, Any]:
    """The workspace's persistent head: whether it runs, its addresses, `num_cpus` (the CPUs Ray schedules
    with: what `start_head` gave `ray start`), `machine_cores` (this machine's, `os.cpu_count()`) and, when
    the two differ, a `cpus_note` saying why."""
    info = head_info(ws)
    if info is None:
        return {"running": False, "workspace": str(ws.root)}
    cores = os.cpu_count() or 1
    out = {"running": info.alive(), **asdict(info), "workspace": str(ws.root), "machine_cores": cores}
    if info.num_cpus != cores:
        out["cpus_note"] = (
            f"Ray schedules {info.num_cpus} CPUs on this machine's {cores} cores: "
            + ("at least 4 unless `cluster start --num-cpus N` says otherwise, so that the quick start's replicas "
               "and a job fit; they share the cores" if info.num_cpus > cores else "as `cluster start --num-cpus` asked"))
    return out
