"""Batches of the Batch API, kept in Redis: each batch is one hash holding OpenAI's batch
object and its lines (each line's ``custom_id`` and the async job computing it, or the error
that refused it). The jobs are ordinary async jobs, so workers, cache and priorities are the
same as for ``/models/{name}/jobs``; a batch's progress is read from its jobs' statuses.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import asdict, dataclass
from typing import Any

import redis.asyncio as aredis

from contract.jobs import Keys
from gateway.connections import redis_errors
from gateway.errors import NotFound
from gateway.jobs import TERMINAL, JobStore


class UnknownBatch(NotFound):
    code = "unknown_batch"


@dataclass
class Line:
    """One request of a batch."""

    custom_id: str
    job_id: str | None = None
    refused: dict[str, Any] | None = None
    """``{"status_code", "body"}`` of a request refused before a job existed."""
    encoding_format: str = "float"
    model: str = ""


@dataclass(frozen=True)
class Progress:
    """Where a batch's lines stand."""

    total: int
    completed: int
    failed: int
    statuses: list[str | None]

    @property
    def ended(self) -> bool:
        return self.completed + self.failed == self.total


def new_batch(body: dict[str, Any], ttl_s: int) -> dict[str, Any]:
    """OpenAI's batch object for a batch created now from ``body``'s fields."""
    now = int(time.time())
    return {
        "id": f"batch_{uuid.uuid4().hex}",
        "object": "batch",
        "endpoint": body["endpoint"],
        "errors": None,
        "input_file_id": body["input_file_id"],
        "completion_window": body["completion_window"],
        "status": "in_progress",
        "output_file_id": None,
        "error_file_id": None,
        "created_at": now,
        "in_progress_at": now,
        "expires_at": now + ttl_s,
        "finalizing_at": None,
        "completed_at": None,
        "failed_at": None,
        "expired_at": None,
        "cancelling_at": None,
        "cancelled_at": None,
        "request_counts": {"total": 0, "completed": 0, "failed": 0},
        "metadata": body.get("metadata"),
    }


class BatchStore:
    """Stores batches and reads their progress from their jobs."""

    def __init__(self, conn: aredis.Redis, keys: Keys, jobs: JobStore, ttl_s: int) -> None:
        self.conn = conn
        self.keys = keys
        self.jobs = jobs
        self.ttl_s = ttl_s

    async def save(self, batch: dict[str, Any], lines: list[Line] | None = None) -> None:
        fields = {"batch": json.dumps(batch)}
        if lines is not None:
            fields["lines"] = json.dumps([asdict(line) for line in lines])
        key = self.keys.batch(batch["id"])
        async with redis_errors():
            pipe = self.conn.pipeline(transaction=True)
            pipe.hset(key, mapping=fields)  # type: ignore[arg-type]
            pipe.expire(key, self.ttl_s)
            await pipe.execute()

    async def load(self, batch_id: str) -> tuple[dict[str, Any], list[Line]]:
        async with redis_errors():
            batch, lines = await self.conn.hmget(self.keys.batch(batch_id), ["batch", "lines"])
        if batch is None:
            raise UnknownBatch(f"no batch {batch_id!r} (unknown or expired)")
        return json.loads(batch), [Line(**line) for line in json.loads(lines or b"[]")]

    async def progress(self, lines: list[Line]) -> Progress:
        """Counts as OpenAI's ``request_counts``: a refused line, a failed, canceled or
        expired job count as failed."""
        running = [line.job_id for line in lines if line.job_id]
        found = iter(await self.jobs.statuses(running)) if running else iter(())
        statuses = [next(found) if line.job_id else "refused" for line in lines]
        completed = statuses.count("finished")
        failed = sum(1 for s in statuses if s != "finished" and (s is None or s in TERMINAL))
        failed += statuses.count("refused")
        return Progress(len(lines), completed, failed, statuses)
