"""The Ray Serve deployment that holds one model per replica, through exactly one chat engine.

Thin on purpose (Ray Serve LLM's split between its server and its engine): it loads the plugin named in its
spec (an import path resolved inside the worker), gets the engine for the loaded model
(`plugins.engine.engine_for`: the plugin's own engine, or its functions on worker threads) and hands every
call to it. Around each call it pins the LoRA adapters the requests name (`serving.adapters`), counts and
stamps the answers, and reports hung requests to Serve's health check so the replica gets replaced.
"""
from __future__ import annotations

import asyncio
import os
import threading
import time
import uuid
from contextlib import aclosing, contextmanager
from typing import Any, AsyncIterator, Iterator, Sequence

from ray import serve

from ..config import SetupConfig
from ..plugins import registry
from ..plugins.engine import HANG_FACTOR, engine_for
from .adapters import ReplicaAdapters


class ModelReplica:
    """One replica: `spec` is `runtime.spec.DeploySpec.replica_spec()` (plain values; `setup` is the typed
    setup's dump, read back once here)."""

    def __init__(self, spec: dict[str, Any]):
        # Idle OpenMP threads sleep instead of spinning: replicas share their node's cores with other
        # replicas and tasks, and spinning threads slowed CPU generation several times over (bench/).
        # Read when torch loads, which happens in the plugin's init_model below.
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        self.spec = spec
        self.setup = SetupConfig.model_validate(spec["setup"])
        plugin = registry.load_path(spec["plugin"], spec["import_path"])
        start = time.perf_counter()
        model, tokenizer = plugin.init_model(spec["model_dir"], spec["infer_params"], self.setup.sys_conf())
        self.load_s = time.perf_counter() - start
        self.engine = engine_for(plugin, model, tokenizer, self.setup)
        self.request_timeout_s = self.setup.request_timeout_s
        self._inflight: dict[str, float] = {}
        self._lock = threading.Lock()
        self._served = 0
        self._answered = 0  # requests given to the model by `generate` and `chat` (each row of a chunk counts)
        self._cancelled = 0
        self._cancelled_after = 0
        self.replica_id = serve.get_replica_context().replica_id.unique_id
        capacity = int(spec["infer_params"].get("max_adapters_per_replica") or self.setup.max_adapters_per_replica)
        self.adapters = ReplicaAdapters(capacity, self.engine, model_type=spec["pretrained_model_type"],
                                        tracked=self._tracked)

    # -- bookkeeping -------------------------------------------------------------------------------
    @contextmanager
    def _tracked(self) -> Iterator[None]:
        """A request in flight while the block runs (requests_in_flight; the health check's hang limit)."""
        rid = uuid.uuid4().hex
        with self._lock:
            self._inflight[rid] = time.monotonic()
        try:
            yield
        finally:
            with self._lock:
                self._inflight.pop(rid, None)
                self._served += 1

    def _stamped(self, requests: Sequence[dict], results: list[dict]) -> list[dict]:
        """The answers with the replica (and the adapter each went through) in their metadata."""
        for req, r in zip(requests, results):
            if "metadata" in r:
                r["metadata"]["replica"] = self.replica_id
                if isinstance(req.get("adapter"), dict):
                    r["metadata"]["adapter"] = req["adapter"]["ref"]
        return results

    # -- calls -----------------------------------------------------------------------------------
    async def generate(self, requests: list[dict]) -> list[dict]:
        """Many requests in, one result each out, in order: `{"output", "metadata"}` or `{"error", "error_code"}`.
        Requests may name different adapters (and none): they still share the engine's batches."""
        self._answered += len(requests)
        with self._tracked():
            async with self.adapters.using(requests) as given:
                results = await self.engine.generate(given)
        return self._stamped(requests, results)

    async def chat(self, request: dict) -> dict:
        """One request; concurrent single requests share the engine's batches. A request naming an adapter
        this replica cannot serve is refused here, not in the batch it would share with other chats."""
        self._answered += 1
        with self._tracked():
            async with self.adapters.using([request]) as (given,):
                result = await self.engine.chat(given)
        return self._stamped([request], [result])[0]

    async def stream(self, request: dict) -> AsyncIterator[dict]:
        """Yield `{"delta": text}` pieces, then `{"delta": "", "metadata": {...}, "done": True}`.

        A caller that goes away cancels this generator; the engine then stops the generation after its next
        token, and the replica counts it in `requests_cancelled` (see `meta`)."""
        sent = ""
        meta: dict = {}
        pieces = 0
        try:
            with self._tracked():
                async with self.adapters.using([request]) as (given,), \
                        aclosing(self.engine.stream(given, uuid.uuid4().hex)) as items:
                    async for text, meta in items:
                        if text.startswith(sent):
                            delta = text[len(sent):]
                            if delta:
                                pieces += 1
                                yield {"delta": delta}
                        else:  # the engine revised earlier text: send it whole
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

    async def score(self, items: list[dict]) -> list[dict]:
        """Token log-likelihoods of texts (the plugin's `score_text`): `{"logprob", "tokens"}` per item."""
        with self._tracked():
            return await self.engine.score(items)

    async def rewards(self, pairs: list[dict]) -> list[float]:
        """A reward model's score of each `{"instruction", "response"}` pair (the plugin's `score`), in order."""
        with self._tracked():
            return await self.engine.rewards(pairs)

    async def embed(self, texts: list[str], with_usage: bool = False) -> Any:
        """One vector per text (the plugin's `embed_documents`, else `embed_query`). With `with_usage`,
        `{"vectors": [...], "prompt_tokens": n}`: n counts the texts' tokens with the model's tokenizer
        (0 for a model without one, e.g. a remote saas model)."""
        with self._tracked():
            vectors = await self.engine.embed(texts)
            if not with_usage:
                return vectors
            return {"vectors": vectors, "prompt_tokens": await self.engine.count_tokens(texts)}

    async def tokenize(self, text: str) -> list[str]:
        """`text` as the model's tokens (strings)."""
        with self._tracked():
            return await self.engine.tokenize(text)

    async def apply_chat_template(self, request: dict) -> str:
        """The prompt text the model would be given for `request` (a `config.ChatRequest` dict)."""
        with self._tracked():
            return await self.engine.prompt_text(request)

    def loaded_adapters(self) -> dict:
        """This replica's adapters: `{"replica", "capacity", "adapters": [rows of ReplicaAdapters.rows()],
        "loads", "unloads"}` (capacity None and no rows when the engine serves no adapters)."""
        a = self.adapters
        return {"replica": self.replica_id, "capacity": a.capacity if a.serves else None, "adapters": a.rows(),
                "loads": a.loads, "unloads": a.unloads}

    def meta(self) -> dict:
        meta = self.engine.meta()
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
            num_workers=self.setup.num_workers,
            adapters=self.adapters.serves and bool(meta.get("adapters", self.adapters.mode == "loaded")),
            max_adapters_per_replica=self.adapters.capacity if self.adapters.serves else None,
            engine_load=self.engine.load(),
        )
        return meta

    def check_health(self) -> None:
        """Serve calls this periodically; raising makes Serve replace the replica."""
        limit = self.request_timeout_s * HANG_FACTOR
        now = time.monotonic()
        with self._lock:
            oldest = min(self._inflight.values(), default=now)
        if now - oldest > limit:
            raise RuntimeError(f"a request has been running for {now - oldest:.0f} s (limit {limit:.0f} s): replica hung")
        self.engine.check_health()

    def __del__(self) -> None:
        """Serve calls this when the replica shuts down: stop the engine and its processes."""
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.shutdown()


SECRET_WORDS = ("key", "token", "secret", "password")


def _redacted(params: dict) -> dict:
    """Infer params as shown to callers: values of secret-looking keys (`saas.api_key`) hidden."""
    return {k: ("***" if any(w in k.lower() for w in SECRET_WORDS) else v) for k, v in params.items()}
