"""Request and response bodies of the HTTP API, as they appear in /openapi.json."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictStr


class PredictRequest(BaseModel):
    """One input (a string) or several (a list of strings), with task parameters."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"inputs": "hello world"}, {"inputs": ["a", "b"], "parameters": {}}]
        },
    )

    inputs: StrictStr | Annotated[list[StrictStr], Field(min_length=1)] = Field(
        description="a string, or a non-empty list of strings"
    )
    parameters: dict[str, Any] | None = Field(
        default=None, description="task parameters; each task accepts its own allowlist"
    )
    priority: Literal["high", "low"] = Field(
        default="low", description="high jumps the model's queue; low (default) joins its end"
    )


class PredictResponse(BaseModel):
    """One output for a string input; a list of outputs, in input order, for a list."""

    model: str
    outputs: Any


class JobAccepted(BaseModel):
    """A queued job: poll ``status_url`` for its state."""

    job_id: str
    status: str
    status_url: str


class JobState(BaseModel):
    """Where a job stands. ``outputs`` once finished (shaped as /predict's), ``error`` once failed,
    ``position`` in the model's queue while queued."""

    job_id: str
    model: str | None
    status: str = Field(description="queued | started | finished | failed | canceled")
    created_at: str | None = None
    enqueued_at: str | None = None
    started_at: str | None = None
    ended_at: str | None = None
    position: int | None = None
    outputs: Any = None
    error: dict[str, Any] | None = None
    progress: dict[str, Any] | None = None


class ErrorBody(BaseModel):
    code: str = Field(description="stable machine-readable code")
    message: str = Field(description="what went wrong, for a person")


class ErrorResponse(BaseModel):
    error: ErrorBody


class WorkerInfo(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str


class ModelInfo(BaseModel):
    """A served model: its configuration, and whether workers serve it right now."""

    name: str
    task: str
    source: str
    device: str
    dtype: str
    ready: bool
    live_workers: int
    queue_depth: int
    max_inputs: int
    max_chars: int
    max_batch_size: int
    timeout_s: float
    workers: list[WorkerInfo] | None = None


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": text}
    for status, text in {
        401: "missing or wrong API key (only when API keys are configured)",
        404: "unknown model",
        413: "too many inputs, an input too long, or a body too large",
        422: "invalid input or parameters",
        429: "the model's queue is full; retry after Retry-After seconds",
        500: "the model failed on this input",
        503: "no live worker for the model, or Redis is unreachable",
        504: "no result before the model's timeout",
    }.items()
}
"""Documented error answers of the predict endpoints."""
