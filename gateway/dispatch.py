"""Handing work to the workers through Redis and RQ, and waiting for it without polling.

A job is built with RQ's own ``Job`` (JSON serializer, TTLs on result and failure) and written in
one pipelined round trip. A sync request's job keeps no result (``result_ttl`` 0): its worker
replies to this gateway's inbox and deletes the job in the same transaction, so an answered
request leaves nothing in Redis. The wait holds no connection: one listener per process reads
the inbox (``gateway.replies``). Identical work already in flight is joined instead of repeated
(single-flight): the joiner's inbox is added to the job's replies set, atomically with the check
that the job has not replied yet.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from typing import Any

from redis.exceptions import RedisError
from rq.job import Job, JobStatus
from rq.queue import Queue
from rq.registry import CanceledJobRegistry, FailedJobRegistry, FinishedJobRegistry
from rq.results import Result
from rq.serializers import JSONSerializer
from rq.utils import now as rq_now

from contract.config import ModelSpec
from contract.jobs import (
    BULK,
    ERR_DEADLINE_EXCEEDED,
    ERR_INFERENCE_TIMEOUT,
    ERR_INPUT_TOO_LONG,
    ERR_INVALID_INPUT,
    ERR_REDIS_UNAVAILABLE,
    ERR_WORKER_LOST,
    ERROR_META_KEY,
    INTERACTIVE,
    PREDICT_FUNC,
    SEGMENTS_META_KEY,
    SYNC_FAILURE_TTL_S,
    SYNC_RESULT_TTL_S,
    JobPayload,
    Keys,
    Reply,
    group_kwargs,
    job_result,
)
from contract.jobs import queue_key as contract_queue_key
from contract.redisconn import ReplicaAcks, areplicated
from gateway.admission import Admission
from gateway.coalesce import Coalescer, Entry, group_limit
from gateway.connections import Connections, redis_errors
from gateway.errors import (
    GatewayError,
    InferenceFailed,
    InferenceTimeout,
    InvalidInput,
    PayloadTooLarge,
    RedisUnavailable,
    WorkerLost,
)
from gateway.replies import ReplyListener
from gateway.rqadapter import Commands, knows_server_version, recorded, tell_server_version

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

_CANCEL = """
local status = redis.call('HGET', KEYS[1], 'status')
if status == 'canceled' then return 'canceled' end
if status ~= 'queued' then return status or 'unknown' end
if ARGV[4] and redis.call('SCARD', KEYS[4]) > tonumber(ARGV[4]) then
  return 'awaited elsewhere'
end
if redis.call('LREM', KEYS[2], 1, ARGV[1]) == 0 then
  return 'already taken by a worker'
end
redis.call('DEL', KEYS[5])
if ARGV[2] == '0' then
  redis.call('DEL', KEYS[1], KEYS[4])
  return 'canceled'
end
redis.call('HSET', KEYS[1], 'status', 'canceled')
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[1])
return 'canceled'
"""
"""Cancel only what no worker has taken: the job's id must still be in the queue list, and
removing it there is what makes it canceled, in one atomic step. With a TTL of 0 (a sync job
whose caller gave up) the job is deleted instead of kept as canceled. With a fourth argument,
only while at most that many gateways wait for its reply (a replica's joiner keeps it). The
chunks a large job finished go with it."""

_CANCEL_SEGMENT = """
local status = redis.call('HGET', KEYS[1], 'status')
if status ~= 'queued' then return status or 'unknown' end
if ARGV[2] and redis.call('SCARD', KEYS[2]) > tonumber(ARGV[2]) then
  return 'awaited elsewhere'
end
redis.call('SET', KEYS[3], '1', 'EX', ARGV[1])
return 'canceled'
"""
"""Withdraw one request from a coalesced job no worker has started: its cancel key, which the
worker reads in the transaction that starts the job (after it, the job is no longer queued),
makes the worker skip it. With a second argument, only while at most that many gateways wait
for its reply."""

ENDED_REGISTRIES = (FinishedJobRegistry, FailedJobRegistry, CanceledJobRegistry)
"""Where RQ lists a job that has ended, by queue."""

_DELETE = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return 'unknown' end
if status == 'started' then return 'started' end
if status == 'queued' and redis.call('LREM', KEYS[2], 1, ARGV[1]) == 0 then
  return 'started'
end
redis.call('DEL', KEYS[1], KEYS[3], KEYS[7], KEYS[8])
for i = 4, 6 do redis.call('ZREM', KEYS[i], ARGV[1]) end
return 'deleted'
"""
"""Delete a job and its result unless a worker has it: a queued job must still be in the
queue list (removing it there is what stops it running), a started one is refused."""

_CLAIM = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2]) then
  redis.call('SADD', KEYS[2], ARGV[3])
  redis.call('EXPIRE', KEYS[2], ARGV[2])
  return {'own', ARGV[1]}
