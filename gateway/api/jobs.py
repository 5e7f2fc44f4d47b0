"""Async jobs: ``POST /models/<name>/jobs`` (one route per model, typed by its task; see
:mod:`gateway.api.routes`), ``GET /jobs/{id}``, ``DELETE /jobs/{id}``."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Response
from fastapi.responses import JSONResponse

from contract.config import ModelSpec
from gateway.api.routes import Call, add_model_route, model_endpoint
from gateway.api.schemas import (
    ERROR_RESPONSES,
    ErrorResponse,
    JobAccepted,
    JobState,
    request_model,
)
from gateway.cache import CacheMode
from gateway.deps import JobStoreDep
from gateway.jobs import MAX_WAIT_S
from gateway.validation import prepare

router = APIRouter(tags=["jobs"])

SUBMIT_DOC = """Queue inference for later: answers 202 at once with the job's id and where to
poll. A job the response cache answers whole is created finished: 201 with the job's state and
outputs. Takes up to the model's ``max_job_inputs`` inputs (more than ``/predict`` allows)."""


def model_router(spec: ModelSpec) -> APIRouter:
    """``POST /models/<name>/jobs`` with this model's request schema."""
    jobs = APIRouter(tags=["jobs"])

    async def submit_job(call: Call) -> JSONResponse:
        body = call.body
        work = prepare(spec, body.inputs, body.parameters, spec.max_job_inputs)
        await call.admit(spec, len(work.items))
        job_id, finished = await call.inference.submit_job(
            spec,
            work,
            request_id=call.request.state.request_id,
            mode=CacheMode.from_header(call.cache_control),
            job_ttl_s=call.settings.job_ttl_s,
            priority=body.priority,
        )
        url = f"/jobs/{job_id}"
        if finished:
            state = await call.request.app.state.jobs.get(job_id)
            return JSONResponse(state, status_code=201, headers={"Location": url})
        accepted = JobAccepted(job_id=job_id, status="queued", status_url=url)
        return JSONResponse(accepted.model_dump(), status_code=202, headers={"Location": url})

    add_model_route(
        jobs,
        spec,
        "jobs",
        model_endpoint(request_model(spec, job=True), submit_job),
        status_code=202,
        response_model=JobAccepted,
        responses={
            201: {"model": JobState, "description": "answered by the cache", "links": JOB_LINKS},
            202: {"links": JOB_LINKS},
            **ERROR_RESPONSES,
        },
        summary=f"queue {spec.task} with {spec.name}",
        description=SUBMIT_DOC,
    )
    return jobs


JOB_LINKS = {
    "GetJob": {
        "operationId": "get_job",
        "parameters": {"job_id": "$response.body#/job_id"},
        "description": "the job's state, and its outputs once finished",
    },
    "CancelJob": {
        "operationId": "cancel_job",
        "parameters": {"job_id": "$response.body#/job_id"},
        "description": "cancel the job while it is queued",
    },
    "DeleteJob": {
        "operationId": "delete_job",
        "parameters": {"job_id": "$response.body#/job_id"},
        "description": "remove the job and its result",
    },
}
"""OpenAPI links from a created job to reading, canceling and deleting it (clients and
stateful testers follow them)."""


@router.get(
    "/jobs/{job_id}",
    operation_id="get_job",
    response_model=JobState,
    responses={404: ERROR_RESPONSES[404], 422: ERROR_RESPONSES[422]},
)
async def get_job(
    job_id: str,
    store: JobStoreDep,
    wait: Annotated[
        float | None, Query(ge=0, le=MAX_WAIT_S, description="long-poll seconds")
    ] = None,
) -> dict[str, Any]:
    """A job's status; with its outputs once finished, or its error once failed.
    ``?wait=N`` returns as soon as the job ends, or after N seconds."""
    return await store.get(job_id, wait or 0.0)


@router.post(
    "/jobs/{job_id}/cancel",
    operation_id="cancel_job",
    response_model=JobState,
    responses={
        202: {
            "model": JobState,
            "description": "a job running in chunks: it stops at its next chunk boundary",
        },
        404: ERROR_RESPONSES[404],
        422: ERROR_RESPONSES[422],
        409: {"model": ErrorResponse, "description": "job already started or ended"},
    },
)
async def cancel_job(job_id: str, store: JobStoreDep) -> Any:
    """Cancel a queued job: it will never run, and stays readable as ``canceled`` until it
    expires. A job larger than a batch, running in chunks, answers 202: it stops at its next
    chunk boundary and then reads ``canceled`` (a job that ends first just finishes).
    Canceling a canceled job is a no-op; any other started or ended job answers 409."""
    state, pending = await store.cancel(job_id)
    return JSONResponse(state, status_code=202) if pending else state


@router.delete(
    "/jobs/{job_id}",
    operation_id="delete_job",
    status_code=204,
    responses={
        404: ERROR_RESPONSES[404],
        422: ERROR_RESPONSES[422],
        409: {"model": ErrorResponse, "description": "a worker is running the job"},
    },
)
async def delete_job(job_id: str, store: JobStoreDep) -> Response:
    """Remove a job and its result: a queued job never runs, an ended one is gone (then
    ``GET`` is 404). A job a worker is running answers 409; delete it once it has ended."""
    await store.delete(job_id)
    return Response(status_code=204)
