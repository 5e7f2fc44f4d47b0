"""What a running deployment is doing, for the dashboard and ``modelgate status``: each model's
workers and queue, its recent activity (:mod:`contract.recent`) and the newest async jobs.

Everything is read from Redis in a few pipelined round trips, so any gateway replica answers for
the whole deployment and a page polling every two seconds costs Redis little.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any

from rq.job import Job

from contract.config import ModelSpec, Registry
from contract.recent import BUCKET_S, bucket_starts, summarize
from gateway.admission import Admission
from gateway.census import memory
from gateway.connections import redis_errors
from gateway.dispatch import Dispatcher

JOBS_SHOWN = 20
"""How many of the newest async jobs a report lists."""


async def report(
    registry: Registry, dispatcher: Dispatcher, window_s: int, jobs: int = JOBS_SHOWN
) -> dict[str, Any]:
    """The whole report, as :class:`gateway.api.dashboard.StatusReport` describes it."""
    now = time.time()
    async with redis_errors():
        facts = await memory(dispatcher.conn)
    return {
        "generated_at": datetime.fromtimestamp(now, tz=UTC),
        "window_s": window_s,
        "bucket_s": BUCKET_S,
        "models": [await _model(spec, dispatcher, now, window_s) for spec in registry.models],
        "jobs": await recent_jobs(dispatcher, jobs),
        "redis": {"used_bytes": facts.used_bytes, "max_bytes": facts.max_bytes},
    }


async def _model(
    spec: ModelSpec, dispatcher: Dispatcher, now: float, window_s: int
) -> dict[str, Any]:
    return {
        **await model_state(spec, dispatcher.admission),
        "workers": await dispatcher.admission.workers(spec.name),
        "recent": await activity(spec, dispatcher, now, window_s),
    }


async def activity(
    spec: ModelSpec, dispatcher: Dispatcher, now: float, window_s: int
) -> dict[str, Any]:
    """The model's recent activity (``RecentActivity``) over the last ``window_s`` seconds."""
    starts = bucket_starts(now, window_s)
    async with redis_errors():
        pipe = dispatcher.conn.pipeline(transaction=False)
        for start in starts:
            pipe.hgetall(dispatcher.keys.recent(spec.name, start))
        raw = await pipe.execute()
    buckets = [
        (start, {k.decode(): int(v) for k, v in counts.items()})
        for start, counts in zip(starts, raw, strict=True)
    ]
    return summarize(buckets, now)


async def model_state(spec: ModelSpec, admission: Admission) -> dict[str, Any]:
    """Whether workers serve ``spec`` now (``ModelState``): for ``/models`` and ``/status``."""
    load = await admission.load(spec.name)
    return {
        "name": spec.name,
        "task": spec.task,
        "device": spec.device,
        "ready": load.live_workers > 0,
        "live_workers": load.live_workers,
        "queue_depth": load.queue_depth,
        "bulk_queue_depth": load.bulk_depth,
        "max_batch_size": spec.max_batch_size,
        "load_error": None if load.live_workers else await admission.load_error(spec.name),
    }


async def recent_jobs(dispatcher: Dispatcher, limit: int) -> list[dict[str, Any]]:
    """The newest async jobs that still exist, newest first, with their progress."""
    fields = ["status", "meta", "created_at", "ended_at"]
    async with redis_errors():
        newest: Any = await dispatcher.conn.zrevrange(dispatcher.keys.recent_jobs(), 0, limit - 1)
        ids = [job_id.decode() for job_id in newest]
        pipe = dispatcher.conn.pipeline(transaction=False)
        for job_id in ids:
            pipe.hmget(Job.key_for(job_id), fields)
        rows = await pipe.execute()
    jobs = []
    for job_id, row in zip(ids, rows, strict=True):
        data = {k: v.decode() for k, v in zip(fields, row, strict=True) if v is not None}
        if "status" not in data:
            continue  # expired or deleted
        meta = json.loads(data["meta"]) if data.get("meta") else {}
        jobs.append(
            {
                "job_id": job_id,
                "model": meta.get("model"),
                "status": data["status"],
                "created_at": data.get("created_at") or None,
                "ended_at": data.get("ended_at") or None,
                "progress": meta.get("progress"),
            }
        )
    return jobs
