"""Redis clients from one URL, plain or behind Redis Sentinel, for every modelgate process.

A plain ``redis://`` or ``rediss://`` URL goes to redis-py as it is. A Sentinel URL names the
sentinels and the master they watch::

    redis+sentinel://[[USER]:PASSWORD@]HOST:PORT[,HOST:PORT...]/MASTER[/DB][?sentinel_password=..]

(``rediss+sentinel://`` for TLS to the master). Its clients ask the sentinels for the current
master before each new connection (redis-py's ``Sentinel.master_for``), so after a failover the
next command that fails on the old master reconnects to the new one by itself. The credentials
are the master's; ``sentinel_password`` authenticates to the sentinels when they require it.

Writes a client must not lose on a failover (an accepted async job, a finished batch's results)
are confirmed with :func:`replicated` once they are on a replica too: Redis replicates
asynchronously, and a primary killed before it forwarded a write loses it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

import redis.asyncio as aredis
from redis import Redis
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.asyncio.sentinel import SentinelConnectionPool as AsyncSentinelPool
from redis.asyncio.sentinel import SentinelManagedConnection as AsyncManaged
from redis.asyncio.sentinel import SentinelManagedSSLConnection as AsyncManagedSSL
from redis.sentinel import Sentinel, SentinelManagedConnection, SentinelManagedSSLConnection

log = logging.getLogger("modelgate.redis")

SENTINEL_SCHEMES = {"redis+sentinel": False, "rediss+sentinel": True}
"""Sentinel URL schemes, and whether each talks TLS to the master."""

DEFAULT_SENTINEL_PORT = 26379

SENTINEL_QUERY = {"sentinel_password"}
"""Options a Sentinel URL may carry after ``?``; any other is refused, not ignored."""

REPLICA_WAIT_MS = 1000
"""Longest a replicated write waits for a replica's acknowledgement (``WAIT``)."""


class BadRedisURL(ValueError):
    """A Redis URL modelgate cannot use, with the reason in one line."""


@dataclass(frozen=True)
class SentinelURL:
    """The parts of a ``redis+sentinel://`` URL."""

    sentinels: list[tuple[str, int]]
    master: str
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    sentinel_password: str | None = field(default=None, repr=False)
    ssl: bool = False

    def master_kwargs(self, asyncio: bool) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"db": self.db}
        if self.username:
            kwargs["username"] = self.username
        if self.password:
            kwargs["password"] = self.password
        if asyncio:
            kwargs["connection_class"] = (
                AsyncMasterSSLConnection if self.ssl else AsyncMasterConnection
            )
        else:
            kwargs["connection_class"] = MasterSSLConnection if self.ssl else MasterConnection
        return kwargs

    def sentinel_kwargs(self, client_kwargs: dict[str, Any]) -> dict[str, Any]:
        """How to talk to the sentinels: the client's connect (else read) timeout, 2 s when
        it sets none, and the sentinels' own password."""
        timeout_s = (
            client_kwargs.get("socket_connect_timeout")
            or client_kwargs.get("socket_timeout")
            or 2.0
        )
        kwargs: dict[str, Any] = {"socket_timeout": timeout_s, "socket_connect_timeout": timeout_s}
        if self.sentinel_password:
            kwargs["password"] = self.sentinel_password
        return kwargs


class MasterConnection(SentinelManagedConnection):
    """A connection that asks the sentinels where the master is whenever it (re)connects.

    redis-py 8 reconnects a dropped connection inside ``send_packed_command`` straight to the
    address it had, so a connection held across a failover (a PubSub, a blocking reader, one
    retried inside a command) would knock on the dead master for good; this one reconnects
    through the sentinels like a fresh connection from the pool."""

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        if not self._sock:
            self.connect()  # type: ignore[no-untyped-call]
        super().send_packed_command(command, check_health)  # type: ignore[no-untyped-call]


class MasterSSLConnection(MasterConnection, SentinelManagedSSLConnection):
    pass


