"""Request and response bodies of the HTTP API, as they appear in /openapi.json.

Each model gets its own predict and job request schema, built from its task's shapes in
:mod:`contract.tasks` and its limits in models.yaml, so a schema-driven client and the server
agree on what is valid: the schema states ``max_inputs`` (maxItems) and ``max_chars``
(maxLength), and the server answers 413 beyond them.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictStr, create_model, field_validator

from contract.config import ModelSpec
from contract.tasks import TASKS, WHOLE

Priority = Literal["high", "low"]
PRIORITY_FIELD = Field(
    default="low", description="high jumps the model's queue; low (default) joins its end"
)


def schema_name(spec: ModelSpec, suffix: str) -> str:
    """A component name for one model's schema: ``tiny-cls`` → ``TinyClsPredictRequest``."""
    words = re.split(r"[^a-zA-Z0-9]+", spec.name)
    return "".join(w[:1].upper() + w[1:] for w in words if w) + suffix


def _text(max_chars: int, *, non_empty: bool = False) -> Any:
    # The limit is stated, not enforced here: beyond it the server answers 413, not 422.
    extra: dict[str, Any] = {"maxLength": max_chars}
    return Annotated[StrictStr, Field(min_length=1 if non_empty else 0, json_schema_extra=extra)]


def _input_type(spec: ModelSpec, limit: int) -> Any:
    task = TASKS[spec.task]
    strict = ConfigDict(extra="forbid", strict=True)
    if task.name == "question-answering":
        text = _text(spec.max_chars, non_empty=True)
        return create_model(
            schema_name(spec, "Question"),
            __config__=strict,
            question=(text, ...),
            context=(text, ...),
        )
    if task.name == "rerank":
        text = _text(spec.max_chars)
        documents: Any = Annotated[
            list[text],  # type: ignore[valid-type]
            Field(min_length=1, json_schema_extra={"maxItems": limit}),
        ]
        return create_model(
            schema_name(spec, "Query"),
            __config__=strict,
            query=(_text(spec.max_chars, non_empty=True), ...),
            documents=(documents, ...),
        )
    return _text(spec.max_chars)


def _params_model(spec: ModelSpec) -> type[BaseModel]:
    """The task's parameters; for embeddings, with the ``dimensions`` this model offers."""
    params = TASKS[spec.task].params
    if spec.task != "feature-extraction":
        return params
    offered: list[Any] = [*(spec.matryoshka_dimensions or []), None]
    # Stated, not enforced here: the server explains a refusal itself.
    field = Field(
        default=None,
        description=params.model_fields["dimensions"].description,
        json_schema_extra={"enum": offered},
    )
    return create_model(
        schema_name(spec, "Parameters"),
        __base__=params,
        dimensions=(Annotated[int, Field(ge=1), WHOLE] | None, field),
    )


def request_model(spec: ModelSpec, *, job: bool) -> type[BaseModel]:
    """The body of ``POST /models/<name>/predict`` (or ``/jobs``) for this model."""
    task = TASKS[spec.task]
    limit = spec.max_job_inputs if job else spec.max_inputs
    item = _input_type(spec, limit)
    inputs: Any = item
    description = "one input"
    if task.many:
        many = Annotated[list[item], Field(min_length=1, json_schema_extra={"maxItems": limit})]  # type: ignore[valid-type]
        inputs = item | many
        description = f"one input, or a list of 1 to {limit}"
    required = any(f.is_required() for f in task.params.model_fields.values())
    model = _params_model(spec)
    params: Any = (model, ...) if required else (model | None, None)
    return create_model(
        schema_name(spec, "JobRequest" if job else "PredictRequest"),
        __config__=ConfigDict(
            extra="forbid", strict=True, json_schema_extra={"examples": [task.example]}
        ),
        __doc__=f"{spec.task} with {spec.name}: {description}, with the task's parameters.",
        inputs=(inputs, Field(description=description)),
        parameters=(params[0], Field(default=params[1], description=task.params.__doc__)),
        priority=(Priority, PRIORITY_FIELD),
    )


def response_model(spec: ModelSpec) -> type[BaseModel]:
    """The body of a 200 from ``POST /models/<name>/predict``."""
    task = TASKS[spec.task]
    output: Any = task.output
    outputs = output | list[output] if task.many else output
    if task.name == "rerank":
        outputs = output
    return create_model(
        schema_name(spec, "PredictResponse"),
        __doc__="One output for a single input; a list of outputs, in input order, for a list.",
        model=(str, ...),
        outputs=(outputs, ...),
    )


def classic_requests(spec: ModelSpec) -> tuple[type[BaseModel], type[BaseModel]]:
    """The bodies of ``POST /predict`` on the default model: one text, or several."""
    text: Any = _text(spec.max_chars)
    texts: Any = Annotated[
        list[text],
        Field(min_length=1, json_schema_extra={"maxItems": spec.max_inputs}),
    ]
    one = create_model(
        "TextRequest",
        __config__=_classic_config({"text": "I love it"}),
        __doc__="The classic single-model call: one text.",
        text=(text, ...),
    )
    many = create_model(
        "TextsRequest",
        __config__=_classic_config({"texts": ["good", "bad"]}),
        __doc__="The classic single-model call for several texts.",
        texts=(texts, ...),
    )
    return one, many


