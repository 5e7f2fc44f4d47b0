"""Recovering jobs whose worker died, within seconds instead of RQ's minutes.

A SimpleWorker killed mid-batch leaves its jobs STARTED until RQ's maintenance notices (up to
~14 minutes by default), and a worker killed between taking jobs from the queue and starting
them leaves them in the queue's intermediate list. Every live worker of a model runs this
check every couple of seconds (one at a time, under a short lock): a started job whose worker
no longer heart-beats is requeued once at the front of the queue, or failed with
``worker_lost`` if it was requeued before; a job stuck in the intermediate list is put back.
Failing replies to the waiting gateways at once (a sync job's caller gets the error, and the job
is deleted; an async job keeps RQ's failure result).
"""

from __future__ import annotations

import logging
import time

from redis import Redis
from rq.exceptions import NoSuchJobError
from rq.intermediate_queue import IntermediateQueue
from rq.job import Job, JobStatus
from rq.queue import Queue
from rq.serializers import JSONSerializer

from contract.jobs import (
    ERR_WORKER_LOST,
    ERROR_META_KEY,
    LANES,
    RECOVERIES_META_KEY,
    Keys,
    is_sync,
    queue_key,
)
from workers.replies import Replier
from workers.rqadapter import store_failure

log = logging.getLogger("modelgate.worker")

ORPHAN_AFTER_S = 5.0
"""A job this long in the intermediate list has been abandoned by the worker that took it."""

MAX_RECOVERIES = 1
"""How often a job whose worker died is requeued before it fails with worker_lost."""

_LIVE = """
local t = redis.call('TIME')
return redis.call('ZRANGEBYSCORE', KEYS[1], tonumber(t[1]) + tonumber(t[2]) / 1000000, '+inf')
"""


_SEEN = """
if not redis.call('LPOS', KEYS[1], ARGV[1]) then return nil end
redis.call('SET', KEYS[2], ARGV[2], 'NX', 'EX', 300)
return redis.call('GET', KEYS[2])
"""
"""When a job still in the intermediate list was first seen there (noted now if it was not):
checked and noted in one step, so a job its worker starts meanwhile (which deletes the note)
leaves no note behind."""


class Reaper:
    """Finds and recovers one model's jobs that belong to dead workers."""

    def __init__(self, connection: Redis, keys: Keys, model: str, worker_name: str) -> None:
        self.connection = connection
        self.keys = keys
        self.model = model
        self.worker_name = worker_name
        self.queues = [
            Queue(keys.queue(model, lane), connection=connection, serializer=JSONSerializer)
            for lane in LANES
        ]
        self._live = connection.register_script(_LIVE)
        self._seen = connection.register_script(_SEEN)
        self.replier = Replier(connection, keys)

    def run_once(self) -> int:
        """One pass; returns how many jobs it recovered. Only one worker per model at a time."""
        lock = self.keys.reaper_lock(self.model)
        if not self.connection.set(lock, self.worker_name, nx=True, px=1500):
            return 0
        live = {n.decode() for n in self._live(keys=[self.keys.presence(self.model)])}
        return self._started(live) + self._intermediate()

    def _started(self, live: set[str]) -> int:
        return sum(self._started_in(queue, live) for queue in self.queues)

    def _started_in(self, queue: Queue, live: set[str]) -> int:
        recovered = 0
        registry = queue.started_job_registry
        members: list[bytes] = self.connection.zrange(registry.key, 0, -1)  # type: ignore[assignment]
        for member in members:
            job_id = member.decode().split(":", 1)[0]
            try:
                job = Job.fetch(job_id, connection=self.connection, serializer=JSONSerializer)
            except NoSuchJobError:
                self.connection.zrem(registry.key, member)
                continue
            if job.get_status(refresh=False) != JobStatus.STARTED or job.worker_name in live:
                continue
            self.connection.zrem(registry.key, member)
            self._recover(job)
            recovered += 1
        return recovered

    def _intermediate(self) -> int:
        return sum(self._intermediate_of(queue) for queue in self.queues)

    def _intermediate_of(self, queue: Queue) -> int:
        key = IntermediateQueue.get_intermediate_queue_key(queue.key)
        recovered = 0
        now = time.time()
        for raw in self.connection.lrange(key, 0, -1):
            job_id = raw.decode()
            seen_key = self.keys.seen(job_id)
            seen = self._seen(keys=[key, seen_key], args=[job_id, now])
            if seen is None:
                continue  # started (or put back) since the list was read
            if now - float(seen) < ORPHAN_AFTER_S:
                continue
            with self.connection.pipeline() as pipe:
                pipe.lrem(key, 1, job_id)
                pipe.lpush(queue.key, job_id)
                pipe.delete(seen_key)
                pipe.execute()
            log.warning("job %s was taken by a worker that never started it: requeued", job_id)
            recovered += 1
        return recovered

    def _recover(self, job: Job) -> None:
        count = int(job.meta.get(RECOVERIES_META_KEY, 0))
        if count < MAX_RECOVERIES:
            job.meta[RECOVERIES_META_KEY] = count + 1
            with self.connection.pipeline() as pipe:
                job.set_status(JobStatus.QUEUED, pipeline=pipe)
                pipe.hset(job.key, "meta", JSONSerializer.dumps(job.meta))
                pipe.lpush(queue_key(job.origin), job.id)
                pipe.execute()
            log.warning("job %s lost its worker %s: requeued", job.id, job.worker_name)
            return
        error = {
            "code": ERR_WORKER_LOST,
            "message": "the worker running this job died, and so did the one it was retried on",
        }
        job.meta[ERROR_META_KEY] = error
        with self.connection.pipeline() as pipe:
            if is_sync(job.result_ttl):
                self.replier.answer(pipe, job, error=error)
            else:
                job.set_status(JobStatus.FAILED, pipeline=pipe)
                pipe.hset(job.key, "meta", JSONSerializer.dumps(job.meta))
                store_failure(job, f"{ERR_WORKER_LOST}: worker {job.worker_name} died", pipe)
                self.replier.notify(pipe, job.id)
            pipe.execute()
        log.error("job %s lost its worker twice: failed with %s", job.id, ERR_WORKER_LOST)
