"""The remote back end: `saas/openai` (and Byzer's other `saas/*` types that speak the OpenAI protocol), a
deployment that forwards to an OpenAI-compatible endpoint.

A hosted API, a vLLM server or another byzer-like's HTTP API becomes a model that SQL and the
client use like a local one:

    run command as LLM.`` where action="infer" and pretrainedModelType="saas/openai"
      and `saas.base_url`="http://127.0.0.1:8000/v1" and `saas.api_key`="..." and `saas.model`="chat"
      and udfName="remote_chat";

Retries with exponential back-off (honouring `Retry-After` on 429 and 5xx answers) are the openai
package's own; `saas.max_retries` sets how many. The remote model is checked when the deployment
starts, so a wrong URL, key or model name fails the deploy, not the first query.

Byzer's providers with OpenAI-compatible endpoints (saas/qianwen, saas/deepseek, saas/zhipu, ...) are one
adapter over the table `plugins.model_types.PROVIDERS` (base URL, key variable, default model); `saas/azure_openai` uses the
openai package's Azure client with Byzer's keys (saas.api_base, saas.api_version, saas.deployment_id).
"""
from __future__ import annotations

import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, Iterator, Mapping, Sequence
from urllib.parse import urlparse

from ..errors import (
    BackPressureError, ConfigError, DeployError, InferenceError, InvalidRequestError, PromptTooLongError,
    RequestTimeoutError, did_you_mean,
)
from ..plugins.contract import request_arguments
from ..plugins.model_types import AZURE, PROVIDERS, Provider

log = logging.getLogger(__name__)

PARAMS = {
    "saas.base_url": "the endpoint's base URL, e.g. http://127.0.0.1:8000/v1 (required)",
    "saas.model": "the model name the endpoint knows (required)",
    "saas.api_key": "the endpoint's key (default: the provider's variable on the worker, $OPENAI_API_KEY for "
                    "saas/openai, $DEEPSEEK_API_KEY for saas/deepseek..., else none)",
    "saas.embedding_model": "the model for embeddings (default: saas.model)",
    "saas.timeout": "seconds per request (default 120)",
    "saas.max_retries": "retries with back-off on 429, 5xx and connection errors (default 4)",
    "saas.concurrency": "requests in flight per worker for batches (default 8)",
    "saas.omit_fields": "optional request fields never to send, comma-separated, for providers that refuse "
                        "them: stream_options, seed, top_p (default none; a field the provider refuses with a "
                        "400 is dropped and the request sent again once, and then left out for the deployment)",
}
# The request fields an answer can do without (what is lost without each): a provider that refuses one with a
# 400 gets the request again without it, and the deployment stops sending it (`SaasConfig.omitted`).
OPTIONAL_FIELDS = {"stream_options": "token counts of streamed answers", "seed": "seeded sampling",
                   "top_p": "nucleus sampling"}


@dataclass(frozen=True)
class SaasConfig:
    base_url: str
    model: str
    api_key: str | None
    embedding_model: str | None
    timeout: float
    max_retries: int
    concurrency: int

    provider: str = "openai"
    # the optional fields this deployment does not send (saas.omit_fields, then each one a provider refused)
    omitted: set = field(default_factory=set, compare=False)

    @classmethod
    def from_params(cls, params: Mapping[str, Any], provider: Provider = PROVIDERS["openai"]) -> "SaasConfig":
        params = dict(params)
        if provider.base_url and not str(params.get("saas.base_url") or "").strip():
            params["saas.base_url"] = provider.base_url
        if provider.default_model and not str(params.get("saas.model") or "").strip():
            params["saas.model"] = provider.default_model
        missing = [k for k in ("saas.base_url", "saas.model") if not str(params.get(k) or "").strip()]
        if missing:
            raise ConfigError(f"saas/{provider.name} needs {' and '.join(missing)}; its options: " +
                              "; ".join(f"{k}: {v}" for k, v in PARAMS.items()))
        url = str(params["saas.base_url"]).strip().rstrip("/")
        parsed = urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ConfigError(f"saas.base_url {url!r} is not an http(s) URL (e.g. http://127.0.0.1:8000/v1)")

        def number(key: str, default: float, cast: type, low: float) -> Any:
            raw = params.get(key)
            try:
                value = cast(raw) if raw not in (None, "") else cast(default)
            except (TypeError, ValueError):
                raise ConfigError(f"{key} must be a number, not {raw!r}") from None
            if value < low:
                raise ConfigError(f"{key} must be at least {low}, not {value}")
            return value

        return cls(base_url=url, model=str(params["saas.model"]).strip(),
                   api_key=str(params.get("saas.api_key") or "") or os.environ.get(provider.key_env) or None,
                   embedding_model=str(params.get("saas.embedding_model") or "") or None,
                   timeout=number("saas.timeout", 120, float, 1), max_retries=number("saas.max_retries", 4, int, 0),
                   concurrency=number("saas.concurrency", 8, int, 1), provider=provider.name,
                   omitted=_omit_fields(params.get("saas.omit_fields")))


