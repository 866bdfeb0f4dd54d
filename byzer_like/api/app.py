"""The OpenAI-compatible HTTP API and the chat page, as one ASGI application.

    GET  /health                 {"status": "ok", "models": N}
    GET  /v1/models              every deployment, with its metadata
    GET  /v1/models/{model}
    POST /v1/chat/completions    messages -> answer; "stream": true sends server-sent events ending with [DONE]
    POST /v1/completions         a prompt continued as it is (no chat template)
    POST /v1/embeddings          one text or many -> vectors ("float" or "base64")
    GET  /                       the chat page (static; it calls the endpoints above)

Every error is a 4xx/5xx in OpenAI's format, `{"error": {"message", "type", "param", "code"}}`,
never a traceback. When the server has an API key, every request but the static page needs
`Authorization: Bearer <key>`.
"""
from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import time
import uuid
from contextlib import aclosing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Mapping

from fastapi import FastAPI, Request
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.staticfiles import StaticFiles

from ..config import chat_request
from ..errors import (
    BackPressureError, ByzerError, ConfigError, InvalidRequestError, ModelNotDeployedError, NotSupportedError,
    RequestTimeoutError,
)
from .schemas import ChatCompletionRequest, CompletionRequest, EmbeddingRequest

log = logging.getLogger("byzer_like.api")
STATIC = Path(__file__).resolve().parent / "static"
PUBLIC_PATHS = ("/", "/favicon.ico")
# the page loads only its own files and talks only to this server
PAGE_CSP = "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'"
EMBED_CHUNK = 16


@dataclass(frozen=True)
class ApiSettings:
    """What the server enforces. The key itself never reaches the server: only its SHA-256."""

    api_key_sha256: str | None = None
    max_body_bytes: int = 1 << 20
    max_tokens_cap: int = 4096
    max_embedding_inputs: int = 2048
    request_timeout_s: float = 600.0


