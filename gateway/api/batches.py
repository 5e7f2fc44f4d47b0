"""OpenAI's Batch API for ``/v1/embeddings`` lines: ``POST /v1/batches``,
``GET /v1/batches/{id}``, ``POST /v1/batches/{id}/cancel`` (files: :mod:`gateway.api.files`).

Each line becomes one async job at low priority (the same workers, per-item cache and job
store as ``/models/{name}/jobs``), queued while ``POST /v1/batches`` answers: a batch that was
created has every line queued, and a gateway that dies later loses nothing (the jobs and the
batch live in Redis). ``request_counts`` move as jobs end. The output and error files are
written by the first read of the batch after its last job ended. A file with a structural
problem (a line that is not a request object, a duplicate ``custom_id``, another endpoint)
fails the batch at creation with ``errors``, as OpenAI's validation does; a request the API
would refuse (unknown model, invalid input) goes to the error file with its status and body.
"""

from __future__ import annotations

import functools
import hashlib
import json
import time
from collections.abc import Callable
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, StrictStr, ValidationError

from contract.config import Registry
from gateway.api.files import files_of
from gateway.api.openai_compat import (
    OPENAI_ERRORS,
    EmbeddingsRequest,
    embeddings_body,
    openai_error,
    to_inputs,
)
from gateway.api.routes import served
from gateway.auth import KeyPolicy
from gateway.batches import BatchStore, Line, new_batch
from gateway.cache import CacheMode
from gateway.deps import InferenceDep, RegistryDep, SettingsDep
from gateway.errors import Forbidden, GatewayError, InvalidInput, PayloadTooLarge, invalid_input
from gateway.inference import Inference
from gateway.problems import describe, field_path
from gateway.quotas import Quotas
from gateway.settings import GatewaySettings
from gateway.validation import prepare

router = APIRouter(prefix="/v1", tags=["OpenAI Batch API"])

NOT_FOUND: dict[int | str, dict[str, Any]] = {s: OPENAI_ERRORS[s] for s in (401, 404, 503)}


def _batches(request: Request) -> BatchStore:
    batches: BatchStore = request.app.state.batches
    return batches


class BatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input_file_id: StrictStr
    endpoint: Literal["/v1/embeddings"]
    completion_window: Literal["24h"]
    metadata: Annotated[dict[str, StrictStr], Field(max_length=16)] | None = None


class RequestCounts(BaseModel):
    total: int
    completed: int
    failed: int


class BatchError(BaseModel):
    code: str
    message: str
    line: int | None = None


class BatchErrors(BaseModel):
    object: Literal["list"] = "list"
    data: list[BatchError]


class BatchObject(BaseModel):
    """OpenAI's batch object."""

    id: str
    object: Literal["batch"] = "batch"
    endpoint: str
    errors: BatchErrors | None
    input_file_id: str
    completion_window: str
    status: Literal["failed", "in_progress", "completed", "cancelling", "cancelled"]
    output_file_id: str | None
    error_file_id: str | None
    created_at: int
    in_progress_at: int | None
    expires_at: int
    finalizing_at: int | None
    completed_at: int | None
    failed_at: int | None
    expired_at: int | None
    cancelling_at: int | None
    cancelled_at: int | None
    request_counts: RequestCounts
    metadata: dict[str, str] | None


class _LineRequest(BaseModel):
    """One JSONL line of a batch input file."""

    model_config = ConfigDict(extra="forbid")

    custom_id: Annotated[StrictStr, Field(min_length=1)]
    method: Literal["POST"]
    url: Literal["/v1/embeddings"]
    body: dict[str, Any]


