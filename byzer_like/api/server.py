"""The HTTP API as a Ray Serve application in front of the model deployments.

One ingress replica (`HttpIngress`) runs uvicorn on `host:port` of the node it is placed on (the
caller's node) and reaches the models through Serve handles. Serve health-checks it and starts it
again if its process dies; the model applications themselves have no HTTP route of their own.
"""
from __future__ import annotations

import os
import secrets
import socket
import sys
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any, Mapping

from ..cluster import is_loopback
from ..errors import ConfigError
from ..serving import manager
from .settings import ApiSettings, key_digest

APP_NAME = "byzer_like_api"
INGRESS_NAME = "HttpIngress"
DEFAULT_PORT = 8000
ENV_KEY = "BYZER_LIKE_API_KEY"


# the one loopback check (bare hosts, host:port, [::1], URLs), under the name this module had for it
is_loopback_host = is_loopback


def resolve_key(host: str, api_key: str | None, env: Mapping[str, str] = os.environ) -> tuple[str | None, bool]:
    """The server's key and whether it was generated: `api_key`, else BYZER_LIKE_API_KEY, else a new
    one when bound to anything but loopback; a loopback server without either needs none."""
    key = api_key or env.get(ENV_KEY) or None
    if key is None and not is_loopback(host):
        return secrets.token_urlsafe(32), True
    return key, False


@dataclass
class ApiServer:
    """A running HTTP API. `api_key` is None when the server asks for none (loopback without a key)."""

    url: str
    host: str
    port: int
    node_ip: str
    api_key: str | None = None
    key_generated: bool = False

    @property
    def base_url(self) -> str:
        """What OpenAI clients take as `base_url`."""
        return f"{self.url}/v1"

    def stop(self) -> bool:
        """Stop this HTTP API (see the module's `stop`)."""
        return stop()


class HttpIngress:
    """The Serve deployment: binds the socket first (a port in use fails the deployment with a clear
    message), then serves the application on a thread with its own event loop."""

    def __init__(self, host: str, port: int, settings: dict):
        import uvicorn

        from .app import build_app
        from ..runtime.aio import AsyncRuntime

        config = ApiSettings(**settings)
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as e:
            sock.close()
            raise ConfigError(f"cannot listen on {host}:{port}: {e.strerror}; choose another port") from None
        self.host, self.port = host, sock.getsockname()[1]
        app = build_app(config, AsyncRuntime(config.request_timeout_s, workspace=config.workspace))
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off",
                                                    timeout_keep_alive=5, timeout_graceful_shutdown=3))
        # Server.run picks uvicorn's event loop (uvloop when installed); it installs signal handlers
        # only on the main thread, so it runs fine on this one
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]},
                                       name="byzer-like-http", daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the HTTP server on {host}:{self.port} did not start")
            time.sleep(0.02)

    def address(self) -> dict:
        """Where this replica listens: host, port, the node's IP and the process id."""
        import ray

        return {"host": self.host, "port": self.port, "node_ip": ray.util.get_node_ip_address(), "pid": os.getpid()}

    def check_health(self) -> None:
        """Serve's health check: the server thread must still be running."""
        if not self.thread.is_alive():
            raise RuntimeError("the HTTP server thread has stopped")

    def __del__(self) -> None:
        server = getattr(self, "server", None)
        if server is not None:
            server.should_exit = True
            self.thread.join(timeout=5)


def _url(host: str, port: int, node_ip: str) -> str:
    shown = node_ip if host in ("0.0.0.0", "::") else host
    return f"http://[{shown}]:{port}" if ":" in shown else f"http://{shown}:{port}"


