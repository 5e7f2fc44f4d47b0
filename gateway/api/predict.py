"""``POST /models/<name>/predict`` for each model, typed by its task (see
:mod:`gateway.api.routes`); and the classic ``POST /predict`` on the default model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel

from contract.config import ModelSpec, Registry
from contract.tasks import shape
from gateway.api.routes import Call, add_model_route, label, model_endpoint
from gateway.api.schemas import (
    ERROR_RESPONSES,
    LabelScore,
    Predictions,
    classic_requests,
    request_model,
    response_model,
)
from gateway.cache import CacheMode
from gateway.disconnect import CancelOnDisconnect
from gateway.validation import prepare

TIMING_HEADERS = (("queue_ms", "X-Queue-Time-Ms"), ("inference_ms", "X-Inference-Time-Ms"))


@dataclass(frozen=True)
class Inferred:
    """A request's answer: one shaped output per input, and the tokens its inputs took."""

    outputs: list[Any]
    tokens: int
    single: bool


async def infer(
    spec: ModelSpec, call: Call, inputs: Any, parameters: Any, priority: str = "low"
) -> Inferred:
    """Inputs and parameters (typed by the model's schema, or plain JSON from an adapter)
    through validation, the cache and the model's workers. Sets ``X-Cache`` and the timing
    headers on the call's response. Every wire format's sync call comes through here."""
    work = prepare(spec, inputs, parameters, spec.max_inputs)
    await call.admit(spec, len(work.items))
    async with CancelOnDisconnect(call.request.receive):
        result = await call.inference.predict(
            spec,
            work.items,
            work.params,
            request_id=call.request.state.request_id,
            mode=CacheMode.from_header(call.cache_control),
            priority=priority,
        )
    call.response.headers["X-Cache"] = result.cache
    for key, header in TIMING_HEADERS:
        if key in result.timings:
            call.response.headers[header] = f"{result.timings[key]:.1f}"
    outputs = shape(spec.task, work.items, result.outputs, work.request_params)
    return Inferred(outputs, sum(result.tokens), work.single)


async def run_predict(spec: ModelSpec, call: Call) -> dict[str, Any]:
    """One validated predict request end to end; the response body as a dict."""
    body = call.body
    out = await infer(spec, call, body.inputs, body.parameters, body.priority)
    return {"model": spec.name, "outputs": out.outputs[0] if out.single else out.outputs}


def model_router(spec: ModelSpec) -> APIRouter:
    """``POST /models/<name>/predict`` with this model's request and response schemas."""
    router = APIRouter(tags=["inference"])

    async def handle(call: Call) -> dict[str, Any]:
        return await run_predict(spec, call)

    add_model_route(
        router,
        spec,
        "predict",
        model_endpoint(request_model(spec, job=False), handle),
        response_model=response_model(spec),
        responses=ERROR_RESPONSES,
        summary=f"{spec.task} with {spec.name}",
        description=PREDICT_DOC,
    )
    return router


PREDICT_DOC = """Run the model on ``inputs`` and wait for the result (up to the model's
``timeout_s``). Items already in the response cache are not recomputed
(``X-Cache: hit | partial | miss``)."""


def classic_router(registry: Registry) -> APIRouter:
    """``POST /predict``: ``{"text"}`` → ``{"label", "score"}`` on the default model, or
    ``{"texts"}`` → ``{"predictions"}``. Only when models.yaml names a ``default_model``."""
    router = APIRouter(tags=["inference"])
    spec = registry.get(registry.default_model or "")
    if spec is None:
        return router

    text, texts = classic_requests(spec)

    async def classic(call: Call) -> BaseModel:
        single = isinstance(call.body, text)
        inputs = call.body.text if single else call.body.texts
        call.body = _Classic(inputs=inputs)
        out = await run_predict(spec, call)
        if single:
            return LabelScore.model_validate(out["outputs"])
        return Predictions(predictions=out["outputs"])

    router.add_api_route(
        "/predict",
        model_endpoint(text | texts, classic),
        methods=["POST"],
        response_model=LabelScore | Predictions,
        responses=ERROR_RESPONSES,
        summary=f"the default model, {spec.name}",
        description=f"The classic single-model API on ``{spec.name}`` ({spec.task}): one text "
        "gets its best label and score; a list of texts gets one prediction each.",
    )
    label(router, spec, "/predict")
    return router


class _Classic(BaseModel):
    inputs: str | list[str]
    parameters: None = None
    priority: str = "low"
