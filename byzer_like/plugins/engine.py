"""The chat engine a replica holds, made from any plugin of the contract: `engine_for(plugin, model, tokenizer,
setup)` (see `contract.ChatEngine` for what an engine does).

    ThreadEngine   the plugin's blocking functions (`batch_chat`, `stream_chat`, `embed_query`, `score_text`,
                   `get_meta`, ...) on worker threads, so the replica's event loop stays free; single chats
                   that arrive while a batch runs share the next batch (ChatBatcher)
    OwnEngine      a plugin that brings an engine of its own (`engine(model, tokenizer)`: vLLM): that engine
                   schedules, streams and aborts every request; the plugin's functions do the rest

Either way the replica sees one object with one set of methods and never asks which kind it holds.
"""
from __future__ import annotations

import asyncio
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any, AsyncIterator, Callable, Iterator, Mapping, Sequence

from ..config import SetupConfig
from .registry import Plugin

# A model call running longer than request_timeout_s times this factor makes the replica unhealthy.
HANG_FACTOR = 2.0


class ThreadEngine:
    """A plugin's functions as a chat engine: each call on a worker thread of a pool sized for the replica's
    `max_ongoing_requests`. `adapters` is "loaded" when the plugin loads LoRA adapters itself
    (`load_adapter` / `unload_adapter`), else "none"."""

    def __init__(self, plugin: Plugin, model: Any, tokenizer: Any, setup: SetupConfig):
        self.plugin, self.model, self.tokenizer = plugin, model, tokenizer
        self.hang_limit_s = setup.request_timeout_s * HANG_FACTOR
        self.adapters = "loaded" if plugin.serves_adapters() else "none"
        self._pool = ThreadPoolExecutor(max_workers=setup.max_ongoing_requests + 1, thread_name_prefix="byzer-like-model")
        self._busy: dict[str, float] = {}  # model calls running on a thread: id -> start (monotonic)
        self._lock = threading.Lock()
        self._stops: dict[str, threading.Event] = {}  # streams running: request id -> its stop flag
        # single chats share a forward pass when they arrive while one runs; no more can arrive than the
        # replica takes at once
        self._chats = ChatBatcher(self.generate, min(setup.max_batch_size, setup.max_ongoing_requests))

    # -- running on threads ------------------------------------------------------------------------
    def _started(self) -> str:
        token = uuid.uuid4().hex
        with self._lock:
            self._busy[token] = time.monotonic()
        return token

    def _ended(self, token: str) -> None:
        with self._lock:
            self._busy.pop(token, None)

    def _blocking(self, fn: Callable[..., Any], *args: Any) -> Any:
        token = self._started()
        try:
            return fn(*args)
        finally:
            self._ended(token)

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """`fn(*args)` on a worker thread, counted as a running model call until it returns."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._blocking, fn, *args)

    # -- the engine's calls ----------------------------------------------------------------------------
    async def generate(self, requests: Sequence[Mapping[str, Any]]) -> list[dict]:
        return await self.run(self.plugin.batch, self.model, self.tokenizer, list(requests))

    async def chat(self, request: Mapping[str, Any]) -> dict:
        return await self._chats.submit(dict(request))

    async def stream(self, request: Mapping[str, Any], request_id: str) -> AsyncIterator[tuple[str, dict]]:
        """The plugin's stream driven on one worker thread; closing this (or `abort`) stops it after its next
        item. The model call counts as running until it really ends, even after its caller went away, so
        that a stream hung in the model still fails the health check."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        stop = self._stops.setdefault(request_id, threading.Event())
        done = object()
        token = self._started()

        def produce() -> None:
            it: Iterator[Any] = self.plugin.stream(self.model, self.tokenizer, request)
            try:
                for item in it:
                    loop.call_soon_threadsafe(queue.put_nowait, (item, None))
                    if stop.is_set():
                        break
            except BaseException as e:  # noqa: BLE001 - re-raised in the consumer
                loop.call_soon_threadsafe(queue.put_nowait, (done, e))
                return
            finally:
                close = getattr(it, "close", None)
                if close:
                    close()
                self._ended(token)
            loop.call_soon_threadsafe(queue.put_nowait, (done, None))

        future = loop.run_in_executor(self._pool, produce)
        try:
            while True:
                item, error = await queue.get()
                if item is done:
                    if error is not None:
                        raise error
                    break
                yield item
        finally:
            stop.set()
            self._stops.pop(request_id, None)
            if not future.done():
                future.add_done_callback(lambda f: f.exception())

    async def abort(self, request_id: str) -> None:
        stop = self._stops.get(request_id)
        if stop is not None:
            stop.set()

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        return await self.run(self.plugin.embed_many, self.model, self.tokenizer, list(texts))

    async def count_tokens(self, texts: Sequence[str]) -> int:
        """Tokens of `texts` as the model sees them (no special tokens); 0 for a model without a tokenizer."""
        return await self.run(lambda: sum(_token_count(self.tokenizer, t) for t in texts))

    async def score(self, items: Sequence[Mapping[str, Any]]) -> list[dict]:
        return await self.run(self.plugin.score, self.model, self.tokenizer, list(items))

    async def rewards(self, pairs: Sequence[Mapping[str, Any]]) -> list[float]:
        return await self.run(self.plugin.rewards, self.model, self.tokenizer, list(pairs))

    async def tokenize(self, text: str) -> list[str]:
        return await self.run(self.plugin.tokenize, self.model, self.tokenizer, text)

    async def prompt_text(self, request: Mapping[str, Any]) -> str:
        return await self.run(self.plugin.prompt_text, self.model, self.tokenizer, request)

    def load_adapter(self, adapter_dir: str, name: str) -> None:
        self.plugin.load_adapter(self.model, adapter_dir, name)

    def unload_adapter(self, name: str) -> None:
        self.plugin.unload_adapter(self.model, name)

    def meta(self) -> dict:
        """The plugin's meta, with `engine`: "threads" (its functions on worker threads) unless it says."""
        return {"engine": "threads", **self.plugin.meta(self.model, self.tokenizer)}

    def load(self) -> dict:
        with self._lock:
            running = len(self._busy)
        return {"requests_running": running, "requests_waiting": self._chats.waiting}

    def check_health(self) -> None:
        """RuntimeError when a model call has run longer than the hang limit (the replica is then replaced)."""
        now = time.monotonic()
        with self._lock:
            oldest = min(self._busy.values(), default=now)
        if now - oldest > self.hang_limit_s:
            raise RuntimeError(f"a model call has been running for {now - oldest:.0f} s (limit {self.hang_limit_s:.0f} s): "
                               "replica hung")

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


