"""The Ray Serve deployment that holds one plugin model per replica.

Thin on purpose: it loads the plugin named in its spec (an import path resolved inside the worker),
runs model calls on worker threads so the replica's event loop stays free for health checks and
cancellation, and reports hung requests to Serve's health check so the replica gets replaced.
A plugin that provides a serving engine (the contract's engine seam: vLLM) gets every request as it
arrives instead: the engine schedules, streams and aborts, the replica only counts and reports.
"""
from __future__ import annotations

import asyncio
import os
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import aclosing, nullcontext
from typing import Any, AsyncIterator, Callable, Iterator, Sequence

from ray import serve

from ..errors import NotSupportedError
from ..plugins import registry
from .adapters import ReplicaAdapters

# A request running longer than request_timeout_s times this factor marks the replica unhealthy.
HANG_FACTOR = 2.0


class ModelReplica:
    def __init__(self, spec: dict[str, Any]):
        # Idle OpenMP threads sleep instead of spinning: replicas share their node's cores with other
        # replicas and tasks, and spinning threads slowed CPU generation several times over (bench/).
        # Read when torch loads, which happens in the plugin's init_model below.
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        self.spec = spec
        self.plugin = registry.load_path(spec["plugin"], spec["import_path"])
        start = time.perf_counter()
        self.model, self.tokenizer = self.plugin.init_model(spec["model_dir"], spec["infer_params"], spec["sys_conf"])
        self.load_s = time.perf_counter() - start
        # the plugin's own engine (contract.ChatEngine), or None: batch_chat / stream_chat on worker threads
        self.engine = self.plugin.engine(self.model, self.tokenizer)
        conf = spec["sys_conf"]
        self.request_timeout_s = float(conf.get("request_timeout_s", 600))
        ongoing = int(conf.get("max_ongoing_requests", 8))
        self._pool = ThreadPoolExecutor(max_workers=ongoing + 1, thread_name_prefix="byzer-like-model")
        self._inflight: dict[str, float] = {}
        self._lock = threading.Lock()
        self._served = 0
        self._answered = 0  # requests given to the model by `generate` (each row of a chunk counts)
        self._cancelled = 0
        self._cancelled_after = 0
        self.replica_id = serve.get_replica_context().replica_id.unique_id
        # single chats share a forward pass when they arrive while one runs (see `chat`); no more can
        # arrive than the replica takes at once
        self._chats = ChatBatcher(self.generate, min(int(conf.get("max_batch_size", 32)), ongoing))
        # LoRA adapters over the model, per request (serving/adapters.py); None: the plugin serves none
        self.adapters = None
        if self.engine is not None or self.plugin.serves_adapters():
            capacity = int(spec["infer_params"].get("max_adapters_per_replica") or conf.get("max_adapters_per_replica", 8))
            local = self.engine is None
            self.adapters = ReplicaAdapters(
                capacity, run_in_thread=self._in_thread,
                load=(lambda path, name: self.plugin.load_adapter(self.model, path, name)) if local else None,
                unload=(lambda name: self.plugin.unload_adapter(self.model, name)) if local else None)

    # -- bookkeeping -------------------------------------------------------------------------------
    def _track(self) -> str:
        rid = uuid.uuid4().hex
        with self._lock:
            self._inflight[rid] = time.monotonic()
        return rid

    def _untrack(self, rid: str) -> None:
        with self._lock:
            self._inflight.pop(rid, None)
            self._served += 1

    async def _in_thread(self, fn: Callable[..., Any], *args: Any) -> Any:
        rid = self._track()
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)
        finally:
            self._untrack(rid)

    # -- calls -----------------------------------------------------------------------------------
    async def generate(self, requests: list[dict]) -> list[dict]:
        """Many requests in, one result each out, in order: `{"output", "metadata"}` or `{"error", "error_code"}`.
        Requests may name different adapters (and none): they still share the plugin's batches."""
        self._answered += len(requests)
        async with self._with_adapters(requests) as given:
            if self.engine is not None:  # all at once: the engine schedules them
                rid = self._track()
                try:
                    results = await self.engine.generate(given)
                finally:
                    self._untrack(rid)
            else:
                results = await self._in_thread(self.plugin.batch, self.model, self.tokenizer, given)
        for req, r in zip(requests, results):
            if "metadata" in r:
                r["metadata"]["replica"] = self.replica_id
                if isinstance(req.get("adapter"), dict):
                    r["metadata"]["adapter"] = req["adapter"]["ref"]
        return results

    def _with_adapters(self, requests: Sequence[dict]) -> Any:
        """`ReplicaAdapters.using` (the requests' adapters loaded and pinned), or the requests as they are
        when none names an adapter; a NotSupportedError when one does and this plugin serves none."""
        if self.adapters is not None:
            return self.adapters.using(requests)
        self._refuse_adapters(requests)
        return nullcontext(list(requests))

    def _refuse_adapters(self, requests: Sequence[dict]) -> None:
        """NotSupportedError when a request names an adapter and this plugin serves none."""
        if self.adapters is None and any(r.get("adapter") for r in requests):
            raise NotSupportedError(f"model type {self.spec['pretrained_model_type']!r} cannot serve LoRA adapters "
                                    "per request")

    async def chat(self, request: dict) -> dict:
        """One request; concurrent single requests are batched together (an engine batches them itself)."""
        if self.engine is not None:
            return (await self.generate([request]))[0]
        self._refuse_adapters([request])  # here, not in the batch it would share with other chats
        return await self._chats.submit(request)

    async def stream(self, request: dict) -> AsyncIterator[dict]:
        """Yield `{"delta": text}` pieces, then `{"delta": "", "metadata": {...}, "done": True}`.

        A caller that goes away cancels this generator; the generation then stops after its next
        token, and the replica counts it in `requests_cancelled` (see `meta`)."""
        sent = ""
        meta: dict = {}
        pieces = 0
        try:
            async with self._with_adapters([request]) as (given,), \
                    aclosing(self._engine_stream(given) if self.engine is not None else
                             self._iterate(lambda: self.plugin.stream(self.model, self.tokenizer, given))) as items:
                async for text, meta in items:
                    if text.startswith(sent):
                        delta = text[len(sent):]
                        if delta:
                            pieces += 1
                            yield {"delta": delta}
                    else:  # the plugin revised earlier text: send it whole
                        yield {"delta": "", "text": text}
                    sent = text
        except (asyncio.CancelledError, GeneratorExit):
            with self._lock:
                self._cancelled += 1
                self._cancelled_after = pieces
            raise
        if isinstance(request.get("adapter"), dict):
            meta = {**meta, "adapter": request["adapter"]["ref"]}
        yield {"delta": "", "metadata": {**meta, "replica": self.replica_id}, "done": True}

    async def _engine_stream(self, request: dict) -> AsyncIterator[Any]:
        """The engine's stream of one request; closing it aborts the request in the engine."""
        rid = self._track()
        try:
            async with aclosing(self.engine.stream(request, rid)) as items:
                async for item in items:
                    yield item
        finally:
            self._untrack(rid)

    async def _iterate(self, make: Callable[[], Iterator[Any]]) -> AsyncIterator[Any]:
        """Drive a blocking generator on one worker thread; closing this stops it after its next item."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        stop = threading.Event()
        done = object()

        def produce() -> None:
            it = make()
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
                # in flight until the model call really ends, even after its caller went away, so
                # that a stream hung in the model still fails the health check
                self._untrack(rid)
            loop.call_soon_threadsafe(queue.put_nowait, (done, None))

        rid = self._track()
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
            if not future.done():
                future.add_done_callback(lambda f: f.exception())

    async def score(self, items: list[dict]) -> list[dict]:
        """Token log-likelihoods of texts (the plugin's `score_text`): `{"logprob", "tokens"}` per item."""
        return await self._in_thread(self.plugin.score, self.model, self.tokenizer, items)

    async def embed(self, texts: list[str], with_usage: bool = False) -> Any:
        """One vector per text (the plugin's `embed_documents`, else `embed_query`). With `with_usage`,
        `{"vectors": [...], "prompt_tokens": n}`: n counts the texts' tokens with the model's tokenizer
        (0 for a model without one, e.g. a remote saas model)."""
        def run() -> Any:
            vectors = self.plugin.embed_many(self.model, self.tokenizer, texts)
            if not with_usage:
                return vectors
            return {"vectors": vectors, "prompt_tokens": sum(_token_count(self.tokenizer, t) for t in texts)}

        return await self._in_thread(run)

    async def tokenize(self, text: str) -> list[str]:
        """`text` as the model's tokens (strings)."""
        return await self._in_thread(self.plugin.tokenize, self.model, self.tokenizer, text)

    async def apply_chat_template(self, request: dict) -> str:
        """The prompt text the model would be given for `request` (a `config.ChatRequest` dict)."""
        return await self._in_thread(self.plugin.prompt_text, self.model, self.tokenizer, request)

    def loaded_adapters(self) -> dict:
        """This replica's adapters: `{"replica", "capacity", "adapters": [rows of ReplicaAdapters.rows()],
        "loads", "unloads"}` (capacity None and no rows when the plugin serves no adapters)."""
        a = self.adapters
        return {"replica": self.replica_id, "capacity": a.capacity if a else None, "adapters": a.rows() if a else [],
                "loads": a.loads if a else 0, "unloads": a.unloads if a else 0}

    def meta(self) -> dict:
        meta = self.plugin.meta(self.model, self.tokenizer)
        meta.update(
            udf_name=self.spec["udf_name"],
            pretrained_model_type=self.spec["pretrained_model_type"],
            plugin=self.spec["plugin"],
            model_dir=self.spec["model_dir"],
            infer_params=_redacted(self.spec["infer_params"]),
            replica=self.replica_id,
            replica_pid=os.getpid(),
            load_seconds=round(self.load_s, 3),
            requests_served=self._served,
            requests_generated=self._answered,
            requests_in_flight=len(self._inflight),
            requests_cancelled=self._cancelled,
            last_cancelled_after_pieces=self._cancelled_after,
            deployed_at=self.spec["deployed_at"],
            num_workers=int(self.spec["sys_conf"].get("num_workers", 1)),
            adapters=self.adapters is not None and bool(meta.get("adapters", self.engine is None)),
            max_adapters_per_replica=self.adapters.capacity if self.adapters is not None else None,
        )
        if self.engine is not None:
            meta["engine_load"] = self.engine.load()
        return meta

    def check_health(self) -> None:
        """Serve calls this periodically; raising makes Serve replace the replica."""
        limit = self.request_timeout_s * HANG_FACTOR
        now = time.monotonic()
        with self._lock:
            oldest = min(self._inflight.values(), default=now)
        if now - oldest > limit:
            raise RuntimeError(f"a request has been running for {now - oldest:.0f} s (limit {limit:.0f} s): replica hung")
        if self.engine is not None and callable(getattr(self.engine, "check_health", None)):
            self.engine.check_health()

    def __del__(self) -> None:
        """Serve calls this when the replica shuts down: stop the engine and its processes."""
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.shutdown()


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


SECRET_WORDS = ("key", "token", "secret", "password")


def _redacted(params: dict) -> dict:
    """Infer params as shown to callers: values of secret-looking keys (`saas.api_key`) hidden."""
    return {k: ("***" if any(w in k.lower() for w in SECRET_WORDS) else v) for k, v in params.items()}


def _token_count(tokenizer: Any, text: str) -> int:
    """Tokens of `text` as the model sees them (no special tokens); 0 without a usable tokenizer."""
    encode = getattr(tokenizer, "encode", None)
    if not callable(encode):
        return 0
    try:
        return len(encode(text, add_special_tokens=False))
    except TypeError:  # a tokenizer whose encode takes no keyword
        return len(encode(text))
