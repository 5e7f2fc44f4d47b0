"""ASGI middleware: the request body size limit (enforced while the body streams in, before any
parsing) and the request id that follows a request into the worker's log."""

from __future__ import annotations

import logging
import time
import uuid

from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.errors import NATIVE, ErrorDialects, PayloadTooLarge, error_response
from gateway.metrics import Metrics

log = logging.getLogger("modelgate.access")


class _TooLarge(StarletteHTTPException):
    """Raised from ``receive``; an HTTPException so FastAPI's body parsing passes it through."""

    def __init__(self) -> None:
        super().__init__(status_code=413, detail="request body too large")


class BodyLimitMiddleware:
    """Answers 413 ``payload_too_large`` for a body over ``max_bytes``, declared or streamed."""

    def __init__(
        self,
        app: ASGIApp,
        max_bytes: int,
        dialects: ErrorDialects = NATIVE,
        larger: dict[str, int] | None = None,
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.dialects = dialects
        self.larger = larger or {}
        """Paths that take more (file uploads), with their own limit."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.larger.get(scope["path"], self.max_bytes)
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await self._reject(scope, receive, send, limit)
            return
        seen = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > limit:
                raise _TooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge:
            if not started:
                await self._reject(scope, receive, send, limit)

    async def _reject(self, scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        err = PayloadTooLarge(f"request body is larger than {limit} bytes")
        scope.setdefault("state", {})["error_code"] = err.code
        await error_response(err, scope["path"], self.dialects)(scope, receive, send)


REQUEST_ID_HEADER = b"x-request-id"


class RequestContextMiddleware:
    """Gives every request an id (the client's ``X-Request-Id`` if sane, else a new one), keeps it
    in ``request.state.request_id`` and echoes it on the response, errors included; then logs
    the request and counts it in the metrics by model, route and status."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        given = dict(scope.get("headers", [])).get(REQUEST_ID_HEADER, b"").decode("latin-1")
        request_id = (
            given if given and len(given) <= 128 and given.isprintable() else uuid.uuid4().hex
        )
        scope.setdefault("state", {})["request_id"] = request_id
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                headers.append((REQUEST_ID_HEADER, request_id.encode("latin-1")))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            self._record(scope, status, time.perf_counter() - started, request_id)

    def _record(self, scope: Scope, status: int, seconds: float, request_id: str) -> None:
        route = scope.get("route")
        # A model's own routes carry the generic path and their model (see gateway.api.routes);
        # a wire format that names the model in its body sets it in the request's state.
        endpoint = str(getattr(route, "template", None) or getattr(route, "path", "unmatched"))
        model = str(
            getattr(route, "model", None)
            or scope["state"].get("model")
            or scope.get("path_params", {}).get("name", "-")
        )
        code = scope["state"].get("error_code")
        self.metrics.observe_request(model, endpoint, status, seconds, code)
        log.info(
            "%s %r %d %.1f ms",
            scope["method"],
            scope["path"],
            status,
            seconds * 1000,
            extra={"request_id": request_id, "model": model},
        )
