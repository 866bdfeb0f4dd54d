"""Deploy, find, call and remove model deployments on Ray Serve.

One Serve application per `udf_name`, holding one deployment (`ByzerModel`) with `num_workers`
replicas. Serve is the source of truth, so every driver connected to the cluster sees the same
deployments. Call errors are mapped to byzer-like's typed errors; a chunk that fails because its
replica died is retried, one that fails for its own reason is not.
"""
from __future__ import annotations

import asyncio
import itertools
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, AsyncIterator, Callable, Iterator, Sequence

from ..config import SetupConfig
from ..errors import (
    BackPressureError, ByzerError, DeployError, DuplicateDeploymentError, InferenceError, ModelNotDeployedError, RequestTimeoutError,
)

DEPLOYMENT_NAME = "ByzerModel"
LIVE_STATES = {"NOT_STARTED", "DEPLOYING", "RUNNING", "UNHEALTHY"}


# Serve's controller, as `ray.serve._private.constants` names it (tests/test_noise.py checks the names)
SERVE_CONTROLLER = {"name": "SERVE_CONTROLLER_ACTOR", "namespace": "serve"}


def serve_running() -> bool:
    """Whether Serve runs on the connected cluster. Asks the GCS for the controller by name, so that
    on a cluster without Serve nothing imports `ray.serve` (a second of a short command's time)."""
    import ray

    return SERVE_CONTROLLER in ray.util.list_named_actors(all_namespaces=True)


def ensure_serve() -> None:
    """Start Serve (without its HTTP proxy) unless it is running."""
    from ray import serve

    if not serve_running():
        # Model applications have no HTTP route; the HTTP API is its own ingress application.
        serve.start(proxy_location="Disabled", http_options={"host": "127.0.0.1"})


def app_status(app: Any) -> str:
    """A Serve application's status as a plain string ("RUNNING", ...)."""
    return str(getattr(app.status, "value", app.status))


def list_deployments() -> dict[str, str]:
    """Deployed models on the cluster: udf_name -> application status."""
    if not serve_running():
        return {}
    from ray import serve

    apps = serve.status().applications
    return {name: app_status(app) for name, app in apps.items()
            if DEPLOYMENT_NAME in app.deployments and app_status(app) in LIVE_STATES}


def exists(udf_name: str) -> bool:
    """Whether model `udf_name` is deployed."""
    return udf_name in list_deployments()


def deploy(spec: dict[str, Any], setup: SetupConfig, *, timeout_s: float = 600,
           on_wait: Callable[[str], None] | None = None) -> None:
    """Create the application `spec["udf_name"]`; wait until every replica has loaded the model.
    On failure nothing is left running. `on_wait(message)` hears every WAIT_REPORT_S seconds what the
    deployment is waiting for. Raises DuplicateDeploymentError, DeployError (replicas that can never be
    placed are refused before anything starts)."""
    from ray import serve

    from .replica import ModelReplica

    udf_name = spec["udf_name"]
    ensure_serve()
    if exists(udf_name):
        raise DuplicateDeploymentError(udf_name)
    check_fits(setup)
    deployment = serve.deployment(
        ModelReplica,
        name=DEPLOYMENT_NAME,
        num_replicas=setup.num_workers,
        ray_actor_options={"num_cpus": setup.cpus_per_worker, "num_gpus": setup.gpus_per_worker,
                           # the plugin's Python environment (vLLM's own venv), if it asks for one
                           **({"runtime_env": spec["runtime_env"]} if spec.get("runtime_env") else {})},
        max_ongoing_requests=setup.max_ongoing_requests,
        max_queued_requests=setup.max_queued_requests,
        health_check_period_s=setup.health_check_period_s,
        health_check_timeout_s=setup.health_check_timeout_s,
        graceful_shutdown_timeout_s=5,
        max_constructor_retry_count=1,
    )
    try:
        serve.run_many(
            [serve.RunTarget(target=deployment.bind(spec), name=udf_name, route_prefix=None)],
            wait_for_ingress_deployment_creation=False, wait_for_applications_running=False,
        )
        _wait_running(udf_name, setup, timeout_s, on_wait)
    except BaseException:
        _delete_quietly(udf_name)
        raise