def _omit_fields(value: Any) -> set:
    """`saas.omit_fields` ("stream_options, seed") as a set; ConfigError naming the fields that can be omitted."""
    names = {n.strip() for n in str(value or "").split(",") if n.strip()}
    unknown = sorted(names - set(OPTIONAL_FIELDS))
    if unknown:
        n = unknown[0]
        raise ConfigError(f"saas.omit_fields: {n!r} is no optional request field; {did_you_mean(n, list(OPTIONAL_FIELDS))}"
                          f"the optional fields: {', '.join(OPTIONAL_FIELDS)}")
    return names


def _refused_field(e: Exception, params: Mapping[str, Any]) -> str | None:
    """The optional field in `params` that a provider's 400 refuses (the error's `param`, else the field's name
    in its message: "Unrecognized request argument supplied: stream_options"), or None."""
    import openai

    if not isinstance(e, openai.BadRequestError):
        return None
    body = e.body if isinstance(e.body, Mapping) else {}
    message = f"{getattr(e, 'message', '')} {body.get('message') or ''}"
    sent = [f for f in OPTIONAL_FIELDS if f in params]
    return next((f for f in sent if body.get("param") == f), None) or next((f for f in sent if f in message), None)


def create(model: Any, cfg: SaasConfig, params: Mapping[str, Any]) -> Any:
    """`chat.completions.create` without the fields the deployment omits; when the provider refuses an optional
    field (a 400 naming it), once more without it, and the deployment leaves it out from then on (logged)."""
    params = {k: v for k, v in params.items() if k not in cfg.omitted}
    try:
        return model.chat.completions.create(**params)
    except Exception as e:  # noqa: BLE001 - the caller translates what is not a refused field
        refused = _refused_field(e, params)
        if refused is None:
            raise
    cfg.omitted.add(refused)
    log.warning("saas/%s: %s refused the optional field %r; this deployment no longer sends it (without it: no %s). "
                "saas.omit_fields=\"%s\" leaves it out from the start", cfg.provider, cfg.base_url, refused,
                OPTIONAL_FIELDS[refused], ",".join(sorted(cfg.omitted)))
    return model.chat.completions.create(**{k: v for k, v in params.items() if k != refused})


def _error(e: Exception, cfg: SaasConfig) -> Exception:
    """An openai package error as byzer-like's typed error."""
    import openai

    where = f"{cfg.base_url} (model {cfg.model!r})"
    message = getattr(e, "message", None) or str(e)
    if isinstance(e, openai.BadRequestError):
        body = e.body if isinstance(e.body, Mapping) else {}
        code = str(body.get("code") or "invalid_request")
        if code in ("context_length_exceeded", "prompt_too_long"):
            return PromptTooLongError(f"{where}: {message}")
        return InvalidRequestError(f"{where}: {message}", code=code)
    if isinstance(e, openai.RateLimitError):
        return BackPressureError(f"{where} is rate limiting after {cfg.max_retries} retries: {message}")
    if isinstance(e, openai.APITimeoutError):
        return RequestTimeoutError(f"{where} did not answer within {cfg.timeout:.0f} s")
    if isinstance(e, openai.APIConnectionError):
        return InferenceError(f"cannot reach {cfg.base_url}: {message}")
    if isinstance(e, (openai.AuthenticationError, openai.PermissionDeniedError)):
        return InferenceError(f"{where} refused the key (saas.api_key): {message}")
    if isinstance(e, openai.APIStatusError):
        return InferenceError(f"{where} answered {e.status_code}: {message}")
    return e


