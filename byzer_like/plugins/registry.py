"""Find plugins by name and check them against the contract.

Plugins are registered in the entry-point group `byzer_like.models` (name -> `package.module:attr`
or `package.module`); the built-in ones are registered the same way in this project's
pyproject.toml. `register()` adds one for the current process (its import path travels to the
workers, which import it themselves). `pretrained_model_type` may carry Byzer's prefixes:
`sft/llama` and `sfft/llama` pick the training entry points of `llama`; `custom/llama` is `llama` if that
plugin exists, else `auto` (Byzer's custom plugins). The built-in names come from the one table of model
types (`plugins.model_types`: causal LM families on the transformers and vLLM back ends, sentence-embedding
encoders, OpenAI-protocol saas/* types); Byzer-LLM's names that cannot run here are refused with the kinds
that work (`model_types.UNSUPPORTED`).
"""
from __future__ import annotations

import importlib
import time
from dataclasses import dataclass
from functools import lru_cache
from importlib.metadata import entry_points
from typing import Any, Iterator, Mapping, Sequence

from ..errors import InvalidRequestError, NotSupportedError, PluginError, UnknownPluginError, UnsupportedModelTypeError
from .contract import REQUIRED, TRAINING, request_arguments
from .model_types import HINTS, MODEL_TYPES, UNSUPPORTED, UNSUPPORTED_SAAS, of_backend

ENTRY_POINT_GROUP = "byzer_like.models"
_registered: dict[str, str] = {}

# the built-in types (plugins/model_types.py: the one table of names, back ends and plugin import paths)
BUILTIN: dict[str, str] = {t.name: t.target for t in MODEL_TYPES.values()}
ENCODERS = tuple(of_backend("encoder"))
VLLM_FAMILIES = tuple(name.removeprefix("vllm/") for name in of_backend("vllm"))
REWARDS = tuple(of_backend("reward"))


@lru_cache(maxsize=1)
def _entry_points() -> dict[str, str]:
    return {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}


def available() -> dict[str, str]:
    """Known plugin names and their import paths (Byzer's built-in names, entry points, then `register()`)."""
    return {**BUILTIN, **_entry_points(), **_registered}


def supported_kinds() -> str:
    """What can be served, for errors: the local families and the saas/* types."""
    known = available()
    local = sorted(n for n in known if "/" not in n and n not in ENCODERS and n not in REWARDS)
    saas = sorted(n for n in known if n.startswith("saas/"))
    return (f"Hugging Face causal language models ({', '.join(local)}; custom/<name> is the plugin <name>, else "
            f"auto; vllm/<family> serves one on the vLLM engine), sentence-embedding encoders ({', '.join(ENCODERS)}; "
            f"custom/bge, custom/m3e), reward models ({', '.join(REWARDS)}) and OpenAI-protocol services ({', '.join(saas)})")


def resolve(name: str) -> tuple[str, str]:
    """A model type (no task prefix) -> (plugin name, import path). `custom/<x>` is the plugin x if there is
    one, else `auto`. UnsupportedModelTypeError for Byzer's types that cannot run here, UnknownPluginError
    (with a "did you mean" and the known names) for the rest."""
    known = available()
    if name in known:
        return name, known[name]
    if name.lower() in known:
        return name.lower(), known[name.lower()]
    head, sep, tail = name.partition("/")
    if sep and head.lower() == "custom" and tail and "/" not in tail:
        if tail.lower() in UNSUPPORTED:
            kind = UNSUPPORTED[tail.lower()]
            raise UnsupportedModelTypeError(name, kind, supported_kinds() + HINTS.get(kind, ""))
        return resolve(tail) if (tail in known or tail.lower() in known) else ("auto", known["auto"])
    if name.lower() in UNSUPPORTED:
        kind = UNSUPPORTED[name.lower()]
        raise UnsupportedModelTypeError(name, kind, supported_kinds() + HINTS.get(kind, ""))
    if sep and head.lower() == "saas" and tail.lower() in UNSUPPORTED_SAAS:
        raise UnsupportedModelTypeError(name, "a hosted service that does not speak the OpenAI protocol",
                                        supported_kinds() + "; a service with an OpenAI-compatible endpoint works "
                                        "as saas/openai with saas.base_url")
    raise UnknownPluginError(name, known)