def _wait_running(udf_name: str, setup: SetupConfig, timeout_s: float,
                  on_wait: Callable[[str], None] | None) -> None:
    asked = f"{setup.num_workers} replica(s) of {setup.cpus_per_worker:g} CPU / {setup.gpus_per_worker:g} GPU each"
    wait_running(udf_name, DEPLOYMENT_NAME, timeout_s, what=f"deploying {udf_name!r}",
                 on_timeout=f"{asked} may not fit the cluster now (free: {_available_resources()})",
                 on_wait=on_wait and (lambda waited: on_wait(
                     f"deploying {udf_name!r}: {_replica_progress(udf_name)} after {waited:.0f} s "
                     f"({asked}; free now: {_available_resources()})")))


WAIT_REPORT_S = 10.0  # a deploy that waits longer than this says what it waits for, this often


def check_fits(setup: SetupConfig) -> None:
    """DeployError unless `num_workers` replicas of `cpus_per_worker` / `gpus_per_worker` could be placed
    on the cluster's live nodes when nothing else runs (each replica on one node). Replicas that only
    wait for resources in use now are not refused: the deploy waits and says so."""
    from .. import cluster

    need = {"CPU": setup.cpus_per_worker, "GPU": setup.gpus_per_worker}
    nodes = cluster.node_resources()
    fits = cluster.room(nodes, need)
    if fits >= setup.num_workers:
        return
    total = {k: sum(res.get(k, 0) for res in nodes) for k in need}
    largest = max((res.get("CPU", 0) for res in nodes), default=0)
    raise DeployError(
        f"{setup.num_workers} replica(s) of {setup.cpus_per_worker:g} CPU / {setup.gpus_per_worker:g} GPU each "
        f"cannot be placed: the cluster has {total['CPU']:g} CPU(s) and {total['GPU']:g} GPU(s) in total on "
        f"{len(nodes)} node(s) (largest node: {largest:g} CPUs), room for {fits}; lower num_workers / "
        "cpus_per_worker / gpus_per_worker, or add nodes")


def _replica_progress(app_name: str) -> str:
    """`1 of 2 replicas running`, from Serve's status (best effort)."""
    from ray import serve

    try:
        dep = serve.status().applications[app_name].deployments[DEPLOYMENT_NAME]
        states = {str(getattr(k, "value", k)): v for k, v in (dep.replica_states or {}).items()}
        return f"{states.get('RUNNING', 0)} of {sum(states.values())} replicas running"
    except (KeyError, AttributeError):
        return "starting"


def wait_running(app_name: str, deployment_name: str, timeout_s: float, *, what: str, on_timeout: str = "",
                 on_wait: Callable[[float], None] | None = None) -> None:
    """Wait until Serve application `app_name` is RUNNING; a DeployError with its constructor's
    error (the exception line, not the traceback) if it failed, or when `timeout_s` passed.
    `on_wait(seconds waited)` is called every WAIT_REPORT_S seconds while it waits."""
    from ray import serve

    start = time.monotonic()
    deadline = start + timeout_s
    reported = start
    while True:
        if on_wait and time.monotonic() - reported >= WAIT_REPORT_S:
            reported = time.monotonic()
            on_wait(reported - start)
        app = serve.status().applications.get(app_name)
        status = app_status(app) if app else "NOT_STARTED"
        if status == "RUNNING":
            return
        if status in ("DEPLOY_FAILED", "UNHEALTHY"):
            message = app.message or ""
            dep = app.deployments.get(deployment_name)
            if dep is not None and dep.message:
                message = dep.message
            raise DeployError(f"{what} failed: {first_error_line(message)}")
        if time.monotonic() > deadline:
            raise DeployError(f"{what} did not finish within {timeout_s:.0f} s" + (f": {on_timeout}" if on_timeout else ""))
        time.sleep(0.25)