class AsyncMasterConnection(AsyncManaged):
    """:class:`MasterConnection` for asyncio."""

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        if not self.is_connected:
            await self.connect()  # type: ignore[no-untyped-call]
        await super().send_packed_command(command, check_health)


class AsyncMasterSSLConnection(AsyncMasterConnection, AsyncManagedSSL):
    pass


def parse_sentinel(url: str) -> SentinelURL | None:
    """The Sentinel parts of ``url``, or None for a plain Redis URL; :class:`BadRedisURL` when
    it is a Sentinel URL with something missing."""
    scheme, sep, _ = url.partition("://")
    if not sep or scheme.lower() not in SENTINEL_SCHEMES:
        return None
    try:
        parts = urlsplit(url)
    except ValueError as err:
        raise BadRedisURL(f"not a valid Redis URL: {err}") from None
    credentials, at, hosts = parts.netloc.rpartition("@")
    sentinels = [_sentinel_address(host) for host in filter(None, hosts.split(","))]
    path = [unquote(p) for p in parts.path.split("/") if p]
    if not sentinels:
        raise BadRedisURL("a redis+sentinel:// URL needs at least one sentinel HOST:PORT")
    if not path or len(path) > 2:
        raise BadRedisURL("a redis+sentinel:// URL ends in /MASTER_NAME or /MASTER_NAME/DB")
    try:
        db = int(path[1]) if len(path) == 2 else 0
    except ValueError:
        raise BadRedisURL(f"database {path[1]!r} in the Redis URL is not a number") from None
    username, _, password = credentials.partition(":") if at else ("", "", "")
    query: dict[str, str] = {}
    for part in filter(None, parts.query.split("&")):
        name, _, value = part.partition("=")
        if name not in SENTINEL_QUERY:
            known = ", ".join(sorted(SENTINEL_QUERY))
            raise BadRedisURL(f"unknown option {name!r} in the Redis URL (known: {known})")
        query[name] = unquote(value)
    return SentinelURL(
        sentinels=sentinels,
        master=path[0],
        db=db,
        username=unquote(username) or None,
        password=unquote(password) or None,
        sentinel_password=query.get("sentinel_password") or None,
        ssl=SENTINEL_SCHEMES[scheme.lower()],
    )


