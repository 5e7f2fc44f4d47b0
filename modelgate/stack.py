"""``modelgate up``: Redis (if none is configured), one worker per model replica, and the gateway.

The supervisor installs its own SIGINT and SIGTERM handlers: a process started in the background
by a non-interactive shell inherits SIGINT as ignored, so Python's KeyboardInterrupt would never
fire. Children are stopped by PID, never by name. A worker that exits, or stays alive but stops
heart-beating (hung in native code), is replaced.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType

from redis import Redis
from redis.exceptions import RedisError

from contract.config import Registry
from contract.jobs import PRESENCE_TTL_S, Keys
from contract.redisconn import sync_client
from contract.settings import CommonSettings, unreachable
from modelgate.redis_server import CACHE_POLICY, JOBS_POLICY, RedisServer

SETTINGS_PASSED = frozenset(
    {"REDIS_URL", "MODELGATE_REDIS_URL", "MODELGATE_CACHE_URL", "MODELGATE_PREFIX"}
)
"""Settings the supervisor resolves once and hands to its children explicitly."""

STOP_GRACE_S = 15.0
"""How long children get to finish in-flight work after SIGTERM before SIGKILL."""

MAX_QUICK_FAILURES = 3
"""Failures before ever becoming ready after which the gateway stops the stack, and a worker
is retried with backoff (its model cannot load; the other models keep serving)."""

RETRY_FIRST_S, RETRY_MAX_S = 5.0, 300.0
"""Backoff of a worker whose model cannot load: 5 s, doubling, at most 5 minutes."""


@dataclass
class Child:
    """One supervised process."""

    role: str
    args: list[str]
    name: str = ""
    model: str = ""
    proc: subprocess.Popen[bytes] | None = None
    ready: bool = False
    quick_failures: int = 0
    restarts: int = 0
    absent_since: float | None = field(default=None)
    retry_at: float | None = None
    """When a worker whose model cannot load is started again."""

    @property
    def failing(self) -> bool:
        """A worker that keeps failing to start: retried with backoff, not waited for."""
        return (
            self.role == "worker" and not self.ready and self.quick_failures >= MAX_QUICK_FAILURES
        )


class Stack:
    """Runs and supervises the whole local deployment until a signal says stop."""

    def __init__(
        self,
        registry: Registry,
        settings: CommonSettings,
        *,
        host: str = "127.0.0.1",
        port: int = 8000,
        redis_maxmemory: str = "1gb",
        cache_maxmemory: str = "256mb",
        say: Callable[[str], None] = lambda s: print(s, flush=True),
    ) -> None:
        self.registry = registry
        self.config_path = os.path.abspath(settings.config)
        self.host, self.port = host, port
        self.redis_url = settings.redis_url if settings.redis_given else None
        self.cache_url = settings.cache_url
        self.maxmemory = (redis_maxmemory, cache_maxmemory)
        self.log_format = settings.log_format
        self.say = say
        self.keys = Keys(settings.prefix)
        self.children: list[Child] = []
        self.redis_servers: list[RedisServer] = []
        self._stop = threading.Event()

    def _on_signal(self, signum: int, _: FrameType | None) -> None:
        self.say(f"modelgate: got {signal.Signals(signum).name}, stopping")
        self._stop.set()

    def run(self) -> int:
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGTERM, self._on_signal)
        for url in (self.redis_url, self.cache_url):
            problem = url and unreachable(url)
            if problem:
                self.say(f"modelgate: {problem}")
                return 1
        try:
            self._start_all()
            if not self._wait_ready():
                return 1
            self.say(
                f"modelgate ready: http://{self.host}:{self.port}  (docs: /docs, Ctrl-C stops)"
            )
            return self._supervise()
        finally:
            self._stop_all()

    def _env(self) -> dict[str, str]:
        """The children's environment: the settings this supervisor resolved, under their one
        name each (an inherited ``REDIS_URL`` could otherwise point a child elsewhere)."""
        assert self.redis_url
        inherited = {k: v for k, v in os.environ.items() if k not in SETTINGS_PASSED}
        cache = {"MODELGATE_CACHE_URL": self.cache_url} if self.cache_url else {}
        return {
            **inherited,
            **cache,
            "MODELGATE_REDIS_URL": self.redis_url,
            "MODELGATE_PREFIX": self.keys.prefix,
            "MODELGATE_CONFIG": self.config_path,
            "MODELGATE_LOG_FORMAT": self.log_format,
            "MODELGATE_SUPERVISED": "1",
        }

    def _start_all(self) -> None:
        if not self.redis_url:
            self._start_redis()
        cores = os.cpu_count() or 1
        counts = self.registry.worker_counts(cores)
        threads = self.registry.worker_threads(cores)
        for spec in self.registry.models:
            for i in range(counts[spec.name]):
                args = [sys.executable, "-m", "workers", "--model", spec.name]
                if spec.threads is None:
                    args += ["--threads", str(threads)]
                self.children.append(
                    Child("worker", args, name=f"{spec.name}-{i}", model=spec.name)
                )
        gateway = [
            sys.executable,
            "-m",
            "modelgate",
            "gateway",
            "--host",
            self.host,
            "--port",
            str(self.port),
        ]
        self.children.append(Child("gateway", gateway, name="gateway"))
        for child in self.children:
            self._spawn(child)

    def _start_redis(self) -> None:
        """Two private servers: jobs (never evicts) and the response cache (evicts LRU), so
        cache entries can never push out a queued job or an unread result."""
        jobs_mem, cache_mem = self.maxmemory
        jobs = RedisServer(maxmemory=jobs_mem, policy=JOBS_POLICY).start()
        self.redis_servers.append(jobs)
        self.redis_url = jobs.url
        self.say(
            f"modelgate: no MODELGATE_REDIS_URL given; started redis-server for jobs at "
            f"{jobs.url} ({jobs_mem}, {JOBS_POLICY})"
        )
        if self.cache_url is None:
            cache = RedisServer(maxmemory=cache_mem, policy=CACHE_POLICY).start()
            self.redis_servers.append(cache)
            self.cache_url = cache.url
            self.say(
                f"modelgate: started redis-server for the cache at {cache.url} "
                f"({cache_mem}, {CACHE_POLICY})"
            )

    def _spawn(self, child: Child) -> None:
        args = child.args
        if child.role == "worker":
            # A fresh name per process: RQ refuses a name whose dead owner is still registered.
            child.name = f"{child.name.rsplit('.', 1)[0]}.{uuid.uuid4().hex[:6]}"
            args = [*args, "--name", child.name]
        child.proc = subprocess.Popen(args, env=self._env())
        child.ready = False
        child.absent_since = None

    def _redis(self) -> Redis:
        assert self.redis_url
        return sync_client(self.redis_url, socket_timeout=2, socket_connect_timeout=2)

    def _present(self, client: Redis, child: Child) -> bool:
        score = client.zscore(self.keys.presence(child.model), child.name)
        now_s, now_us = client.time()
        return score is not None and score > now_s + now_us / 1e6

    def _gateway_up(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.host}:{self.port}/healthz", timeout=1) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def _wait_ready(self) -> bool:
        client = self._redis()
        last_report = ""
        while not self._stop.is_set():
            if not self._check_exits():
                return False
            for child in self.children:
                with contextlib.suppress(RedisError):
                    if not child.ready:
                        child.ready = (
                            self._present(client, child)
                            if child.role == "worker"
                            else self._gateway_up()
                        )
            pending = [c.name for c in self.children if not c.ready and not c.failing]
            if not pending:
                failing = sorted({c.model for c in self.children if c.failing})
                if failing:
                    self.say(f"modelgate: not serving {', '.join(failing)} (cannot load)")
                return True
            report = f"modelgate: waiting for {', '.join(pending)}"
            if report != last_report:
                self.say(report)
                last_report = report
            time.sleep(0.25)
        return False

    def _check_exits(self) -> bool:
        """Restart children that exited; a worker that keeps failing to start is retried with
        backoff. False when the gateway keeps failing before it ever got ready."""
        for child in self.children:
            if child.retry_at is not None:
                if time.monotonic() >= child.retry_at:
                    child.retry_at = None
                    self._spawn(child)
                continue
            assert child.proc is not None
            code = child.proc.poll()
            if code is None:
                continue
            if child.ready:
                child.quick_failures = 0
            else:
                child.quick_failures += 1
            if child.quick_failures < MAX_QUICK_FAILURES:
                self.say(f"modelgate: {child.name} exited with {code}; restarting")
                child.restarts += 1
                self._spawn(child)
            elif child.role == "gateway":
                self.say(f"modelgate: the gateway failed {child.quick_failures} times; giving up")
                return False
            else:
                self._retry_later(child, code)
        return True

    def _retry_later(self, child: Child, code: int) -> None:
        failures = child.quick_failures - MAX_QUICK_FAILURES
        delay = min(RETRY_MAX_S, RETRY_FIRST_S * 2**failures)
        child.retry_at = time.monotonic() + delay
        self.say(
            f"modelgate: {child.name} failed {child.quick_failures} times while starting "
            f"(exit {code}; its log says why, and GET /models/{child.model} too); retrying in "
            f"{delay:.0f} s, the other models keep serving"
        )

    def _replace_hung(self, client: Redis) -> None:
        for child in self.children:
            if child.role != "worker" or not child.ready:
                continue
            if self._present(client, child):
                child.absent_since = None
                continue
            child.absent_since = child.absent_since or time.monotonic()
            if time.monotonic() - child.absent_since > PRESENCE_TTL_S:
                self.say(f"modelgate: {child.name} stopped heart-beating; replacing it")
                assert child.proc is not None
                child.proc.kill()
                child.proc.wait()
                child.restarts += 1
                self._spawn(child)

    def _supervise(self) -> int:
        client = self._redis()
        while not self._stop.wait(0.5):
            if not self._check_exits():
                return 1
            for child in self.children:
                if not child.ready and child.role == "gateway":
                    child.ready = self._gateway_up()
                elif not child.ready:
                    with contextlib.suppress(RedisError):
                        child.ready = self._present(client, child)
            with contextlib.suppress(RedisError):
                self._replace_hung(client)
        return 0

    def _stop_all(self) -> None:
        for child in reversed(self.children):
            if child.proc is not None and child.proc.poll() is None:
                child.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for child in self.children:
            if child.proc is None:
                continue
            try:
                child.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.say(f"modelgate: {child.name} did not stop in time; killing it")
                child.proc.kill()
                child.proc.wait()
        for server in reversed(self.redis_servers):
            server.stop()
        self.say("modelgate: stopped")