def first_error_line(message: str) -> str:
    """Serve's failure message holds a traceback; keep the exception line a user can act on."""
    lines = [ln.strip() for ln in message.splitlines() if ln.strip()]
    for ln in reversed(lines):
        if "Error" in ln.split(":", 1)[0] or "Exception" in ln.split(":", 1)[0]:
            return ln.replace("byzer_like.errors.", "")
    return lines[-1] if lines else "unknown error"


def _available_resources() -> str:
    import ray

    res = ray.available_resources()
    return ", ".join(f"{k}={v:g}" for k, v in sorted(res.items()) if k in ("CPU", "GPU"))


def _delete_quietly(udf_name: str) -> None:
    from ray import serve

    try:
        serve.delete(udf_name, _blocking=True)
    except Exception:  # noqa: BLE001 - best effort cleanup after a failed deploy
        pass


def undeploy(udf_name: str) -> None:
    """Remove model `udf_name`; ModelNotDeployedError if it is not deployed."""
    from ray import serve

    deployed = list_deployments()
    if udf_name not in deployed:
        raise ModelNotDeployedError(udf_name, deployed)
    serve.delete(udf_name, _blocking=True)


def get_handle(udf_name: str) -> Any:
    """The Serve handle of model `udf_name`; ModelNotDeployedError if it is not deployed."""
    deployed = list_deployments()
    if udf_name not in deployed:
        raise ModelNotDeployedError(udf_name, deployed)
    return app_handle(udf_name)


def app_handle(udf_name: str) -> Any:
    """Serve's handle of application `udf_name`, sending its calls by value: requests and answers go
    to and from the replica directly over gRPC (`_by_reference=False`, Ray 2.60) instead of through the
    object store, which cut a one-token call by ~1 ms (bench/inference.py). Nothing here turns a
    response into an ObjectRef, the one thing a by-value response cannot do."""
    from ray import serve

    return serve.get_app_handle(udf_name).options(_by_reference=False)


# -- calling ---------------------------------------------------------------------------------------
def _retriable(e: BaseException) -> bool:
    import ray.exceptions as rx
    from ray.serve.exceptions import DeploymentUnavailableError, ReplicaUnavailableError

    return isinstance(e, (rx.ActorDiedError, rx.ActorUnavailableError, rx.RayActorError, rx.WorkerCrashedError,
                          rx.NodeDiedError, rx.ObjectLostError, ReplicaUnavailableError, DeploymentUnavailableError))


def translate(e: BaseException, udf_name: str, timeout_s: float | None = None) -> BaseException:
    """Map a Ray / Serve exception from a model call to a typed byzer-like error."""
    import ray.exceptions as rx
    from ray.serve.exceptions import BackPressureError as ServeBackPressure

    if isinstance(e, ByzerError):
        return e
    if isinstance(e, ServeBackPressure):
        return BackPressureError(
            f"model {udf_name!r} has too many queued requests; retry later or deploy more workers "
            f"(setup num_workers / max_queued_requests)"
        )
    if isinstance(e, TimeoutError):
        return RequestTimeoutError(f"model {udf_name!r} did not answer within {timeout_s or 0:.0f} s")
    if isinstance(e, rx.RayTaskError):
        cause = e.cause if getattr(e, "cause", None) is not None else e
        if isinstance(cause, ByzerError):
            return cause
        return _call_failed(udf_name, cause, last_line=True)  # Ray's text of a task error ends with the exception
    return _call_failed(udf_name, e, last_line=False)