class OpenAICompatiblePlugin:
    """The plugin contract over an OpenAI-compatible endpoint; `model` is an `openai.OpenAI` client.
    `provider`: the `saas/<name>` it serves (its default URL, key variable and model)."""

    needs_model_dir = False

    def __init__(self, provider: Provider = PROVIDERS["openai"]):
        self.provider = provider

    def __repr__(self) -> str:
        return f"OpenAICompatiblePlugin(saas/{self.provider.name})"

    def infer_param_names(self) -> set[str]:
        return set(PARAMS)

    def config(self, infer_params: Mapping[str, Any] | None) -> SaasConfig:
        return SaasConfig.from_params(infer_params or {}, self.provider)

    def check_model_dir(self, model_dir: str, infer_params: Mapping[str, Any] | None = None) -> None:
        self.config(infer_params)  # options are checked before anything starts

    def client(self, cfg: SaasConfig, infer_params: Mapping[str, Any]) -> Any:
        import openai

        return openai.OpenAI(base_url=cfg.base_url, api_key=cfg.api_key or "none", timeout=cfg.timeout,
                             max_retries=cfg.max_retries)

    def init_model(self, model_dir: str, infer_params: Mapping[str, Any] | None = None,
                   sys_conf: Mapping[str, Any] | None = None) -> tuple[Any, SaasConfig]:
        import openai

        cfg = self.config(infer_params)
        client = self.client(cfg, infer_params or {})
        try:
            served = [m.id for m in client.with_options(max_retries=1, timeout=min(cfg.timeout, 30)).models.list()]
        except openai.NotFoundError:
            served = None  # the endpoint has no model list: the first request tells
        except openai.APIError as e:
            raise DeployError(f"saas/{cfg.provider}: {_error(e, cfg)}") from None
        if served is not None and cfg.model not in served:
            raise DeployError(f"saas/{cfg.provider}: {cfg.base_url} does not serve saas.model {cfg.model!r}; "
                              f"it serves: {', '.join(served) or '(nothing)'}")
        return client, cfg

    def _params(self, cfg: SaasConfig, ins: str, his: Sequence[Mapping[str, str]], top_p: float, temperature: float,
                kwargs: Mapping[str, Any]) -> dict:
        messages = [{"role": "system", "content": str(kwargs["system_msg"])}] if kwargs.get("system_msg") else []
        messages += [{"role": m["role"], "content": m["content"]} for m in his]
        messages.append({"role": "user", "content": ins})
        params: dict[str, Any] = {"model": cfg.model, "messages": messages, "temperature": temperature, "top_p": top_p}
        if kwargs.get("max_new_tokens") is not None:
            params["max_tokens"] = int(kwargs["max_new_tokens"])
        if kwargs.get("stop"):
            params["stop"] = [kwargs["stop"]] if isinstance(kwargs["stop"], str) else list(kwargs["stop"])
        if kwargs.get("seed") is not None:
            params["seed"] = int(kwargs["seed"])
        return params

    def stream_chat(self, model: Any, tokenizer: SaasConfig, ins: str, his: list[dict[str, str]] | None = None,
                    max_length: int | None = None, top_p: float = 0.95, temperature: float = 0.1,
                    **kwargs: Any) -> Iterator[tuple[str, dict]]:
        cfg, text, meta = tokenizer, "", {"remote_model": tokenizer.model}
        params = self._params(cfg, ins, his or [], top_p, temperature, kwargs)
        start = time.perf_counter()
        try:
            stream = create(model, cfg, {**params, "stream": True, "stream_options": {"include_usage": True}})
        except Exception as e:  # noqa: BLE001 - translated
            raise _error(e, cfg) from None
        try:
            for chunk in stream:
                if chunk.usage is not None:
                    meta.update(input_tokens=chunk.usage.prompt_tokens, output_tokens=chunk.usage.completion_tokens)
                for choice in chunk.choices or []:
                    if choice.finish_reason:
                        meta["finish_reason"] = choice.finish_reason
                    if choice.delta and choice.delta.content:
                        text += choice.delta.content
                        meta.setdefault("time_to_first_token_s", time.perf_counter() - start)
                        yield text, dict(meta)
        except Exception as e:  # noqa: BLE001 - translated
            raise _error(e, cfg) from None
        finally:
            stream.close()  # the endpoint sees the client go away and stops generating
        meta["generation_s"] = time.perf_counter() - start
        yield text, meta

    def batch_chat(self, model: Any, tokenizer: SaasConfig, requests: Sequence[Mapping[str, Any]]) -> list[tuple[str | None, dict]]:
        """Many requests at once, `saas.concurrency` in flight; a request the endpoint refuses gets its own error."""
        cfg = tokenizer

        def one(request: Mapping[str, Any]) -> tuple[str | None, dict]:
            ins, his, options = request_arguments(request)
            params = self._params(cfg, ins, his, options.pop("top_p"), options.pop("temperature"), options)
            start = time.perf_counter()
            try:
                out = create(model, cfg, params)
            except Exception as e:  # noqa: BLE001 - translated
                err = _error(e, cfg)
                if isinstance(err, InvalidRequestError):
                    return None, {"error": str(err), "error_code": err.code}
                raise err from None
            choice = out.choices[0]
            meta = {"remote_model": cfg.model, "finish_reason": choice.finish_reason,
                    "generation_s": time.perf_counter() - start}
            if out.usage is not None:
                meta.update(input_tokens=out.usage.prompt_tokens, output_tokens=out.usage.completion_tokens)
            return choice.message.content or "", meta

        with ThreadPoolExecutor(max_workers=min(cfg.concurrency, max(1, len(requests)))) as pool:
            return list(pool.map(one, requests))

    def embed_query(self, model: Any, tokenizer: SaasConfig, text: str, **kwargs: Any) -> list[float]:
        cfg = tokenizer
        try:
            out = model.embeddings.create(model=cfg.embedding_model or cfg.model, input=[text], encoding_format="float")
        except Exception as e:  # noqa: BLE001 - translated
            raise _error(e, cfg) from None
        return list(out.data[0].embedding)

    def get_meta(self, model: Any, tokenizer: SaasConfig) -> dict:
        cfg = tokenizer
        return {"family": f"saas/{cfg.provider}", "saas": True, "base_url": cfg.base_url, "remote_model": cfg.model,
                "embedding_model": cfg.embedding_model or cfg.model, "streaming": True, "embedding": True,
                "max_batch_size": cfg.concurrency, "max_retries": cfg.max_retries}


