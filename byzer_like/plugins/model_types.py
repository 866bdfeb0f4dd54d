"""The built-in model types, in one table: every name `pretrainedModelType` may say, the back end that serves
it, where its plugin is, and the facts that plugin needs. The plugin registry resolves names through it;
SQL's errors, `infer_backend`, the client, the CLI (`byzer-like models types`) and the docs read it.

    back end      module                    serves
    transformers  backends/hf.py            Hugging Face causal LMs on the built-in engine
    vllm          backends/vllm_engine.py   the same families on vLLM's engine (`vllm/<family>`)
    encoder       backends/encoder.py       sentence-embedding encoders (BERT family): vectors, no chat
    remote        backends/remote.py        services that speak the OpenAI protocol (`saas/*`)
    reward        backends/reward.py        reward models (what `rm/<family>` trains): one score per answer, no chat

The plugin packages in `models/` (installed as `byzer_like_models`) build their plugin objects from this
table; a third-party package adds a type through the `byzer_like.models` entry-point group instead. Byzer-LLM's
types that cannot run here are listed with what they are (UNSUPPORTED), so the error can say so. This module
imports nothing heavy.
"""
from __future__ import annotations

from dataclasses import dataclass

# what each back end is, for the CLI and the docs
BACKENDS: dict[str, str] = {
    "transformers": "Hugging Face causal LMs on the built-in engine (static batches of model.generate that shrink "
                    "as rows end; LoRA adapters per request)",
    "vllm": "the same families on vLLM's async engine (continuous batching, paged KV cache)",
    "encoder": "sentence-embedding encoders (BERT family): vectors, no chat",
    "remote": "a service that speaks the OpenAI protocol (saas/*)",
    "reward": "reward models (sequence classifiers with one output, trained by rm/<family>): a score per answer",
}


@dataclass(frozen=True)
class ModelType:
    """One `pretrainedModelType`: `backend` (a key of BACKENDS), `target` (the import path of its plugin object,
    `package.module:attr`, resolved in the worker), `config_types` (config.json `model_type` values its model
    directories may hold; empty: any), `pooling` (encoders: how token states become one vector)."""

    name: str
    backend: str
    target: str
    config_types: tuple[str, ...] = ()
    pooling: str | None = None


@dataclass(frozen=True)
class Provider:
    """A hosted service that speaks the OpenAI protocol: `saas/<name>` with its base URL (None: the user
    gives saas.base_url), the environment variable a worker reads its key from when saas.api_key is not
    given, and the model used when saas.model is not given (None: saas.model is required)."""

    name: str
    base_url: str | None
    key_env: str
    default_model: str | None = None


# the causal LM families: name -> the config.json model_type values of its checkpoints (empty: any)
FAMILIES: dict[str, tuple[str, ...]] = {
    "llama": ("llama", "mistral"),
    "qwen2": ("qwen2",),
    "gpt2": ("gpt2",),
    "auto": (),
}
# Byzer-LLM's model folder names that are Hugging Face causal LM families: each loads the way `auto` does,
# after checking config.json's model_type
BYZER_FAMILIES: dict[str, tuple[str, ...]] = {
    "llama2": ("llama",),
    "qwen": ("qwen", "qwen2"),
    "chatglm2": ("chatglm",),
    "chatglm6b": ("chatglm",),
    "baichuan": ("baichuan",),
    "falcon": ("falcon", "RefinedWeb", "RefinedWebModel"),
    "zephyr": ("mistral",),
    "dolly": ("gpt_neox",),
    "moss": ("moss",),
    "starcode": ("gpt_bigcode", "starcoder2"),
}
# config.json model_type values of the sentence encoders the `encoder` type serves
ENCODER_CONFIG_TYPES = ("bert", "xlm-roberta", "roberta", "distilbert", "ernie", "mpnet", "electra", "camembert",
                        "modernbert", "nomic_bert", "new")
