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
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aredis
from anyio import to_thread
from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job, JobStatus
from rq.queue import Queue
from rq.results import Result
from rq.serializers import JSONSerializer

from contract.config import ModelSpec
from contract.jobs import ERROR_META_KEY, PREDICT_FUNC, JobPayload, Keys
from gateway.errors import (
    GatewayError,
    InferenceFailed,
    InferenceTimeout,
    ModelUnavailable,
    Overloaded,
    RedisUnavailable,
)

_LIVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
return {redis.call('ZCOUNT', KEYS[1], now, '+inf'), redis.call('LLEN', KEYS[2])}
"""

_LIVE_NAMES = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
return redis.call('ZRANGEBYSCORE', KEYS[1], now, '+inf')
"""

RESULT_TTL_S = 24 * 3600
"""How long a finished or failed job's result stays readable."""

ERROR_CODES_BY_WORKER_CODE: dict[str, type[GatewayError]] = {
    "deadline_exceeded": InferenceTimeout,
    "inference_timeout": InferenceTimeout,
}


@dataclass(frozen=True)
class ModelLoad:
    """A model's live workers and queued jobs, as Redis sees them now."""

    live_workers: int
    queue_depth: int


@contextlib.contextmanager
def _redis_errors() -> Iterator[None]:
    try:
        yield
    except (RedisConnectionError, RedisTimeoutError, OSError) as err:
        raise RedisUnavailable(f"Redis is unreachable ({type(err).__name__})") from None


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
        common = {"socket_connect_timeout": connect_timeout_s, "health_check_interval": 5}
        self.sync = Redis.from_url(redis_url, socket_timeout=2.0, **common)
        self.conn = aredis.Redis.from_url(redis_url, socket_timeout=2.0, **common)
        # Blocking reads wait up to a request's deadline: no socket timeout, bounded by wait_for.
        self.blocking = aredis.Redis.from_url(redis_url, socket_timeout=None, max_connections=4096, **common)
        self._live = self.conn.register_script(_LIVE)
        self._live_names = self.conn.register_script(_LIVE_NAMES)

    async def close(self) -> None:
        await self.conn.aclose()
        await self.blocking.aclose()
        self.sync.close()

    async def ping(self) -> bool:
        async with _aredis_errors():
            return bool(await self.conn.ping())

    async def load(self, model: str) -> ModelLoad:
        async with _aredis_errors():
            live, depth = await self._live(keys=[self.keys.presence(model), self._queue_key(model)])
        return ModelLoad(int(live), int(depth))

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

    async def admit(self, spec: ModelSpec) -> None:
        """Refuse at once what no worker would serve soon: no live worker, or a full queue."""
        load = await self.load(spec.name)
        if load.live_workers == 0:
            raise ModelUnavailable(f"no live worker serves model {spec.name!r}; try again later")
        if load.queue_depth >= spec.max_queue:
            raise Overloaded(f"model {spec.name!r} has {load.queue_depth} jobs queued", retry_after_s=1)

    async def submit(self, spec: ModelSpec, payload: JobPayload) -> str:
        job_id = uuid.uuid4().hex
        async with _aredis_errors():
            await to_thread.run_sync(self._enqueue, spec, payload, job_id)
        return job_id

    def _enqueue(self, spec: ModelSpec, payload: JobPayload, job_id: str) -> None:
        queue = Queue(self.keys.queue(spec.name), connection=self.sync, serializer=JSONSerializer)
        job = queue.create_job(
            PREDICT_FUNC,
            kwargs=payload.to_kwargs(),
            timeout=max(1, int(spec.timeout_s + 0.999)),
            result_ttl=RESULT_TTL_S,
            failure_ttl=RESULT_TTL_S,
            ttl=max(1, int(spec.timeout_s + 0.999)) + 60,
            job_id=job_id,
            meta={"request_id": payload.request_id, "model": spec.name},
        )
        with _redis_errors(), self.sync.pipeline() as pipe:
            queue.enqueue_job(job, pipeline=pipe)
            pipe.execute()

    async def wait(self, job_id: str, deadline: float) -> list[Any]:
        """The job's outputs, or the GatewayError its failure maps to; 504 at the deadline."""
        remaining = deadline - time.time()
        stream = Result.get_key(job_id)
        async with _aredis_errors():
            try:
                reply = await asyncio.wait_for(
                    self.blocking.xread({stream: "0-0"}, count=1, block=max(1, int(remaining * 1000))),
                    timeout=max(0.01, remaining) + 2.0,
                )
            except TimeoutError:
                reply = None
        if not reply:
            await self._abandon(job_id)
            raise InferenceTimeout(f"no result within the model's timeout ({job_id})", job_id=job_id)
        msg_id, fields = reply[0][1][0]
        result = Result.restore(job_id, msg_id.decode(), fields, connection=self.sync, serializer=JSONSerializer)
        if result.type == Result.Type.SUCCESSFUL:
            return list(result.return_value)
        raise await self._failure(job_id)

    async def _failure(self, job_id: str) -> GatewayError:
        async with _aredis_errors():
            raw = await self.conn.hget(Job.key_for(job_id), "meta")
        meta = JSONSerializer.loads(raw) if raw else {}
        error = meta.get(ERROR_META_KEY) or {}
        cls = ERROR_CODES_BY_WORKER_CODE.get(error.get("code", ""), InferenceFailed)
        return cls(error.get("message") or "the model failed on this request", job_id=job_id)

    async def _abandon(self, job_id: str) -> None:
        """Best effort: cancel a job still queued; the worker also skips jobs past deadline."""
        with contextlib.suppress(RedisError, OSError, GatewayError):
            await to_thread.run_sync(self._cancel_if_queued, job_id)

    def _cancel_if_queued(self, job_id: str) -> None:
        with contextlib.suppress(NoSuchJobError, InvalidJobOperation):
            job = Job.fetch(job_id, connection=self.sync, serializer=JSONSerializer)
            if job.get_status() == JobStatus.QUEUED:
                job.cancel()
