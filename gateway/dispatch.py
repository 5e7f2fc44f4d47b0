"""Handing work to the workers through Redis and RQ, and waiting for it without polling.

A job is built with RQ's own ``Job`` (JSON serializer, TTLs on result and failure) and written in
one pipelined round trip. The wait for its outcome is one ``XREAD BLOCK`` on the stream RQ writes
the result to (``rq:results:<job id>``) on an asyncio connection: it returns at once when the
result is already there, costs no thread, and wakes the moment the worker writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aredis
from redis import Redis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry
from rq.job import Job, JobStatus
from rq.queue import Queue
from rq.results import Result
from rq.serializers import JSONSerializer
from rq.utils import now as rq_now

from contract.config import ModelSpec
from contract.jobs import ERROR_META_KEY, PREDICT_FUNC, JobPayload, Keys, job_result
from gateway.errors import (
    GatewayError,
    InferenceFailed,
    InferenceTimeout,
    ModelUnavailable,
    Overloaded,
    PayloadTooLarge,
    RedisUnavailable,
    WorkerLost,
)

_LIVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local names = redis.call('ZRANGEBYSCORE', KEYS[1], now, '+inf')
local fps = {}
if #names > 0 then fps = redis.call('HMGET', KEYS[3], unpack(names)) end
return {#names, redis.call('LLEN', KEYS[2]), fps}
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

_LIVE_NAMES = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
return redis.call('ZRANGEBYSCORE', KEYS[1], now, '+inf')
"""

_CANCEL = """
local status = redis.call('HGET', KEYS[1], 'status')
if status == 'canceled' then return 'canceled' end
if status ~= 'queued' then return status or 'unknown' end
if redis.call('LREM', KEYS[2], 1, ARGV[1]) == 0 then
  return 'already taken by a worker'
end
redis.call('HSET', KEYS[1], 'status', 'canceled')
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[1])
return 'canceled'
"""
"""Cancel only what no worker has taken: the job's id must still be in the queue list, and
removing it there is what makes it canceled, in one atomic step."""

RESULT_TTL_S = 24 * 3600
"""How long a finished or failed job's result stays readable."""

ERROR_CODES_BY_WORKER_CODE: dict[str, type[GatewayError]] = {
    "deadline_exceeded": InferenceTimeout,
    "inference_timeout": InferenceTimeout,
    "input_too_long": PayloadTooLarge,
    "worker_lost": WorkerLost,
}
"""Worker failure codes to the API error they surface as; any other is inference_failed."""


@dataclass(frozen=True)
class ModelLoad:
    """A model's live workers, queued jobs and the weights its live workers serve."""

    live_workers: int
    queue_depth: int
    fingerprints: frozenset[str] = frozenset()

    @property
    def fingerprint(self) -> str | None:
        """The one fingerprint all live workers share; None while they differ (a rollout)."""
        return next(iter(self.fingerprints)) if len(self.fingerprints) == 1 else None


@contextlib.asynccontextmanager
async def _aredis_errors() -> AsyncIterator[None]:
    try:
        yield
    except (RedisConnectionError, RedisTimeoutError, OSError) as err:
        raise RedisUnavailable(f"Redis is unreachable ({type(err).__name__})") from None