def start(*, host: str = "127.0.0.1", port: int = DEFAULT_PORT, api_key: str | None = None,
          max_body_bytes: int = ApiSettings.max_body_bytes, max_tokens_cap: int = ApiSettings.max_tokens_cap,
          request_timeout_s: float = ApiSettings.request_timeout_s, replace: bool = False,
          timeout_s: float = 60, workspace: str | None = None) -> ApiServer:
    """Start the HTTP API on this node (Ray must be connected). A key comes from `api_key`, else
    BYZER_LIKE_API_KEY; bound to anything but loopback without either, a key is generated. `workspace`:
    the folder whose registry LoRA adapters (`model="m:qa_model"`) are looked up in (None: adapters are
    refused)."""
    import ray
    from ray import serve

    if not 0 <= int(port) <= 65535:
        raise ConfigError(f"port must be between 0 and 65535, not {port}")
    manager.ensure_serve()
    running = status()
    if running is not None:
        if not replace:
            stop_serving = "`byzer-like serve --stop` or ByzerLLM().stop_serving()"
            raise ConfigError(f"the HTTP API is already running at {running.url}; stop it first ({stop_serving}) "
                              "or pass replace=True").suggesting(stop_serving=stop_serving, replace="replace=True")
        stop()
    key, generated = resolve_key(host, api_key)
    settings = ApiSettings(api_key_sha256=key_digest(key) if key else None, max_body_bytes=int(max_body_bytes),
                           max_tokens_cap=int(max_tokens_cap), request_timeout_s=float(request_timeout_s),
                           workspace=workspace)
    node_ip = ray.util.get_node_ip_address()
    deployment = serve.deployment(
        HttpIngress, name=INGRESS_NAME, num_replicas=1,
        # on this node (so that 127.0.0.1 is this machine), taking no CPU from the models
        ray_actor_options={"num_cpus": 0, "resources": {f"node:{node_ip}": 0.001}},
        health_check_period_s=5, health_check_timeout_s=10, graceful_shutdown_timeout_s=5,
        max_constructor_retry_count=1,
    )
    try:
        serve.run_many([serve.RunTarget(target=deployment.bind(host, int(port), asdict(settings)), name=APP_NAME,
                                        route_prefix=None)],
                       wait_for_ingress_deployment_creation=False, wait_for_applications_running=False)
        manager.wait_running(APP_NAME, INGRESS_NAME, timeout_s, what="starting the HTTP API")
        address = serve.get_app_handle(APP_NAME).address.remote().result(timeout_s=timeout_s)
    except BaseException:
        _delete_quietly()
        raise
    return ApiServer(url=_url(host, address["port"], address["node_ip"]), host=host, port=address["port"],
                     node_ip=address["node_ip"], api_key=key, key_generated=generated)


def serve(rt: Any, host: str = "127.0.0.1", port: int = DEFAULT_PORT, *, api_key: str | None = None,
          max_tokens_cap: int = ApiSettings.max_tokens_cap, max_body_bytes: int = ApiSettings.max_body_bytes,
          replace: bool = False) -> ApiServer:
    """Start the OpenAI-compatible HTTP API and chat page for every deployment of runtime `rt`'s cluster, on
    this node (`start`, with the runtime's request timeout and workspace). A generated key is printed once to
    stderr. Raises ConfigError (a port out of range, an API already running without `replace`)."""
    rt.connect()
    srv = start(host=host, port=port, api_key=api_key, max_tokens_cap=max_tokens_cap, max_body_bytes=max_body_bytes,
                request_timeout_s=rt.setup_config.request_timeout_s, replace=replace, workspace=str(rt.workspace.root))
    if srv.key_generated:
        print(f"byzer-like API key (shown once): {srv.api_key}", file=sys.stderr)
    return srv


def serving(rt: Any) -> ApiServer | None:
    """The HTTP API running on runtime `rt`'s cluster, or None (connects to the cluster)."""
    rt.connect()
    return status()


def stop_serving(rt: Any) -> bool:
    """Stop the HTTP API on runtime `rt`'s cluster; False if none was running."""
    rt.connect()
    return stop()


def status() -> ApiServer | None:
    """The running HTTP API (its key is not known here), or None."""
    from ray import serve

    if not manager.serve_running():
        return None
    app = serve.status().applications.get(APP_NAME)
    if app is None or manager.app_status(app) not in manager.LIVE_STATES:
        return None
    try:
        address = serve.get_app_handle(APP_NAME).address.remote().result(timeout_s=10)
    except Exception:  # noqa: BLE001 - starting or restarting: not serving yet
        return None
    return ApiServer(url=_url(address["host"], address["port"], address["node_ip"]), host=address["host"],
                     port=address["port"], node_ip=address["node_ip"])


def stop() -> bool:
    """Stop the HTTP API; False if none was running."""
    from ray import serve

    if not manager.serve_running() or APP_NAME not in serve.status().applications:
        return False
    serve.delete(APP_NAME, _blocking=True)
    return True


def _delete_quietly() -> None:
    try:
        stop()
    except Exception:  # noqa: BLE001 - cleanup after a failed start
        pass


def wait(server: ApiServer, *, poll_s: float = 1.0) -> None:
    """Block until the HTTP API is removed (from another process, or Ctrl-C here). A replica that
    Serve is restarting does not end the wait: only the application's removal does."""
    from ray import serve

    while manager.serve_running() and APP_NAME in serve.status().applications:
        time.sleep(poll_s)


__all__ = ["APP_NAME", "ApiServer", "DEFAULT_PORT", "ENV_KEY", "HttpIngress", "serve", "serving", "start", "status", "stop",
           "stop_serving", "wait"]
