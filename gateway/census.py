"""What Redis holds, for ``/metrics``: memory used and keys by kind, for the job and cache Redis.

Keys are counted by a ``SCAN`` of the job Redis, bounded (:data:`SCAN_LIMIT` keys) and cached
for :data:`MAX_AGE_S`, so a scrape costs Redis little however often it comes. A cache on a
Redis of its own holds nothing else: its ``DBSIZE`` is the entry count, without a scan.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aredis

from contract.jobs import Keys

SCAN_LIMIT = 200_000
"""Most keys one census reads; past it the counts are marked incomplete."""

MAX_AGE_S = 10.0
"""A census younger than this is reused."""

KINDS = ("jobs", "results", "queues", "cache", "inboxes", "other")
"""The kinds keys are counted by."""


@dataclass
class RedisFacts:
    """One Redis server's memory and key counts."""

    used_bytes: int = 0
    max_bytes: int = 0
    keys: dict[str, int] = field(default_factory=dict)
    complete: bool = True

    @property
    def full(self) -> bool:
        """At its ``maxmemory``: a ``noeviction`` Redis refuses writes now."""
        return self.max_bytes > 0 and self.used_bytes >= self.max_bytes


async def memory(client: aredis.Redis) -> RedisFacts:
    """A Redis server's memory used and limit (``INFO memory``)."""
    info: dict[str, Any] = await client.info("memory")
    return RedisFacts(
        used_bytes=int(info.get("used_memory", 0)), max_bytes=int(info.get("maxmemory", 0))
    )


def kind_of(key: bytes | str, keys: Keys) -> str:
    """Which kind of modelgate or RQ key this is."""
    text = key.decode(errors="replace") if isinstance(key, bytes) else key
    prefix = keys.prefix + ":"
    if text.startswith("rq:job:"):
        return "jobs"
    if text.startswith("rq:results:"):
        return "results"
    if text.startswith("rq:queue:"):
        return "queues"
    if text.startswith(prefix + "cache:"):
        return "cache"
    if text.startswith(prefix + "inbox:"):
        return "inboxes"
    return "other"


class Census:
    """Counts what the job and cache Redis hold, at most every :data:`MAX_AGE_S`."""

    def __init__(self, jobs: aredis.Redis, cache: aredis.Redis, keys: Keys) -> None:
        self.jobs = jobs
        self.cache = cache
        self.keys = keys
        self._last: dict[str, RedisFacts] = {}
        self._taken = 0.0

    async def take(self) -> dict[str, RedisFacts]:
        if self._last and time.monotonic() - self._taken < MAX_AGE_S:
            return self._last
        facts = {"jobs": await memory(self.jobs)}
        facts["jobs"].keys, facts["jobs"].complete = await self._scan(self.jobs)
        if self.cache is not self.jobs:
            cache = await memory(self.cache)
            cache.keys = {"cache": int(await self.cache.dbsize())}
            facts["cache"] = cache
        self._last, self._taken = facts, time.monotonic()
        return facts

    async def _scan(self, client: aredis.Redis) -> tuple[dict[str, int], bool]:
        counts = dict.fromkeys(KINDS, 0)
        seen = 0
        cursor = 0
        while True:
            cursor, batch = await client.scan(cursor, count=1000)
            for key in batch:
                counts[kind_of(key, self.keys)] += 1
            seen += len(batch)
            if cursor == 0:
                return counts, True
            if seen >= SCAN_LIMIT:
                return counts, False