def _call_failed(udf_name: str, e: BaseException, *, last_line: bool) -> InferenceError:
    """A model call that failed for no reason of the request's own, as one line: the model, the exception's
    type and one line of its text (Ray's texts hold tracebacks and actor details), and what to do."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    text = (lines[-1] if last_line else lines[0]).rstrip(".") if lines else ""
    return InferenceError(f"model {udf_name!r} failed: {type(e).__name__}: {text}; {CALL_FAILED_HINT}")


# what to do about a model call that failed for no reason of its own (a replica died, a plugin raised)
CALL_FAILED_HINT = ("retry it (Serve restarts a replica that died); if it fails again, the replica's log says why "
                    "(Ray's dashboard, or BYZER_LIKE_LOG=debug)")


def _in_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
        return True
    except RuntimeError:
        return False


def _result(response: Any, timeout_s: float) -> Any:
    """`response.result()`, also from a thread running an event loop (a Jupyter kernel), where Serve
    refuses blocking calls: there it waits on a helper thread."""
    if not _in_event_loop():
        return response.result(timeout_s=timeout_s)
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(response.result, timeout_s=timeout_s).result()


def _retry_after(e: BaseException, attempt: int, retries: int) -> float | None:
    """The retry rule of `call` and `acall`: seconds to wait before sending attempt `attempt` (from 0)
    again after it failed with `e`, or None to give up. Only a dead replica is worth another try (not
    a request that is bad in itself), at most `retries` times, waiting longer each time."""
    if _retriable(e) and attempt < retries:
        return 0.5 * (attempt + 1)
    return None


def call(handle: Any, method: str, *args: Any, udf_name: str, timeout_s: float, retries: int = 2) -> Any:
    """One call, retried when the replica died (not when the request itself was bad)."""
    for attempt in itertools.count():
        try:
            return _result(getattr(handle, method).remote(*args), timeout_s)
        except Exception as e:  # noqa: BLE001 - translated below
            wait_s = _retry_after(e, attempt, retries)
            if wait_s is None:
                raise translate(e, udf_name, timeout_s) from e
        time.sleep(wait_s)
    raise AssertionError("unreachable")


def routed(handle: Any, model_id: str | None) -> Any:
    """`handle`, or for a request routed by a multiplexed model id (a LoRA adapter's `name@vN`) the handle
    whose calls Serve sends to a replica that holds that adapter already, when one does."""
    return handle.options(multiplexed_model_id=model_id) if model_id else handle


def call_each_replica(handle: Any, method: str, *, udf_name: str, replicas: int, timeout_s: float,
                      rounds: int = 8) -> list[dict]:
    """`method` (which returns a dict with the replica's id under "replica") of every replica, as far as
    they answer. Serve routes each call to a replica of its choosing and offers no public way to call a
    given one, so the calls go out in rounds of `2 * replicas` at once until `replicas` different
    replicas answered (with two replicas, 8 rounds miss one with odds of 1 in 2**64)."""
    seen: dict[str, dict] = {}
    for _ in range(rounds):
        responses = [getattr(handle, method).remote() for _ in range(2 * replicas)]
        for response in responses:
            try:
                out = _result(response, timeout_s)
            except Exception as e:  # noqa: BLE001 - translated
                raise translate(e, udf_name, timeout_s) from e
            seen.setdefault(out["replica"], out)
        if len(seen) >= replicas:
            break
    return [seen[k] for k in sorted(seen)]


def _start_stream(handle: Any, request: dict) -> Any:
    """The Serve response generator of a `stream` call; a full queue raises here."""
    return handle.options(stream=True).stream.remote(request)


def _stream_timeout(udf_name: str, timeout_s: float) -> RequestTimeoutError:
    return RequestTimeoutError(f"model {udf_name!r} did not finish streaming within {timeout_s:.0f} s")


def stream(handle: Any, request: dict, *, udf_name: str, timeout_s: float) -> Iterator[dict]:
    """The items of one streamed generation (text deltas, then the last one with `done` and its
    metadata); a RequestTimeoutError once the whole stream takes over `timeout_s`."""
    gen = None
    try:
        gen = _start_stream(handle, request)
        deadline = time.monotonic() + timeout_s
        for item in (_iterate_off_loop(gen) if _in_event_loop() else gen):
            yield item
            if time.monotonic() > deadline:
                raise _stream_timeout(udf_name, timeout_s)
    except ByzerError:
        raise
    except Exception as e:  # noqa: BLE001
        raise translate(e, udf_name, timeout_s) from e
    finally:
        _cancel(gen)


async def acall(handle: Any, method: str, *args: Any, udf_name: str, timeout_s: float, retries: int = 2) -> Any:
    """`call` for code running on an event loop (the HTTP API): awaits instead of blocking."""
    for attempt in itertools.count():
        response = None
        try:
            response = getattr(handle, method).remote(*args)
            return await asyncio.wait_for(_awaited(response), timeout_s)
        except asyncio.CancelledError:
            _cancel(response)
            raise
        except Exception as e:  # noqa: BLE001 - translated below
            if isinstance(e, TimeoutError):
                _cancel(response)
            wait_s = _retry_after(e, attempt, retries)
            if wait_s is None:
                raise translate(e, udf_name, timeout_s) from e
        await asyncio.sleep(wait_s)
    raise AssertionError("unreachable")


def _cancel(response: Any) -> None:
    """Cancel a Serve call if there is one. Serve's `cancel` raises the call's own error when it has
    already failed (a full queue): that error is reported elsewhere, not here."""
    if response is None:
        return
    try:
        response.cancel()
    except Exception:  # noqa: BLE001 - see above
        pass


async def _awaited(response: Any) -> Any:
    return await response


async def astream(handle: Any, request: dict, *, udf_name: str, timeout_s: float) -> AsyncIterator[dict]:
    """`stream` for code running on an event loop. Closing this generator (a client went away)
    cancels the call, which stops the generation on the replica."""
    gen = None
    deadline = time.monotonic() + timeout_s
    try:
        gen = _start_stream(handle, request)
        while True:
            # a deadline per item, not `asyncio.timeout`: the consumer may resume this generator
            # from another task (the HTTP API's first item is awaited before its response starts)
            left = deadline - time.monotonic()
            try:
                item = await asyncio.wait_for(gen.__anext__(), max(left, 0.001))
            except StopAsyncIteration:
                return
            yield item
    except TimeoutError as e:
        raise _stream_timeout(udf_name, timeout_s) from e
    except (ByzerError, asyncio.CancelledError, GeneratorExit):
        raise
    except Exception as e:  # noqa: BLE001
        raise translate(e, udf_name, timeout_s) from e
    finally:
        _cancel(gen)


def _iterate_off_loop(gen: Any) -> Iterator[Any]:
    """Iterate a Serve response generator on a helper thread (see `_result`)."""
    items: queue.Queue = queue.Queue()
    end = object()

    def pump() -> None:
        try:
            for item in gen:
                items.put((item, None))
        except BaseException as e:  # noqa: BLE001 - re-raised in the consumer
            items.put((end, e))
            return
        items.put((end, None))

    threading.Thread(target=pump, name="byzer-like-stream", daemon=True).start()
    while True:
        item, error = items.get()
        if item is end:
            if error is not None:
                raise error
            return
        yield item


def run_batched(
    handle: Any,
    requests: Sequence[dict],
    *,
    udf_name: str,
    chunk_size: int,
    in_flight: int,
    timeout_s: float,
    retries: int = 3,
    on_rows: Callable[[int], None] | None = None,
    on_answers: Callable[[int, list[dict]], None] | None = None,
) -> list[dict]:
    """Send `requests` in chunks to all replicas concurrently; results come back in request order.

    Each chunk is one `call` (sent again when its replica died), and its answers land in its own
    place, so no row is lost or duplicated. The first chunk that fails for good ends the batch.
    `on_answers(start, answers)` sees each chunk's answers as soon as it is back (the result cache)."""
    starts = range(0, len(requests), chunk_size)

    def run(start: int) -> list[dict]:
        chunk = list(requests[start:start + chunk_size])
        answers = call(handle, "generate", chunk, udf_name=udf_name, timeout_s=timeout_s, retries=retries)
        if len(answers) != len(chunk):
            raise InferenceError(f"model {udf_name!r} returned {len(answers)} answers for {len(chunk)} requests")
        if on_answers:
            on_answers(start, answers)
        if on_rows:
            on_rows(len(answers))
        return answers

    pool = ThreadPoolExecutor(max_workers=max(1, in_flight), thread_name_prefix="byzer-like-batch")
    try:
        return [answer for answers in pool.map(run, starts) for answer in answers]
    finally:
        pool.shutdown(cancel_futures=True)

