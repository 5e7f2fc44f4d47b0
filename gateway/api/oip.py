"""The Open Inference Protocol v2 (KServe, Triton, MLServer) over REST, so ``tritonclient.http``
and other v2 clients work unchanged: health, server and model metadata, model readiness and
``POST /v2/models/{name}/infer`` with JSON or binary tensors (the ``binary_tensor_data``
extension; see :mod:`gateway.api.oip_tensors`). ``/versions/{version}/...`` forms are accepted
for version ``1``, the only one a model has.

A thin adapter over the same predict path as ``/models/{name}/predict`` (validation, cache,
batching, limits, auth, metrics). A model takes one input tensor, ``INPUT`` (BYTES: one text
per element, any shape). Outputs by task: feature-extraction ``EMBEDDING`` (FP32, [n, dim]);
text-classification ``LABEL`` (BYTES) and ``SCORE`` (FP32), [n], or [n, k] with ``top_k``;
token-classification, zero-shot-classification and fill-mask ``OUTPUT`` (BYTES, [n]), each
element the input's answer as JSON text. question-answering and rerank take more than one text
per input and answer 400 ``wrong_task`` here. The request's ``parameters`` (except the
protocol's own: ``binary_data_output``, ``priority``, ``timeout``, ``sequence_*``, ``triton_*``)
are the task's parameters, as in ``/predict``. Errors read ``{"error": "<message>"}``, with the
same status codes as everywhere.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from contract.config import ModelSpec, Registry
from gateway.api import oip_tensors as tensors
from gateway.api.predict import infer
from gateway.api.routes import Call, served
from gateway.api.schemas import error_responses
from gateway.api.service import VERSION
from gateway.deps import CacheControl, DispatcherDep, InferenceDep, RegistryDep, SettingsDep
from gateway.dispatch import Dispatcher
from gateway.errors import GatewayError, InvalidInput, UnknownModel, WrongTask

router = APIRouter(prefix="/v2", tags=["Open Inference Protocol v2"])
log = logging.getLogger("modelgate.gateway")

MODEL_VERSION = "1"
INPUT = "INPUT"
RESERVED = frozenset(
    {"binary_data_output", "priority", "timeout", "headers"}
    | {"sequence_id", "sequence_start", "sequence_end"}
)
"""Request parameters of the protocol itself: never passed on as the task's parameters."""


def oip_error(err: GatewayError) -> dict[str, Any]:
    """An error as the protocol writes it."""
    return {"error": err.message}


class OipError(BaseModel):
    error: str


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[tensors.TensorMetadata]
    outputs: list[tensors.TensorMetadata]


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class Live(BaseModel):
    live: bool


class Ready(BaseModel):
    ready: bool


class ModelReady(BaseModel):
    name: str
    ready: bool


def _served(registry: Registry, name: str, request: Request) -> ModelSpec:
    """The model the path names, at a version it has; labels the request's metrics with it."""
    spec = served(registry, name)
    version = request.path_params.get("version")
    if version is not None and version != MODEL_VERSION:
        raise UnknownModel(f"model {name!r} has no version {version!r}; it has version 1")
    request.state.model = spec.name
    return spec


def _layout(spec: ModelSpec) -> tensors.Layout:
    layout = tensors.LAYOUTS.get(spec.task)
    if layout is None:
        raise WrongTask(
            f"model {spec.name!r} serves {spec.task}, whose inputs are not one text each; "
            f"the Open Inference Protocol routes serve {', '.join(tensors.LAYOUTS)}: "
            f"use POST /models/{spec.name}/predict"
        )
    return layout


async def _live(dispatcher: Dispatcher, spec: ModelSpec) -> bool:
    return await dispatcher.admission.servable(spec)


def _status(ready: bool) -> int:
    return 200 if ready else 503


ERRORS = error_responses(
    OipError,
    _400="the model's task takes more than one text per input",
    _404="unknown model or version",
    _422="invalid tensors, outputs or parameters",
)


@router.get("/health/live", response_model=Live)
async def server_live() -> Live:
    """The process is alive."""
    return Live(live=True)


@router.get("/health/ready", response_model=Ready, responses={503: {"model": Ready}})
async def server_ready(registry: RegistryDep, dispatcher: DispatcherDep) -> JSONResponse:
    """Ready (200) when Redis answers and every model has a live worker (or scales to zero:
    its request wakes one); else 503."""
    ready = True
    try:
        await dispatcher.ping()
        for spec in registry.models:
            ready = ready and await _live(dispatcher, spec)
    except GatewayError as err:
        log.info("not ready: %s", err.message)
        ready = False
    return JSONResponse({"ready": ready}, status_code=_status(ready))


@router.get("", response_model=ServerMetadata)
async def server_metadata() -> ServerMetadata:
    """The server's name, version and protocol extensions."""
    return ServerMetadata(name="modelgate", version=VERSION, extensions=["binary_tensor_data"])


@router.get(
    "/models/{name}", response_model=ModelMetadata, responses={k: ERRORS[k] for k in (400, 404)}
)
@router.get("/models/{name}/versions/{version}", include_in_schema=False)
async def model_metadata(name: str, request: Request, registry: RegistryDep) -> ModelMetadata:
    """The model's input and output tensors (-1: any size)."""
    spec = _served(registry, name, request)
    return ModelMetadata(
        name=spec.name,
        versions=[MODEL_VERSION],
        platform=f"modelgate/{spec.task}",
        inputs=[tensors.meta(INPUT, "BYTES", [-1])],
        outputs=list(_layout(spec).outputs),
    )