end
local existing = redis.call('GET', KEYS[1])
local replies = ARGV[4] .. existing
if redis.call('EXISTS', replies) == 1 then
  redis.call('SADD', replies, ARGV[3])
  return {'joined', existing}
end
return {'gone', existing}
"""
"""Single-flight in one step: claim the work for a new job, or join the job that claimed it
while it has not replied yet (its replies set exists from the claim until its reply), or learn
that it has replied already: its outputs are in the cache."""

GRACE_S = 60
"""How long a sync job's keys (job hash while queued, replies set, flight) outlive its timeout."""

RECENT_JOBS_KEPT = 100
"""How many of the newest async jobs the dashboard's list keeps."""

RESULT_TTL_S = 24 * 3600
"""How long a finished or failed async job's result stays readable, unless the caller says."""

ERROR_CODES_BY_WORKER_CODE: dict[str, type[GatewayError]] = {
    ERR_DEADLINE_EXCEEDED: InferenceTimeout,
    ERR_INFERENCE_TIMEOUT: InferenceTimeout,
    ERR_INPUT_TOO_LONG: PayloadTooLarge,
    ERR_INVALID_INPUT: InvalidInput,
    ERR_WORKER_LOST: WorkerLost,
    ERR_REDIS_UNAVAILABLE: RedisUnavailable,
}
"""Worker failure codes to the API error they surface as; any other is inference_failed."""


def worker_error(error: dict[str, Any], job_id: str) -> GatewayError:
    cls = ERROR_CODES_BY_WORKER_CODE.get(error.get("code", ""), InferenceFailed)
    return cls(error.get("message") or "the model failed on this request", job_id=job_id)


