"""The client's types, as Byzer-LLM names them: answers (`LLMResponse`, `LLMClassResponse`), the request object
`LLMRequest`, the back-end names `InferBackend`, prompt templates (`Template`, `Templates`), and LazyLLM's
handle on a model with an eval set (`ModelHandle`)."""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Callable

from ..errors import ConfigError


@dataclass
class LLMResponse:
    """One answer: the text, what was asked, and metadata (token counts, timings, finish reason)."""

    output: Any
    input: Any
    metadata: dict = field(default_factory=dict)

    def __str__(self) -> str:
        return str(self.output)


@dataclass
class LLMClassResponse:
    """An answer asked for with `response_class` (Byzer-LLM's type): `value` is the validated instance
    (None when the answer did not parse; `metadata["reason"]` says why), `response` the plain answer."""

    response: LLMResponse
    value: Any
    metadata: dict = field(default_factory=dict)

    @property
    def output(self) -> Any:
        return self.response.output

    @property
    def input(self) -> Any:
        return self.response.input


@dataclass
class LLMRequest:
    """Byzer-LLM's request object, as `emb(model, LLMRequest(instruction=[...]))` and `chat` take it."""

    instruction: str | list[str]
    embedding: bool = False
    max_length: int = 4096
    top_p: float = 0.95
    temperature: float = 0.1


class InferBackend(str, enum.Enum):
    """Byzer-LLM's inference back ends. `Transformers` (also spelled `transformers`) is the built-in
    engine; `VLLM` deploys local models on vLLM's async engine (see byzer_like/backends/vllm_engine.py); the
    others are named so Byzer code reads, and `setup_infer_backend` says they are not available."""

    Transformers = "transformers"
    transformers = "transformers"
    VLLM = "ray/vllm"
    vllm = "ray/vllm"
    LLAMA_CPP = "llama_cpp"
    llama_cpp = "llama_cpp"
    DeepSpeed = "ray/deepspeed"
    deepspeed = "ray/deepspeed"

    def __str__(self) -> str:
        return self.value


@dataclass
class Template:
    """How a model's prompts are written: `role_mapping` None uses the tokenizer's own chat template
    (what "auto" means); otherwise a plain-text dialogue `User:... Assistant:` with these role names
    (`user_role`, `assistant_role`, `system_msg`). `generation_config` are request options added to
    every call (`generation.*` keys); `clean_func` tidies each answer."""

    name: str
    role_mapping: dict | None = None
    generation_config: dict = field(default_factory=dict)
    clean_func: Callable[[str], str] | None = None


class Templates:
    """Byzer-LLM's template names. A Hugging Face model's tokenizer carries its chat template, which the
    built-in engine applies, so `qwen()`, `llama()` ... and `auto()` all use it; `default()` is
    Byzer's plain `User:` / `Assistant:` dialogue, for base models without a chat template."""

    @staticmethod
    def auto() -> Template:
        return Template("auto")

    @staticmethod
    def default() -> Template:
        return Template("default", role_mapping={"user_role": "User:", "assistant_role": "Assistant:"})

    @staticmethod
    def qwen() -> Template:
        return Template("qwen")

    @staticmethod
    def llama() -> Template:
        return Template("llama")

    @staticmethod
    def yi() -> Template:
        return Template("yi")

    @staticmethod
    def empty() -> Template:
        return Template("empty")


class ModelHandle:
    """A model (a deployment's name, `deployment:adapter`, or a registry version) as a callable with an eval set,
    LazyLLM style: `m("question")` is the answer's text, `m(["q1", "q2"])` the answers of a batch (one list, in
    order, spread over the replicas), so a handle is a stage of a flow (`byzer_like.flows`)."""

    def __init__(self, llm: Any, model: str):
        """`llm`: the `ByzerLLM` that asks and evaluates; `model`: a deployment's name, `name:adapter` (a registered
        LoRA adapter on that deployment's base) or a registry version (`m@v2`, for `eval`)."""
        self.llm = llm
        self.model = model
        self._rows: Any = None
        self._options: dict[str, Any] = {}
        self.eval_result: Any = None

    def __call__(self, question: Any, **llm_config: Any) -> Any:
        """`question` a string: the answer's text; a list or tuple of strings: their answers' texts, in order (one
        batch); `llm_config`: generation options (`max_new_tokens`, `temperature`, ...). ConfigError for
        anything else (a flow handing a model a dict or a number is a wiring mistake to see at once)."""
        from ..runtime.adapters import MODEL_ADAPTER_SEP

        name, sep, adapter = self.model.partition(MODEL_ADAPTER_SEP)
        if isinstance(question, str):
            return self.llm.chat_oai(question, name, llm_config or None, adapter=adapter if sep else None)[0].output
        if isinstance(question, (list, tuple)) and all(isinstance(q, str) for q in question):
            answers = self.llm.batch_chat(list(question), name, llm_config or None, adapter=adapter if sep else None)
            return [a.output for a in answers]
        raise ConfigError(f"model {self.model!r} takes a question (a string) or a list of them, not "
                          f"{type(question).__name__}; put a stage before it that makes the question")

    def __repr__(self) -> str:
        return f"<model {self.model}>"

    def evalset(self, rows: Any, **options: Any) -> "ModelHandle":
        """Set the eval set (rows or a table) and evaluation options (metrics=..., judge=...); returns self."""
        self._rows = rows
        self._options = dict(options)
        return self

    def eval(self, **options: Any) -> Any:
        """Evaluate on the eval set; the `EvalResult` is kept in `eval_result` and returned."""
        if self._rows is None:
            raise ConfigError("this model has no eval set yet: call .evalset(rows) first")
        self.eval_result = self.llm.evaluate(self.model, self._rows, **{**self._options, **options})
        return self.eval_result


__all__ = ["InferBackend", "LLMClassResponse", "LLMRequest", "LLMResponse", "ModelHandle", "Template", "Templates"]
