"""Chaos: Redis going away and coming back, a worker killed under load.

This module runs its own stack (a persistent Redis it restarts, two workers of one model, one
gateway), so restarting Redis disturbs no other test; each test starts with Redis up and two
live workers. Everything binds to 127.0.0.1 and stops in a ``finally``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from redis import Redis

from modelgate.redis_server import RedisServer, free_port
from tests.conftest import (
    PREFIX,
    ROOT,
    WorkerProc,
    is_present,
    process_env,
    start_worker,
    wait_until,
)
from tests.drills import Load, Tally, await_jobs, tail_logs

pytestmark = pytest.mark.integration

MODEL = "chaos"
MODEL_TIMEOUT_S = 10.0
CLIENT_TIMEOUT_S = MODEL_TIMEOUT_S + 5
"""A request that gets no answer within this long counts as lost."""

LONG_JOB_INPUTS = 1000
"""Inputs of the job that keeps one worker busy (a second or two) while Redis goes away:
the batch ends, and its results must be written, while Redis is still down."""


@dataclass
class ChaosStack:
    url: str
    redis: RedisServer
    config: Path
    gateway: subprocess.Popen[bytes]
    log_dir: Path
    workers: list[WorkerProc] = field(default_factory=list)
    started: list[WorkerProc] = field(default_factory=list)
    """Every worker ever started, so that all of them are stopped at the end."""

    def client(self) -> Redis:
        return Redis.from_url(self.redis.url, socket_connect_timeout=1, socket_timeout=2)

    def announced_pid(self, worker: WorkerProc) -> int | None:
        """The pid a worker last wrote into its presence info in Redis."""
        client = self.client()
        try:
            raw = client.hget(f"{PREFIX}:worker:{worker.name}", "pid")
        finally:
            client.close()
        return int(raw) if raw else None

    def revive(self, replicas: int = 2) -> None:
        """Two live, announced workers: replace those an earlier test killed (under new names,
        as RQ refuses a name whose worker key has not expired yet)."""
        self.workers = [w for w in self.workers if w.proc.poll() is None]
        fresh: list[WorkerProc] = []
        while len(self.workers) + len(fresh) < replicas:
            name = f"{MODEL}-w{len(self.started)}"
            worker = start_worker(
                self.redis.url,
                self.config,
                MODEL,
                name,
                wait=False,
                log_path=self.log_dir / f"{name}.log",
            )
            self.started.append(worker)
            fresh.append(worker)
        self.workers += fresh
        client = self.client()
        for w in self.workers:
            wait_until(
                lambda w=w: is_present(client, MODEL, w.name) or w.proc.poll() is not None,
                120,
                f"worker {w.name}",
            )
            assert w.proc.poll() is None, self.logs()
        client.close()
        wait_until(lambda: _status(self.url + "/readyz") == 200, 60, "the gateway to be ready")

    def logs(self) -> str:
        return tail_logs(self.log_dir)


@pytest.fixture(scope="module")
def chaos_stack(
    tmp_path_factory: pytest.TempPathFactory, model_dirs: dict[str, Path]
) -> Iterator[ChaosStack]:
    base = tmp_path_factory.mktemp("chaos")
    config = base / "models.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "models": [
                    {
                        "name": MODEL,
                        "task": "text-classification",
                        "source": {"path": str(model_dirs["tiny"])},
                        "cache_ttl_s": 0,
                        "timeout_s": MODEL_TIMEOUT_S,
                        "max_batch_size": 8,
                        "replicas": 2,
                    }
                ]
            }
        )
    )
    log_dir = base / "logs"
    log_dir.mkdir()
    redis = RedisServer(persistent=True).start()
    port = free_port()
    gateway = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "modelgate",
            "gateway",
            "--port",
            str(port),
            "--graceful-timeout",
            "2",
        ],
        env=process_env(redis.url, config),
        cwd=ROOT,
        stdout=open(log_dir / "gateway.log", "ab"),  # noqa: SIM115
        stderr=subprocess.STDOUT,
    )
    stack = ChaosStack(f"http://127.0.0.1:{port}", redis, config, gateway, log_dir)
    try:
        yield stack
    finally:
        gateway.terminate()
        for w in stack.started:
            w.stop(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            gateway.wait(timeout=10)
        if gateway.poll() is None:
            gateway.kill()
            gateway.wait()
        redis.stop()


@pytest.fixture
def chaos(chaos_stack: ChaosStack) -> ChaosStack:
    """The module's stack with Redis up and two live workers (one test kills one)."""
    if chaos_stack.redis.proc is None or chaos_stack.redis.proc.poll() is not None:
        chaos_stack.redis.start()
    chaos_stack.revive()
    return chaos_stack


def _status(url: str) -> int | None:
    try:
        return httpx.get(url, timeout=2).status_code
    except httpx.HTTPError:
        return None


def _predict(url: str, text: str, timeout: float = CLIENT_TIMEOUT_S) -> httpx.Response:
    return httpx.post(f"{url}/models/{MODEL}/predict", json={"inputs": text}, timeout=timeout)


