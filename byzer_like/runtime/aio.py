"""The runtime's verbs for code running on an event loop (the HTTP API): the deployments, one call,
one stream, through Serve handles that are awaited on that loop instead of blocking it.

    rt = AsyncRuntime(request_timeout_s=600)
    await rt.models()                              # {"m": "RUNNING"}
    await rt.call("m", "chat", request)            # {"output", "metadata"}
    async for item in rt.stream("m", request): ... # {"delta"}, ..., {"metadata", "done": True}

It talks to the Serve applications of the cluster it runs in; a workspace is needed only for requests that
name a LoRA adapter (`adapter`: resolved in that workspace's registry, as `Runtime.with_adapters` does).
"""
from __future__ import annotations

import asyncio
import time
from contextlib import aclosing
from typing import Any, AsyncIterator

from ..catalog import Catalog
from ..errors import ConfigError, ModelNotDeployedError
from ..serving import manager
from . import adapters

LIST_TTL_S = 1.0


class AsyncRuntime:
    """Deployments, calls and streams for an event loop. `request_timeout_s`: a call or stream that
    takes longer fails with RequestTimeoutError."""

    def __init__(self, request_timeout_s: float, *, workspace: str | None = None):
        self.request_timeout_s = request_timeout_s
        self.workspace = workspace
        self._meta: dict[str, dict] = {}  # each deployment's meta, asked once (what it serves)
        self._handles: dict[str, Any] = {}
        self._listed: tuple[float, dict[str, str]] = (0.0, {})
        self._lock = asyncio.Lock()
        self._pending: asyncio.Future | None = None

    async def models(self, *, fresh: bool = False) -> dict[str, str]:
        """Deployed models (name -> status). Asking Serve takes tens of milliseconds, so requests use
        the last list and a stale one (over a second old) is refreshed in the background; `fresh`
        waits for a new list (a name that is not in the last one)."""
        if fresh or not self._listed[0]:
            return dict(await self._refresh())
        if time.monotonic() - self._listed[0] > LIST_TTL_S and (self._pending is None or self._pending.done()):
            self._pending = asyncio.ensure_future(self._refresh())
        return dict(self._listed[1])

    async def _refresh(self) -> dict[str, str]:
        async with self._lock:
            listed = await asyncio.to_thread(manager.list_deployments)
            self._listed = (time.monotonic(), listed)
            for gone in set(self._handles) - set(listed):
                self._handles.pop(gone, None)
                self._meta.pop(gone, None)
            return listed

    async def require(self, name: str) -> Any:
        """The handle of deployment `name`; ModelNotDeployedError (with the deployed ones) if there is none."""
        models = await self.models()
        if name not in models:
            models = await self.models(fresh=True)
            if name not in models:
                raise ModelNotDeployedError(name, models)
        if name not in self._handles:
            self._handles[name] = await asyncio.to_thread(manager.app_handle, name)
        return self._handles[name]

    async def call(self, name: str, method: str, *args: Any, timeout_s: float | None = None) -> Any:
        handle = await self.require(name)
        return await manager.acall(handle, method, *args, udf_name=name, timeout_s=timeout_s or self.request_timeout_s)

    async def chat(self, name: str, request: dict) -> dict:
        """One request -> `{"output", "metadata"}` or `{"error", "error_code"}`; its `adapter` (a registry
        reference) resolved first, and the call routed to a replica that holds it when one does."""
        handle = await self.require(name)
        req = await self.with_adapter(name, request)
        return await manager.acall(manager.routed(handle, adapters.routing_id(req)), "chat", req, udf_name=name,
                                   timeout_s=self.request_timeout_s)

    async def stream(self, name: str, request: dict) -> AsyncIterator[dict]:
        handle = await self.require(name)
        req = await self.with_adapter(name, request)
        # closed at once when this generator is (a client went away), so the replica stops generating
        async with aclosing(manager.astream(manager.routed(handle, adapters.routing_id(req)), req, udf_name=name,
                                            timeout_s=self.request_timeout_s)) as items:
            async for item in items:
                yield item

    async def adapters_of(self, model_dir: str) -> list[Any]:
        """The registry's rows of the adapters trained on base `model_dir` (latest version of each name;
        `adapters.adapter_models`); none when this runtime has no workspace."""
        if self.workspace is None or not model_dir:
            return []
        return await asyncio.to_thread(adapters.adapter_models, Catalog(self.workspace), model_dir)

    async def with_adapter(self, name: str, request: dict) -> dict:
        """`request` with its adapter reference resolved in the workspace's registry and checked against
        deployment `name`'s base (runtime/adapters.py); as it is without one."""
        if not isinstance(request.get("adapter"), str):
            return request
        if name not in self._meta:
            self._meta[name] = await self.call(name, "meta", timeout_s=60)
        if self.workspace is None:
            raise ConfigError("this HTTP API was started without a workspace, so it cannot look up LoRA adapters; "
                              "start it from a runtime (ByzerLLM().serve(), `byzer-like serve`)")
        meta = self._meta[name]
        return (await asyncio.to_thread(adapters.with_adapters, lambda: Catalog(self.workspace), [request],
                                        udf_name=name, meta_of=lambda: meta))[0]
