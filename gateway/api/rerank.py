"""Rerank as Jina's and Infinity's API (``POST /v1/rerank``) and as Cohere's v2 API
(``POST /v2/rerank``), both over the rerank task's predict path.

A model of another task answers 400 ``wrong_task`` naming its task. ``/v1/rerank`` errors read
as OpenAI's (like every ``/v1/`` route); ``/v2/rerank`` errors as Cohere's ``{"message"}``.
Documents are cut at the model's own token limit (its truncation setting);
Cohere's ``max_tokens_per_doc`` is accepted and cannot lower it.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

from contract.config import Registry
from contract.tasks import WHOLE
from gateway.api.openai_compat import OpenAIErrorResponse
from gateway.api.predict import Inferred, infer
from gateway.api.routes import Call, CallDep, served
from gateway.api.schemas import error_responses
from gateway.deps import RegistryDep
from gateway.errors import GatewayError

router = APIRouter(tags=["rerank"])


def cohere_error(err: GatewayError) -> dict[str, Any]:
    """An error as Cohere's API writes it (``code`` is modelgate's stable code)."""
    return {"message": err.message, "code": err.code}


class CohereError(BaseModel):
    """Cohere's error body (``code`` is modelgate's)."""

    message: str
    code: str


class JinaDocument(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: StrictStr


Documents = Annotated[list[StrictStr], Field(min_length=1)]
TopN = Annotated[StrictInt, Field(ge=1), WHOLE] | None


class JinaRerankRequest(BaseModel):
    """Jina's (and Infinity's) rerank body."""

    model_config = ConfigDict(extra="forbid")

    model: StrictStr = Field(description="a served rerank model's name")
    query: Annotated[StrictStr, Field(min_length=1)]
    documents: Annotated[list[StrictStr | JinaDocument], Field(min_length=1)] = Field(
        description="texts, or objects with a 'text'"
    )
    top_n: TopN = Field(default=None, description="the n best documents (default all)")
    return_documents: StrictBool = Field(default=True, description="echo each document")


class JinaResult(BaseModel):
    index: int
    relevance_score: float
    document: JinaDocument | None = None


class JinaUsage(BaseModel):
    total_tokens: int
    prompt_tokens: int


class JinaRerankResponse(BaseModel):
    model: str
    object: Literal["list"] = "list"
    usage: JinaUsage
    results: list[JinaResult]


class CohereRerankRequest(BaseModel):
    """Cohere's v2 rerank body."""

    model_config = ConfigDict(extra="forbid")

    model: StrictStr
    query: Annotated[StrictStr, Field(min_length=1)]
    documents: Documents
    top_n: TopN = None
    return_documents: StrictBool = Field(default=False, description="echo each document")
    max_tokens_per_doc: Annotated[StrictInt, Field(ge=1), WHOLE] | None = Field(
        default=None, description="accepted; documents are cut at the model's own limit"
    )


class CohereResult(BaseModel):
    index: int
    relevance_score: float
    document: JinaDocument | None = None


class CohereMeta(BaseModel):
    api_version: dict[str, str] = {"version": "2"}
    billed_units: dict[str, int]


class CohereRerankResponse(BaseModel):
    id: str
    results: list[CohereResult]
    meta: CohereMeta


def _results(out: Inferred, keep: bool) -> list[dict[str, Any]]:
    """The ranked documents as both formats write them: ``relevance_score``, and the
    document as ``{"text"}`` when asked for."""
    return [
        {
            "index": r["index"],
            "relevance_score": r["score"],
            "document": {"text": r["document"]} if keep else None,
        }
        for r in out.outputs[0]
    ]


async def _rerank(
    call: Call,
    registry: Registry,
    model: str,
    query: str,
    documents: list[str],
    top_n: int | None,
    keep: bool,
) -> Inferred:
    spec = served(registry, model, "rerank")
    call.request.state.model = spec.name
    parameters: dict[str, Any] = {"return_documents": keep}
    if top_n is not None:
        parameters["top_n"] = top_n
    return await infer(spec, call, {"query": query, "documents": documents}, parameters)


@router.post(
    "/v1/rerank",
    response_model=JinaRerankResponse,
    response_model_exclude_none=True,
    responses=error_responses(OpenAIErrorResponse, _400="the model is not a rerank model"),
    summary="Jina/Infinity rerank",
)
async def jina_rerank(
    body: JinaRerankRequest, registry: RegistryDep, call: CallDep
) -> JinaRerankResponse:
    """Documents ordered by relevance to the query, best first."""
    texts = [d if isinstance(d, str) else d.text for d in body.documents]
    out = await _rerank(
        call, registry, body.model, body.query, texts, body.top_n, body.return_documents
    )
    usage = JinaUsage(total_tokens=out.tokens, prompt_tokens=out.tokens)
    results = [JinaResult(**r) for r in _results(out, body.return_documents)]
    return JinaRerankResponse(model=body.model, usage=usage, results=results)


@router.post(
    "/v2/rerank",
    response_model=CohereRerankResponse,
    response_model_exclude_none=True,
    responses=error_responses(CohereError, _400="the model is not a rerank model"),
    summary="Cohere v2 rerank",
)
async def cohere_rerank(
    body: CohereRerankRequest, registry: RegistryDep, call: CallDep
) -> CohereRerankResponse:
    """Documents ordered by relevance to the query, best first."""
    out = await _rerank(
        call, registry, body.model, body.query, body.documents, body.top_n, body.return_documents
    )
    results = [CohereResult(**r) for r in _results(out, body.return_documents)]
    meta = CohereMeta(billed_units={"search_units": 1, "input_tokens": out.tokens})
    request_id = call.request.state.request_id or uuid.uuid4().hex
    return CohereRerankResponse(id=request_id, results=results, meta=meta)
