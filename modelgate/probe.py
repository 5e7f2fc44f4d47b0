"""``modelgate probe worker``: does a worker of this host serve a model? For exec probes.

A worker heart-beats in its model's presence set (:mod:`workers.presence`), scored by when its
presence expires by the Redis server's clock, and describes itself (host among the fields) in
its info hash. The probe passes when a live entry's host is this host's name: in a Kubernetes
pod or a compose container that is the pod's or the container's own worker. A worker hung in
native code stops heart-beating, so the probe fails and the orchestrator replaces it. The same
check as the healthcheck of the worker services in docker-compose.yml.
"""

from __future__ import annotations

import socket

from redis import Redis
from redis.exceptions import RedisError

from contract.jobs import Keys
from contract.redisconn import BadRedisURL, sync_client
from contract.settings import CommonSettings, redacted

TIMEOUT_S = 5.0
"""Socket timeout of the probe's Redis calls; the exec probes allow 10 s in all."""


def hosts_worker(client: Redis, keys: Keys, model: str, host: str) -> bool:
    """Whether a live worker of ``model`` reports ``host`` as its host."""
    now_s, now_us = client.time()
    live = client.zrangebyscore(keys.presence(model), now_s + now_us / 1e6, "+inf")
    pipe = client.pipeline(transaction=False)
    for name in live:
        pipe.hget(keys.worker_info(name.decode() if isinstance(name, bytes) else str(name)), "host")
    return host.encode() in pipe.execute()


def check_worker(settings: CommonSettings, model: str, redis_down_ok: bool = False) -> str | None:
    """None when this host serves ``model``; else why not, in one line. With
    ``redis_down_ok`` a Redis that cannot be reached passes: a liveness probe must not restart
    every worker (and reload every model) because Redis is away, which no restart mends."""
    host = socket.gethostname()
    try:
        client = sync_client(
            settings.redis_url, socket_timeout=TIMEOUT_S, socket_connect_timeout=TIMEOUT_S
        )
        try:
            found = hosts_worker(client, Keys(settings.prefix), model, host)
        finally:
            client.close()
    except BadRedisURL as err:
        return f"bad Redis URL: {err}"
    except (RedisError, OSError, ValueError) as err:
        if redis_down_ok and not isinstance(err, ValueError):
            return None
        cause = str(err).splitlines()[0] if str(err) else type(err).__name__
        return f"cannot reach Redis at {redacted(settings.redis_url)}: {cause}"
    if not found:
        return f"no live worker of model {model!r} on this host ({host})"
    return None
