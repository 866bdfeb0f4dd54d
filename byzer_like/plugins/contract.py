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

Required: `init_model`, `stream_chat`. Training (`sft_train`, `sfft_train`, and preference training's
`dpo_train`, `orpo_train`, `kto_train`, reward models' `rm_train`, PPO's `ppo_train`) is required only when a training job asks for it. Optional: `batch_chat` (many requests in one batched forward pass),
`embed_query` (and `embed_documents`: many texts in batches), `get_meta`, `check_model_dir` (raise before
anything starts), `infer_param_names` (extra `where` keys the plugin reads), `score_text` (token
log-likelihoods of texts: perplexity in evaluation), `score` (a reward model's one number per
(instruction, response) pair: `Score` below), `build_prompt` (the prompt text of a request), and
the attribute `needs_model_dir = False` for a plugin of a remote model that deploys without a model
directory (`saas/openai`).

The serving seam (Ray Serve LLM's split between its server and its engine): a replica holds exactly one
chat engine (`ChatEngine` below) and hands it every call. `plugins.engine.engine_for` makes it from the
plugin: by default the plugin's functions run on worker threads (`ThreadEngine`: `batch_chat` for batches,
`stream_chat` for streams, concurrent single chats batched together); a plugin whose model is a serving
engine of its own (vLLM: continuous batching, paged KV cache) provides

    engine(model, tokenizer) -> engine object   # called once per replica, after init_model
    runtime_env(infer_params, sys_conf) -> dict  # on the driver, before the replicas start

and that object (at least `generate`, `stream`, `abort`, `load`, `shutdown`; `check_health` if it has one)
gets every request as it arrives (a whole chunk of a SQL select at once: it schedules them), streams its
items under the streaming rules above and aborts a request whose caller went away; the plugin's functions
still answer the rest (embeddings, scores, tokens, meta). `runtime_env` is Ray's runtime_env for the
plugin's replicas, e.g. `{"py_executable": ".../.venv-vllm/bin/python"}` when the engine's libraries need
a Python environment of their own.

Many LoRA adapters over one base model (optional): a request may name a registered adapter trained on the
deployment's base (`m@qa_model` in SQL, `model="m:qa_model"` over HTTP, `adapter=` in the client). The
driver resolves it in the registry and checks its base (runtime/adapters.py), so a request reaches a
replica with `adapter` = `{"ref", "name", "version", "path", "base_model"}`, or without the key for the
base model. Then:

    load_adapter(model, adapter_dir, name)   # load the adapter over the loaded model under `name`
    unload_adapter(model, name)              # and remove it again (the replica's LRU evicted it)