def _serves(url: str) -> bool:
    try:
        return _predict(url, f"are you back? {time.monotonic()}", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def _alive(stack: ChaosStack, workers: list[WorkerProc]) -> None:
    assert stack.gateway.poll() is None, "the gateway exited\n" + stack.logs()
    for w in workers:
        exited = f"worker {w.name} exited with {w.proc.returncode}\n"
        assert w.proc.poll() is None, exited + stack.logs()


def _job(url: str, job_id: str, wait_s: float = 0) -> dict[str, Any]:
    r = httpx.get(f"{url}/jobs/{job_id}", params={"wait": wait_s}, timeout=wait_s + 10)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def _epoch(stamp: str | None) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp() if stamp else math.nan


def test_redis_outage_is_503_then_recovers(chaos: ChaosStack) -> None:
    assert _predict(chaos.url, "before the outage").status_code == 200
    time.sleep(0.5)  # the worker that ran it is back in its blocking dequeue
    pids = {w.name: w.proc.pid for w in chaos.workers}
    gateway_pid = chaos.gateway.pid
    # One worker in the middle of a long batch, the other idle: the outage must end neither.
    texts = [
        f"a long job's input number {i}, long enough to keep a worker busy" * 2
        for i in range(LONG_JOB_INPUTS)
    ]
    r = httpx.post(f"{chaos.url}/models/{MODEL}/jobs", json={"inputs": texts}, timeout=30)
    assert r.status_code == 202, r.text
    long_job = r.json()["job_id"]
    wait_until(
        lambda: _job(chaos.url, long_job)["status"] == "started", 20, "the long job to start"
    )
    chaos.redis.kill()

    started = time.monotonic()
    r = _predict(chaos.url, "during the outage")
    took = time.monotonic() - started
    assert r.status_code == 503, r.text
    assert r.json()["error"]["code"] == "redis_unavailable"
    assert took < 3, f"503 took {took:.2f} s"
    started = time.monotonic()
    ready = httpx.get(chaos.url + "/readyz", timeout=10)
    ready_took = time.monotonic() - started
    assert ready.status_code == 503 and ready.json()["error"]["code"] == "redis_unavailable"
    assert ready_took < 3, f"/readyz took {ready_took:.2f} s"
    assert httpx.get(chaos.url + "/healthz", timeout=5).status_code == 200
    time.sleep(3)  # long enough for the long batch to end and the workers to back off

    chaos.redis.start()
    back, back_at = time.monotonic(), time.time()
    wait_until(lambda: _serves(chaos.url), 20, "predict to answer 200 again")
    served_after = time.monotonic() - back
    wait_until(lambda: _status(chaos.url + "/readyz") == 200, 20, "/readyz to be 200 again")
    client = chaos.client()
    wait_until(
        lambda: all(
            is_present(client, MODEL, w.name) or w.proc.poll() is not None for w in chaos.workers
        ),
        20,
        "both workers to announce themselves again",
    )
    state = _job(chaos.url, long_job, wait_s=30)
    recoveries = json.loads(client.hget(f"rq:job:{long_job}", "meta") or b"{}").get("recoveries")
    client.close()
    print(
        f"\noutage: 503 in {took:.2f} s, /readyz 503 in {ready_took:.2f} s; "
        f"200 again {served_after:.2f} s after Redis came back; long job {state['status']}, "
        f"its batch ended {_epoch(state['ended_at']) - back_at:+.2f} s from Redis's return"
    )
    _alive(chaos, chaos.workers)
    assert chaos.gateway.pid == gateway_pid
    assert {w.name: chaos.announced_pid(w) for w in chaos.workers} == pids
    assert state["status"] == "finished", state
    # Its worker lived through the outage: no reaper may have taken it for dead and run it twice.
    assert recoveries is None, f"the long job was requeued {recoveries} time(s)"


async def _chaos(stack: ChaosStack, events: list[str], t0: float) -> None:
    def mark(what: str) -> None:
        events.append(f"{time.monotonic() - t0:5.1f} s  {what}")

    await asyncio.sleep(5)
    victim = stack.workers[0]
    await asyncio.to_thread(victim.stop, signal.SIGKILL)
    mark(f"SIGKILL {victim.name}")
    await asyncio.sleep(5)
    await asyncio.to_thread(stack.redis.kill)
    mark("Redis stopped")
    await asyncio.sleep(1)
    await asyncio.to_thread(stack.redis.start)
    mark("Redis started again")


def test_chaos_under_load(chaos: ChaosStack, tmp_path: Path) -> None:
    tally = Tally()
    events: list[str] = []
    t0 = time.monotonic()

    async def drill() -> None:
        load = Load(chaos.url, MODEL, tally, senders=8, duration_s=25, max_requests=5000)
        await asyncio.gather(load.run(), _chaos(chaos, events, t0))
        events.append(f"{time.monotonic() - t0:5.1f} s  load ended")
        await await_jobs(chaos.url, tally, bound_s=40)
        events.append(f"{time.monotonic() - t0:5.1f} s  async jobs polled")

    asyncio.run(drill())
    survivors = chaos.workers[1:]
    report = tally.report()
    report["events"] = events
    report["survivors_alive"] = {w.name: w.proc.poll() is None for w in survivors}
    out = tmp_path / "chaos_tally.json"
    out.write_text(json.dumps(report, indent=2))
    print(f"\nchaos tally ({out}):\n{json.dumps(report, indent=2)}")

    assert report["requests"]["lost"] == 0, report
    assert report["async_jobs"]["unended"] == 0, report
    assert not report["requests"]["unexpected"], report
    assert tally.succeeded > 0, report
    _alive(chaos, survivors)  # a worker that lived through the Redis restart keeps serving
    wait_until(lambda: _serves(chaos.url), 20, "the service to serve 200 after the chaos")
    assert _status(chaos.url + "/readyz") == 200
