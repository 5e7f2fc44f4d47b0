"""OpenAI's embeddings and models API, so the official ``openai`` client (and every library
built on it) works unchanged: ``POST /v1/embeddings``, ``GET /v1/models[/{id}]``.

A thin adapter over the same predict path as ``/models/{name}/predict`` (validation, cache,
batching, limits, auth, metrics). Errors on ``/v1/`` read as OpenAI's
``{"error": {"message", "type", "param", "code"}}``, with the same status codes and
``Retry-After`` as everywhere, so the client's own retries back off as they should.
"""

from __future__ import annotations

import base64
import struct
import time
from typing import Annotated, Any, Literal

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

from contract.config import ModelSpec
from contract.tasks import TOKEN_IDS, WHOLE
from gateway.api.predict import infer
from gateway.api.routes import CallDep, served
from gateway.api.schemas import error_responses
from gateway.deps import RegistryDep
from gateway.errors import GatewayError, InvalidInput, PayloadTooLarge

router = APIRouter(prefix="/v1", tags=["OpenAI-compatible"])

STARTED = int(time.time())
"""``created`` of every model object: OpenAI's field is required; ours is the process start."""

ERROR_TYPES = {401: "authentication_error", 403: "permission_error", 429: "rate_limit_error"}


def openai_error(err: GatewayError) -> dict[str, Any]:
    """An error as OpenAI writes it; ``code`` keeps modelgate's stable code."""
    kind = ERROR_TYPES.get(err.status_code)
    if kind is None:
        kind = "server_error" if err.status_code >= 500 else "invalid_request_error"
    error = {"message": err.message, "type": kind, "param": err.param, "code": err.code}
    return {"error": error}


TokenIds = Annotated[list[Annotated[StrictInt, Field(ge=0), WHOLE]], Field(min_length=1)]


class EmbeddingsRequest(BaseModel):
    """OpenAI's ``POST /v1/embeddings`` body."""

    model_config = ConfigDict(extra="forbid")

    input: Annotated[
        StrictStr | TokenIds | Annotated[list[StrictStr | TokenIds], Field(min_length=1)],
        Field(description="a text, a list of texts, token ids, or a list of token-id lists"),
    ]
    model: StrictStr = Field(description="a served model's name (GET /v1/models)")
    encoding_format: Literal["float", "base64"] = Field(
        default="float", description="base64: each vector as little-endian float32 bytes"
    )
    dimensions: Annotated[StrictInt, Field(ge=1), WHOLE] | None = Field(
        default=None, description="one of the sizes the model's matryoshka_dimensions lists"
    )
    user: StrictStr | None = Field(default=None, description="accepted and ignored")


class OpenAIError(BaseModel):
    message: str
    type: str
    param: str | None
    code: str


class OpenAIErrorResponse(BaseModel):
    """OpenAI's error body."""

    error: OpenAIError


OPENAI_ERRORS = error_responses(OpenAIErrorResponse, _400="the model serves another task")


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingsResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: Usage


class ModelObject(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "modelgate"
    task: str = Field(description="modelgate's task of the model (not in OpenAI's schema)")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelObject]


def to_inputs(given: Any) -> Any:
    """OpenAI's input forms as predict inputs: a text stays a text, token ids become a
    ``{"token_ids": [...]}`` item."""
    if isinstance(given, str):
        return given
    if given and isinstance(given[0], int):
        return {TOKEN_IDS: given}
    return [v if isinstance(v, str) else {TOKEN_IDS: v} for v in given]


def _base64(vector: list[float]) -> str:
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")


@router.post(
    "/embeddings",
    response_model=EmbeddingsResponse,
    summary="OpenAI-compatible embeddings",
    responses=OPENAI_ERRORS,
)
async def embeddings(
    body: EmbeddingsRequest, registry: RegistryDep, call: CallDep
) -> dict[str, Any]:
    """Vectors for ``input`` from a feature-extraction model, in input order."""
    spec = served(registry, body.model, "feature-extraction")
    call.request.state.model = spec.name
    parameters = {} if body.dimensions is None else {"dimensions": body.dimensions}
    try:
        out = await infer(spec, call, to_inputs(body.input), parameters)
    except (InvalidInput, PayloadTooLarge) as err:
        err.param = err.param or ("dimensions" if "dimensions" in err.message else "input")
        raise
    vectors = [out.outputs[0]] if out.single else out.outputs
    return embeddings_body(spec.name, vectors, out.tokens, body.encoding_format)


def embeddings_body(
    model: str, vectors: list[list[float]], tokens: int, encoding_format: str
) -> dict[str, Any]:
    """OpenAI's embeddings response (also each line of a batch's output file)."""
    encode = _base64 if encoding_format == "base64" else list
    return {
        "object": "list",
        "data": [
            {"object": "embedding", "index": i, "embedding": encode(v)}
            for i, v in enumerate(vectors)
        ],
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


def _model_object(spec: ModelSpec) -> ModelObject:
    return ModelObject(id=spec.name, created=STARTED, task=spec.task)


@router.get("/models", response_model=ModelList, summary="OpenAI-compatible model list")
async def list_models(registry: RegistryDep) -> ModelList:
    """Every served model (of any task)."""
    return ModelList(data=[_model_object(spec) for spec in registry.models])


@router.get(
    "/models/{model_id}",
    response_model=ModelObject,
    summary="OpenAI-compatible model",
    responses={404: OPENAI_ERRORS[404]},
)
async def get_model(model_id: str, registry: RegistryDep) -> ModelObject:
    return _model_object(served(registry, model_id))
