"""Per-key limits: a model allowlist (403 ``forbidden``) and rates of requests and of inputs
(429 ``rate_limited`` with ``Retry-After``), as token buckets in Redis, so every gateway replica
draws from the same buckets and one tenant's burst cannot take another tenant's capacity.

Each bucket holds one second's worth of its rate. A request passes when every bucket it draws
from holds its cost, or is full (a job larger than the bucket then leaves it in debt, and the
key waits until it refills): the check and the draw are one atomic script, by Redis's clock.
"""

from __future__ import annotations

import math

import redis.asyncio as aredis

from contract.jobs import Keys
from gateway.auth import KeyPolicy
from gateway.connections import redis_errors
from gateway.errors import Forbidden, RateLimited

BURST_S = 1.0
"""A bucket's size, in seconds of its rate."""

_DRAW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local levels, wait = {}, 0
for i, key in ipairs(KEYS) do
  local rate, size, cost = tonumber(ARGV[3*i-2]), tonumber(ARGV[3*i-1]), tonumber(ARGV[3*i])
  local held = redis.call('HMGET', key, 'level', 'at')
  local level = tonumber(held[1]) or size
  local at = tonumber(held[2]) or now
  level = math.min(size, level + (now - at) * rate)
  levels[i] = level
  local need = math.min(cost, size)
  if level < need then wait = math.max(wait, (need - level) / rate) end
end
if wait > 0 then return tostring(wait) end
for i, key in ipairs(KEYS) do
  local rate, size, cost = tonumber(ARGV[3*i-2]), tonumber(ARGV[3*i-1]), tonumber(ARGV[3*i])
  local level = levels[i] - cost
  redis.call('HSET', key, 'level', tostring(level), 'at', tostring(now))
  redis.call('EXPIRE', key, math.ceil((size - level) / rate) + 60)
end
return '0'
"""


class Quotas:
    """Applies a key's policy to one request or job for one model."""

    def __init__(self, conn: aredis.Redis, keys: Keys) -> None:
        self.keys = keys
        self._draw = conn.register_script(_DRAW)

    def allow_model(self, policy: KeyPolicy | None, model: str) -> None:
        if policy is not None and policy.models is not None and model not in policy.models:
            raise Forbidden(
                f"this API key may not use model {model!r}; "
                f"it may use: {', '.join(sorted(policy.models)) or 'none'}"
            )

    async def admit(self, policy: KeyPolicy | None, model: str, inputs: int) -> None:
        """Refuse what the key may not do now: another model (403), or over its rates (429)."""
        self.allow_model(policy, model)
        await self.draw(policy, inputs)

    async def draw(self, policy: KeyPolicy | None, inputs: int) -> None:
        """One request of ``inputs`` inputs from the key's buckets, or 429 with Retry-After."""
        if policy is None:
            return
        buckets: list[tuple[str, float, float]] = []
        if policy.requests_per_s:
            buckets.append(("requests", policy.requests_per_s, 1))
        if policy.inputs_per_s:
            buckets.append(("inputs", policy.inputs_per_s, max(1, inputs)))
        if not buckets:
            return
        keys = [self.keys.bucket(policy.id, kind) for kind, _, _ in buckets]
        args: list[float] = []
        for _, rate, cost in buckets:
            args += [rate, max(1.0, rate * BURST_S), cost]
        async with redis_errors():
            wait = float(await self._draw(keys=keys, args=args))
        if wait > 0:
            raise RateLimited(
                f"API key {policy.id!r} is over its rate ({_rates(policy)}); retry in {wait:.2f} s",
                retry_after_s=max(1, math.ceil(wait)),
            )


def _rates(policy: KeyPolicy) -> str:
    parts = []
    if policy.requests_per_s:
        parts.append(f"{policy.requests_per_s:g} requests/s")
    if policy.inputs_per_s:
        parts.append(f"{policy.inputs_per_s:g} inputs/s")
    return ", ".join(parts)