A replica whose engine runs the plugin's functions keeps up to `max_adapters_per_replica` adapters loaded
this way (least recently used ones are unloaded; ones in use by a running request only after it) and hands
the plugin each request with `adapter` replaced by the `name` it loaded it under: `batch_chat` reads it from
the request, `stream_chat` receives it as the keyword argument `adapter`. Requests for different adapters
(and the base model) may arrive in one `batch_chat` call; the plugin answers each row through its own
adapter (the built-in engine: peft's mixed-adapter batches, one forward pass). An engine receives the
registry's dict as it is (vLLM: a LoRARequest per request) and says `"adapters": True` in `get_meta`
(with `"max_lora_rank"`, the driver refuses an adapter of a larger rank: AdapterRankError); an engine or plugin that cannot serve adapters is refused on the driver before any request is sent.
"""
from __future__ import annotations

from typing import Any, AsyncIterator, Iterable, Mapping, Protocol, Sequence, runtime_checkable

from ..tasks import TASKS

REQUIRED = ("init_model", "stream_chat")
TRAINING = tuple(task.entry_point for task in TASKS.values())  # sft_train, sfft_train, dpo_train, ...
OPTIONAL = ("batch_chat", "embed_query", "embed_documents", "get_meta", "check_model_dir", "infer_param_names",
            "score_text", "score", "engine", "runtime_env", "load_adapter", "unload_adapter")


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

    def dpo_train(self, data_refs: Any, train_params: dict[str, str], sys_conf: dict[str, str]) -> Any:
        """Direct preference optimisation on a prompt / chosen / rejected table (`orpo_train` takes the same;
        `kto_train` a prompt / completion / label table). The built-in plugins run `train.preference`."""

    def ppo_train(self, data_refs: Any, train_params: dict[str, str], sys_conf: dict[str, str]) -> Any:
        """PPO on a prompt table against the reward model whose folder the job resolved at submit (its options,
        `train_params['byzer.options']`, hold `reward_model_dir`). The built-in plugins run `train.ppo`
        (TRL's RLOOTrainer)."""


def request_arguments(request: Mapping[str, Any]) -> tuple[str, list[dict], dict[str, Any]]:
    """A request (`config.ChatRequest` as a dict) as `stream_chat`'s `ins`, `his` and keyword arguments.

    `max_length` is passed only when the caller gave it, so that the plugin's own default applies."""
    options: dict[str, Any] = {"top_p": request.get("top_p", 0.95), "temperature": request.get("temperature", 0.1)}
    options.update(request.get("kwargs") or {})
    if isinstance(request.get("adapter"), str):  # the name the replica loaded the request's adapter under
        options["adapter"] = request["adapter"]
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


class EmbedDocuments(Protocol):
    def embed_documents(self, model: Any, tokenizer: Any, texts: Sequence[str]) -> list[list[float]]:
        """One vector per text, in order, the same as `embed_query` gives each (batched forward passes).
        A sentence encoder (models/encoder) provides it; without it the replica calls `embed_query` per text."""


class GetMeta(Protocol):
    def get_meta(self, model: Any, tokenizer: Any) -> dict:
        """Facts about the loaded model (context length, family, parameters, ...)."""


class ScoreText(Protocol):
    def score_text(self, model: Any, tokenizer: Any, items: Sequence[Mapping[str, Any]]) -> list[dict]:
        """Token log-likelihoods, for perplexity. Each item is `{"text": str}` (the text scored from its
        second token on) or `{"text", "ins", "his"}` (the answer `text` after the chat prompt of `ins` and
        `his`, built as `stream_chat` builds it; only the answer's tokens are scored). Returns one
        `{"logprob": <sum of natural-log probabilities>, "tokens": <tokens scored>}` per item, in order."""


class Score(Protocol):
    def score(self, model: Any, tokenizer: Any, pairs: Sequence[Mapping[str, Any]]) -> list[float]:
        """A reward model's scores (`backends/reward.py`, trained by `rm/<family>`): `pairs` is a list of
        `{"instruction": str, "response": str}` (optional `system`, and `input` added to the instruction);
        returns one float per pair, in order (higher: the better answer to that instruction). A plugin that
        provides it serves SQL's model calls as one DOUBLE per row when its `get_meta` says `"kind": "reward"`;
        `ByzerLLM.score` and `POST /v1/score` reach it too. It never streams."""


class ServesAdapters(Protocol):
    def load_adapter(self, model: Any, adapter_dir: str, name: str) -> None:
        """Load the LoRA adapter in `adapter_dir` (trained on this model) under `name`; the requests whose
        `adapter` is `name` are answered through it from then on. May be called while other requests run."""

    def unload_adapter(self, model: Any, name: str) -> None:
        """Remove the adapter loaded as `name`; no running request uses it."""


@runtime_checkable
class ChatEngine(Protocol):
    """What a replica holds, one per replica: every call of the replica is one of these. Requests are
    `config.ChatRequest` dicts, as `batch_chat` and `stream_chat` receive them (`request_arguments` unpacks
    one); a request's `adapter` is the name it was loaded under ("loaded") or the registry's dict
    ("per_request"). Every method may be called from any event loop and thread."""

    adapters: str  # how it serves LoRA adapters: "loaded" | "per_request" | "none" (see above)

    async def generate(self, requests: Sequence[Mapping[str, Any]]) -> list[dict]:
        """Answer every request (all submitted at once; the engine batches them as it sees fit): one
        `{"output": text, "metadata": {...}}` or `{"error": message, "error_code": code}` per request, in
        order. Metadata as `stream_chat`'s: input_tokens, output_tokens, finish_reason, generation_s."""

    async def chat(self, request: Mapping[str, Any]) -> dict:
        """One request's answer, as `generate` gives it; concurrent chats may share a batch."""

    def stream(self, request: Mapping[str, Any], request_id: str) -> AsyncIterator[tuple[str, dict]]:
        """Yield `(text_so_far, metadata)` under the streaming rules above; the last item is the whole
        answer with its metadata. Closing the iterator (the caller went away) stops the request."""

    async def abort(self, request_id: str) -> None:
        """Stop request `request_id` now (nothing happens if it ended)."""

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """One vector per text, in order (NotSupportedError for a model that makes none)."""

    async def count_tokens(self, texts: Sequence[str]) -> int:
        """Tokens of `texts` as the model sees them, without special tokens (0 without a tokenizer)."""

    async def score(self, items: Sequence[Mapping[str, Any]]) -> list[dict]:
        """Token log-likelihoods, `ScoreText.score_text`'s items and answers (NotSupportedError without it)."""

    async def rewards(self, pairs: Sequence[Mapping[str, Any]]) -> list[float]:
        """One reward per pair, `Score.score`'s pairs and answers (NotSupportedError without it)."""

    async def tokenize(self, text: str) -> list[str]:
        """`text` as the model's tokens (strings)."""

    async def prompt_text(self, request: Mapping[str, Any]) -> str:
        """The prompt the model is given for `request` (its chat template applied)."""

    def load_adapter(self, adapter_dir: str, name: str) -> None:
        """"loaded" mode: load the adapter in `adapter_dir` under `name` (blocking; on a worker thread)."""

    def unload_adapter(self, name: str) -> None:
        """"loaded" mode: remove the adapter loaded as `name` (blocking; no running request uses it)."""

    def meta(self) -> dict:
        """Facts about the loaded model (`GetMeta.get_meta`'s)."""

    def load(self) -> dict:
        """What the engine is doing now, for routing and `meta`: at least `requests_running` and
        `requests_waiting`."""

    def check_health(self) -> None:
        """Raise when the engine cannot serve any more (a hung model call, a dead engine process)."""

    def shutdown(self) -> None:
        """Stop the engine and every process it started (the replica is going away)."""


class EngineProvider(Protocol):
    def engine(self, model: Any, tokenizer: Any) -> Any:
        """The engine of its own serving `model` (what `init_model` returned): at least `generate`, `stream`,
        `abort`, `load` and `shutdown` of `ChatEngine`; None to run the plugin's functions on threads."""

    def runtime_env(self, infer_params: Mapping[str, str], sys_conf: Mapping[str, str]) -> dict:
        """Ray's runtime_env for this plugin's replicas (called on the driver when it deploys); raise a
        typed error saying what to install when the environment it needs is missing."""