# Byzer-LLM's sentence-embedding model folders (bge-large-zh, bge-m3, m3e-base) -> (config.json model_type values
# of their checkpoints, the pooling they were trained with); `encoder` takes any other encoder
ENCODER_FAMILIES: dict[str, tuple[tuple[str, ...], str]] = {
    "encoder": (ENCODER_CONFIG_TYPES, "mean"),
    "bge": (("bert", "xlm-roberta"), "cls"),  # bge-large-zh / bge-base-en (BERT), bge-m3 (XLM-RoBERTa)
    "bge_m3": (("xlm-roberta",), "cls"),
    "m3e": (("bert", "roberta"), "mean"),  # m3e-base / m3e-large: sentence-transformers, mean pooling
}
# Byzer-LLM's saas/* types whose services have OpenAI-compatible endpoints (one adapter, this table);
# saas.base_url overrides a URL here (a proxy, a regional endpoint, a local test server)
PROVIDERS: dict[str, Provider] = {p.name: p for p in (
    Provider("openai", None, "OPENAI_API_KEY"),
    Provider("official_openai", "https://api.openai.com/v1", "OPENAI_API_KEY", "gpt-4o-mini"),
    Provider("reasoning_openai", None, "OPENAI_API_KEY"),
    Provider("qianwen", "https://dashscope.aliyuncs.com/compatible-mode/v1", "DASHSCOPE_API_KEY", "qwen-turbo"),
    Provider("deepseek", "https://api.deepseek.com/v1", "DEEPSEEK_API_KEY", "deepseek-chat"),
    Provider("moonshot", "https://api.moonshot.cn/v1", "MOONSHOT_API_KEY", "moonshot-v1-8k"),
    Provider("kimi", "https://api.moonshot.cn/v1", "MOONSHOT_API_KEY", "moonshot-v1-8k"),
    Provider("zhipu", "https://open.bigmodel.cn/api/paas/v4", "ZHIPUAI_API_KEY", "glm-4"),
    Provider("baichuan", "https://api.baichuan-ai.com/v1", "BAICHUAN_API_KEY", "Baichuan2-Turbo"),
    Provider("siliconflow", "https://api.siliconflow.cn/v1", "SILICONFLOW_API_KEY"),
    Provider("together", "https://api.together.xyz/v1", "TOGETHER_API_KEY"),
    Provider("groq", "https://api.groq.com/openai/v1", "GROQ_API_KEY"),
)}
AZURE = Provider("azure_openai", None, "AZURE_OPENAI_API_KEY")


def _table() -> dict[str, ModelType]:
    types = [ModelType(name, "transformers", f"byzer_like_models.{name}:plugin", config) for name, config in FAMILIES.items()]
    types += [ModelType(name, "transformers", f"byzer_like_models.auto:families.{name}", config)
              for name, config in BYZER_FAMILIES.items()]
    types += [ModelType(f"vllm/{t.name}", "vllm", f"byzer_like_models.vllm:families.{t.name}", t.config_types)
              for t in list(types)]
    types += [ModelType(name, "encoder", "byzer_like_models.encoder:" + ("plugin" if name == "encoder" else f"families.{name}"),
                        config, pooling) for name, (config, pooling) in ENCODER_FAMILIES.items()]
    types += [ModelType(f"saas/{name}", "remote", "byzer_like_models.saas_openai:" +
                        ("plugin" if name == "openai" else f"providers.{name}")) for name in PROVIDERS]
    types.append(ModelType(f"saas/{AZURE.name}", "remote", "byzer_like_models.saas_openai:azure"))
    types.append(ModelType("reward", "reward", "byzer_like.backends.reward:plugin"))
    return {t.name: t for t in types}


MODEL_TYPES: dict[str, ModelType] = _table()

# Byzer-LLM's model types that cannot run here, with what they are (the error names the kinds that can)
UNSUPPORTED: dict[str, str] = {
    **dict.fromkeys(("visualglm", "qwen_vl", "qwen_vl_chat", "llava"), "a multimodal (image + text) model"),
    **dict.fromkeys(("whisper", "sensevoice", "qwen_voice"), "a speech recognition model"),
    **dict.fromkeys(("bark", "chattts"), "a speech synthesis model"),
    **dict.fromkeys(("stable_diffusion", "sd", "sdxl"), "an image generation model"),
    **dict.fromkeys(("bge_rerank", "bge_reranker"), "a reranking (cross-encoder) model"),
}
# what to use instead, for some of them
HINTS: dict[str, str] = {"a reranking (cross-encoder) model": '; for embeddings deploy a sentence encoder '
                         '(pretrainedModelType="custom/bge" or "m3e") and call it with llm_param(map("embedding_query", text))'}
# Byzer-LLM's saas/* types whose services do not speak the OpenAI protocol
UNSUPPORTED_SAAS = ("sparkdesk", "minimax", "claude", "gemini", "aws_bedrock", "pangu", "qianfan", "qianwen_vl",
                    "volcengine", "azure", "filelogger")


def of_backend(backend: str) -> list[str]:
    """The names of the built-in types that back end `backend` serves, in table order."""
    return [t.name for t in MODEL_TYPES.values() if t.backend == backend]


__all__ = ["AZURE", "BACKENDS", "BYZER_FAMILIES", "ENCODER_CONFIG_TYPES", "ENCODER_FAMILIES", "FAMILIES", "HINTS",
           "MODEL_TYPES", "ModelType", "PROVIDERS", "Provider", "UNSUPPORTED", "UNSUPPORTED_SAAS", "of_backend"]