class OwnEngine:
    """A plugin's own engine (`plugin.engine(model, tokenizer)`, see `contract.ChatEngine`) for what it
    provides (generate, stream, abort, load, shutdown; check_health when it has one) and the plugin's functions
    on threads (`ThreadEngine`) for the rest. Such an engine takes each request's adapter itself ("per_request")."""

    adapters = "per_request"

    def __init__(self, own: Any, functions: ThreadEngine):
        self.own, self.functions = own, functions

    async def generate(self, requests: Sequence[Mapping[str, Any]]) -> list[dict]:
        return await self.own.generate(list(requests))

    async def chat(self, request: Mapping[str, Any]) -> dict:
        return (await self.own.generate([request]))[0]  # the engine batches concurrent requests itself

    def stream(self, request: Mapping[str, Any], request_id: str) -> AsyncIterator[tuple[str, dict]]:
        return self.own.stream(request, request_id)

    async def abort(self, request_id: str) -> None:
        await self.own.abort(request_id)

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        return await self.functions.embed(texts)

    async def count_tokens(self, texts: Sequence[str]) -> int:
        return await self.functions.count_tokens(texts)

    async def score(self, items: Sequence[Mapping[str, Any]]) -> list[dict]:
        return await self.functions.score(items)

    async def rewards(self, pairs: Sequence[Mapping[str, Any]]) -> list[float]:
        return await self.functions.rewards(pairs)

    async def tokenize(self, text: str) -> list[str]:
        return await self.functions.tokenize(text)

    async def prompt_text(self, request: Mapping[str, Any]) -> str:
        return await self.functions.prompt_text(request)

    def load_adapter(self, adapter_dir: str, name: str) -> None:  # never called: the engine loads them itself
        raise NotImplementedError("an engine of its own takes each request's adapter with the request")

    unload_adapter = load_adapter

    def meta(self) -> dict:
        """The plugin's meta; `engine` is the plugin's own word for it, else the engine's class name."""
        meta = self.functions.meta()
        if meta.get("engine") == "threads":
            meta["engine"] = type(self.own).__name__
        return meta

    def load(self) -> dict:
        return dict(self.own.load())

    def check_health(self) -> None:
        self.functions.check_health()
        check = getattr(self.own, "check_health", None)
        if callable(check):
            check()

    def shutdown(self) -> None:
        try:
            self.own.shutdown()
        finally:
            self.functions.shutdown()


