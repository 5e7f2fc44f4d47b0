"""Async jobs as clients see them: read, long-poll and cancel RQ jobs of modelgate's queues.

State lives in Redis only (RQ's job hash and result stream), so a gateway restart loses
nothing and any gateway replica answers for any job.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

from rq.intermediate_queue import IntermediateQueue
from rq.job import Job
from rq.results import Result
from rq.serializers import JSONSerializer

from contract.jobs import queue_key as contract_queue_key
from contract.tasks import shape_stored
from gateway.connections import redis_errors
from gateway.dispatch import Dispatcher
from gateway.errors import JobNotCancelable, JobRunning, UnknownJob

TERMINAL = {"finished", "failed", "canceled", "stopped"}
"""Statuses after which a job never changes."""

MAX_WAIT_S = 60.0
"""Longest ``?wait=`` a client may ask for."""

CANCEL_FLAG_TTL_S = 3600
"""How long a cancel waits for a running job's next chunk boundary (a job that ends first
simply finishes)."""


class JobStore:
    """Reads and cancels the jobs the gateway created."""

    def __init__(self, dispatcher: Dispatcher, job_ttl_s: int) -> None:
        self.dispatcher = dispatcher
        self.conn = dispatcher.conn
        self.job_ttl_s = job_ttl_s

    async def _hash(self, job_id: str) -> dict[str, str]:
        if not job_id.isalnum() or len(job_id) > 64:
            raise UnknownJob(f"no job {job_id!r} (unknown or expired)")
        async with redis_errors():
            raw = await self.conn.hmget(
                Job.key_for(job_id),
                ["status", "origin", "meta", "created_at", "enqueued_at", "started_at", "ended_at"],
            )
        fields = ["status", "origin", "meta", "created_at", "enqueued_at", "started_at", "ended_at"]
        data = {k: v.decode() for k, v in zip(fields, raw, strict=True) if v is not None}
        if not data.get("origin", "").startswith(self.dispatcher.keys.prefix + ":"):
            raise UnknownJob(f"no job {job_id!r} (unknown or expired)")
        return data

    async def get(self, job_id: str, wait_s: float = 0.0) -> dict[str, Any]:
        data = await self._hash(job_id)
        if wait_s > 0 and data.get("status") not in TERMINAL:
            data = await self._wait(job_id, min(wait_s, MAX_WAIT_S))
        return await self._describe(job_id, data)

    async def _wait(self, job_id: str, wait_s: float) -> dict[str, str]:
        """The job's hash once it ends, or after ``wait_s``; joined first, then read, so an
        ending between the two is never missed."""
        ended = await self.dispatcher.join(job_id, wait_s)
        try:
            data = await self._hash(job_id)
            if data.get("status") not in TERMINAL:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(ended), wait_s)
                data = await self._hash(job_id)
            return data
        finally:
            self.dispatcher.listener.forget(job_id, ended)

    async def _describe(self, job_id: str, data: dict[str, str]) -> dict[str, Any]:
        meta = JSONSerializer.loads(data["meta"].encode()) if data.get("meta") else {}
        status = data.get("status", "queued")
        body: dict[str, Any] = {
            "job_id": job_id,
            "model": meta.get("model"),
            "status": status,
            "created_at": data.get("created_at") or None,
            "enqueued_at": data.get("enqueued_at") or None,
            "started_at": data.get("started_at") or None,
            "ended_at": data.get("ended_at") or None,
        }
        if status == "queued":
            body["position"] = await self._position(job_id, data["origin"])
        elif status == "finished":
            outputs = await self._outputs(job_id)
            if meta.get("shape"):
                outputs = shape_stored(meta["shape"], outputs)
            body["outputs"] = outputs[0] if meta.get("single") and outputs else outputs
        elif status in ("failed", "stopped"):
            body["error"] = (await self.dispatcher.failure(job_id)).body()["error"]
        if meta.get("progress"):
            body["progress"] = meta["progress"]
        return body

    async def _position(self, job_id: str, origin: str) -> int | None:
        """Jobs ahead of this one: 0 when a worker has already taken it for its next batch."""
        queue_key = contract_queue_key(origin)
        taken_key = IntermediateQueue.get_intermediate_queue_key(queue_key)
        async with redis_errors():
            pipe = self.conn.pipeline(transaction=False)
            pipe.lpos(taken_key, job_id)
            pipe.llen(taken_key)
            pipe.lpos(queue_key, job_id)
            taken, n_taken, index = await pipe.execute()
        if taken is not None:
            return 0
        return None if index is None else int(index) + int(n_taken)

    async def _outputs(self, job_id: str) -> list[Any]:
        return list((await self.result(job_id)).get("outputs", []))

    async def result(self, job_id: str) -> dict[str, Any]:
        """A finished job's return value (``contract.jobs.job_result``: outputs, tokens)."""
        async with redis_errors():
            entries: Any = await self.conn.xrevrange(Result.get_key(job_id), count=1)
        if not entries:
            raise UnknownJob(f"the result of job {job_id!r} has expired")
        msg_id, fields = entries[0]
        result = Result.restore(
            job_id,
            msg_id.decode(),
            fields,
            connection=self.dispatcher.sync,
            serializer=JSONSerializer,
        )
        value: dict[str, Any] = result.return_value or {}
        return value

    async def statuses(self, job_ids: list[str]) -> list[str | None]:
        """Each job's status in one round trip; None for a job that expired."""
        async with redis_errors():
            pipe = self.conn.pipeline(transaction=False)
            for job_id in job_ids:
                pipe.hget(Job.key_for(job_id), "status")
            raw = await pipe.execute()
        return [None if r is None else r.decode() for r in raw]

    async def cancel(self, job_id: str) -> tuple[dict[str, Any], bool]:
        """Cancel a job: a queued one at once; one a worker runs in chunks at its next chunk
        boundary. The job's state, and whether its cancel is still to happen."""
        data = await self._hash(job_id)
        outcome = await self.dispatcher.cancel_queued(job_id, data["origin"], self.job_ttl_s)
        chunked = "progress" in (json.loads(data["meta"]) if data.get("meta") else {})
        if outcome != "canceled" and chunked and data.get("status") in ("queued", "started"):
            async with redis_errors():
                await self.conn.set(self.dispatcher.keys.cancel(job_id), 1, ex=CANCEL_FLAG_TTL_S)
            return await self.get(job_id), True
        if outcome != "canceled":
            raise JobNotCancelable(
                f"job {job_id!r} is {outcome}; only a job still in the queue can be canceled",
                status=outcome,
            )
        return await self.get(job_id), False

    async def cancel_quietly(self, job_id: str) -> bool:
        """Cancel the job if it is still queued; whether it was."""
        origin = await self.conn.hget(Job.key_for(job_id), "origin")
        if origin is None:
            return False
        outcome = await self.dispatcher.cancel_queued(job_id, origin.decode(), self.job_ttl_s)
        return outcome == "canceled"

    async def delete(self, job_id: str) -> None:
        """Remove a job and its result: a queued job never runs, an ended one is forgotten;
        a job a worker holds is refused (cancel is not possible then either)."""
        data = await self._hash(job_id)
        outcome = await self.dispatcher.delete_job(job_id, data["origin"])
        if outcome == "started":
            raise JobRunning(
                f"job {job_id!r} is running; delete it once it has ended",
                status="started",
            )
        if outcome != "deleted":
            raise UnknownJob(f"no job {job_id!r} (unknown or expired)")


def wait_param(wait: float | None) -> float:
    if wait is None:
        return 0.0
    return max(0.0, min(float(wait), MAX_WAIT_S))
