"""Requests for LoRA adapters over a deployed base model, made ready on the driver.

A request names a registered adapter by reference (`qa_model`, `qa_model@v2`, `qa_model@production`):
SQL's `m@qa_model(...)` and llm_param's `"adapter"` key, the HTTP API's `model="m:qa_model"`, the client's
`adapter=`. Before a request leaves the driver its reference becomes the registry's entry,

    {"ref": "qa_model@v2", "name": "qa_model", "version": 2, "path": "<adapter dir>", "base_model": "<dir>"}

so replicas never read the registry, a newly registered adapter (or version) is served at once (the next
request resolves to it; replicas load it lazily), and the result cache tells versions apart. The adapter
must have been trained on the deployment's base model: a mismatch is an AdapterBaseError naming the base it
needs; an unknown reference an AdapterNotFoundError listing the adapters registered for that base.
"""
from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

from ..catalog import Catalog
from ..errors import (AdapterBaseError, AdapterNotFoundError, AdapterRankError, ConfigError, ModelDirError,
                      ModelNotFoundError, NotSupportedError)

# a deployment and one of its adapters, as one model name: SQL's `m@qa_model` (a function name) or the HTTP
# API's `m:qa_model` (vLLM's and OpenAI-compatible servers' spelling, the one /v1/models lists); either is taken
# wherever a model name is (HTTP, the CLI's --model); a version follows the adapter as everywhere (`qa_model@v2`)
MODEL_ADAPTER_SEP = ":"
SQL_ADAPTER_SEP = "@"


def split_model(model: str) -> tuple[str, str | None]:
    """`"m:qa_model"` or `"m@qa_model"` -> `("m", "qa_model")`; `"m@qa_model@v2"` -> `("m", "qa_model@v2")`;
    `"m"` -> `("m", None)`. A deployment's name holds neither separator (`config.check_udf_name`), so the
    first one ends it. ConfigError for a separator with no adapter after it."""
    sep = MODEL_ADAPTER_SEP if MODEL_ADAPTER_SEP in model else SQL_ADAPTER_SEP
    name, found, adapter = model.partition(sep)
    if found and not adapter.strip():
        raise ConfigError(f"model {model!r} names no adapter after {sep!r}; write <model>:<adapter> or "
                          "<model>@<adapter>")
    return name, (adapter.strip() or None) if found else None


def same_dir(a: str | None, b: str | None) -> bool:
    """Whether two model directories are the same folder (paths compared resolved)."""
    if not a or not b:
        return False
    return os.path.realpath(a) == os.path.realpath(b)


def adapters_for(catalog: Catalog, model_dir: str) -> list[str]:
    """The registered adapters trained on base `model_dir`: the latest version of each name (`name@vN`)."""
    return [m.ref for m in adapter_models(catalog, model_dir)]


def adapter_models(catalog: Catalog, model_dir: str) -> list[Any]:
    """The registry's rows of the adapters trained on base `model_dir`: the latest version of each name, by name."""
    latest: dict[str, Any] = {}
    for m in catalog.models():  # ordered by name, version
        if m.kind == "adapter" and same_dir(m.base_model, model_dir):
            latest[m.name] = m
    return [latest[k] for k in sorted(latest)]


def base_name(catalog: Catalog, model_dir: str) -> str:
    """How to name a base model to a user: its registry reference and folder when it is registered, else its folder."""
    for m in reversed(catalog.models()):
        if m.kind == "model" and same_dir(m.path, model_dir):
            return f"{m.ref} ({model_dir})"
    return repr(model_dir)


def why_no_adapters(plugin: Any, adapter_dir: str | None, model_type: str) -> str | None:
    """Why a deployment that is still to be made (of `plugin`, merging `adapter_dir` when given) will not
    serve adapters per request, said as `resolve` says it of a running one; None when it will, or when only
    its engine knows (a plugin with an `engine` of its own, vLLM's: its LoRA switch)."""
    if adapter_dir:
        return (f"it merges the adapter {adapter_dir!r} into its weights when it loads; deploy the base model without "
                "adapter_dir to serve adapters over it")
    if not plugin.has("engine") and not plugin.serves_adapters():
        return f"its model type {model_type!r} does not load adapters per request"
    return None