def key_digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class ApiError(Exception):
    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",  # noqa: A002 - OpenAI's name
                 param: str | None = None, code: str | None = None, headers: Mapping[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = dict(headers or {})

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def api_error(e: BaseException) -> ApiError:
    """The HTTP error for an exception raised while answering."""
    if isinstance(e, ApiError):
        return e
    if isinstance(e, ModelNotDeployedError):
        return ApiError(404, str(e), param="model", code="model_not_found")
    if isinstance(e, InvalidRequestError):
        code = "context_length_exceeded" if e.code == "prompt_too_long" else e.code
        return ApiError(400, str(e), code=code)
    if isinstance(e, (ConfigError, NotSupportedError)):
        return ApiError(400, str(e), code="invalid_value")
    if isinstance(e, BackPressureError):
        return ApiError(429, str(e), type="rate_limit_error", code="queue_full", headers={"Retry-After": "1"})
    if isinstance(e, RequestTimeoutError):
        return ApiError(504, str(e), type="timeout_error", code="timeout")
    if isinstance(e, ByzerError):
        return ApiError(500, str(e), type="server_error", code="model_error")
    log.exception("unexpected error in the HTTP API", exc_info=e)
    return ApiError(500, f"internal error ({type(e).__name__}); see the server's log", type="server_error")


def _error_response(e: ApiError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status, headers=e.headers)


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


def _usage(meta: Mapping[str, Any]) -> dict:
    prompt, completion = int(meta.get("input_tokens") or 0), int(meta.get("output_tokens") or 0)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _sse(data: Any) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


# -- the application ---------------------------------------------------------------------------------
def build_app(settings: ApiSettings, backend: Any) -> FastAPI:
    """The FastAPI application over `backend` (`api.backend.ServeBackend`)."""
    app = FastAPI(title="byzer-like", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(_Auth, digest=settings.api_key_sha256)
    app.mount("/static", _Revalidated(StaticFiles(directory=STATIC)), name="static")

    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, e: ApiError):
        return _error_response(e)

    @app.exception_handler(ByzerError)
    async def _byzer_error(_request: Request, e: ByzerError):
        return _error_response(api_error(e))

    @app.exception_handler(HTTPException)
    async def _http_error(_request: Request, e: HTTPException):
        code = "not_found" if e.status_code == 404 else None
        return _error_response(ApiError(e.status_code, str(e.detail), code=code))

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, e: Exception):
        return _error_response(api_error(e))

    @app.get("/")
    async def page():
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache", "Content-Security-Policy": PAGE_CSP})

    @app.get("/favicon.ico")
    async def favicon():
        return Response(status_code=204)

    @app.get("/health")
    async def health():
        return {"status": "ok", "models": len(await backend.models())}

    async def model_card(name: str, status: str) -> dict:
        try:
            meta = await backend.call(name, "meta", timeout_s=10)
        except Exception as e:  # noqa: BLE001 - one model's trouble must not hide the others
            meta = {"error": str(api_error(e).message)}
        return {"id": name, "object": "model", "created": int(meta.get("deployed_at") or 0), "owned_by": "byzer-like",
                "status": status, "metadata": meta}

    @app.get("/v1/models")
    async def models():
        listed = await backend.models(fresh=True)  # a listing shows a deployment made a moment ago
        cards = await asyncio.gather(*(model_card(n, s) for n, s in sorted(listed.items())))
        return {"object": "list", "data": list(cards)}

    @app.get("/v1/models/{model:path}")
    async def one_model(model: str):
        listed = await backend.models(fresh=True)
        if model not in listed:
            raise ModelNotDeployedError(model, listed)
        return await model_card(model, listed[model])

    async def answer(name: str, req: dict) -> tuple[str, dict]:
        result = await backend.call(name, "chat", req)
        if "error" in result:
            raise InvalidRequestError(result["error"], code=result.get("error_code", "invalid_request"))
        return result["output"], result.get("metadata") or {}

    async def first_and_rest(name: str, req: dict) -> tuple[dict | None, AsyncIterator[dict]]:
        """Start a stream and wait for its first item, so that a bad request is still a 4xx, not an event."""
        items = backend.stream(name, req)
        try:
            return await items.__anext__(), items
        except StopAsyncIteration:
            return None, items
        except BaseException:
            await items.aclose()
            raise

    def stream_response(events: AsyncIterator[str]) -> StreamingResponse:
        return StreamingResponse(events, media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def stream_events(first: dict | None, items: AsyncIterator[dict], chunk: Any, include_usage: bool,
                            start: list[dict]) -> AsyncIterator[str]:
        """SSE lines: `start` chunks, one chunk per text delta, the finish chunk, usage, then [DONE].
        Closing it (the client went away) closes `items`, which cancels the generation."""
        meta: dict = {}
        async with aclosing(items):
            try:
                for c in start:
                    yield _sse(c)
                pending = [first] if first is not None else []
                while True:
                    item = pending.pop() if pending else await items.__anext__()
                    if item.get("delta"):
                        yield _sse(chunk(item["delta"], None))
                    if item.get("done"):
                        meta = item.get("metadata") or {}
            except StopAsyncIteration:
                pass
            except Exception as e:  # noqa: BLE001 - the status line is sent: report in the stream
                yield _sse(api_error(e).body())
                yield "data: [DONE]\n\n"
                return
        yield _sse(chunk(None, meta.get("finish_reason") or "stop"))
        if include_usage:
            yield _sse(chunk(None, None, usage=_usage(meta)))
        yield "data: [DONE]\n\n"

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        body: ChatCompletionRequest = parse(ChatCompletionRequest, await read_json(request, settings.max_body_bytes))
        _check_cap(body, settings.max_tokens_cap)
        try:
            messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in body.messages]
        except ValueError as e:
            raise ApiError(400, str(e), param="messages", code="invalid_value") from None
        req = chat_request(messages, body.options()).model_dump()
        name, rid, created = body.model, f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        if not body.stream:
            text, meta = await answer(name, req)
            return JSONResponse({
                "id": rid, "object": "chat.completion", "created": created, "model": name,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                             "finish_reason": meta.get("finish_reason") or "stop", "logprobs": None}],
                "usage": _usage(meta), "system_fingerprint": meta.get("replica"),
            })

        def chunk(delta: str | None, finish: str | None, usage: dict | None = None, role: bool = False) -> dict:
            out: dict[str, Any] = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": name}
            if usage is not None:
                out.update(choices=[], usage=usage)
            else:
                d = {"role": "assistant", "content": ""} if role else ({"content": delta} if delta is not None else {})
                out["choices"] = [{"index": 0, "delta": d, "finish_reason": finish, "logprobs": None}]
            return out

        first, items = await first_and_rest(name, req)
        return stream_response(stream_events(first, items, chunk, body.include_usage(), [chunk(None, None, role=True)]))

    @app.post("/v1/completions")
    async def completions(request: Request):
        body: CompletionRequest = parse(CompletionRequest, await read_json(request, settings.max_body_bytes))
        _check_cap(body, settings.max_tokens_cap)
        try:
            prompt = body.prompt_text()
        except ValueError as e:
            raise ApiError(400, str(e), param="prompt", code="invalid_value") from None
        req = chat_request(prompt, {**body.options(), "generation.raw_prompt": True}).model_dump()
        name, rid, created = body.model, f"cmpl-{uuid.uuid4().hex}", int(time.time())

        def chunk(text: str | None, finish: str | None, usage: dict | None = None) -> dict:
            out: dict[str, Any] = {"id": rid, "object": "text_completion", "created": created, "model": name}
            if usage is not None:
                out.update(choices=[], usage=usage)
            else:
                out["choices"] = [{"index": 0, "text": text or "", "finish_reason": finish, "logprobs": None}]
            return out

        if not body.stream:
            text, meta = await answer(name, req)
            return JSONResponse({**chunk(text, meta.get("finish_reason") or "stop"), "usage": _usage(meta)})
        first, items = await first_and_rest(name, req)
        return stream_response(stream_events(first, items, chunk, body.include_usage(), []))

    @app.post("/v1/embeddings")
    async def embeddings(request: Request):
        body: EmbeddingRequest = parse(EmbeddingRequest, await read_json(request, settings.max_body_bytes))
        texts = body.texts()
        if len(texts) > settings.max_embedding_inputs:
            raise ApiError(400, f"{len(texts)} inputs; this server embeds at most {settings.max_embedding_inputs} per request",
                           param="input", code="invalid_value")
        if any(not t for t in texts):
            raise ApiError(400, "input must not contain empty strings", param="input", code="invalid_value")
        await backend.require(body.model)
        parts = [texts[i:i + EMBED_CHUNK] for i in range(0, len(texts), EMBED_CHUNK)]
        vectors = [v for part in await asyncio.gather(*(backend.call(body.model, "embed", p) for p in parts)) for v in part]
        data = []
        for i, vec in enumerate(vectors):
            if body.encoding_format == "base64":
                import numpy as np

                vec = base64.b64encode(np.asarray(vec, dtype="<f4").tobytes()).decode()
            data.append({"object": "embedding", "index": i, "embedding": vec})
        # token counts are not reported by the plugin contract's embed_query
        return {"object": "list", "data": data, "model": body.model, "usage": {"prompt_tokens": 0, "total_tokens": 0}}

    return app


class _Auth:
    """ASGI middleware: with a key set, every request but the static page needs `Bearer <key>`.

    A refused request is answered here, before any route runs, so nothing is generated for it."""

    def __init__(self, app: Any, digest: str | None):
        self.app, self.digest = app, digest

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or self.digest is None or self._public(scope["path"]):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        scheme, _, token = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(key_digest(token.strip()), self.digest):
            await self.app(scope, receive, send)
            return
        message = ("this server needs an API key: send the header 'Authorization: Bearer <key>'" if not token
                   else "the API key is not valid")
        error = ApiError(401, message, code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
        await _error_response(error)(scope, receive, send)

    @staticmethod
    def _public(path: str) -> bool:
        return path in PUBLIC_PATHS or path.startswith("/static/")


class _Revalidated:
    """ASGI wrapper: the page's static files are revalidated on every load, so an upgraded server
    never runs an old cached script beside a new page."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        async def send_no_cache(message: dict) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), (b"cache-control", b"no-cache")]}
            await send(message)

        await self.app(scope, receive, send_no_cache)
