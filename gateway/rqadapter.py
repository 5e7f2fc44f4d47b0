"""Every use the gateway makes of RQ beyond its public API, in one place.

The gateway writes jobs as RQ's own ``Queue.enqueue_job`` would, but from the event loop: RQ's
code runs against a recording pipeline of a synchronous client that never sends anything
(:func:`recorded`), and the recorded commands go out in one async transaction. Two things that
needs are RQ internals: the pipeline's ``command_stack``, and the per-connection attribute where
RQ caches the server's version (it would otherwise ask for it synchronously, blocking the loop).
``tests/unit/test_rq_adapters.py`` pins the RQ series these were written for
(``contract.jobs.RQ_SERIES``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import redis

_SERVER_VERSION_ATTR = "__rq_redis_server_version"
"""Where RQ caches the Redis server's version on a connection object."""

Commands = list[tuple[tuple[Any, ...], dict[str, Any]]]
"""Commands as a redis-py pipeline records them: arguments and options of each."""


def recorded(client: redis.Redis, build: Callable[[Any], object]) -> Commands:
    """The commands ``build`` issues on a pipeline of ``client``, recorded and not sent."""
    recorder = client.pipeline(transaction=False)
    build(recorder)
    commands: Commands = list(recorder.command_stack)
    recorder.reset()
    return commands


def knows_server_version(client: redis.Redis) -> bool:
    return getattr(client, _SERVER_VERSION_ATTR, None) is not None


def tell_server_version(client: redis.Redis, redis_version: str) -> None:
    """Leave the server's version (``INFO server``'s ``redis_version``) where RQ caches it."""
    parts = [int(p) for p in str(redis_version).split(".")[:3]]
    setattr(client, _SERVER_VERSION_ATTR, tuple(parts + [0] * (3 - len(parts))))