@router.get(
    "/models/{name}/ready",
    response_model=ModelReady,
    responses={404: ERRORS[404], 503: {"model": ModelReady, "description": "no live worker"}},
)
@router.get("/models/{name}/versions/{version}/ready", include_in_schema=False)
async def model_ready(
    name: str, request: Request, registry: RegistryDep, dispatcher: DispatcherDep
) -> JSONResponse:
    """Ready (200) when the model has a live worker; else 503."""
    spec = _served(registry, name, request)
    try:
        ready = await _live(dispatcher, spec)
    except GatewayError as err:
        log.info("model %s not ready: %s", spec.name, err.message)
        ready = False
    return JSONResponse({"name": spec.name, "ready": ready}, status_code=_status(ready))


def _texts(spec: ModelSpec, request: tensors.InferRequest, tail: bytes) -> list[str]:
    """The texts of the request's one input tensor, ``INPUT``."""
    parts = tensors.binary_parts(request.inputs, tail)
    for tensor in request.inputs:
        if tensor.name != INPUT:
            raise InvalidInput(
                f"unknown input {tensor.name!r}: {spec.name!r} takes one input, "
                f"{INPUT!r} (BYTES, one text per element)"
            )
    if len(request.inputs) > 1:
        raise InvalidInput(f"input {INPUT!r} is given {len(request.inputs)} times")
    return tensors.texts(request.inputs[0], parts[0])


def _wanted(
    spec: ModelSpec, request: tensors.InferRequest, layout: tensors.Layout
) -> tuple[list[str], set[str]]:
    """The outputs to answer with, in order, and those to send as binary data."""
    known = [m.name for m in layout.outputs]
    binary = (request.parameters or {}).get("binary_data_output") is True
    if request.outputs is None:
        return known, set(known) if binary else set()
    for output in request.outputs:
        if output.name not in known:
            raise InvalidInput(
                f"unknown output {output.name!r}: {spec.name!r} gives {', '.join(known)}"
            )
    names = list(dict.fromkeys(o.name for o in request.outputs))
    asked = {
        o.name for o in request.outputs if (o.parameters or {}).get("binary_data", binary) is True
    }
    return names, asked


def _task_parameters(request: tensors.InferRequest) -> dict[str, Any]:
    given = request.parameters or {}
    return {k: v for k, v in given.items() if k not in RESERVED and not k.startswith("triton_")}


def _answer(
    spec: ModelSpec, request: tensors.InferRequest, outputs: list[tensors.Tensor], binary: set[str]
) -> Response:
    """JSON, or (when binary outputs are asked for) the JSON header and the outputs' bytes."""
    entries, raw = tensors.encode(outputs, binary)
    header: dict[str, Any] = {"model_name": spec.name, "model_version": MODEL_VERSION}
    if request.id is not None:
        header["id"] = request.id
    header["outputs"] = entries
    if not binary:
        return JSONResponse(header)
    body, length = tensors.binary_body(header, raw)
    headers = {tensors.HEADER_LENGTH: str(length)}
    return Response(body, media_type="application/octet-stream", headers=headers)


INFER_BODY = {
    "requestBody": {
        "required": True,
        "description": "The inference request as JSON; or, with the header "
        f"``{tensors.HEADER_LENGTH}: N``, N bytes of that JSON followed by the binary data of "
        "each input whose ``parameters.binary_data_size`` is set, in input order (a BYTES "
        "element: 4-byte little-endian length, then its UTF-8 bytes). gzip and deflate "
        "``Content-Encoding`` are accepted.",
        "content": {
            "application/json": {
                "schema": tensors.inline_schema(tensors.InferRequest),
                "example": {
                    "id": "42",
                    "inputs": [
                        {"name": INPUT, "shape": [2], "datatype": "BYTES", "data": ["hi", "yo"]}
                    ],
                    "outputs": [{"name": "EMBEDDING", "parameters": {"binary_data": False}}],
                },
            }
        },
    }
}

INFER_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "model": tensors.InferResponse,
        "description": "JSON; or, when binary outputs are asked for, application/octet-stream: "
        f"the JSON header ({tensors.HEADER_LENGTH} bytes) then the outputs' raw data",
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    },
    **ERRORS,
}


@router.post(
    "/models/{name}/infer",
    response_class=JSONResponse,
    responses=INFER_RESPONSES,
    openapi_extra=INFER_BODY,
    summary="Open Inference Protocol inference",
)
@router.post("/models/{name}/versions/{version}/infer", include_in_schema=False)
async def model_infer(
    name: str,
    request: Request,
    registry: RegistryDep,
    inference: InferenceDep,
    settings: SettingsDep,
    cache_control: CacheControl = None,
) -> Response:
    """The model's outputs for the texts of ``INPUT``, one per element, as JSON or binary."""
    spec = _served(registry, name, request)
    layout = _layout(spec)
    encoding = request.headers.get("content-encoding")
    body = tensors.inflate(await request.body(), encoding, settings.max_body_bytes)
    parsed, tail = tensors.split(body, request.headers.get(tensors.HEADER_LENGTH))
    names, binary = _wanted(spec, parsed, layout)
    scratch = Response()
    call = Call(parsed, inference, settings, request, scratch, cache_control)
    out = await infer(spec, call, _texts(spec, parsed, tail), _task_parameters(parsed))
    produced = {t.name: t for t in layout.fill(out.outputs)}
    response = _answer(spec, parsed, [produced[n] for n in names], binary)
    for key, value in scratch.headers.items():
        if key != "content-length":  # X-Cache and the timing headers that infer() set
            response.headers[key] = value
    return response
