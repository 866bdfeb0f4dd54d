"""The OpenAI-compatible HTTP API and the chat page, as one ASGI application.

    GET  /health                 {"status": "ok", "models": N}
    GET  /v1/models              every deployment, with its metadata
    GET  /v1/models/{model}
    POST /v1/chat/completions    messages -> answer; "stream": true sends server-sent events ending with [DONE]
    POST /v1/completions         a prompt continued as it is (no chat template)
    POST /v1/embeddings          one text or many -> vectors ("float" or "base64")
    POST /v1/score               a reward model's score of each {instruction, response} pair
    GET  /                       the chat page (static; it calls the endpoints above)

Every error is a 4xx/5xx in OpenAI's format, `{"error": {"message", "type", "param", "code"}}`,
never a traceback. When the server has an API key, every request but the static page needs
`Authorization: Bearer <key>`.

The endpoints live in `api.routes`, answer bodies and SSE framing in `api.sse`, the error mapping in
`api.errors`; this module puts them together behind the key check.
"""
from __future__ import annotations

import hmac
from typing import Any

from fastapi import FastAPI
from starlette.staticfiles import StaticFiles

from .errors import ApiError, api_error, error_response, install_error_handlers
from .routes import STATIC, Routes
from .settings import ApiSettings, key_digest

PUBLIC_PATHS = ("/", "/favicon.ico")


def build_app(settings: ApiSettings, backend: Any) -> FastAPI:
    """The FastAPI application over `backend` (`runtime.aio.AsyncRuntime`: the runtime's verbs for an event loop)."""
    app = FastAPI(title="byzer-like", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(_Auth, digest=settings.api_key_sha256)
    app.mount("/static", _Revalidated(StaticFiles(directory=STATIC)), name="static")
    install_error_handlers(app)
    Routes(settings, backend).register(app)
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
        await error_response(error)(scope, receive, send)

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


__all__ = ["ApiError", "ApiSettings", "api_error", "build_app", "key_digest"]
