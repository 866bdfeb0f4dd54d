"""The LoRA adapters one replica serves over its base model.

A request that names an adapter arrives with the registry's `{"ref", "name", "version", "path",
"base_model"}` (resolved and checked on the driver: runtime/adapters.py). The replica loads the adapter
into its model the first time a request asks for it and keeps it in a least-recently-used set of
`max_adapters_per_replica`: Ray Serve's model multiplexing (`serve.multiplexed`), which also tells Serve's
router which replica holds which adapter, so that single chats and streams (sent with
`multiplexed_model_id`) go where their adapter is loaded already. An adapter the LRU evicts while a
running request still uses it stays in the model until that request ends. A chunk of a SQL select may
mix more adapters than the LRU holds: all of them are loaded for it, the extra ones unloaded after it.

How an engine serves adapters is its `adapters` attribute (`plugins.contract.ChatEngine`): "loaded" (the
replica loads them through the engine's `load_adapter` / `unload_adapter`, here), "per_request" (vLLM: the
engine takes the adapter with each request, its LoRARequest, and keeps its own LRU; this only counts the
requests per adapter) or "none" (a request that names an adapter is refused with NotSupportedError before
it reaches the engine).
"""
from __future__ import annotations

import asyncio
import itertools
import threading
import time
from contextlib import asynccontextmanager, nullcontext
from typing import Any, AsyncIterator, Callable, ContextManager, Sequence

from ..errors import NotSupportedError


class _Loaded:
    """One adapter loaded into the model under `name`; `pins`: running requests that use it."""

    def __init__(self, owner: "ReplicaAdapters", adapter: dict, name: str, seconds: float):
        self.owner, self.adapter, self.name = owner, adapter, name
        self.loaded_at = time.time()
        self.load_seconds = seconds
        self.requests = 0
        self.pins = 0
        self.evicted = False
        self.unloaded = False

    def __del__(self) -> None:
        """Serve's LRU calls this when it evicts the adapter (and Python may, later, again)."""
        self.owner._evict(self)


