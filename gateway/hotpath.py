"""``POST /models/<name>/predict`` served without Starlette's router and FastAPI's request
machinery: the request path every sync call of the native API takes.

On a small machine each CPU millisecond the gateway spends is taken from the model. Under load,
more than half of the gateway's CPU per request went to the framework around the handler (route
matching across every included router, dependency solving, response validation, the exception
and exit-stack middlewares), not to modelgate's own work. This ASGI middleware sits inside the
gateway's own middlewares (request id, API keys, the body limit), so those still apply, and
answers a model's predict call itself when it can:

- the path and method are exactly a served model's predict route, and the body is JSON;
- the body parses (orjson) and validates against the model's request schema (the same pydantic
  model FastAPI validates with, in the same Python mode).

Anything else (another path, a body that does not parse or validate, another content type)
goes to the FastAPI app with the body replayed, so every error keeps FastAPI's exact answer.
The handler is the one FastAPI's route calls (``run_predict``); errors it raises are rendered by
the app's own exception handlers; the response is validated and serialised by the route's
response model, as FastAPI does, so the bytes are the same.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import orjson
from fastapi import FastAPI, Request, Response
from fastapi.routing import APIRoute
from pydantic import BaseModel, TypeAdapter, ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from contract.config import ModelSpec, Registry
from gateway.api.predict import run_predict
from gateway.api.routes import Call
from gateway.errors import render_error

CACHE_CONTROL = b"cache-control"
CONTENT_TYPE = b"content-type"


@dataclass(frozen=True)
class HotRoute:
    """One model's predict route: its spec, request and response types, and the FastAPI route
    it stands in for (metrics and logs read its generic path and model from the scope)."""

    spec: ModelSpec
    request: type[BaseModel]
    response: TypeAdapter[Any]
    route: APIRoute


def is_json(content_type: bytes | None) -> bool:
    """``application/json``, with or without parameters (as FastAPI reads a JSON body)."""
    if content_type is None:
        return False
    media = content_type.split(b";", 1)[0].strip().lower()
    return media == b"application/json"


async def read_body(receive: Receive) -> bytes | None:
    """The whole request body; None when the client left while sending it."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def replaying(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that gives ``body`` whole first, then what the client sends next (its
    disconnect)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


class PredictHotPath:
    """ASGI middleware: a served model's predict call, end to end; everything else passes."""

    def __init__(self, app: ASGIApp, fastapi: FastAPI, routes: dict[str, HotRoute]) -> None:
        self.app = app
        self.fastapi = fastapi
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = self.routes.get(scope["path"]) if scope["type"] == "http" else None
        if route is None or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        headers = dict(reversed(scope["headers"]))  # the first of a repeated header wins
        if not is_json(headers.get(CONTENT_TYPE)):
            await self.app(scope, receive, send)
            return
        raw = await read_body(receive)
        if raw is None:  # gone before its request was whole: nothing to answer
            return
        try:
            body = route.request.model_validate(orjson.loads(raw))
        except (orjson.JSONDecodeError, ValidationError):
            # FastAPI's own parsing answers it, with its exact 422 (or 400).
            await self.app(scope, replaying(raw, receive), send)
            return
        scope["route"] = route.route
        request = Request(scope, receive)
        response = await self._answer(route, body, request, headers.get(CACHE_CONTROL))
        await response(scope, receive, send)

    async def _answer(
        self, route: HotRoute, body: BaseModel, request: Request, cache_control: bytes | None
    ) -> Response:
        state = self.fastapi.state
        sub = Response()
        control = cache_control.decode("latin-1") if cache_control is not None else None
        call = Call(body, state.inference, state.settings, request, sub, control)
        try:
            out = await run_predict(route.spec, call)
        except Exception as err:  # rendered as the app's exception handlers render it
            return await render_error(request, err)
        content = route.response.dump_json(route.response.validate_python(out), by_alias=True)
        answer = Response(content, media_type="application/json")
        answer.raw_headers.extend(
            (k, v) for k, v in sub.raw_headers if k not in (b"content-length", b"content-type")
        )
        return answer


def hot_routes(registry: Registry, routes: dict[str, APIRoute]) -> dict[str, HotRoute]:
    """By path, each model's predict route, with the very request and response models its
    FastAPI route was built with (``routes``: the route of each model, by name)."""
    hot = {}
    for spec in registry.models:
        route = routes[spec.name]
        # gateway.api.routes.model_endpoint types its ``body`` parameter with the model's schema.
        request = inspect.signature(route.endpoint).parameters["body"].annotation
        response = TypeAdapter(route.response_model)
        hot[f"/models/{spec.name}/predict"] = HotRoute(spec, request, response, route)
    return hot
