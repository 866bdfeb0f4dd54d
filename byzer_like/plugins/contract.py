"""The model plugin contract (compatible with Byzer-LLM plugins).

A plugin is any object with these attributes: usually a module with module-level functions (the
Byzer-LLM way), or an instance of a class. byzer-like calls them like this:

    model, tokenizer = plugin.init_model(model_dir, infer_params, sys_conf)
    for text_so_far, metadata in plugin.stream_chat(model, tokenizer, ins, his,
                                                    max_length=..., top_p=..., temperature=..., **kwargs):
        ...

Streaming rules (the one place they are written down):
- `stream_chat` yields the text generated *so far* (not deltas), each item either a string or a
  `(text, metadata)` tuple. The last item is the whole answer. A plugin that returns a one-item list
  (Byzer style) therefore works unchanged; a real generator streams token by token.
- `his` is the history before `ins`, OpenAI style: `[{"role": "user"|"assistant"|"system", "content": ...}]`.
- `max_length` bounds prompt + answer tokens (Byzer semantics). `kwargs` carries every other request
  option: `generation.x` / `gen.x` keys arrive as `x` with the prefix removed, plus `system_msg`,
  `user_role`, `assistant_role`, `stop`, `seed`, `max_new_tokens` when the caller set them.
- Closing the generator early (a client went away) must stop the generation.
- Metadata keys byzer-like understands: `input_tokens`, `output_tokens`, `finish_reason`
  (`stop` | `length`), `time_to_first_token_s`, `generation_s`.

Required: `init_model`, `stream_chat`. Training (`sft_train`, `sfft_train`) is required only when a
training job asks for it. Optional: `batch_chat` (many requests in one batched forward pass),
`embed_query`, `get_meta`, `check_model_dir` (raise before anything starts), `infer_param_names`,
`score_text` (token log-likelihoods of texts: perplexity in evaluation)
(extra `where` keys the plugin reads), and the attribute `needs_model_dir = False` for a plugin of
a remote model that deploys without a model directory (`saas/openai`).
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping, Protocol, Sequence, runtime_checkable

from ..tasks import TASKS

REQUIRED = ("init_model", "stream_chat")
TRAINING = tuple(task.entry_point for task in TASKS.values())  # sft_train, sfft_train
OPTIONAL = ("batch_chat", "embed_query", "get_meta", "check_model_dir", "infer_param_names", "score_text")


@runtime_checkable
class ModelPlugin(Protocol):
    """What every plugin provides."""

    def init_model(self, model_dir: str, infer_params: dict[str, str], sys_conf: dict[str, str]) -> tuple[Any, Any]:
        """Load the model once per worker; return `(model, tokenizer)`.

        `infer_params` are the `where` keys of `run command as LLM` (or the client's `infer_params`),
        `sys_conf` what `!byzerllm setup` set. Both map names to strings."""

    def stream_chat(
        self,
        model: Any,
        tokenizer: Any,
        ins: str,
        his: list[dict[str, str]],
        max_length: int,
        top_p: float,
        temperature: float,
        **kwargs: Any,
    ) -> Iterable[tuple[str, dict] | str]:
        """Answer `ins` after `his`; yield the text so far (see the module docstring)."""


@runtime_checkable
class TrainablePlugin(Protocol):
    def sft_train(self, data_refs: Any, train_params: dict[str, str], sys_conf: dict[str, str]) -> Any:
        """Supervised fine-tuning on `data_refs` (an alpaca- or chat-form table)."""

    def sfft_train(self, data_refs: Any, train_params: dict[str, str], sys_conf: dict[str, str]) -> Any:
        """Continued pretraining on a text table, distributed (DeepSpeed)."""


def request_arguments(request: Mapping[str, Any]) -> tuple[str, list[dict], dict[str, Any]]:
    """A request (`config.ChatRequest` as a dict) as `stream_chat`'s `ins`, `his` and keyword arguments.

    `max_length` is passed only when the caller gave it, so that the plugin's own default applies."""
    options: dict[str, Any] = {"top_p": request.get("top_p", 0.95), "temperature": request.get("temperature", 0.1)}
    options.update(request.get("kwargs") or {})
    for key in ("max_new_tokens", "max_length"):
        if request.get(key) is not None:
            options[key] = request[key]
    return request["ins"], [dict(m) for m in request.get("his") or []], options


class BatchChat(Protocol):
    def batch_chat(self, model: Any, tokenizer: Any, requests: Sequence[Mapping[str, Any]]) -> list[tuple[str, dict]]:
        """Answer many requests (each with the keys of `stream_chat`'s arguments: ins, his, max_length,
        top_p, temperature, kwargs) in batched forward passes; one `(text, metadata)` per request, in
        order. A request that fails on its own returns `(None, {"error": message, "error_code": code})`."""


class EmbedQuery(Protocol):
    def embed_query(self, model: Any, tokenizer: Any, text: str, **kwargs: Any) -> list[float]:
        """A vector for `text`."""


class GetMeta(Protocol):
    def get_meta(self, model: Any, tokenizer: Any) -> dict:
        """Facts about the loaded model (context length, family, parameters, ...)."""


class ScoreText(Protocol):
    def score_text(self, model: Any, tokenizer: Any, items: Sequence[Mapping[str, Any]]) -> list[dict]:
        """Token log-likelihoods, for perplexity. Each item is `{"text": str}` (the text scored from its
        second token on) or `{"text", "ins", "his"}` (the answer `text` after the chat prompt of `ins` and
        `his`, built as `stream_chat` builds it; only the answer's tokens are scored). Returns one
        `{"logprob": <sum of natural-log probabilities>, "tokens": <tokens scored>}` per item, in order."""