def _classic_config(example: dict[str, Any]) -> ConfigDict:
    return ConfigDict(extra="forbid", strict=True, json_schema_extra={"examples": [example]})


class LabelScore(BaseModel):
    label: str
    score: float


class Predictions(BaseModel):
    predictions: list[LabelScore]


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
    """One live worker of the model."""

    model_config = ConfigDict(extra="allow")
    name: str
    model: str | None = None
    host: str | None = None
    pid: int | None = None
    device: str | None = None
    dtype: str | None = None
    engine: str | None = Field(default=None, description="torch, onnx or openvino")
    fingerprint: str | None = Field(default=None, description="of the weights it serves")
    max_batch_size: int | None = Field(default=None, description="most inputs per model call")
    ready_at: datetime | None = Field(
        default=None, description="when it announced itself (ISO 8601, UTC)"
    )
    last_beat: datetime | None = Field(
        default=None, description="when it last renewed its presence (Redis server's clock)"
    )
    last_batch: int | None = Field(default=None, description="inputs in its last model call")
    last_batch_at: datetime | None = Field(default=None, description="when that call ended")

    @field_validator("ready_at", "last_beat", "last_batch_at", mode="before")
    @classmethod
    def _from_epoch(cls, value: Any) -> Any:
        """Workers record the epoch seconds; the API speaks ISO 8601 like the jobs do."""
        if isinstance(value, str) and value.replace(".", "", 1).isdigit():
            return datetime.fromtimestamp(float(value), tz=UTC)
        return value


class ModelSchemas(BaseModel):
    """Where this model's request and response bodies are described in /openapi.json."""

    predict: str
    jobs: str
    request: str
    response: str
    parameters: dict[str, Any] = Field(description="JSON schema of the task's parameters")


LANES_WINDOW_S = 60
"""The window of the per-lane figures ``/models`` gives."""


class Quantiles(BaseModel):
    p50: float | None = Field(description="median, ms; null without samples")
    p99: float | None = Field(description="99th percentile, ms; null without samples")


class LaneActivity(BaseModel):
    """One lane of a model: interactive (sync requests) or bulk (async jobs, Batch API)."""

    jobs: int = Field(description="jobs workers ran from this lane")
    items: int = Field(description="inputs run from this lane")
    items_per_s: float = Field(description="over the last minute")
    wait_ms: Quantiles = Field(description="a job's wait in this lane")


class ModelState(BaseModel):
    """Whether workers serve a model right now (``/models`` and ``/status`` alike)."""

    name: str
    task: str
    device: str
    ready: bool
    live_workers: int
    queue_depth: int = Field(description="sync requests waiting (the interactive lane)")
    bulk_queue_depth: int = Field(description="async jobs waiting (the bulk lane)")
    max_batch_size: int
    load_error: str | None = Field(
        default=None, description="why its workers cannot load the model, while none serves it"
    )


class ModelInfo(ModelState):
    """A served model: its configuration, and whether workers serve it right now."""

    source: str
    dtype: str
    bulk_share: float = Field(
        description="share of its throughput alone a bulk job keeps while sync requests come in"
    )
    max_inputs: int
    max_chars: int
    timeout_s: float
    schemas: ModelSchemas
    lanes: dict[str, LaneActivity] = Field(
        description=f"interactive and bulk, over the last {LANES_WINDOW_S} s (every replica)"
    )
    workers: list[WorkerInfo] | None = None


def model_schemas(spec: ModelSpec) -> ModelSchemas:
    ref = "/openapi.json#/components/schemas/"
    return ModelSchemas(
        predict=f"/models/{spec.name}/predict",
        jobs=f"/models/{spec.name}/jobs",
        request=ref + schema_name(spec, "PredictRequest"),
        response=ref + schema_name(spec, "PredictResponse"),
        parameters=_params_model(spec).model_json_schema(),
    )


ERROR_TEXTS = {
    401: "missing or wrong API key (only when API keys are configured)",
    403: "the API key may not use this model",
    404: "unknown model",
    413: "too many inputs, an input too long, or a body too large",
    422: "invalid input or parameters",
    429: "the model's queue is full, or the API key is over its rate; retry after Retry-After",
    500: "the model failed on this input",
    503: "no live worker for the model, or Redis is unreachable",
    504: "no result before the model's timeout",
}


def error_responses(model: Any, **more: str) -> dict[int | str, dict[str, Any]]:
    """The documented error answers of an inference route, with the body ``model`` its
    wire format writes; ``more`` adds statuses (``_400="..."``)."""
    texts: dict[int, str] = {**ERROR_TEXTS, **{int(k[1:]): v for k, v in more.items()}}
    return {status: {"model": model, "description": text} for status, text in sorted(texts.items())}


ERROR_RESPONSES = error_responses(ErrorResponse)
"""Documented error answers of the predict endpoints."""