def _sentinel_address(host: str) -> tuple[str, int]:
    """``HOST[:PORT]`` or ``[IPV6][:PORT]`` of one sentinel (port 26379 when left out)."""
    if host.startswith("["):
        address, bracket, rest = host[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
        if not bracket or (rest and not rest.startswith(":")):
            raise BadRedisURL(f"sentinel address {host!r} is not [IPV6]:PORT")
    else:
        address, _, port = host.partition(":")
    try:
        return address, int(port) if port else DEFAULT_SENTINEL_PORT
    except ValueError:
        raise BadRedisURL(f"sentinel address {host!r} has no valid port") from None


def is_sentinel(url: str) -> bool:
    return parse_sentinel(url) is not None


def sync_client(url: str, **kwargs: Any) -> Redis:
    """A redis-py client for ``url``; ``kwargs`` as for ``Redis.from_url`` (timeouts, client
    name, health checks), applied to the master's connections for a Sentinel URL."""
    parsed = parse_sentinel(url)
    if parsed is None:
        return Redis.from_url(url, **kwargs)
    sentinel = Sentinel(parsed.sentinels, sentinel_kwargs=parsed.sentinel_kwargs(kwargs))  # type: ignore[no-untyped-call]
    client: Redis = sentinel.master_for(parsed.master, **parsed.master_kwargs(False), **kwargs)  # type: ignore[no-untyped-call]
    return client


def async_pool(
    url: str, pool_class: type[aredis.ConnectionPool] = aredis.ConnectionPool, **kwargs: Any
) -> aredis.ConnectionPool:
    """An asyncio connection pool of ``pool_class`` (a blocking or bounded pool works too) for
    ``url``; for a Sentinel URL the same class, its connections made to the current master."""
    parsed = parse_sentinel(url)
    if parsed is None:
        return pool_class.from_url(url, **kwargs)
    sentinel = AsyncSentinel(parsed.sentinels, sentinel_kwargs=parsed.sentinel_kwargs(kwargs))  # type: ignore[no-untyped-call]
    # SentinelConnectionPool only adds how a connection finds the master; mixed in front of
    # pool_class, the pool keeps pool_class's waiting and bounds.
    managed = type(
        f"Sentinel{pool_class.__name__}", (AsyncSentinelPool, pool_class), {"__module__": __name__}
    )
    pool: aredis.ConnectionPool = managed(
        parsed.master, sentinel, **parsed.master_kwargs(True), **kwargs
    )
    return pool


def async_client(
    url: str, *, single_connection_client: bool = False, **kwargs: Any
) -> aredis.Redis:
    """An asyncio client for ``url`` that owns (and closes) its own pool."""
    client = aredis.Redis(
        connection_pool=async_pool(url, **kwargs),
        single_connection_client=single_connection_client,
    )
    client.auto_close_connection_pool = True
    return client


class ReplicaAcks:
    """When to ``WAIT`` for replicas, and for how many: the replicas asked for, but no more
    than answered last time. A master with no replica left (its replica became the master in a
    failover) makes every ``WAIT`` run out its whole timeout; after one that came back short,
    writes go on without waiting for the missing replicas, and the replica count is read again
    (``ROLE``) every :attr:`recheck_s`.

    ``commands()`` gives what to send, together on one connection; ``update()`` reads the
    answers. A marker write before ``WAIT`` makes it cover every earlier write, whichever pooled
    connection made it (``WAIT`` counts only its own connection's writes, and the replication
    stream is in order)."""

    def __init__(
        self, mark_key: str, wanted: int, timeout_ms: int = REPLICA_WAIT_MS, recheck_s: float = 5.0
    ) -> None:
        self.mark_key = mark_key
        self.wanted = wanted
        self.timeout_ms = timeout_ms
        self.recheck_s = recheck_s
        self.expected = wanted
        self.checked_at = float("-inf")
        self.short = 0
        """Writes that went on with fewer replicas than wanted."""

    def commands(self, now: float) -> list[tuple[Any, ...]]:
        """What to send now: nothing when no replica is wanted (plain Redis), nor (counted as
        short) while none is expected."""
        out: list[tuple[Any, ...]] = []
        if not self.wanted:
            return out
        if self.expected < self.wanted and now - self.checked_at >= self.recheck_s:
            out.append(("ROLE",))
        if self.expected:
            px = max(1000, 2 * self.timeout_ms)
            out += [("SET", self.mark_key, "1", "PX", px), ("WAIT", self.expected, self.timeout_ms)]
        elif not out:
            self.short += 1
        return out

    def update(self, commands: list[tuple[Any, ...]], replies: list[Any], now: float) -> None:
        acked = None
        for command, reply in zip(commands, replies, strict=True):
            if command[0] == "ROLE":
                self.checked_at = now
                replicas = reply[2] if reply and reply[0] in (b"master", "master") else []
                self.expected = min(self.wanted, len(replicas))
            elif command[0] == "WAIT":
                acked = int(reply)
        if acked is not None and acked < self.expected:
            log.warning(
                "%d of %d replica(s) acknowledged in %d ms", acked, self.expected, self.timeout_ms
            )
            self.expected = acked
            self.checked_at = now
        if acked is None or acked < self.wanted:
            self.short += 1


def replicated(client: Redis, acks: ReplicaAcks) -> None:
    """Return once the replicas :class:`ReplicaAcks` expects hold every write made so far."""
    now = time.monotonic()
    commands = acks.commands(now)
    if commands:
        pipe = client.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command)  # type: ignore[no-untyped-call]
        acks.update(commands, pipe.execute(), now)


async def areplicated(client: aredis.Redis, acks: ReplicaAcks) -> None:
    """:func:`replicated` for an asyncio client."""
    now = time.monotonic()
    commands = acks.commands(now)
    if commands:
        pipe = client.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command)
        acks.update(commands, await pipe.execute(), now)