def engine_for(plugin: Plugin, model: Any, tokenizer: Any, setup: SetupConfig) -> ThreadEngine | OwnEngine:
    """The engine a replica holds for `plugin`'s loaded `model` (what `init_model` returned), run with `setup`:
    the plugin's own engine when it brings one, its functions on worker threads otherwise."""
    functions = ThreadEngine(plugin, model, tokenizer, setup)
    own = plugin.own_engine(model, tokenizer)
    return functions if own is None else OwnEngine(own, functions)


class ChatBatcher:
    """Batches single chats without a waiting window: a chat that finds the model idle starts at once,
    alone; chats that arrive while a batch runs wait for it to end and then go together, up to
    `max_batch_size` rows per `generate` call, in arrival order. One batch runs at a time, as with Serve's
    `@serve.batch` (whose fixed wait window cost every lone request ~1 ms: bench/inference.py).

    `generate` takes a list of request dicts and returns one result dict per request, in order. A chat
    whose caller went away before its batch started is left out of it."""

    def __init__(self, generate: Callable[[list[dict]], Any], max_batch_size: int):
        self._generate = generate
        self.max_batch_size = max(1, int(max_batch_size))
        self._waiting: list[tuple[dict, asyncio.Future]] = []
        self._running: asyncio.Task | None = None

    @property
    def waiting(self) -> int:
        """Chats waiting for the next batch."""
        return len(self._waiting)

    async def submit(self, request: dict) -> dict:
        """Answer one request (a `config.ChatRequest` dict) in the next batch; raises what `generate` raised."""
        future = asyncio.get_running_loop().create_future()
        self._waiting.append((request, future))
        if self._running is None or self._running.done():
            self._running = asyncio.ensure_future(self._drain())
        return await future

    async def _drain(self) -> None:
        while self._waiting:
            batch = [(r, f) for r, f in self._waiting[:self.max_batch_size] if not f.done()]
            del self._waiting[:self.max_batch_size]
            if not batch:
                continue
            try:
                results = await self._generate([r for r, _ in batch])
            except Exception as e:  # noqa: BLE001 - handed to every caller of the batch
                for _, f in batch:
                    if not f.done():
                        f.set_exception(e)
                continue
            for (_, f), result in zip(batch, results):
                if not f.done():
                    f.set_result(result)


def _token_count(tokenizer: Any, text: str) -> int:
    """Tokens of `text` as the model sees them (no special tokens); 0 without a usable tokenizer."""
    encode = getattr(tokenizer, "encode", None)
    if not callable(encode):
        return 0
    try:
        return len(encode(text, add_special_tokens=False))
    except TypeError:  # a tokenizer whose encode takes no keyword
        return len(encode(text))


__all__ = ["ChatBatcher", "HANG_FACTOR", "OwnEngine", "ThreadEngine", "engine_for"]
