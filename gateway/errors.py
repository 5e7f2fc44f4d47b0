"""Every error a client can meet, as one tree; each class carries its HTTP status and code.

Routes raise these; one handler renders ``{"error": {"code", "message", ...}}``. Details of
server-side failures are logged, never shown.

    GatewayError
    ├── UnknownModel            404 unknown_model
    ├── UnknownJob              404 unknown_job
    ├── JobNotCancelable        409 job_not_cancelable
    ├── JobRunning              409 job_running
    ├── PayloadTooLarge         413 payload_too_large
    ├── InvalidInput            422 invalid_input
    ├── WrongTask               400 wrong_task          (a model of another task)
    ├── Forbidden               403 forbidden           (a model the API key may not use)
    ├── Overloaded              429 overloaded          (Retry-After)
    ├── RateLimited             429 rate_limited        (the API key's rate; Retry-After)
    ├── InferenceFailed         500 inference_failed
    ├── Unauthorized            401 unauthorized        (WWW-Authenticate)
    ├── ModelUnavailable        503 model_unavailable   (Retry-After)
    ├── WorkerLost              503 worker_lost
    ├── RedisUnavailable        503 redis_unavailable   (Retry-After)
    ├── RedisOutOfMemory        503 redis_out_of_memory (Retry-After)
    ├── InferenceTimeout        504 inference_timeout
    └── ClientDisconnected      499 client_disconnected (logged and counted; nobody reads it)
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import compile_path

from gateway.problems import Described, describe

log = logging.getLogger("modelgate.gateway")


class GatewayError(Exception):
    """Base of every error the API answers with."""

    status_code = 500
    code = "internal_error"
    param: str | None = None
    """The request field at fault, where one is (OpenAI's error body names it)."""

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details
        self.headers: dict[str, str] = {}

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, **self.details}}


class UnknownModel(GatewayError):
    status_code, code = 404, "unknown_model"


class UnknownJob(GatewayError):
    status_code, code = 404, "unknown_job"


class JobNotCancelable(GatewayError):
    status_code, code = 409, "job_not_cancelable"


class JobRunning(GatewayError):
    status_code, code = 409, "job_running"


class PayloadTooLarge(GatewayError):
    status_code, code = 413, "payload_too_large"


class InvalidInput(GatewayError):
    status_code, code = 422, "invalid_input"


class WrongTask(GatewayError):
    status_code, code = 400, "wrong_task"


class _RetryLater(GatewayError):
    """An error that passes: the client should retry after ``Retry-After`` seconds."""

    retry_after_s = 1

    def __init__(self, message: str, retry_after_s: int | None = None, **details: Any) -> None:
        super().__init__(message, **details)
        self.headers["Retry-After"] = str(retry_after_s or self.retry_after_s)


class Overloaded(_RetryLater):
    status_code, code = 429, "overloaded"


class RateLimited(_RetryLater):
    status_code, code = 429, "rate_limited"


class Forbidden(GatewayError):
    status_code, code = 403, "forbidden"


class InferenceFailed(GatewayError):
    status_code, code = 500, "inference_failed"


class ModelUnavailable(_RetryLater):
    status_code, code, retry_after_s = 503, "model_unavailable", 5


class WorkerLost(GatewayError):
    status_code, code = 503, "worker_lost"


class Unauthorized(GatewayError):
    status_code, code = 401, "unauthorized"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message, **details)
        self.headers["WWW-Authenticate"] = "Bearer"


class RedisUnavailable(_RetryLater):
    status_code, code, retry_after_s = 503, "redis_unavailable", 2


class RedisOutOfMemory(_RetryLater):
    status_code, code, retry_after_s = 503, "redis_out_of_memory", 5


class InferenceTimeout(GatewayError):
    status_code, code = 504, "inference_timeout"


class ClientDisconnected(GatewayError):
    """The client closed its connection before its answer (nginx's 499): its job was withdrawn
    if still queued and awaited by no other request. No client reads it; logs and metrics
    count it."""

    status_code, code = 499, "client_disconnected"


class NotFound(GatewayError):
    status_code, code = 404, "not_found"


