"""The HTTP API's errors, in OpenAI's format: `{"error": {"message", "type", "param", "code"}}`.

Every exception raised while answering maps to one status and body here (`api_error`), and the
application's exception handlers (`install_error_handlers`) send that body, never a traceback.
"""
from __future__ import annotations

import logging
from typing import Mapping

from fastapi import FastAPI, Request
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse

from ..errors import (
    AdapterBaseError, AdapterNotFoundError, AdapterRankError, BackPressureError, ByzerError, ConfigError, InvalidRequestError, ModelNotDeployedError, NotSupportedError,
    RequestTimeoutError,
)

log = logging.getLogger("byzer_like.api")


class ApiError(Exception):
    """An HTTP error answer: its status, OpenAI's error fields and any headers to send with it."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",  # noqa: A002 - OpenAI's name
                 param: str | None = None, code: str | None = None, headers: Mapping[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = dict(headers or {})

    def body(self) -> dict:
        """The JSON body OpenAI's clients expect."""
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def api_error(e: BaseException) -> ApiError:
    """The HTTP error for an exception raised while answering."""
    if isinstance(e, ApiError):
        return e
    if isinstance(e, ModelNotDeployedError):
        return ApiError(404, str(e), param="model", code="model_not_found")
    if isinstance(e, AdapterNotFoundError):
        return ApiError(404, str(e), param="model", code="adapter_not_found")
    if isinstance(e, AdapterBaseError):
        return ApiError(400, str(e), param="model", code="adapter_base_mismatch")
    if isinstance(e, AdapterRankError):
        return ApiError(400, str(e), param="model", code="adapter_rank_too_large")
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


def error_response(e: ApiError) -> JSONResponse:
    """The response that answers with `e`."""
    return JSONResponse(e.body(), status_code=e.status, headers=e.headers)


async def _api_error(_request: Request, e: ApiError) -> JSONResponse:
    return error_response(e)


async def _mapped_error(_request: Request, e: Exception) -> JSONResponse:
    return error_response(api_error(e))


async def _http_error(_request: Request, e: HTTPException) -> JSONResponse:
    code = "not_found" if e.status_code == 404 else None
    return error_response(ApiError(e.status_code, str(e.detail), code=code))


def install_error_handlers(app: FastAPI) -> None:
    """Answer every error raised in `app`'s routes in OpenAI's format: an unknown path or method too."""
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(ByzerError, _mapped_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(Exception, _mapped_error)
