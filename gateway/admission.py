"""Which models can take work now: live workers (by the Redis server's clock), queue depth and
the weights they serve; the admission check every request passes before anything is enqueued."""

from __future__ import annotations

import asyncio
import functools
from dataclasses import dataclass
from datetime import UTC

import redis.asyncio as aredis
from rq.job import Job
from rq.utils import utcparse

from contract.config import ModelSpec
from contract.jobs import BULK, INTERACTIVE, LANES, PRESENCE_TTL_S, Keys
from gateway.census import memory
from gateway.connections import redis_errors
from gateway.errors import ModelUnavailable, Overloaded, RedisOutOfMemory

_LIVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local names = redis.call('ZRANGEBYSCORE', KEYS[1], now, '+inf')
local fps = {}
if #names > 0 then fps = redis.call('HMGET', KEYS[3], unpack(names)) end
return {#names, redis.call('LLEN', KEYS[2]), fps, redis.call('LLEN', KEYS[4])}
"""

_OLDEST = """
local t = redis.call('TIME')
local out = {t[1] .. '.' .. string.format('%06d', tonumber(t[2]))}
for i, key in ipairs(KEYS) do
  local oldest = ''
  for _, id in ipairs(redis.call('LRANGE', key, 0, 7)) do
    local at = redis.call('HGET', ARGV[1] .. id, 'enqueued_at')
    if at and (oldest == '' or at < oldest) then oldest = at end
  end
  local last = redis.call('LINDEX', key, -1)
  if last then
    local at = redis.call('HGET', ARGV[1] .. last, 'enqueued_at')
    if at and (oldest == '' or at < oldest) then oldest = at end
  end
  out[i + 1] = oldest
end
return out
"""
"""The Redis server's time and, per queue, the earliest enqueue time among the jobs at its
head (workers take from the head; RQ appends at the tail, but a high-priority job goes in front,
so the longest-waiting job is among the first few) and its tail. RQ's ISO timestamps compare as
strings. The job keys are derived in the script, which a standalone Redis or Sentinel allows
(not Redis Cluster)."""

_LIVE_NAMES = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
return redis.call('ZRANGEBYSCORE', KEYS[1], now, '+inf', 'WITHSCORES')
"""


JOB_KEY_PREFIX = Job.redis_job_namespace_prefix
"""Where RQ keeps a job's hash: this plus its id."""


@dataclass(frozen=True)
class ModelLoad:
    """A model's live workers, queued jobs and the weights its live workers serve."""

    live_workers: int
    queue_depth: int
    """Jobs waiting in the interactive lane (sync requests)."""
    fingerprints: frozenset[str] = frozenset()
    bulk_depth: int = 0
    """Jobs waiting in the bulk lane (async jobs, Batch API lines)."""

    def depth(self, lane: str) -> int:
        return self.bulk_depth if lane == BULK else self.queue_depth

    @property
    def fingerprint(self) -> str | None:
        """The one fingerprint all live workers share; None while they differ (a rollout)."""
        return next(iter(self.fingerprints)) if len(self.fingerprints) == 1 else None


class Admission:
    """Reads a model's presence and queue; refuses what no worker would serve soon."""

    def __init__(self, conn: aredis.Redis, keys: Keys) -> None:
        self.conn = conn
        self.keys = keys
        self._live = conn.register_script(_LIVE)
        self._live_names = conn.register_script(_LIVE_NAMES)
        self._oldest = conn.register_script(_OLDEST)
        self._last_fingerprint: dict[str, str] = {}
        """Each model's weights as this process last saw its workers serve them."""
        self.live: dict[str, int] = {}
        """Each model's live workers, as this process last read them."""
        self._reading: dict[str, asyncio.Future[ModelLoad]] = {}
        """Each model's read of its load now in flight."""

    async def load(self, model: str) -> ModelLoad:
        """The model's load, as a read that was in flight when this call began reads it, or
        else a new read. Under load most requests then share a read (one Lua call per round
        trip, not per request); what they see is at most one round trip old, as it would be by
        the time it came back anyway."""
        reading = self._reading.get(model)
        if reading is None:
            reading = asyncio.ensure_future(self._read_load(model))
            self._reading[model] = reading
            reading.add_done_callback(functools.partial(self._read_done, model))
        # A caller that leaves (its client went away) leaves the read to the others.
        return await asyncio.shield(reading)

    def _read_done(self, model: str, reading: asyncio.Future[ModelLoad]) -> None:
        if self._reading.get(model) is reading:
            del self._reading[model]
        if not reading.cancelled():
            reading.exception()  # retrieved, even when every caller left before it ended

    async def _read_load(self, model: str) -> ModelLoad:
        keys = [
            self.keys.presence(model),
            self.keys.queue_key(model, INTERACTIVE),
            self.keys.fingerprints(model),
            self.keys.queue_key(model, BULK),
        ]
        async with redis_errors():
            live, depth, fps, bulk = await self._live(keys=keys)
        self.live[model] = int(live)
        fingerprints = frozenset(f.decode() for f in fps if f)
        if len(fingerprints) == 1:
            self._last_fingerprint[model] = next(iter(fingerprints))
        elif not fingerprints and model in self._last_fingerprint:
            # No worker now (a model scaled to zero): the weights its workers served last, so
            # a cached answer is still found without waking the model. A changed models.yaml
            # restarts the gateway, which forgets them.
            fingerprints = frozenset({self._last_fingerprint[model]})
        return ModelLoad(int(live), int(depth), fingerprints, int(bulk))

    async def oldest(self, model: str) -> dict[str, float]:
        """Per lane, how long its oldest queued job has waited (seconds; 0 when none waits):
        what an autoscaler or an alert on a stuck model watches beside the queue length."""
        async with redis_errors():
            now, *stamps = await self._oldest(
                keys=[self.keys.queue_key(model, lane) for lane in LANES], args=[JOB_KEY_PREFIX]
            )
        server_now = float(now)
        ages = {}
        for lane, stamp in zip(LANES, stamps, strict=True):
            at = utcparse(stamp.decode()).replace(tzinfo=UTC).timestamp() if stamp else None
            ages[lane] = max(0.0, server_now - at) if at is not None else 0.0
        return ages

    async def servable(self, spec: ModelSpec, load: ModelLoad | None = None) -> bool:
        """Whether a request for the model is served now or soon: a live worker, or a model
        that scales to zero (its request wakes a worker) whose last load did not fail. The one
        answer readiness endpoints and admission share."""
        load = load or await self.load(spec.name)
        if load.live_workers > 0:
            return True
        return spec.scale_to_zero and not await self.load_error(spec.name)

    async def load_error(self, model: str) -> str | None:
        """Why the model's last worker could not load it, while that stands (see
        ``workers.main``); None once a worker loaded it."""
        async with redis_errors():
            raw = await self.conn.get(self.keys.load_error(model))
        return raw.decode() if isinstance(raw, bytes) else None

    async def workers(self, model: str) -> list[dict[str, str]]:
        """Each live worker's description, with ``last_beat``: when it last renewed its
        presence (epoch seconds, the Redis server's clock)."""
        async with redis_errors():
            flat = await self._live_names(keys=[self.keys.presence(model)])
            names, expiries = flat[0::2], flat[1::2]
            pipe = self.conn.pipeline(transaction=False)
            for name in names:
                pipe.hgetall(self.keys.worker_info(name.decode()))
            infos = await pipe.execute()
        return [
            {
                "name": n.decode(),
                **{k.decode(): v.decode() for k, v in info.items()},
                "last_beat": str(float(expiry) - PRESENCE_TTL_S),
            }
            for n, expiry, info in zip(names, expiries, infos, strict=True)
        ]

    async def admit(self, spec: ModelSpec, lane: str = INTERACTIVE) -> ModelLoad:
        """Refuse at once what no worker would serve soon: no live worker, or a full queue in
        the lane the work would join."""
        load = await self.load(spec.name)
        if not await self.servable(spec, load):
            if await self._full():
                # Workers cannot renew their presence in a full Redis: say what is wrong.
                raise RedisOutOfMemory("Redis is full (maxmemory reached); retry shortly")
            cause = await self.load_error(spec.name)
            if cause:
                raise ModelUnavailable(f"{cause}; its workers retry, fix the model to serve it")
            raise ModelUnavailable(f"no live worker serves model {spec.name!r}; try again later")
        if load.depth(lane) >= spec.max_queue:
            raise Overloaded(
                f"model {spec.name!r} has {load.depth(lane)} {lane} jobs queued",
                retry_after_s=1,
            )
        return load

    async def _full(self) -> bool:
        async with redis_errors():
            return (await memory(self.conn)).full