class Dispatcher:
    """Enqueues predict jobs for a model's workers and awaits their replies."""

    def __init__(
        self,
        redis_url: str,
        keys: Keys,
        *,
        cache_url: str | None = None,
        max_connections: int = 32,
        pool_timeout_s: float = 5.0,
        connect_timeout_s: float = 1.0,
        coalesce: bool = True,
        replica_acks: int = 0,
    ) -> None:
        self.keys = keys
        self.replica_acks = ReplicaAcks(keys.replication_mark(), replica_acks)
        """Replicas that must hold an async job before it counts as accepted (Redis WAIT)."""
        self.connections = Connections(
            redis_url,
            cache_url=cache_url,
            max_connections=max_connections,
            pool_timeout_s=pool_timeout_s,
            connect_timeout_s=connect_timeout_s,
        )
        self.conn = self.connections.conn
        self.sync = self.connections.sync
        self.listener = ReplyListener(self.connections.blocking_client(15.0), keys)
        self.admission = Admission(self.conn, keys)
        self._release = self.conn.register_script(_RELEASE)
        self._cancel = self.conn.register_script(_CANCEL)
        self._claim = self.conn.register_script(_CLAIM)
        self._delete = self.conn.register_script(_DELETE)
        self._cancel_segment = self.conn.register_script(_CANCEL_SEGMENT)
        self.coalescer = Coalescer(self._write, self._group_limit) if coalesce else None
        """Groups concurrent sync requests per model into one job (see gateway.coalesce)."""
        self._queues: dict[str, Queue] = {}
        self.withdrawn = 0
        """Sync jobs withdrawn from their queue because their client went away."""

    async def close(self) -> None:
        if self.coalescer is not None:
            await self.coalescer.close()
        await self.listener.stop()
        await self.connections.close()

    async def ping(self) -> bool:
        async with redis_errors():
            return bool(await self.conn.ping())

    async def submit(
        self,
        spec: ModelSpec,
        payload: JobPayload,
        *,
        job_id: str | None = None,
        meta: dict[str, Any] | None = None,
        result_ttl_s: int = RESULT_TTL_S,
        confirm: bool = True,
    ) -> str:
        """Queue an async job in the model's bulk lane: its result stays readable for
        ``result_ttl_s``. With ``confirm`` (and replicas asked for), return once a replica
        holds it; a caller queueing many jobs confirms them all at once afterwards
        (:meth:`confirm_writes`)."""
        job_id = job_id or uuid.uuid4().hex
        async with redis_errors():
            await self._rq_server_version()
            commands = self._job_commands(spec, payload, job_id, meta or {}, result_ttl_s, BULK)
            await self._send(commands + self._remember(job_id, result_ttl_s))
            if confirm:
                await self.confirm_writes()
        return job_id

    async def confirm_writes(self) -> None:
        """With replicas to wait for, return once they hold everything written so far (an
        accepted async job survives a failover); short of them, go on and count it."""
        async with redis_errors():
            await areplicated(self.conn, self.replica_acks)

    def _remember(self, job_id: str, ttl_s: int) -> Commands:
        """List an async job among the recent ones (the dashboard's), keeping the newest."""
        key = self.keys.recent_jobs()
        return [
            (("ZADD", key, time.time(), job_id), {}),
            (("ZREMRANGEBYRANK", key, 0, -(RECENT_JOBS_KEPT + 1)), {}),
            (("EXPIRE", key, ttl_s), {}),
        ]

    async def run(self, spec: ModelSpec, payload: JobPayload) -> dict[str, Any]:
        """Run a sync request's job and return its result (see ``contract.jobs.job_result``),
        or raise the GatewayError its failure maps to; 504 at the payload's deadline."""
        job_id = uuid.uuid4().hex
        return await self._await(job_id, payload, spec)

    async def run_shared(
        self, spec: ModelSpec, payload: JobPayload, flight: str
    ) -> dict[str, Any] | None:
        """:meth:`run`, or join the identical job in flight under ``flight``. None: that job
        replied before it could be joined, and its outputs are in the cache."""
        job_id = uuid.uuid4().hex
        async with redis_errors():
            state, existing = await self._claim(
                keys=[flight, self.keys.replies(job_id)],
                args=[
                    job_id,
                    self._keys_ttl(spec, payload),
                    self.listener.inbox,
                    self.keys.replies(""),
                ],
            )
        if state == b"gone":
            return None
        if state == b"joined":
            return await self._await(existing.decode(), payload)
        try:
            return await self._await(job_id, payload, spec)
        finally:
            await self.release(flight, job_id)

    async def _await(
        self, job_id: str, payload: JobPayload, submit: ModelSpec | None = None
    ) -> dict[str, Any]:
        """Wait for ``job_id``'s reply; with ``submit``, this request owns the job: it writes
        it first, and withdraws it when its client leaves or its deadline passes. A joiner
        (no ``submit``) only waits."""
        future = self.listener.expect(job_id)
        entry = Entry(job_id, payload)
        try:
            if submit is not None:
                await self._submit_sync(submit, entry)
            self.listener.written(job_id)  # a joiner found it in Redis before waiting
            assert payload.deadline is not None
            remaining = payload.deadline - time.time()
            try:
                reply = await asyncio.wait_for(asyncio.shield(future), max(0.01, remaining))
            except TimeoutError:
                if submit is not None:
                    await self._abandon(submit, entry)
                raise InferenceTimeout(
                    f"no result within the model's timeout ({job_id})", job_id=job_id
                ) from None
        except asyncio.CancelledError:
            # The client went away (gateway.disconnect): withdraw the job unless another
            # request, here or on a replica, waits for the same job.
            if submit is not None and not self.listener.others_wait(job_id, future):
                if not entry.sent:
                    self.withdrawn += 1  # left before it was written: nothing to take back
                elif entry.group is not None:
                    self.withdrawn += await self._withdraw_segment(submit, entry, 1) == "canceled"
                else:
                    self.withdrawn += await self.withdraw(job_id, submit.name)
            raise
        finally:
            self.listener.forget(job_id, future)
        return self._outcome(reply)

    def _outcome(self, reply: Reply) -> dict[str, Any]:
        if reply.error is not None:
            raise worker_error(reply.error, reply.job_id)
        if reply.result is None:
            raise InferenceFailed("the worker replied without a result", job_id=reply.job_id)
        return reply.result

    async def _submit_sync(self, spec: ModelSpec, entry: Entry) -> None:
        if self.coalescer is None:
            entry.sent = True
            await self._write(spec, [entry])
        else:
            await self.coalescer.submit(spec, entry)

    def _group_limit(self, spec: ModelSpec) -> int:
        """A coalesced job's most inputs: the batch split among the live workers last seen."""
        return group_limit(spec.max_batch_size, self.admission.live.get(spec.name, 1))

    async def _write(self, spec: ModelSpec, group: list[Entry]) -> None:
        """Write sync requests' work in one transaction: one plain job for a request alone, one
        coalesced job of segments for several (``entry.group`` names it); each request's
        replies set names this gateway's inbox."""
        async with redis_errors():
            await self._rq_server_version()  # before RQ's code runs, or it asks synchronously
            if len(group) == 1:
                first = group[0]
                commands = self._job_commands(
                    spec, first.payload, first.job_id, {}, SYNC_RESULT_TTL_S
                )
            else:
                commands = self._group_commands(spec, group)
            for entry in group:
                replies = self.keys.replies(entry.job_id)
                commands += [
                    (("SADD", replies, self.listener.inbox), {}),
                    (("EXPIRE", replies, self._keys_ttl(spec, entry.payload)), {}),
                ]
            await self._send(commands)

    def _group_commands(self, spec: ModelSpec, group: list[Entry]) -> Commands:
        """The commands of one coalesced job carrying ``group``'s requests as segments."""
        assert group[0].group is not None
        payloads = [entry.payload for entry in group]
        return self._rq_commands(
            spec,
            group[0].group,
            group_kwargs([(entry.job_id, entry.payload) for entry in group]),
            timeout=max(self._job_timeout(spec, p) for p in payloads),
            ttl=max(self._keys_ttl(spec, p) for p in payloads),
            meta={
                "request_id": payloads[0].request_id,
                "model": spec.name,
                SEGMENTS_META_KEY: len(group),
            },
            result_ttl_s=SYNC_RESULT_TTL_S,
            lane=INTERACTIVE,
            at_front=payloads[0].priority == "high",
        )

    async def _send(self, commands: Commands) -> None:
        """Send commands recorded from RQ's own code in one async transaction."""
        pipe = self.conn.pipeline(transaction=True)
        for args, options in commands:
            pipe.execute_command(*args, **options)
        await pipe.execute()

    async def store_finished(
        self,
        spec: ModelSpec,
        payload: JobPayload,
        outputs: list[Any],
        tokens: list[int],
        meta: dict[str, Any],
        ttl_s: int,
        confirm: bool = True,
    ) -> str:
        """A job answered entirely from the cache: written straight away as finished."""
        job_id = uuid.uuid4().hex
        async with redis_errors():
            await self._rq_server_version()
        queue = self._queue(spec.name, BULK)
        job = queue.create_job(
            PREDICT_FUNC,
            kwargs=payload.to_kwargs(),
            result_ttl=ttl_s,
            failure_ttl=ttl_s,
            job_id=job_id,
            meta={"request_id": payload.request_id, "model": spec.name, **meta},
        )
        job.origin = queue.name
        job.enqueued_at = job.started_at = job.ended_at = rq_now()
        result = job_result(outputs, "cache", 0.0, 0, tokens=tokens)

        def finished(pipe: Any) -> None:
            job.set_status(JobStatus.FINISHED, pipeline=pipe)
            job.save(pipeline=pipe)
            Result.create(job, Result.Type.SUCCESSFUL, ttl_s, return_value=result, pipeline=pipe)
            pipe.expire(job.key, ttl_s)

        commands = recorded(self.sync, finished) + self._remember(job_id, ttl_s)
        async with redis_errors():
            await self._send(commands)
        if confirm:
            await self.confirm_writes()
        return job_id

    async def join(self, job_id: str, wait_s: float) -> asyncio.Future[Reply]:
        """Be told when an async job ends (a long-poll). The caller checks the job's status
        after this: a job that ends later replies to this gateway; one that ended before
        already shows it. The caller ``forget``s the future when done with it."""
        future = self.listener.expect(job_id)
        replies = self.keys.replies(job_id)
        try:
            async with redis_errors():
                pipe = self.conn.pipeline(transaction=True)
                pipe.sadd(replies, self.listener.inbox)
                pipe.expire(replies, int(wait_s) + GRACE_S)
                await pipe.execute()
            self.listener.written(job_id)
        except GatewayError:
            self.listener.forget(job_id, future)
            raise
        return future

    async def cancel_queued(
        self, job_id: str, queue_name: str, ttl_s: int, awaited_by: int | None = None
    ) -> str:
        """Cancel a job no worker has taken yet, atomically; returns "canceled" or why not.
        With ``awaited_by``, only while at most that many gateways wait for its reply."""
        queue_key = contract_queue_key(queue_name)
        keys = [
            Job.key_for(job_id),
            queue_key,
            CanceledJobRegistry.key_template.format(queue_name),
            self.keys.replies(job_id),
            self.keys.chunks(job_id),
        ]
        args: list[str | int] = [job_id, ttl_s, int(time.time()) + ttl_s]
        if awaited_by is not None:
            args.append(awaited_by)
        async with redis_errors():
            outcome = await self._cancel(keys=keys, args=args)
        return outcome.decode() if isinstance(outcome, bytes) else str(outcome)

    async def delete_job(self, job_id: str, queue_name: str) -> str:
        """Delete a job that no worker holds, with its result and registry entries, atomically;
        returns "deleted", "started" or "unknown"."""
        keys = [
            Job.key_for(job_id),
            contract_queue_key(queue_name),
            Result.get_key(job_id),
            *(r.key_template.format(queue_name) for r in ENDED_REGISTRIES),
            self.keys.replies(job_id),
            self.keys.chunks(job_id),
        ]
        async with redis_errors():
            outcome = await self._delete(keys=keys, args=[job_id])
        return outcome.decode() if isinstance(outcome, bytes) else str(outcome)

    async def release(self, flight: str, job_id: str) -> None:
        with contextlib.suppress(RedisError, OSError):
            await self._release(keys=[flight], args=[job_id])

    def _queue(self, model: str, lane: str = INTERACTIVE) -> Queue:
        name = self.keys.queue(model, lane)
        queue = self._queues.get(name)
        if queue is None:
            queue = Queue(name, connection=self.sync, serializer=JSONSerializer)
            self._queues[name] = queue
        return queue

    async def _rq_server_version(self) -> None:
        # RQ asks the server's version once per connection, synchronously; ask it here without
        # blocking the event loop and leave it where RQ caches it.
        if not knows_server_version(self.sync):
            info = await self.conn.info("server")
            tell_server_version(self.sync, info["redis_version"])

    @staticmethod
    def _job_timeout(spec: ModelSpec, payload: JobPayload) -> int:
        batches = max(1, -(-len(payload.inputs) // spec.max_batch_size))
        return max(1, int(spec.timeout_s * batches + 0.999))

    @classmethod
    def _keys_ttl(cls, spec: ModelSpec, payload: JobPayload) -> int:
        return cls._job_timeout(spec, payload) + GRACE_S

    def _job_commands(
        self,
        spec: ModelSpec,
        payload: JobPayload,
        job_id: str,
        meta: dict[str, Any],
        result_ttl_s: int,
        lane: str = INTERACTIVE,
    ) -> Commands:
        """The commands RQ's own enqueue would send for one request's job."""
        return self._rq_commands(
            spec,
            job_id,
            payload.to_kwargs(),
            timeout=self._job_timeout(spec, payload),
            ttl=self._keys_ttl(spec, payload) if payload.deadline else None,
            meta={"request_id": payload.request_id, "model": spec.name, **meta},
            result_ttl_s=result_ttl_s,
            lane=lane,
            at_front=payload.priority == "high",
        )

    def _rq_commands(
        self,
        spec: ModelSpec,
        job_id: str,
        kwargs: dict[str, Any],
        *,
        timeout: int,
        ttl: int | None,
        meta: dict[str, Any],
        result_ttl_s: int,
        lane: str,
        at_front: bool,
    ) -> Commands:
        """The commands RQ's own enqueue would send, recorded instead of sent, so the event loop
        writes them in one async round trip with no thread and no blocking call."""
        queue = self._queue(spec.name, lane)
        sync = result_ttl_s == SYNC_RESULT_TTL_S
        job = queue.create_job(
            PREDICT_FUNC,
            kwargs=kwargs,
            timeout=timeout,
            result_ttl=result_ttl_s,
            failure_ttl=SYNC_FAILURE_TTL_S if sync else result_ttl_s,
            ttl=ttl,
            job_id=job_id,
            meta=meta,
        )
        return recorded(
            self.sync, lambda pipe: queue.enqueue_job(job, pipeline=pipe, at_front=at_front)
        )

    async def failure(self, job_id: str) -> GatewayError:
        async with redis_errors():
            raw = await self.conn.hget(Job.key_for(job_id), "meta")
        meta = JSONSerializer.loads(raw) if raw else {}
        return worker_error(meta.get(ERROR_META_KEY) or {}, job_id)

    async def withdraw(self, job_id: str, model: str) -> bool:
        """Delete a sync job that no worker has taken and no other gateway waits for; whether
        it was. Best effort, like ``_abandon``."""
        queue = self.keys.queue(model)
        with contextlib.suppress(GatewayError, RedisError, OSError):
            return await self.cancel_queued(job_id, queue, SYNC_RESULT_TTL_S, 1) == "canceled"
        return False

    async def _withdraw_segment(self, spec: ModelSpec, entry: Entry, awaited_by: int | None) -> str:
        """Withdraw one request from the coalesced job that carries it, unless a worker has
        started that job; best effort, like ``withdraw``. The cancel key lives as long as the
        request's other keys."""
        assert entry.group is not None
        ttl = self._keys_ttl(spec, entry.payload)
        keys = [
            Job.key_for(entry.group),
            self.keys.replies(entry.job_id),
            self.keys.cancel(entry.job_id),
        ]
        args: list[str | int] = [ttl]
        if awaited_by is not None:
            args.append(awaited_by)
        with contextlib.suppress(GatewayError, RedisError, OSError):
            async with redis_errors():
                outcome = await self._cancel_segment(keys=keys, args=args)
            return outcome.decode() if isinstance(outcome, bytes) else str(outcome)
        return "unknown"

    async def _abandon(self, spec: ModelSpec, entry: Entry) -> None:
        """Best effort: delete the job if still queued (or withdraw the request from the
        coalesced job carrying it); a worker also skips it past deadline (and replies, which
        deletes it)."""
        if entry.group is not None:
            await self._withdraw_segment(spec, entry, None)
            return
        with contextlib.suppress(GatewayError, RedisError, OSError):
            await self.cancel_queued(entry.job_id, self.keys.queue(spec.name), SYNC_RESULT_TTL_S)