def with_backend(name: str, backend: str) -> str:
    """The model type to deploy for `name` under `!byzerllm setup "infer_backend=..."`: with `vllm`, a local
    family `x` (or `custom/x`) becomes `vllm/x`; remote (`saas/*`), embedding (`bge`, `m3e`, ...) and
    already-`vllm/` types stay as they are.
    UnsupportedModelTypeError for a plugin the vLLM engine does not serve."""
    if backend != "vllm" or name.lower().startswith(("vllm/", "saas/")):
        return name
    plugin, _ = resolve(name)
    if backend_of(plugin) in ("remote", "encoder", "reward"):  # encoders and reward models: their own back ends
        return name
    if f"vllm/{plugin}" not in MODEL_TYPES:
        raise UnsupportedModelTypeError(
            name, f"the plugin {plugin!r}, which the vLLM engine does not serve",
            f"with infer_backend=vllm: {', '.join(VLLM_FAMILIES)} (or vllm/<family>); "
            'for this plugin use !byzerllm setup "infer_backend=transformers"')
    return f"vllm/{plugin}"


def register(name: str, import_path: str, *, replace: bool = False) -> None:
    """Make `name` resolve to `import_path` (`package.module` or `package.module:attr`) in this process."""
    if not name or "/" in name or name != name.strip():
        raise PluginError(f"plugin name {name!r} is not valid: use letters, digits, '_' or '-'")
    if not replace and name in available() and available()[name] != import_path:
        raise PluginError(f"plugin {name!r} is already registered as {available()[name]}; pass replace=True")
    _registered[name] = import_path


def backend_of(name: str) -> str:
    """The back end that serves plugin `name` (a resolved type): its row of the model-type table, or "plugin"
    for one registered by a package of its own (its functions on worker threads, or its own engine)."""
    t = MODEL_TYPES.get(name)
    return t.backend if t is not None else "plugin"


def import_target(import_path: str) -> Any:
    """The object `package.module[:attr]` names (a plugin). Byzer plugins' `from pyjava.api.mlsql import
    RayContext` works where pyjava is not installed (`plugins.pyjava`). PluginError when it cannot be imported."""
    from .pyjava import install_fallback

    install_fallback()
    module_name, _, attr = import_path.partition(":")
    try:
        obj = importlib.import_module(module_name)
    except ImportError as e:
        raise PluginError(f"plugin module {module_name!r} cannot be imported: {e}") from e
    for part in filter(None, attr.split(".")):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise PluginError(f"plugin {import_path!r}: {module_name} has no attribute {attr!r}") from None
    return obj


def check(target: Any, label: str, needs: Sequence[str] = REQUIRED) -> None:
    missing = [n for n in needs if not callable(getattr(target, n, None))]
    if missing:
        raise PluginError(
            f"plugin {label} does not provide {', '.join(missing)}; a model plugin must define "
            f"{', '.join(REQUIRED)} (training also needs {', '.join(TRAINING)}); "
            "see byzer_like.plugins.contract.ModelPlugin"
        )


def load(name: str, *, needs: Sequence[str] = REQUIRED) -> "Plugin":
    """Import and check the plugin a model type names (no task prefix; see `resolve`)."""
    return load_path(*resolve(name), needs=needs)


def load_path(name: str, import_path: str, *, needs: Sequence[str] = REQUIRED) -> "Plugin":
    """Import and check a plugin by its import path (inside a worker)."""
    target = import_target(import_path)
    check(target, f"{name!r} ({import_path})", needs)
    return Plugin(name=name, import_path=import_path, target=target)


def _normalise_item(item: Any) -> tuple[str, dict]:
    if isinstance(item, str):
        return item, {}
    if isinstance(item, (tuple, list)) and item and isinstance(item[0], str):
        meta = item[1] if len(item) > 1 and isinstance(item[1], Mapping) else {}
        meta = dict(meta.get("metadata", meta)) if isinstance(meta, Mapping) else {}
        return item[0], meta
    raise PluginError(f"stream_chat yielded {type(item).__name__}; expected a string or a (text, metadata) tuple")


