"""``GET /status``, what the deployment is doing as JSON, and ``GET /dashboard``, a page that
shows it live. The page is three static files served by the gateway (no build step, no CDN, plain
SVG for its charts); it holds no data itself, so it is reachable without an API key and asks for
one when ``/status`` answers 401. Canceling a job from it is ``POST /jobs/{id}/cancel`` with that
key, like any client."""

from __future__ import annotations

from datetime import datetime
from importlib.resources import files
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, FastAPI, Query
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field

from contract.recent import MAX_WINDOW_S
from gateway import status
from gateway.api.schemas import ERROR_RESPONSES, LaneActivity, ModelState, Quantiles, WorkerInfo
from gateway.deps import DispatcherDep, RegistryDep

ASSETS_PATH = "/dashboard-assets"
ASSETS = Path(str(files("gateway") / "static"))

router = APIRouter(tags=["status"])


class RecentActivity(BaseModel):
    """One model's figures over the window, summed over every gateway replica and worker."""

    requests: int = Field(description="requests answered (any status)")
    requests_per_s: float = Field(description="over the last minute")
    requests_series: list[int] = Field(description="requests per bucket, oldest first")
    errors: dict[str, int] = Field(description="answers ≥ 400 and failed async jobs, by error code")
    latency_ms: Quantiles = Field(description="request time at the gateway")
    queue_ms: Quantiles = Field(description="a job's wait for a worker")
    compute_ms: Quantiles = Field(description="one model call (a batch)")
    jobs: int = Field(description="jobs workers ran")
    batches: int = Field(description="model calls")
    items: int = Field(description="inputs run through the model")
    mean_batch_size: float | None = Field(description="inputs per model call")
    cache_hits: int
    cache_misses: int
    cache_hit_ratio: float | None = Field(description="per input item; null without lookups")
    lanes: dict[str, LaneActivity] = Field(description="interactive and bulk")


class ModelStatus(ModelState):
    workers: list[WorkerInfo]
    recent: RecentActivity


class JobProgress(BaseModel):
    done: int = Field(description="inputs computed")
    total: int = Field(description="inputs of the job")


class RecentJob(BaseModel):
    job_id: str
    model: str | None
    status: str = Field(description="queued | started | finished | failed | canceled")
    created_at: str | None
    ended_at: str | None
    progress: JobProgress | None = Field(description="set while a job larger than a batch runs")


class RedisMemory(BaseModel):
    used_bytes: int
    max_bytes: int = Field(description="maxmemory; 0: none")


class StatusReport(BaseModel):
    """What the deployment is doing: the dashboard polls this."""

    generated_at: datetime
    window_s: int = Field(description="the recent figures cover this many seconds")
    bucket_s: int = Field(description="seconds per entry of requests_series")
    models: list[ModelStatus]
    jobs: list[RecentJob] = Field(description="the newest async jobs, newest first")
    redis: RedisMemory


@router.get(
    "/status",
    response_model=StatusReport,
    responses={401: ERROR_RESPONSES[401], 422: ERROR_RESPONSES[422], 503: ERROR_RESPONSES[503]},
)
async def get_status(
    registry: RegistryDep,
    dispatcher: DispatcherDep,
    window: Annotated[
        int, Query(ge=10, le=MAX_WINDOW_S, description="seconds of recent activity")
    ] = 300,
    jobs: Annotated[int, Query(ge=0, le=100, description="newest async jobs to list")] = 20,
) -> StatusReport:
    """Each model's workers (host, pid, batch size, last beat), queue depth, requests/s,
    p50/p99 request, queue and compute time, mean batch size, cache hit ratio and errors by
    code over the last ``window`` seconds; the newest async jobs with their progress."""
    return StatusReport.model_validate(await status.report(registry, dispatcher, window, jobs))


@router.get("/dashboard", include_in_schema=False)
async def dashboard() -> FileResponse:
    return FileResponse(ASSETS / "dashboard.html", media_type="text/html")


def install_dashboard(app: FastAPI) -> None:
    """The page, its assets and the JSON it polls."""
    app.include_router(router)
    app.mount(ASSETS_PATH, StaticFiles(directory=ASSETS), name="dashboard-assets")