def parse_lines(content: bytes) -> tuple[list[_LineRequest], list[dict[str, Any]]]:
    """The file's requests, and OpenAI's validation errors (each with its line number)."""
    requests: list[_LineRequest] = []
    errors: list[dict[str, Any]] = []
    seen: set[str] = set()
    for number, raw in enumerate(content.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            request = _LineRequest.model_validate_json(raw)
        except ValidationError as err:
            first = err.errors()[0]
            message = f"{field_path(tuple(first['loc'])) or 'line'}: {first['msg']}"
            errors.append({"code": "invalid_request", "message": message, "line": number})
            continue
        if request.custom_id in seen:
            message = f"custom_id {request.custom_id!r} appears twice"
            errors.append({"code": "duplicate_custom_id", "message": message, "line": number})
        seen.add(request.custom_id)
        requests.append(request)
    if not requests and not errors:
        errors.append({"code": "empty_file", "message": "the file has no requests", "line": 0})
    return requests, errors


def _refusal(err: GatewayError) -> dict[str, Any]:
    return {"status_code": err.status_code, "body": openai_error(err)}


async def _submit(
    line: _LineRequest,
    registry: Registry,
    inference: Inference,
    settings: GatewaySettings,
    request_id: str,
    allow: Callable[[str], None],
) -> Line:
    """Queue one line's job, or record why the API refuses its request."""
    try:
        body = EmbeddingsRequest.model_validate(line.body)
    except ValidationError as err:
        # The same 422 that /v1/embeddings answers for this body.
        described = describe(err.errors(), None, "application/json")
        return Line(line.custom_id, refused=_refusal(invalid_input(described)))
    try:
        spec = served(registry, body.model, "feature-extraction")
        allow(spec.name)  # the API key's model allowlist, line by line
        parameters = {} if body.dimensions is None else {"dimensions": body.dimensions}
        work = prepare(spec, to_inputs(body.input), parameters, spec.max_inputs)
        job_id, _ = await inference.submit_job(
            spec,
            work,
            request_id=request_id,
            mode=CacheMode.NORMAL,
            job_ttl_s=settings.job_ttl_s,
            priority="low",
            confirm=False,  # all lines and the batch at once, below
        )
    except (InvalidInput, PayloadTooLarge, Forbidden) as err:
        return Line(line.custom_id, refused=_refusal(err))
    except GatewayError as err:
        if err.status_code >= 500 and err.code != "model_unavailable":
            raise  # Redis down: the batch is not created, the client retries it whole
        return Line(line.custom_id, refused=_refusal(err))
    return Line(line.custom_id, job_id, None, body.encoding_format, spec.name)


BATCH_LINKS = {
    name: {"operationId": operation, "parameters": {"batch_id": "$response.body#/id"}}
    for name, operation in (("GetBatch", "get_batch"), ("CancelBatch", "cancel_batch"))
}
"""OpenAPI links from a created batch to reading and canceling it."""


@router.post(
    "/batches",
    response_model=BatchObject,
    operation_id="create_batch",
    responses={200: {"links": BATCH_LINKS}, **NOT_FOUND, 422: OPENAI_ERRORS[422]},
    summary="create a batch from an uploaded file",
)
async def create_batch(
    body: BatchRequest,
    request: Request,
    registry: RegistryDep,
    inference: InferenceDep,
    settings: SettingsDep,
) -> dict[str, Any]:
    """Queue every request of the file; answers the batch (``in_progress``, or ``failed``
    with ``errors`` when the file is not a valid batch file)."""
    content = await files_of(request).content(body.input_file_id)
    requests, problems = parse_lines(content)
    batch = new_batch(body.model_dump(), settings.job_ttl_s)
    lines: list[Line] = []
    if problems:
        batch.update(status="failed", failed_at=batch["created_at"], in_progress_at=None)
        batch["errors"] = {"object": "list", "data": problems}
    else:
        request_id = request.state.request_id
        quotas: Quotas = request.app.state.quotas
        policy: KeyPolicy | None = request.scope.get("state", {}).get("api_key")
        await quotas.draw(policy, len(requests))  # the batch is one request of its lines
        for line in requests:
            allow = functools.partial(quotas.allow_model, policy)
            lines.append(await _submit(line, registry, inference, settings, request_id, allow))
        batch["request_counts"]["total"] = len(lines)
    await _batches(request).save(batch, lines)
    await inference.dispatcher.confirm_writes()  # the lines' jobs and the batch, on a replica
    return batch


@router.get(
    "/batches/{batch_id}",
    response_model=BatchObject,
    operation_id="get_batch",
    responses=NOT_FOUND,
    summary="a batch's state",
)
async def get_batch(batch_id: str, request: Request) -> dict[str, Any]:
    """The batch, with ``request_counts`` as they stand; once every job ended, the output
    and error files are written and the batch is ``completed`` (or ``cancelled``)."""
    batches = _batches(request)
    batch, lines = await batches.load(batch_id)
    if batch["status"] not in ("in_progress", "cancelling"):
        return batch
    progress = await batches.progress(lines)
    batch["request_counts"] = {
        "total": progress.total,
        "completed": progress.completed,
        "failed": progress.failed,
    }
    if progress.ended:
        await _finalize(request, batch, lines, progress.statuses)
    return batch


@router.post(
    "/batches/{batch_id}/cancel",
    response_model=BatchObject,
    operation_id="cancel_batch",
    responses=NOT_FOUND,
    summary="cancel a batch",
)
async def cancel_batch(batch_id: str, request: Request) -> dict[str, Any]:
    """Cancel the lines still queued (lines running finish); idempotent. The batch reads
    ``cancelling`` until its last running line ended, then ``cancelled``, with the lines
    that finished in its output file."""
    batches = _batches(request)
    batch, lines = await batches.load(batch_id)
    if batch["status"] == "in_progress":
        batch.update(status="cancelling", cancelling_at=int(time.time()))
        await batches.save(batch)
        for line in lines:
            if line.job_id:
                await batches.jobs.cancel_quietly(line.job_id)
    return await get_batch(batch_id, request)


async def _finalize(
    request: Request, batch: dict[str, Any], lines: list[Line], statuses: list[str | None]
) -> None:
    """Write the output and error files and end the batch (idempotent: the file ids are the
    batch's own, so two replicas finalizing at once write the same files)."""
    batches, files = _batches(request), files_of(request)
    outputs: list[bytes] = []
    errors: list[bytes] = []
    for line, status in zip(lines, statuses, strict=True):
        entry = await _entry(batches, batch["id"], line, status)
        answered = entry["response"] is not None and entry["response"]["status_code"] == 200
        (outputs if answered else errors).append(json.dumps(entry).encode())
    now = int(time.time())
    for kind, entries in (("output", outputs), ("error", errors)):
        if entries:
            file_id = f"file-{batch['id']}-{kind}"
            await files.put(
                b"\n".join(entries) + b"\n", f"{batch['id']}_{kind}.jsonl", "batch_output", file_id
            )
            batch[f"{kind}_file_id"] = file_id
    ended = "cancelled" if batch["status"] == "cancelling" else "completed"
    batch.update(status=ended, finalizing_at=now, **{f"{ended}_at": now})
    await batches.save(batch)


async def _entry(
    batches: BatchStore, batch_id: str, line: Line, status: str | None
) -> dict[str, Any]:
    """One line of the output or error file, as OpenAI writes it; its id is derived from the
    batch and the line's ``custom_id`` (unique in the batch), so a second finalizing writes
    the same bytes."""
    digest = hashlib.sha256(f"{batch_id}\0{line.custom_id}".encode()).hexdigest()[:32]
    entry: dict[str, Any] = {
        "id": f"batch_req_{digest}",
        "custom_id": line.custom_id,
        "response": None,
        "error": None,
    }
    if line.refused is not None:
        entry["response"] = {"request_id": None, **line.refused}
    elif status == "finished" and line.job_id:
        result = await batches.jobs.result(line.job_id)
        body = embeddings_body(
            line.model, result["outputs"], sum(result.get("tokens") or []), line.encoding_format
        )
        entry["response"] = {"status_code": 200, "request_id": line.job_id, "body": body}
    elif status == "failed" and line.job_id:
        err = await batches.jobs.dispatcher.failure(line.job_id)
        entry["response"] = {"request_id": line.job_id, **_refusal(err)}
    elif status in ("canceled", "stopped"):
        entry["error"] = {"code": "batch_cancelled", "message": "the batch was cancelled first"}
    else:
        entry["error"] = {"code": "batch_expired", "message": "the request's result expired"}
    return entry
