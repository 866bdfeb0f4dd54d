"""The HTTP API's endpoints: one method of `Routes` each, over one backend and one server's settings.

Request bodies are read under the size limit, validated (`parse`) and checked against the server's
caps before anything reaches a model; a streamed answer waits for its first item before the 200 is
sent, so that a request the model refuses is still a 4xx rather than an event.
"""
from __future__ import annotations

import asyncio
import base64
import json
import logging
from pathlib import Path
from typing import Any, AsyncIterator, Mapping

from fastapi import FastAPI, Request
from pydantic import BaseModel, ValidationError
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse

from ..config import chat_request
from ..errors import ConfigError, InvalidRequestError, ModelNotDeployedError
from ..runtime.adapters import MODEL_ADAPTER_SEP, split_model
from .errors import ApiError, api_error
from .schemas import ChatCompletionRequest, CompletionRequest, EmbeddingRequest, ScoreRequest
from .settings import ApiSettings

log = logging.getLogger("byzer_like.api")
from .sse import ChatChunks, Chunks, CompletionChunks, event_stream, events

STATIC = Path(__file__).resolve().parent / "static"
# the page loads only its own files and talks only to this server
PAGE_CSP = "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'"
EMBED_CHUNK = 16


# -- request helpers ---------------------------------------------------------------------------------
async def read_json(request: Request, limit: int) -> Any:
    """The body as JSON, refused (413) past `limit` bytes whether or not it announced its length."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise ApiError(413, f"the request body is {int(length)} bytes; this server accepts at most {limit}",
                       code="request_too_large")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"the request body is over {limit} bytes, this server's limit", code="request_too_large")
        chunks.append(chunk)
    try:
        return json.loads(b"".join(chunks) or b"null")
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ApiError(400, f"the request body is not valid JSON: {e}", code="invalid_json") from None


def parse(model: type[BaseModel], data: Any) -> Any:
    """`data` as a `model` body; a 400 naming the first invalid or unsupported field."""
    if not isinstance(data, dict):
        raise ApiError(400, "the request body must be a JSON object", code="invalid_json")
    try:
        body = model.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        param = ".".join(str(p) for p in first["loc"]) or None
        more = e.error_count() - 1
        more = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
        raise ApiError(400, f"{param}: {first['msg']}{more}", param=param, code="invalid_value") from None
    refused = body.refused()
    if refused:
        param, why = refused[0]
        raise ApiError(400, why, param=param, code="unsupported_parameter")
    return body


def _check_cap(body: Any, cap: int) -> None:
    wanted = body.answer_tokens()
    if wanted is not None and wanted > cap:
        param = "max_completion_tokens" if body.max_completion_tokens else "max_tokens"
        raise ApiError(400, f"{param}={wanted} is above this server's cap of {cap} tokens; ask for fewer",
                       param=param, code="invalid_value")


def _chat_messages(body: ChatCompletionRequest) -> list[dict]:
    try:
        return [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in body.messages]
    except ValueError as e:
        raise ApiError(400, str(e), param="messages", code="invalid_value") from None


def _prompt(body: CompletionRequest) -> str:
    try:
        return body.prompt_text()
    except ValueError as e:
        raise ApiError(400, str(e), param="prompt", code="invalid_value") from None


def _model_and_adapter(model: str) -> tuple[str, str | None]:
    """The `model` field: a deployment, or `<deployment>:<adapter>` (a registered LoRA adapter over it)."""
    try:
        return split_model(model)
    except ConfigError as e:
        raise ApiError(400, str(e), param="model", code="invalid_value") from None


def _embedding(vec: list[float], encoding_format: str) -> Any:
    if encoding_format != "base64":
        return vec
    import numpy as np

    return base64.b64encode(np.asarray(vec, dtype="<f4").tobytes()).decode()


# -- the endpoints -----------------------------------------------------------------------------------
class Routes:
    """The endpoints over `backend` (`runtime.aio.AsyncRuntime`), under `settings`."""

    def __init__(self, settings: ApiSettings, backend: Any):
        self.settings, self.backend = settings, backend

    def register(self, app: FastAPI) -> None:
        """Add every endpoint to `app` (no response models: the bodies are built here)."""
        for method, path, endpoint in (
            ("GET", "/", self.page), ("GET", "/favicon.ico", self.favicon), ("GET", "/health", self.health),
            ("GET", "/v1/models", self.models), ("GET", "/v1/models/{model:path}", self.one_model),
            ("POST", "/v1/chat/completions", self.chat_completions), ("POST", "/v1/completions", self.completions),
            ("POST", "/v1/embeddings", self.embeddings), ("POST", "/v1/score", self.score),
        ):
            app.add_api_route(path, endpoint, methods=[method], response_model=None)

    async def page(self) -> Response:
        """GET /: the chat page."""
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache", "Content-Security-Policy": PAGE_CSP})

    async def favicon(self) -> Response:
        """GET /favicon.ico: none."""
        return Response(status_code=204)

    async def health(self) -> dict:
        """GET /health: up, and how many models are deployed."""
        return {"status": "ok", "models": len(await self.backend.models())}

    async def models(self) -> dict:
        """GET /v1/models: every deployment's card, each followed by a card per registered LoRA adapter its
        replicas can serve (`"id": "<deployment>:<adapter>"`, `"parent"`: the deployment, `"root"`: the
        adapter's registry reference, as vLLM lists its LoRA modules; the newest version of each name)."""
        listed = await self.backend.models(fresh=True)  # a listing shows a deployment made a moment ago
        cards = await asyncio.gather(*(self._card(n, s) for n, s in sorted(listed.items())))
        data: list[dict] = []
        for card in cards:
            data.append(card)
            data.extend(await self._adapter_cards(card))
        return {"object": "list", "data": data}

    async def _adapter_cards(self, card: Mapping[str, Any]) -> list[dict]:
        """The cards of the adapters deployment `card` serves per request (none if it serves none)."""
        meta = card.get("metadata") or {}
        if not meta.get("adapters") or not callable(getattr(self.backend, "adapters_of", None)):
            return []
        try:
            rows = await self.backend.adapters_of(str(meta.get("model_dir") or ""))
        except Exception:  # noqa: BLE001 - an unreadable registry must not hide the deployments
            log.exception("listing the adapters of %s", card["id"])
            return []
        return [{"id": f"{card['id']}{MODEL_ADAPTER_SEP}{m.name}", "object": "model", "created": int(m.created_at),
                 "owned_by": "byzer-like", "status": card["status"], "parent": card["id"], "root": m.ref,
                 "metadata": {"adapter": m.ref, "version": m.version, "path": m.path, "base_model": m.base_model,
                              "stage": m.stage}} for m in rows]

    async def one_model(self, model: str) -> dict:
        """GET /v1/models/{model}: one deployment's card, or one adapter's (`m:qa_model`); 404 if it is not
        deployed (model_not_found) or not an adapter the deployment serves (adapter_not_found)."""
        name, adapter = split_model(model)
        listed = await self.backend.models(fresh=True)
        if name not in listed:
            raise ModelNotDeployedError(name, listed)
        card = await self._card(name, listed[name])
        if adapter is None:
            return card
        cards = await self._adapter_cards(card)
        found = next((c for c in cards if c["id"] == model), None)
        if found is None:
            raise ApiError(404, f"deployment {name!r} serves no registered adapter {adapter!r}; its adapters: "
                           f"{', '.join(c['id'] for c in cards) or '(none)'}", param="model", code="adapter_not_found")
        return found

    async def _card(self, name: str, status: str) -> dict:
        try:
            meta = await self.backend.call(name, "meta", timeout_s=10)
        except Exception as e:  # noqa: BLE001 - one model's trouble must not hide the others
            meta = {"error": str(api_error(e).message)}
        return {"id": name, "object": "model", "created": int(meta.get("deployed_at") or 0), "owned_by": "byzer-like",
                "status": status, "metadata": meta}

    async def chat_completions(self, request: Request) -> Response:
        """POST /v1/chat/completions: messages -> the assistant's answer, whole or streamed."""
        body: ChatCompletionRequest = await self._body(request, ChatCompletionRequest)
        _check_cap(body, self.settings.max_tokens_cap)
        name, adapter = _model_and_adapter(body.model)
        try:
            req = chat_request(_chat_messages(body), {**body.options(), "adapter": adapter}).model_dump()
        except ConfigError as e:  # e.g. a response_format that is not OpenAI's shape or not valid JSON Schema
            param = "response_format" if "response_format" in str(e) else None
            raise ApiError(400, str(e), param=param, code="invalid_value") from None
        chunks = ChatChunks.new(body.model)
        if not body.stream:
            return JSONResponse(chunks.whole(*await self._answer(name, req)))
        return await self._stream(name, body, req, chunks, [chunks.role()])

    async def completions(self, request: Request) -> Response:
        """POST /v1/completions: a prompt continued as it is (no chat template), whole or streamed."""
        body: CompletionRequest = await self._body(request, CompletionRequest)
        _check_cap(body, self.settings.max_tokens_cap)
        name, adapter = _model_and_adapter(body.model)
        req = chat_request(_prompt(body), {**body.options(), "generation.raw_prompt": True, "adapter": adapter}).model_dump()
        chunks = CompletionChunks.new(body.model)
        if not body.stream:
            return JSONResponse(chunks.whole(*await self._answer(name, req)))
        return await self._stream(name, body, req, chunks, [])

    async def embeddings(self, request: Request) -> dict:
        """POST /v1/embeddings: one text or many -> vectors ("float" or "base64")."""
        body: EmbeddingRequest = await self._body(request, EmbeddingRequest)
        texts = self._embedding_inputs(body)
        await self.backend.require(body.model)
        parts = [texts[i:i + EMBED_CHUNK] for i in range(0, len(texts), EMBED_CHUNK)]
        answers = await asyncio.gather(*(self.backend.call(body.model, "embed", p, True) for p in parts))
        data = [{"object": "embedding", "index": i, "embedding": _embedding(vec, body.encoding_format)}
                for i, vec in enumerate(v for part in answers for v in part["vectors"])]
        tokens = sum(part["prompt_tokens"] for part in answers)  # counted by each replica's tokenizer
        return {"object": "list", "data": data, "model": body.model,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}

    async def score(self, request: Request) -> dict:
        """POST /v1/score: `{"model", "pairs": [{"instruction", "response"}, ...]}` -> a reward model's
        `{"object": "list", "model", "scores": [one float per pair, in order]}` (at most max_embedding_inputs
        pairs per request)."""
        body: ScoreRequest = await self._body(request, ScoreRequest)
        most = self.settings.max_embedding_inputs
        if len(body.pairs) > most:
            raise ApiError(400, f"{len(body.pairs)} pairs; this server scores at most {most} per request",
                           param="pairs", code="invalid_value")
        await self.backend.require(body.model)
        pairs = [p.model_dump(exclude_none=True) for p in body.pairs]
        parts = [pairs[i:i + EMBED_CHUNK] for i in range(0, len(pairs), EMBED_CHUNK)]
        answers = await asyncio.gather(*(self.backend.call(body.model, "rewards", p) for p in parts))
        return {"object": "list", "model": body.model, "scores": [float(v) for part in answers for v in part]}

    def _embedding_inputs(self, body: EmbeddingRequest) -> list[str]:
        texts = body.texts()
        most = self.settings.max_embedding_inputs
        if len(texts) > most:
            raise ApiError(400, f"{len(texts)} inputs; this server embeds at most {most} per request",
                           param="input", code="invalid_value")
        if any(not t for t in texts):
            raise ApiError(400, "input must not contain empty strings", param="input", code="invalid_value")
        return texts

    async def _body(self, request: Request, model: type[BaseModel]) -> Any:
        return parse(model, await read_json(request, self.settings.max_body_bytes))

    async def _answer(self, name: str, req: dict) -> tuple[str, dict]:
        result = await self.backend.chat(name, req)
        if "error" in result:
            raise InvalidRequestError(result["error"], code=result.get("error_code", "invalid_request"))
        return result["output"], result.get("metadata") or {}

    async def _stream(self, name: str, body: Any, req: dict, chunks: Chunks, start: list[dict]) -> StreamingResponse:
        first, items = await self._first_and_rest(name, req)
        return event_stream(events(first, items, chunks, body.include_usage(), start))

    async def _first_and_rest(self, name: str, req: dict) -> tuple[dict | None, AsyncIterator[dict]]:
        """Start a stream and wait for its first item, so that a bad request is still a 4xx, not an event."""
        items = self.backend.stream(name, req)
        try:
            return await items.__anext__(), items
        except StopAsyncIteration:
            return None, items
        except BaseException:
            await items.aclose()
            raise
