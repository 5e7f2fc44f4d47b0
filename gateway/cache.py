"""The gateway's side of the response cache: per-item lookups, and the client's cache controls.

Workers write entries (in the same round trip as the job's result); the gateway reads them. A
cache failure never fails a request: a Redis error during lookup counts as a miss.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from enum import Enum
from typing import Any

import redis.asyncio as aredis
from redis.exceptions import RedisError

from contract.cache import item_key, read_entry
from contract.tasks import Item

log = logging.getLogger("modelgate.gateway")

MISSING: Any = object()
"""Marks an item the cache does not hold."""


class CacheMode(Enum):
    """What the request's ``Cache-Control`` allows."""

    NORMAL = "normal"  # look up and store
    REFRESH = "no-cache"  # skip the lookup, still store
    BYPASS = "no-store"  # neither

    @classmethod
    def from_header(cls, value: str | None) -> CacheMode:
        directives = {d.strip().lower() for d in (value or "").split(",")}
        if "no-store" in directives:
            return cls.BYPASS
        if "no-cache" in directives:
            return cls.REFRESH
        return cls.NORMAL


@dataclass(frozen=True)
class Lookup:
    """Cached outputs by position (MISSING where absent), their inputs' tokens (0 where
    absent), and the positions still to compute."""

    outputs: list[Any]
    missing: list[int]
    tokens: list[int]

    @property
    def status(self) -> str:
        if not self.missing:
            return "hit"
        return "miss" if len(self.missing) == len(self.outputs) else "partial"


class BatchedReads:
    """MGET with one call in flight at a time: the reads asked for while one is in flight go
    together in the next, one round trip for all of them. A lone read goes at once."""

    def __init__(self, conn: aredis.Redis) -> None:
        self.conn = conn
        self._pending: list[tuple[list[str], asyncio.Future[list[Any]]]] = []
        self._drain: asyncio.Task[None] | None = None

    async def mget(self, keys: list[str]) -> list[Any]:
        """The values of ``keys`` (None where absent); raises what the MGET raised."""
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self._pending.append((keys, future))
        if self._drain is None:
            self._drain = asyncio.create_task(self._drain_all())
        return await future

    async def _drain_all(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                try:
                    values = await self.conn.mget([k for keys, _ in batch for k in keys])
                except asyncio.CancelledError:
                    for _, future in batch:
                        future.cancel()
                    raise
                except Exception as err:  # each reader gets it
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(err)
                    continue
                at = 0
                for keys, future in batch:
                    if not future.done():
                        future.set_result(values[at : at + len(keys)])
                    at += len(keys)
        finally:
            self._drain = None
            for _, future in self._pending:  # cancelled with readers left
                future.cancel()
            self._pending = []


class ResponseCache:
    """Reads per-item cache entries under one key prefix."""

    def __init__(self, conn: aredis.Redis, prefix: str) -> None:
        self.conn = conn
        self.prefix = prefix
        self.reads = BatchedReads(conn)

    async def lookup(
        self, model: str, fingerprint: str, params: dict[str, Any], texts: list[Item]
    ) -> Lookup:
        keys = [item_key(self.prefix, model, fingerprint, params, t) for t in texts]
        try:
            raw = await self.reads.mget(keys)
        except (RedisError, OSError) as err:
            log.warning("cache lookup failed, serving without the cache: %s", err)
            raw = [None] * len(keys)
        found = [(MISSING, 0) if r is None else read_entry(r) for r in raw]
        missing = [i for i, (o, _) in enumerate(found) if o is MISSING]
        return Lookup([o for o, _ in found], missing, [n for _, n in found])

    @staticmethod
    def miss(texts: list[Item]) -> Lookup:
        return Lookup([MISSING] * len(texts), list(range(len(texts))), [0] * len(texts))
