"""A Redis primary, a replica and three sentinels on loopback, from the bundled redis-server.

The sentinels run the same binary with ``--sentinel``, each with its own config file (a
sentinel rewrites it as it learns the topology). Quick timings make a failover take a few
seconds: a master unreachable for ``down_after_ms`` is subjectively down, two sentinels agreeing
make it objectively down, and one of them promotes the replica.
"""

from __future__ import annotations

import contextlib
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from redis import Redis
from redis.exceptions import RedisError

from modelgate.redis_server import RedisServer, find_redis_server, free_port
from tests.conftest import stop_process, wait_until

MASTER = "mg"


class SentinelSet:
    """``start()`` brings up the primary, its replica and three sentinels; ``url`` is the
    ``redis+sentinel://`` URL every modelgate process is given."""

    def __init__(self, down_after_ms: int = 1000, failover_timeout_ms: int = 5000) -> None:
        self.binary = find_redis_server()
        self.primary = RedisServer(binary=self.binary)
        self.replica = RedisServer(
            binary=self.binary,
            extra_args=["--replicaof", "127.0.0.1", str(self.primary.port)],
        )
        self.sentinel_ports = [free_port() for _ in range(3)]
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self._dir = tempfile.TemporaryDirectory(prefix="modelgate-sentinel-")
        self.sentinels: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports)
        return f"redis+sentinel://{hosts}/{MASTER}/0"

    def start(self) -> SentinelSet:
        self.primary.start()
        self.replica.start()
        _wait(
            lambda: (
                self._client(self.replica.port).info("replication").get("master_link_status")
                == "up"
            ),
            "the replica to sync",
        )
        for port in self.sentinel_ports:
            conf = Path(self._dir.name) / f"sentinel-{port}.conf"
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {self._dir.name}\n"
                f"sentinel monitor {MASTER} 127.0.0.1 {self.primary.port} 2\n"
                f"sentinel down-after-milliseconds {MASTER} {self.down_after_ms}\n"
                f"sentinel failover-timeout {MASTER} {self.failover_timeout_ms}\n"
                f"sentinel parallel-syncs {MASTER} 1\n"
            )
            self.sentinels.append(
                subprocess.Popen(
                    [self.binary, str(conf), "--sentinel"],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    start_new_session=True,
                )
            )
        _wait(self._sentinels_agree, "the sentinels to see each other and the replica")
        return self

    def master_port(self) -> int | None:
        """The master's port as the first sentinel that answers sees it."""
        for port in self.sentinel_ports:
            with contextlib.suppress(RedisError):
                addr = self._client(port).sentinel_get_master_addr_by_name(MASTER)
                if addr:
                    return int(addr[1])
        return None

    def kill_primary(self) -> None:
        """SIGKILL the primary, as a crashed machine would stop it."""
        assert self.primary.proc is not None
        self.primary.proc.kill()
        self.primary.proc.wait()

    def wait_failover(self, timeout_s: float = 30.0) -> float:
        """Seconds until the sentinels name the replica master and it takes writes."""
        start = time.monotonic()
        _wait(
            lambda: (
                self.master_port() == self.replica.port
                and self._client(self.replica.port).info("replication").get("role") == "master"
            ),
            "the failover",
            timeout_s,
        )
        return time.monotonic() - start

    def stop(self) -> None:
        for proc in self.sentinels:
            stop_process(proc, timeout_s=5)
        self.replica.stop()
        self.primary.stop()
        self._dir.cleanup()

    def __enter__(self) -> SentinelSet:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def _sentinels_agree(self) -> bool:
        for port in self.sentinel_ports:
            master = self._client(port).sentinel_master(MASTER)
            if (
                int(master.get("num-other-sentinels", 0)) < 2
                or int(master.get("num-slaves", 0)) < 1
            ):
                return False
        return True

    @staticmethod
    def _client(port: int) -> Redis:
        return Redis(host="127.0.0.1", port=port, socket_timeout=1, socket_connect_timeout=1)


def _wait(check: Callable[[], bool], what: str, timeout_s: float = 30.0) -> None:
    """:func:`tests.conftest.wait_until` for a check that may meet a Redis not up yet."""

    def quiet() -> bool:
        try:
            return check()
        except (RedisError, OSError):
            return False

    wait_until(quiet, timeout_s, what)