@dataclass
class Plugin:
    """A checked plugin, with calls normalised to the contract's rules."""

    name: str
    import_path: str
    target: Any

    def has(self, attr: str) -> bool:
        return callable(getattr(self.target, attr, None))

    def infer_param_names(self) -> set[str]:
        names = getattr(self.target, "infer_param_names", None)
        if callable(names):
            names = names()
        return set(names or ())

    def needs_model_dir(self) -> bool:
        """False for plugins of remote models (`needs_model_dir = False`), which deploy without one."""
        return bool(getattr(self.target, "needs_model_dir", True))

    def check_model_dir(self, model_dir: str, infer_params: Mapping[str, Any]) -> None:
        if self.has("check_model_dir"):
            self.target.check_model_dir(model_dir, infer_params)

    def own_engine(self, model: Any, tokenizer: Any) -> Any:
        """The serving engine the plugin brings for a loaded model (`engine(model, tokenizer)`, see
        contract.ChatEngine), or None: its functions then run on worker threads (`plugins.engine`)."""
        if not self.has("engine"):
            return None
        engine = self.target.engine(model, tokenizer)
        if engine is not None:
            missing = [n for n in ("generate", "stream", "abort", "load", "shutdown") if not callable(getattr(engine, n, None))]
            if missing:
                raise PluginError(f"plugin {self.name!r}: its engine does not provide {', '.join(missing)}; "
                                  "see byzer_like.plugins.contract.ChatEngine")
        return engine

    def runtime_env(self, infer_params: Mapping[str, Any], sys_conf: Mapping[str, Any]) -> dict:
        """Ray's runtime_env the plugin asks for its replicas ({} when it asks for none)."""
        if not self.has("runtime_env"):
            return {}
        env = self.target.runtime_env(infer_params, sys_conf)
        if not isinstance(env, Mapping):
            raise PluginError(f"plugin {self.name!r}: runtime_env must return a dict, got {type(env).__name__}")
        return dict(env)

    def serves_adapters(self) -> bool:
        """Whether the plugin loads LoRA adapters per request over its model (`load_adapter` and
        `unload_adapter`, or an engine that takes the request's adapter itself)."""
        return self.has("load_adapter") and self.has("unload_adapter")

    def load_adapter(self, model: Any, adapter_dir: str, name: str) -> None:
        """Load the LoRA adapter in `adapter_dir` over `model` under `name` (NotSupportedError without it)."""
        if not self.serves_adapters():
            raise NotSupportedError(f"plugin {self.name!r} does not provide load_adapter: it cannot serve LoRA "
                                    "adapters per request; merge the adapter into its base and deploy that")
        self.target.load_adapter(model, adapter_dir, name)

    def unload_adapter(self, model: Any, name: str) -> None:
        """Remove the adapter loaded as `name` from `model`."""
        self.target.unload_adapter(model, name)

    def init_model(self, model_dir: str, infer_params: dict, sys_conf: dict) -> tuple[Any, Any]:
        out = self.target.init_model(model_dir, infer_params, sys_conf)
        if not (isinstance(out, (tuple, list)) and len(out) == 2):
            raise PluginError(f"plugin {self.name!r}: init_model must return (model, tokenizer), got {type(out).__name__}")
        return out[0], out[1]

    def stream(self, model: Any, tokenizer: Any, request: Mapping[str, Any]) -> Iterator[tuple[str, dict]]:
        """Yield `(text_so_far, metadata)`; the last item is the whole answer with timing filled in."""
        ins, his, options = request_arguments(request)
        start = time.perf_counter()
        first = None
        text, meta = "", {}
        gen = self.target.stream_chat(model, tokenizer, ins, his, **options)
        try:
            for item in gen:
                text, meta = _normalise_item(item)
                if first is None:
                    first = time.perf_counter() - start
                yield text, meta
        finally:
            close = getattr(gen, "close", None)
            if close:
                close()
        meta = dict(meta)
        meta.setdefault("time_to_first_token_s", first)
        meta.setdefault("generation_s", time.perf_counter() - start)
        yield text, meta

    def batch(self, model: Any, tokenizer: Any, requests: Sequence[Mapping[str, Any]]) -> list[dict]:
        """Answer many requests; each result is `{"output", "metadata"}` or `{"error", "error_code"}`."""
        if self.has("batch_chat"):
            results = self.target.batch_chat(model, tokenizer, requests)
            if len(results) != len(requests):
                raise PluginError(f"plugin {self.name!r}: batch_chat returned {len(results)} answers for {len(requests)} requests")
            out = []
            for text, meta in results:
                if text is None:
                    out.append({"error": meta.get("error", "failed"), "error_code": meta.get("error_code", "error")})
                else:
                    out.append({"output": text, "metadata": meta})
            return out
        out = []
        for req in requests:
            try:
                text, meta = "", {}
                for text, meta in self.stream(model, tokenizer, req):
                    pass
                out.append({"output": text, "metadata": meta})
            except InvalidRequestError as e:
                out.append({"error": str(e), "error_code": e.code})
        return out

    def embed(self, model: Any, tokenizer: Any, text: str, **kwargs: Any) -> list[float]:
        """One text's vector (the plugin's `embed_query`); NotSupportedError without it."""
        if not self.has("embed_query"):
            raise NotSupportedError(f"plugin {self.name!r} does not provide embed_query: it cannot make embeddings")
        return [float(x) for x in self.target.embed_query(model, tokenizer, text, **kwargs)]

    def embed_many(self, model: Any, tokenizer: Any, texts: Sequence[str]) -> list[list[float]]:
        """One vector per text, in order: the plugin's batched `embed_documents` where it has one, else
        `embed_query` text by text."""
        if not self.has("embed_documents"):
            return [self.embed(model, tokenizer, t) for t in texts]
        out = self.target.embed_documents(model, tokenizer, list(texts))
        if len(out) != len(texts):
            raise PluginError(f"plugin {self.name!r}: embed_documents returned {len(out)} vectors for {len(texts)} texts")
        return [[float(x) for x in v] for v in out]

    def score(self, model: Any, tokenizer: Any, items: Sequence[Mapping[str, Any]]) -> list[dict]:
        """Token log-likelihoods of texts (the optional `score_text`); NotSupportedError without it."""
        if not self.has("score_text"):
            raise NotSupportedError(f"plugin {self.name!r} does not provide score_text: it cannot score text, so "
                                    "perplexity cannot be measured with it")
        out = self.target.score_text(model, tokenizer, list(items))
        if len(out) != len(items):
            raise PluginError(f"plugin {self.name!r}: score_text returned {len(out)} scores for {len(items)} texts")
        return [{"logprob": float(o["logprob"]), "tokens": int(o["tokens"])} for o in out]

    def rewards(self, model: Any, tokenizer: Any, pairs: Sequence[Mapping[str, Any]]) -> list[float]:
        """One reward per pair (`{"instruction", "response"}`; the optional `score`, see contract.Score), in
        order; NotSupportedError for a plugin that is no reward model."""
        if not self.has("score"):
            raise NotSupportedError(f"plugin {self.name!r} does not provide score: it is not a reward model; deploy one "
                                    'trained with pretrainedModelType="rm/<family>" (modelTable="<its name>")')
        out = self.target.score(model, tokenizer, [dict(p) for p in pairs])
        if len(out) != len(pairs):
            raise PluginError(f"plugin {self.name!r}: score returned {len(out)} rewards for {len(pairs)} pairs")
        return [float(x) for x in out]

    def meta(self, model: Any, tokenizer: Any) -> dict:
        return dict(self.target.get_meta(model, tokenizer)) if self.has("get_meta") else {}

    def tokenize(self, model: Any, tokenizer: Any, text: str) -> list[str]:
        """`text` as the model's tokens (strings); NotSupportedError for a model without a tokenizer."""
        if not callable(getattr(tokenizer, "tokenize", None)):
            raise NotSupportedError(f"model type {self.name!r} has no tokenizer to split text with")
        return [str(t) for t in tokenizer.tokenize(text)]

    def prompt_text(self, model: Any, tokenizer: Any, request: Mapping[str, Any]) -> str:
        """The text the model is given for `request` (its chat template applied): the plugin's
        `build_prompt` where it has one, else the tokenizer's chat template."""
        ins, his, options = request_arguments(request)
        if self.has("build_prompt"):
            return str(self.target.build_prompt(tokenizer, ins, his, options))
        if callable(getattr(tokenizer, "apply_chat_template", None)):
            messages = [*his, {"role": "user", "content": ins}]
            return str(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
        raise NotSupportedError(f"model type {self.name!r} has no chat template to apply")


__all__ = [
    "BUILTIN", "ENCODERS", "REWARDS", "ENTRY_POINT_GROUP", "Plugin", "available", "backend_of", "check", "load",
    "load_path", "register", "resolve", "supported_kinds", "with_backend", "VLLM_FAMILIES",
]
