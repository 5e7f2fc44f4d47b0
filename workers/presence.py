"""A worker's presence in Redis: what the gateway reads to know a model can be served.

RQ's own worker registry keeps a dead worker listed for minutes (its key TTL is ``worker_ttl``,
420 s by default). The gateway needs to know within seconds, so each worker scores its name in a
per-model sorted set by the moment its presence expires, renewed every second from a thread.
Scores use the Redis server's clock, so workers on other machines need no synchronised clocks.
The thread stops renewing when the main loop has been stuck in one batch past its deadline: a
worker hung in native code then disappears, and its supervisor can replace it.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable

from redis import Redis
from redis.exceptions import RedisError

from contract.jobs import HEARTBEAT_INTERVAL_S, PRESENCE_TTL_S, Keys

log = logging.getLogger("modelgate.worker")

_RENEW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('HSET', KEYS[3], ARGV[1], ARGV[4])
redis.call('HSET', KEYS[2], unpack(ARGV, 5))
redis.call('EXPIRE', KEYS[2], ARGV[3])
return 1
"""


RECONNECT_GRACE_S = PRESENCE_TTL_S + HEARTBEAT_INTERVAL_S
"""How long a worker's tick waits after a failed heartbeat before it runs again."""


LATE_AFTER_S = PRESENCE_TTL_S - HEARTBEAT_INTERVAL_S
"""A renewal this long after the last one came close to letting the presence lapse."""


class Presence:
    """Announces one worker of one model while ``healthy()`` says its main loop is alive."""

    def __init__(
        self,
        connection: Redis,
        keys: Keys,
        model: str,
        worker_name: str,
        info: dict[str, str],
        healthy: Callable[[], bool] = lambda: True,
        on_tick: Callable[[], object] | None = None,
    ) -> None:
        self.connection = connection
        self.keys = keys
        self.model = model
        self.worker_name = worker_name
        self.info = {"model": model, "pid": str(os.getpid()), "host": socket.gethostname(), **info}
        self.healthy = healthy
        self.on_tick = on_tick
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="presence", daemon=True)
        self._script = connection.register_script(_RENEW)

    def renew(self) -> None:
        fields = [x for kv in self.info.items() for x in kv]
        self._script(
            keys=[
                self.keys.presence(self.model),
                self.keys.worker_info(self.worker_name),
                self.keys.fingerprints(self.model),
            ],
            args=[
                self.worker_name,
                PRESENCE_TTL_S,
                int(PRESENCE_TTL_S) + 60,
                self.info.get("fingerprint", ""),
                *fields,
            ],
        )

    def start(self) -> None:
        self.renew()
        self._thread.start()

    def _loop(self) -> None:
        connected_since: float | None = time.monotonic()
        renewed = time.monotonic()
        while not self._stop.wait(HEARTBEAT_INTERVAL_S):
            if not self.healthy():
                log.error("main loop stuck past its deadline: withdrawing presence")
                continue
            try:
                self.renew()
                gap, renewed = time.monotonic() - renewed, time.monotonic()
                if gap > LATE_AFTER_S:
                    # The gateway counts this worker gone after PRESENCE_TTL_S without one.
                    log.warning(
                        "presence renewed %.1f s after the last (every %.0f s is due)",
                        gap,
                        HEARTBEAT_INTERVAL_S,
                    )
                if connected_since is None:
                    connected_since = time.monotonic()
                # Right after Redis comes back every worker's presence has lapsed: give the live
                # ones time to renew theirs before the tick (the reaper) judges any of them dead.
                settled = time.monotonic() - connected_since >= RECONNECT_GRACE_S
                if self.on_tick is not None and settled:
                    self.on_tick()
            except RedisError as err:
                connected_since = None
                log.warning("presence heartbeat failed: %s", err)
            except Exception:  # the heartbeat must outlive any bug in a tick
                log.exception("presence tick failed")

    def stop(self) -> None:
        """Withdraw at once, so the gateway stops routing here before the TTL would say so."""
        self._stop.set()
        self._thread.join(timeout=2)
        try:
            self.connection.zrem(self.keys.presence(self.model), self.worker_name)
            self.connection.delete(self.keys.worker_info(self.worker_name))
            self.connection.hdel(self.keys.fingerprints(self.model), self.worker_name)
        except RedisError:
            pass


STUCK_GRACE_S = 5.0
"""How far past its own timeout a batch may run before its worker counts as hung. The timeout
is enforced by SIGALRM; a batch still running after it is stuck where signals cannot reach."""


def stuck_check(
    busy_since: Callable[[], float | None], limit_s: Callable[[], float]
) -> Callable[[], bool]:
    """A ``healthy`` callable: false once the current batch has run ``limit_s()`` + grace."""

    def healthy() -> bool:
        since = busy_since()
        return since is None or time.monotonic() - since < limit_s() + STUCK_GRACE_S

    return healthy
