"""Files of OpenAI's Batch API: ``POST /v1/files`` (a JSONL upload, ``purpose=batch``, with
a size and a line limit, each a 413), ``GET /v1/files/{id}[/content]``, ``DELETE
/v1/files/{id}``. A batch's output and error files are read here too."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import Response
from pydantic import BaseModel

from gateway.api.openai_compat import OPENAI_ERRORS
from gateway.deps import SettingsDep
from gateway.errors import PayloadTooLarge
from gateway.files import FileStore

router = APIRouter(prefix="/v1", tags=["OpenAI Batch API"])


def files_of(request: Request) -> FileStore:
    files: FileStore = request.app.state.files
    return files


NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: OPENAI_ERRORS[404],
    401: OPENAI_ERRORS[401],
    503: OPENAI_ERRORS[503],
}


class FileObject(BaseModel):
    """OpenAI's file object."""

    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    expires_at: int
    filename: str
    purpose: Literal["batch", "batch_output"]
    status: Literal["processed"] = "processed"


FILE_LINKS = {
    name: {"operationId": operation, "parameters": {"file_id": "$response.body#/id"}}
    for name, operation in (
        ("GetFile", "get_file"),
        ("GetFileContent", "file_content"),
        ("DeleteFile", "delete_file"),
    )
}
FILE_LINKS["CreateBatch"] = {
    "operationId": "create_batch",
    "requestBody": {
        "input_file_id": "$response.body#/id",
        "endpoint": "/v1/embeddings",
        "completion_window": "24h",
    },
}
"""OpenAPI links from an uploaded file to reading it, deleting it and making it a batch."""


@router.post(
    "/files",
    response_model=FileObject,
    operation_id="upload_file",
    responses={
        200: {"links": FILE_LINKS},
        **NOT_FOUND,
        413: OPENAI_ERRORS[413],
        422: OPENAI_ERRORS[422],
    },
    summary="upload a batch input file (JSONL)",
)
async def upload_file(
    request: Request,
    settings: SettingsDep,
    file: Annotated[UploadFile, File(description="JSONL, one request a line")],
    purpose: Annotated[Literal["batch"], Form(description="batch (the only purpose served)")],
) -> dict[str, Any]:
    """Store a JSONL file of requests for ``POST /v1/batches``."""
    content = await file.read(settings.batch_max_file_bytes + 1)
    if len(content) > settings.batch_max_file_bytes:
        raise PayloadTooLarge(
            f"file is larger than {settings.batch_max_file_bytes} bytes",
            limit=settings.batch_max_file_bytes,
        )
    lines = sum(1 for line in content.splitlines() if line.strip())
    if lines > settings.batch_max_lines:
        raise PayloadTooLarge(
            f"file has {lines} requests; a batch takes at most {settings.batch_max_lines}",
            limit=settings.batch_max_lines,
        )
    stored = await files_of(request).put(content, file.filename or "batch.jsonl", purpose)
    await request.app.state.dispatcher.confirm_writes()  # on a replica before its id is given
    return stored


@router.get(
    "/files/{file_id}",
    response_model=FileObject,
    operation_id="get_file",
    responses=NOT_FOUND,
    summary="a file",
)
async def get_file(file_id: str, request: Request) -> dict[str, Any]:
    return await files_of(request).info(file_id)


@router.get(
    "/files/{file_id}/content",
    response_class=Response,
    operation_id="file_content",
    responses={200: {"content": {"application/jsonl": {}}}, **NOT_FOUND},
    summary="a file's content",
)
async def file_content(file_id: str, request: Request) -> Response:
    content = await files_of(request).content(file_id)
    return Response(content, media_type="application/jsonl")


@router.delete(
    "/files/{file_id}", operation_id="delete_file", responses=NOT_FOUND, summary="delete a file"
)
async def delete_file(file_id: str, request: Request) -> dict[str, Any]:
    await files_of(request).delete(file_id)
    return {"id": file_id, "object": "file", "deleted": True}