AZURE_PARAMS = {
    "saas.api_base": "the Azure OpenAI resource's endpoint, e.g. https://<resource>.openai.azure.com (required; "
                     "also saas.azure_endpoint)",
    "saas.api_version": "the Azure OpenAI API version, e.g. 2024-06-01 (required)",
    "saas.deployment_id": "the deployment's name (required; also saas.azure_deployment)",
    "saas.api_type": "azure (Byzer's key; accepted)",
    "saas.api_key": "the resource's key (default: $AZURE_OPENAI_API_KEY on the worker)",
    "saas.model": "the model name shown in answers (default: saas.deployment_id)",
}


class AzureOpenAIPlugin(OpenAICompatiblePlugin):
    """`saas/azure_openai`: an Azure OpenAI deployment through the openai package's `AzureOpenAI` client,
    with Byzer's keys (saas.api_type, saas.api_base, saas.api_version, saas.deployment_id)."""

    def __init__(self) -> None:
        super().__init__(AZURE)

    def infer_param_names(self) -> set[str]:
        return set(PARAMS) | set(AZURE_PARAMS) | {"saas.azure_endpoint", "saas.azure_deployment"}

    def config(self, infer_params: Mapping[str, Any] | None) -> SaasConfig:
        p = {k: v for k, v in (infer_params or {}).items() if v not in (None, "")}
        api_type = str(p.get("saas.api_type", "azure")).strip().lower()
        if api_type != "azure":
            raise ConfigError(f"saas/azure_openai: saas.api_type must be azure, not {api_type!r} (for another "
                              "OpenAI-compatible service use saas/openai with saas.base_url)")
        endpoint = p.get("saas.api_base") or p.get("saas.azure_endpoint")
        deployment = p.get("saas.deployment_id") or p.get("saas.azure_deployment")
        missing = [k for k, v in (("saas.api_base", endpoint), ("saas.api_version", p.get("saas.api_version")),
                                  ("saas.deployment_id", deployment)) if not v]
        if missing:
            raise ConfigError(f"saas/azure_openai needs {' and '.join(missing)}; its options: " +
                              "; ".join(f"{k}: {v}" for k, v in AZURE_PARAMS.items()))
        return SaasConfig.from_params({**p, "saas.base_url": endpoint, "saas.model": p.get("saas.model") or deployment},
                                      self.provider)

    def client(self, cfg: SaasConfig, infer_params: Mapping[str, Any]) -> Any:
        import openai

        p = infer_params
        return openai.AzureOpenAI(azure_endpoint=cfg.base_url, api_version=str(p["saas.api_version"]),
                                  azure_deployment=str(p.get("saas.deployment_id") or p.get("saas.azure_deployment")),
                                  api_key=cfg.api_key or "none", timeout=cfg.timeout, max_retries=cfg.max_retries)

    def init_model(self, model_dir: str, infer_params: Mapping[str, Any] | None = None,
                   sys_conf: Mapping[str, Any] | None = None) -> tuple[Any, SaasConfig]:
        cfg = self.config(infer_params)  # the deployment is the model: there is no model list to check
        return self.client(cfg, infer_params or {}), cfg


plugin = OpenAICompatiblePlugin()
azure = AzureOpenAIPlugin()
# saas/<name> for each provider of the table (`plugins.model_types`: `byzer_like_models.saas_openai:providers.<name>`)
providers = SimpleNamespace(**{name: (plugin if name == "openai" else OpenAICompatiblePlugin(p))
                               for name, p in PROVIDERS.items()})


__all__ = ["AZURE_PARAMS", "AzureOpenAIPlugin", "OpenAICompatiblePlugin", "PARAMS", "PROVIDERS", "SaasConfig", "azure",
           "plugin", "providers"]