class MethodNotAllowed(GatewayError):
    status_code, code = 405, "method_not_allowed"


Dialect = Callable[[GatewayError], Any]
"""How one wire format writes an error body (its clients parse that shape)."""


class ErrorDialects:
    """Error bodies by path prefix: ``/v1/`` speaks OpenAI's, the Open Inference Protocol its
    own; every other path the native ``{"error": {"code", "message"}}``. The status code,
    ``Retry-After`` and the other headers are the same in every dialect."""

    def __init__(self) -> None:
        self._dialects: list[tuple[str, Dialect]] = []

    def add(self, prefix: str, dialect: Dialect) -> None:
        self._dialects.append((prefix, dialect))
        self._dialects.sort(key=lambda entry: -len(entry[0]))  # the longest prefix wins

    def body(self, err: GatewayError, path: str) -> Any:
        for prefix, dialect in self._dialects:
            if path.startswith(prefix):
                return dialect(err)
        return err.body()


NATIVE = ErrorDialects()
"""No dialects: the native body everywhere."""


def error_response(
    err: GatewayError, path: str = "", dialects: ErrorDialects = NATIVE
) -> JSONResponse:
    body = dialects.body(err, path)
    return JSONResponse(body, status_code=err.status_code, headers=err.headers)


def _respond(request: Request, err: GatewayError) -> JSONResponse:
    request.state.error_code = err.code  # counted by code in the recent activity
    dialects: ErrorDialects = getattr(request.app.state, "error_dialects", NATIVE)
    return error_response(err, request.url.path, dialects)


async def _on_gateway_error(request: Request, err: Exception) -> JSONResponse:
    assert isinstance(err, GatewayError)
    if err.status_code >= 500:
        log.warning("%s: %s", err.code, err.message)
    return _respond(request, err)


async def _on_validation_error(request: Request, err: Exception) -> JSONResponse:
    assert isinstance(err, RequestValidationError)
    try:
        body: bytes | None = await request.body()
    except Exception:  # the body stream was consumed elsewhere: positions stay offsets
        body = None
    described = describe(list(err.errors()), body, request.headers.get("content-type", ""))
    return _respond(request, invalid_input(described))


def invalid_input(described: Described) -> InvalidInput:
    """The 422 for a body that failed validation."""
    invalid = InvalidInput(described.message, problems=described.problems)
    invalid.param = described.param
    return invalid


def _allowed_methods(request: Request) -> str:
    """Every method the API declares for this path (all matching templates, not just one)."""
    methods: set[str] = set()
    for template, operations in request.app.openapi()["paths"].items():
        if compile_path(template)[0].match(request.url.path):
            methods |= {m.upper() for m in operations}
    return ", ".join(sorted(methods))


async def _on_http_error(request: Request, err: Exception) -> JSONResponse:
    assert isinstance(err, StarletteHTTPException)
    if err.status_code == 405:
        not_allowed = MethodNotAllowed("method not allowed on this path")
        not_allowed.headers["Allow"] = _allowed_methods(request)
        return _respond(request, not_allowed)
    if err.status_code == 400:
        return _respond(request, InvalidInput("the request body could not be read as JSON"))
    if err.status_code == 413:
        return _respond(request, PayloadTooLarge("request body is too large"))
    if err.status_code == 404:
        return _respond(request, NotFound("no such path; see /docs for the API"))
    generic = GatewayError(str(err.detail))
    generic.status_code, generic.code = err.status_code, "http_error"
    return _respond(request, generic)


async def _on_unexpected(request: Request, err: Exception) -> JSONResponse:
    log.exception("unhandled error", exc_info=err)
    return _respond(request, GatewayError("internal error; see the gateway's log"))


async def render_error(request: Request, err: Exception) -> JSONResponse:
    """The answer the app's exception handlers give ``err`` (for code that runs outside
    FastAPI's routing: ``gateway.hotpath``)."""
    if isinstance(err, GatewayError):
        return await _on_gateway_error(request, err)
    return await _on_unexpected(request, err)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(GatewayError, _on_gateway_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    app.add_exception_handler(Exception, _on_unexpected)