class Dispatcher:
    """Enqueues predict jobs for a model's workers and awaits their results."""

    def __init__(self, redis_url: str, keys: Keys, *, connect_timeout_s: float = 1.0) -> None:
        self.keys = keys
        common: dict[str, Any] = {
            "socket_connect_timeout": connect_timeout_s,
            "health_check_interval": 5,
        }
        # After a Redis restart every pooled connection is dead and fails its next command once:
        # retry that once, at once, on a new connection. A Redis that is down still fails in
        # milliseconds (refused twice); timeouts are not retried, so their bound stays.
        once = (RedisConnectionError,)
        self.sync = Redis.from_url(
            redis_url, socket_timeout=2.0, retry=Retry(NoBackoff(), 1, once), **common
        )
        self.conn = aredis.Redis.from_url(
            redis_url, socket_timeout=2.0, retry=AsyncRetry(NoBackoff(), 1, once), **common
        )
        # Blocking reads wait up to a request's deadline: no socket timeout, bounded by wait_for.
        self.blocking = aredis.Redis.from_url(
            redis_url,
            socket_timeout=None,
            max_connections=4096,
            retry=AsyncRetry(NoBackoff(), 1, once),
            **common,
        )
        self._live = self.conn.register_script(_LIVE)
        self._live_names = self.conn.register_script(_LIVE_NAMES)
        self._release = self.conn.register_script(_RELEASE)
        self._cancel = self.conn.register_script(_CANCEL)
        self._queues: dict[str, Queue] = {}

    async def close(self) -> None:
        await self.conn.aclose()
        await self.blocking.aclose()
        self.sync.close()

    async def ping(self) -> bool:
        async with _aredis_errors():
            return bool(await self.conn.ping())

    async def load(self, model: str) -> ModelLoad:
        keys = [self.keys.presence(model), self._queue_key(model), self.keys.fingerprints(model)]
        async with _aredis_errors():
            live, depth, fps = await self._live(keys=keys)
        return ModelLoad(int(live), int(depth), frozenset(f.decode() for f in fps if f))

    async def workers(self, model: str) -> list[dict[str, str]]:
        async with _aredis_errors():
            names = await self._live_names(keys=[self.keys.presence(model)])
            pipe = self.conn.pipeline(transaction=False)
            for name in names:
                pipe.hgetall(self.keys.worker_info(name.decode()))
            infos = await pipe.execute()
        return [
            {"name": n.decode(), **{k.decode(): v.decode() for k, v in info.items()}}
            for n, info in zip(names, infos, strict=True)
        ]

    def _queue_key(self, model: str) -> str:
        return Queue.redis_queue_namespace_prefix + self.keys.queue(model)

    async def admit(self, spec: ModelSpec) -> ModelLoad:
        """Refuse at once what no worker would serve soon: no live worker, or a full queue."""
        load = await self.load(spec.name)
        if load.live_workers == 0:
            raise ModelUnavailable(f"no live worker serves model {spec.name!r}; try again later")
        if load.queue_depth >= spec.max_queue:
            raise Overloaded(
                f"model {spec.name!r} has {load.queue_depth} jobs queued", retry_after_s=1
            )
        return load

    async def submit(
        self,
        spec: ModelSpec,
        payload: JobPayload,
        *,
        job_id: str | None = None,
        meta: dict[str, Any] | None = None,
        result_ttl_s: int = RESULT_TTL_S,
    ) -> str:
        job_id = job_id or uuid.uuid4().hex
        async with _aredis_errors():
            await self._rq_server_version()
            await self._send(self._job_commands(spec, payload, job_id, meta or {}, result_ttl_s))
        return job_id

    async def _send(self, commands: list[tuple[Any, Any]]) -> None:
        """Send commands recorded from RQ's own code in one async transaction."""
        pipe = self.conn.pipeline(transaction=True)
        for args, options in commands:
            pipe.execute_command(*args, **options)
        await pipe.execute()

    async def submit_once(
        self, spec: ModelSpec, payload: JobPayload, flight: str | None
    ) -> tuple[str, bool]:
        """Submit, unless a job for exactly this work is in flight: then share it.
        Returns the job id and whether this call owns the job."""
        job_id = uuid.uuid4().hex
        if flight is not None:
            async with _aredis_errors():
                won = await self.conn.set(flight, job_id, nx=True, ex=max(1, int(spec.timeout_s)))
                existing = None if won else await self.conn.get(flight)
            if existing:
                return existing.decode(), False
        try:
            return await self.submit(spec, payload, job_id=job_id), True
        except GatewayError:
            if flight is not None:
                await self.release(flight, job_id)
            raise

    async def store_finished(
        self,
        spec: ModelSpec,
        payload: JobPayload,
        outputs: list[Any],
        meta: dict[str, Any],
        ttl_s: int,
    ) -> str:
        """A job answered entirely from the cache: written straight away as finished."""
        job_id = uuid.uuid4().hex
        queue = self._queue(spec.name)
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
        recorder = self.sync.pipeline(transaction=False)
        job.set_status(JobStatus.FINISHED, pipeline=recorder)
        job.save(pipeline=recorder)
        result = job_result(outputs, "cache", 0.0, 0)
        Result.create(job, Result.Type.SUCCESSFUL, ttl_s, return_value=result, pipeline=recorder)
        recorder.expire(job.key, ttl_s)
        commands = list(recorder.command_stack)
        recorder.reset()
        async with _aredis_errors():
            await self._send(commands)
        return job_id

    async def cancel_queued(self, job_id: str, queue_name: str, ttl_s: int) -> str:
        """Cancel a job no worker has taken yet, atomically; returns "canceled" or why not."""
        queue_key = Queue.redis_queue_namespace_prefix + queue_name
        async with _aredis_errors():
            outcome = await self._cancel(
                keys=[Job.key_for(job_id), queue_key, f"rq:canceled:{queue_name}"],
                args=[job_id, ttl_s, int(time.time()) + ttl_s],
            )
        return outcome.decode() if isinstance(outcome, bytes) else str(outcome)

    async def release(self, flight: str, job_id: str) -> None:
        with contextlib.suppress(RedisError, OSError):
            await self._release(keys=[flight], args=[job_id])

    def _queue(self, model: str) -> Queue:
        queue = self._queues.get(model)
        if queue is None:
            queue = Queue(self.keys.queue(model), connection=self.sync, serializer=JSONSerializer)
            self._queues[model] = queue
        return queue

    async def _rq_server_version(self) -> None:
        # RQ asks the server's version once per connection, synchronously; ask it here without
        # blocking the event loop and leave it where RQ caches it.
        if getattr(self.sync, "__rq_redis_server_version", None) is None:
            info = await self.conn.info("server")
            version = tuple(int(p) for p in str(info["redis_version"]).split(".")[:3])
            setattr(self.sync, "__rq_redis_server_version", version)

    def _job_commands(
        self,
        spec: ModelSpec,
        payload: JobPayload,
        job_id: str,
        meta: dict[str, Any],
        result_ttl_s: int,
    ) -> list[tuple[Any, Any]]:
        """The commands RQ's own enqueue would send, recorded instead of sent, so the event loop
        writes them in one async round trip with no thread and no blocking call."""
        queue = self._queue(spec.name)
        batches = max(1, -(-len(payload.inputs) // spec.max_batch_size))
        timeout = max(1, int(spec.timeout_s * batches + 0.999))
        job = queue.create_job(
            PREDICT_FUNC,
            kwargs=payload.to_kwargs(),
            timeout=timeout,
            result_ttl=result_ttl_s,
            failure_ttl=result_ttl_s,
            ttl=timeout + 60 if payload.deadline else None,
            job_id=job_id,
            meta={"request_id": payload.request_id, "model": spec.name, **meta},
        )
        recorder = self.sync.pipeline(transaction=False)
        queue.enqueue_job(job, pipeline=recorder, at_front=payload.priority == "high")
        commands = list(recorder.command_stack)
        recorder.reset()
        return commands

    async def wait(
        self, job_id: str, model: str, deadline: float, *, owner: bool = True
    ) -> dict[str, Any]:
        """The job's result (see ``contract.jobs.job_result``), or the GatewayError its failure
        maps to; 504 at the deadline."""
        remaining = deadline - time.time()
        stream = Result.get_key(job_id)
        async with _aredis_errors():
            try:
                reply: Any = await asyncio.wait_for(
                    self.blocking.xread(
                        {stream: "0-0"}, count=1, block=max(1, int(remaining * 1000))
                    ),
                    timeout=max(0.01, remaining) + 2.0,
                )
            except TimeoutError:
                reply = None
        if not reply:
            if owner:
                await self._abandon(job_id, model)
            raise InferenceTimeout(
                f"no result within the model's timeout ({job_id})", job_id=job_id
            )
        msg_id, fields = reply[0][1][0]
        result = Result.restore(
            job_id, msg_id.decode(), fields, connection=self.sync, serializer=JSONSerializer
        )
        if result.type == Result.Type.SUCCESSFUL:
            value: dict[str, Any] = result.return_value or {}
            return value
        raise await self.failure(job_id)

    async def failure(self, job_id: str) -> GatewayError:
        async with _aredis_errors():
            raw = await self.conn.hget(Job.key_for(job_id), "meta")
        meta = JSONSerializer.loads(raw) if raw else {}
        error = meta.get(ERROR_META_KEY) or {}
        cls = ERROR_CODES_BY_WORKER_CODE.get(error.get("code", ""), InferenceFailed)
        return cls(error.get("message") or "the model failed on this request", job_id=job_id)

    async def _abandon(self, job_id: str, model: str) -> None:
        """Best effort: cancel the job if still queued; the worker also skips it past deadline."""
        with contextlib.suppress(GatewayError, RedisError, OSError):
            await self.cancel_queued(job_id, self.keys.queue(model), RESULT_TTL_S)