def resolve(catalog: Catalog, ref: str, *, udf_name: str, meta: Mapping[str, Any]) -> dict:
    """The registry's entry of adapter `ref` for deployment `udf_name` (whose `meta` says what it serves).

    Raises NotSupportedError (the deployment cannot serve adapters per request: its plugin has no
    load_adapter, or it merged an adapter at load), AdapterNotFoundError (no such adapter, or a whole model:
    the message lists the adapters registered for the deployment's base), AdapterBaseError (trained on
    another base: the message names the base it needs), AdapterRankError (its LoRA rank is above the
    engine's `max_lora_rank` in `meta`, vLLM's: the message names the option to raise)."""
    model_dir = str(meta.get("model_dir") or "")
    if not meta.get("adapters"):
        merged = (meta.get("infer_params") or {}).get("adapter_dir")
        why = (f"it merged the adapter {merged!r} into its weights when it loaded; deploy the base model without "
               "adapter_dir to serve adapters over it") if merged else \
            ("its vLLM engine was started without LoRA (off by default on CPU): redeploy it with "
             '`vllm.enable_lora`="true"') if meta.get("engine") == "vllm" else \
            f"its model type {meta.get('pretrained_model_type')!r} does not load adapters per request"
        raise NotSupportedError(f"deployment {udf_name!r} cannot serve adapter {ref!r}: {why}")
    try:
        m = catalog.model(ref)
    except (ModelNotFoundError, ConfigError):
        raise AdapterNotFoundError(ref, udf_name, adapters_for(catalog, model_dir)) from None
    if m.kind != "adapter":
        raise AdapterNotFoundError(ref, udf_name, adapters_for(catalog, model_dir),
                                   why=f"{m.ref} is a whole model (kind {m.kind!r}), not a LoRA adapter: deploy it on its own")
    if not same_dir(m.base_model, model_dir):
        raise AdapterBaseError(m.ref, udf_name, base_name(catalog, m.base_model or ""), base_name(catalog, model_dir))
    if meta.get("max_lora_rank"):
        check_rank(m.ref, m.path, int(meta["max_lora_rank"]))
    return {"ref": m.ref, "name": m.name, "version": m.version, "path": m.path, "base_model": m.base_model}


def check_rank(ref: str, adapter_dir: str, max_rank: int) -> None:
    """AdapterRankError when the adapter in `adapter_dir` has a LoRA rank above `max_rank` (an engine's
    `vllm.max_lora_rank`); an adapter folder this process cannot read is left to the replica to check."""
    from ..backends.vllm_setup import adapter_rank, adapter_rank_message

    try:
        rank = adapter_rank(adapter_dir)
    except ModelDirError:
        return
    if rank > max_rank:
        raise AdapterRankError(adapter_rank_message(ref, rank, max_rank), ref=ref, rank=rank, max_rank=max_rank)


def with_adapters(catalog_of: Any, requests: Sequence[Mapping[str, Any]], *, udf_name: str,
                  meta_of: Any) -> list[dict]:
    """`requests` with each adapter reference (a string) replaced by its registry entry (`resolve`); requests
    without one, or already resolved, are passed as they are. Each distinct reference is looked up once.
    `catalog_of()` and `meta_of()` give the catalog and the deployment's meta, asked for only when a request
    names an adapter."""
    refs = {r["adapter"] for r in requests if isinstance(r.get("adapter"), str)}
    if not refs:
        return [dict(r) for r in requests]
    catalog, meta = catalog_of(), meta_of()
    found = {ref: resolve(catalog, ref, udf_name=udf_name, meta=meta) for ref in sorted(refs)}
    return [{**r, "adapter": found[r["adapter"]]} if isinstance(r.get("adapter"), str) else dict(r) for r in requests]


def routing_id(request: Mapping[str, Any]) -> str | None:
    """The Serve multiplexed model id a single request is routed by (its adapter's `name@vN`), or None."""
    a = request.get("adapter")
    return a["ref"] if isinstance(a, dict) else None


__all__ = ["adapter_models", "adapters_for", "base_name", "check_rank", "resolve", "routing_id", "same_dir", "split_model", "with_adapters"]
