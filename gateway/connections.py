"""The gateway's Redis connections, bounded, and what their failures mean to a client.

Every request shares a few pooled connections: a pool that is all in use makes the next command
wait for a free connection (``BlockingConnectionPool``) rather than fail, so a burst of clients
queues in the gateway and is bounded by the model's queue, not by a socket count. Waiting for
results takes no connection per request at all (see ``gateway.replies``).

Failures map to three different answers: a pool still exhausted after its wait is back-pressure
(429 ``overloaded``), a Redis that refuses writes at ``maxmemory`` is 503 ``redis_out_of_memory``,
and only a Redis that cannot be reached is 503 ``redis_unavailable``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from typing import Any

import redis.asyncio as aredis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import MaxConnectionsError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from contract.jobs import is_oom
from contract.redisconn import async_client, async_pool, sync_client
from gateway.errors import Overloaded, RedisOutOfMemory, RedisUnavailable

COMMAND_TIMEOUT_S = 2.0
"""Longest a single non-blocking Redis command may take before Redis counts as unreachable."""


class PoolExhausted(MaxConnectionsError):
    """Every pooled connection stayed in use for the pool's whole wait: back-pressure."""


class BoundedPool(aredis.BlockingConnectionPool):
    """A blocking pool whose exhausted wait raises :class:`PoolExhausted`, not a plain
    ``ConnectionError`` that would read as "Redis is down"."""

    async def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().get_connection(*args, **kwargs)
        except RedisConnectionError as err:
            if isinstance(err.__cause__, asyncio.TimeoutError):
                raise PoolExhausted(
                    f"all {self.max_connections} Redis connections busy for {self.timeout} s"
                ) from None
            raise

    def in_use(self) -> int:
        return len(self._in_use_connections)

    def opened(self) -> int:
        return len(self._in_use_connections) + len(self._available_connections)


@contextlib.asynccontextmanager
async def redis_errors() -> AsyncIterator[None]:
    """Turn a Redis failure into the API error it means for the client."""
    try:
        yield
    except MaxConnectionsError as err:
        raise Overloaded(f"the gateway is saturated ({err}); retry shortly", 1) from None
    except (RedisConnectionError, RedisTimeoutError, OSError) as err:
        raise RedisUnavailable(f"Redis is unreachable ({type(err).__name__})") from None
    except ResponseError as err:
        if is_oom(err):
            raise RedisOutOfMemory(
                "Redis is full (maxmemory reached); nothing accepted is lost, retry shortly"
            ) from None
        raise


class Connections:
    """The Redis clients of one gateway process: jobs (async, pooled), cache (its own Redis
    when configured), a synchronous client RQ records commands on (it sends nothing), and the
    connection the reply listener blocks on."""

    def __init__(
        self,
        redis_url: str,
        *,
        cache_url: str | None = None,
        max_connections: int = 32,
        pool_timeout_s: float = 5.0,
        connect_timeout_s: float = 1.0,
    ) -> None:
        name = f"modelgate-gateway-{os.getpid()}"
        self.client_name = name
        self._pools: dict[str, Any] = {}
        self.conn = self._client(
            "jobs", redis_url, max_connections, pool_timeout_s, connect_timeout_s
        )
        self.cache = (
            self._client("cache", cache_url, max_connections, pool_timeout_s, connect_timeout_s)
            if cache_url and cache_url != redis_url
            else self.conn
        )
        self.sync = sync_client(redis_url, client_name=name)
        self.redis_url = redis_url
        self.connect_timeout_s = connect_timeout_s

    def _client(
        self, role: str, url: str, size: int, wait_s: float, connect_timeout_s: float
    ) -> aredis.Redis:
        # After a Redis restart every pooled connection is dead and fails its next command once:
        # retry that once, at once, on a new connection. A Redis that is down still fails in
        # milliseconds (refused twice); timeouts are not retried, so their bound stays.
        pool = async_pool(
            url,
            BoundedPool,
            max_connections=size,
            timeout=wait_s,
            socket_timeout=COMMAND_TIMEOUT_S,
            socket_connect_timeout=connect_timeout_s,
            health_check_interval=5,
            client_name=self.client_name,
            retry=AsyncRetry(NoBackoff(), 1, (RedisConnectionError,)),
        )
        self._pools[role] = pool
        return aredis.Redis(connection_pool=pool)

    def blocking_client(self, socket_timeout_s: float) -> aredis.Redis:
        """One connection of its own for a blocking reader (the reply listener). It never
        retries inside a command: a reader must see every lost connection, since Redis may
        have failed over meanwhile (see ``ReplyListener._recheck``)."""
        return async_client(
            self.redis_url,
            single_connection_client=True,
            socket_timeout=socket_timeout_s,
            socket_connect_timeout=self.connect_timeout_s,
            client_name=self.client_name,
            retry=AsyncRetry(NoBackoff(), 0),
        )

    def pool_stats(self) -> dict[str, tuple[int, int, int]]:
        """Per pool: connections in use, opened, and the bound."""
        return {r: (p.in_use(), p.opened(), p.max_connections) for r, p in self._pools.items()}

    async def close(self) -> None:
        for pool in self._pools.values():  # a client given its pool leaves it open
            await pool.disconnect()
        self.sync.close()