class ReplicaAdapters:
    """The adapters of one replica: `using(requests)` loads and pins what the requests name.

    `engine`: the replica's chat engine; its `adapters` mode says how it serves them, and in "loaded" mode
    its blocking `load_adapter(adapter_dir, name)` / `unload_adapter(name)` run on worker threads, each
    inside `tracked()` (the replica's in-flight bookkeeping). `model_type`: named when an adapter is refused."""

    def __init__(self, capacity: int, engine: Any, *, model_type: str,
                 tracked: Callable[[], ContextManager[Any]] = nullcontext):
        from ray import serve

        self.capacity = capacity
        self.mode = getattr(engine, "adapters", "per_request")
        self.serves = self.mode != "none"
        self.model_type = model_type
        self._engine, self._tracked = engine, tracked
        self._lock = threading.Lock()
        self._wanted: dict[str, dict] = {}  # the registry's dict of each ref asked for (the loader gets only the ref)
        self._live: dict[str, _Loaded] = {}  # loaded and not evicted, by ref
        self._seen: dict[str, dict] = {}  # engine mode: requests per ref
        self._names = itertools.count()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.loads = 0
        self.unloads = 0
        async def load_adapter(ref: str) -> _Loaded:  # a plain function: Serve keeps its LRU on it
            return await self._load(ref)

        # Serve's LRU; made per replica so that its size is this deployment's (see serve.multiplexed)
        self._slot = serve.multiplexed(max_num_models_per_replica=capacity)(load_adapter) if self.mode == "loaded" else None

    # -- loading and unloading (Serve's LRU decides when) -----------------------------------------
    async def _load(self, ref: str) -> _Loaded:
        adapter = self._wanted[ref]
        name = f"adapter_{next(self._names)}"  # unique: an evicted copy may still be in use while it loads again
        start = time.perf_counter()
        with self._tracked():
            await asyncio.to_thread(self._engine.load_adapter, adapter["path"], name)
        entry = _Loaded(self, adapter, name, time.perf_counter() - start)
        with self._lock:
            self._live[ref] = entry
            self.loads += 1
        return entry

    def _evict(self, entry: _Loaded) -> None:
        with self._lock:
            if entry.evicted:
                return
            entry.evicted = True
            if self._live.get(entry.adapter["ref"]) is entry:
                del self._live[entry.adapter["ref"]]
            unload_now = entry.pins == 0
        if unload_now:
            try:  # Serve's LRU evicts on the replica's event loop: the unload waits for generations, so not there
                asyncio.get_running_loop().run_in_executor(None, self._unload, entry)
            except RuntimeError:  # no event loop here (Python collecting the entry later)
                self._unload(entry)

    def _unload(self, entry: _Loaded) -> None:
        """Blocking (it waits for running generations): on a worker thread, never on the event loop."""
        with self._lock:
            if entry.unloaded:
                return
            entry.unloaded = True
            self.unloads += 1
        self._engine.unload_adapter(entry.name)

    def _release(self, entry: _Loaded) -> None:
        with self._lock:
            entry.pins -= 1
            unload_now = entry.evicted and entry.pins == 0
        if unload_now:  # evicted while in use: unloaded now that the last request using it ended
            asyncio.get_running_loop().run_in_executor(None, self._unload, entry)

    # -- requests ---------------------------------------------------------------------------------
    @asynccontextmanager
    async def using(self, requests: Sequence[dict]) -> AsyncIterator[list[dict]]:
        """The requests as the engine takes them: in "loaded" mode each one's `adapter` (the registry's dict)
        loaded and replaced by the name it was loaded under, the adapters staying loaded until the block
        ends; in "per_request" mode unchanged (the engine loads them). Requests without an adapter pass as
        they are. NotSupportedError when one names an adapter and the engine serves none."""
        if not self.serves and any(r.get("adapter") for r in requests):
            raise NotSupportedError(f"model type {self.model_type!r} cannot serve LoRA adapters per request")
        refs: dict[str, dict] = {}
        for r in requests:
            a = r.get("adapter")
            if isinstance(a, dict):
                refs.setdefault(a["ref"], a)
        if not refs:
            yield list(requests)
            return
        if self._slot is None:  # the engine takes them with the requests: count only
            with self._lock:
                for r in requests:
                    a = r.get("adapter")
                    if isinstance(a, dict):
                        row = self._seen.setdefault(a["ref"], {"adapter": a, "requests": 0, "loaded_at": time.time()})
                        row["requests"] += 1
            yield list(requests)
            return
        pinned: dict[str, _Loaded] = {}
        try:
            for ref, adapter in refs.items():
                self._wanted[ref] = adapter
                entry = await self._slot(ref)
                with self._lock:  # no await between getting it and pinning it: nothing can evict it in between
                    entry.pins += 1
                pinned[ref] = entry
            out = []
            for r in requests:
                a = r.get("adapter")
                if isinstance(a, dict):
                    entry = pinned[a["ref"]]
                    entry.requests += 1
                    r = {**r, "adapter": entry.name}
                out.append(r)
            yield out
        finally:
            for entry in pinned.values():
                self._release(entry)

    def rows(self) -> list[dict]:
        """The adapters loaded now, least recently used first: ref, name, version, path, loaded_at (epoch
        seconds), load_seconds, requests (answered through it since it was loaded)."""
        with self._lock:
            if self._slot is None:
                return [{"ref": ref, "name": v["adapter"]["name"], "version": v["adapter"]["version"],
                         "path": v["adapter"]["path"], "loaded_at": v["loaded_at"], "load_seconds": None,
                         "requests": v["requests"]} for ref, v in self._seen.items()]
            return [{"ref": ref, "name": e.adapter["name"], "version": e.adapter["version"], "path": e.adapter["path"],
                     "loaded_at": e.loaded_at, "load_seconds": round(e.load_seconds, 4), "requests": e.requests}
                    for ref, e in self._live.items()]
