"""Async jobs: ``POST /models/{name}/jobs``, ``GET /jobs/{id}``, ``DELETE /jobs/{id}``."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse

from gateway.api.schemas import ERROR_RESPONSES, JobAccepted, JobState, PredictRequest
from gateway.cache import CacheMode
from gateway.deps import CacheControl, InferenceDep, JobStoreDep, SettingsDep, SpecDep
from gateway.jobs import MAX_WAIT_S
from gateway.validation import check_parameters, normalize_inputs

router = APIRouter(tags=["jobs"])


@router.post(
    "/models/{name}/jobs", status_code=202, response_model=JobAccepted, responses=ERROR_RESPONSES
)
async def submit_job(
    body: PredictRequest,
    spec: SpecDep,
    inference: InferenceDep,
    settings: SettingsDep,
    request: Request,
    cache_control: CacheControl = None,
) -> JSONResponse:
    """Queue inference for later: answers 202 at once with the job's id and where to poll.
    Takes up to the model's ``max_job_inputs`` inputs (more than ``/predict`` allows)."""
    inputs, single = normalize_inputs(spec, body.inputs, spec.max_job_inputs)
    params = check_parameters(spec, body.parameters)
    job_id = await inference.submit_job(
        spec,
        inputs,
        params,
        single=single,
        request_id=request.state.request_id,
        mode=CacheMode.from_header(cache_control),
        job_ttl_s=settings.job_ttl_s,
        priority=body.priority,
    )
    url = f"/jobs/{job_id}"
    accepted = JobAccepted(job_id=job_id, status="queued", status_url=url)
    return JSONResponse(accepted.model_dump(), status_code=202, headers={"Location": url})


@router.get(
    "/jobs/{job_id}",
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


@router.delete(
    "/jobs/{job_id}",
    response_model=JobState,
    responses={
        404: ERROR_RESPONSES[404],
        422: ERROR_RESPONSES[422],
        409: {"description": "job already started or ended"},
    },
)
async def cancel_job(job_id: str, store: JobStoreDep) -> dict[str, Any]:
    """Cancel a queued job: it will never run. A started or ended job answers 409."""
    return await store.cancel(job_id)
