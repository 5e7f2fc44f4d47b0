"""Past one machine: Redis Sentinel failover, rolling restarts and several gateways, as drills.

The module's stack runs on a Redis primary, its replica and three sentinels (``tests.hacluster``),
and every process is given only the ``redis+sentinel://`` URL: two gateways and two workers of one
model. The drills run in file order; the failover drill is last, as it leaves the replica the
master. Everything binds to 127.0.0.1, is bounded in time, and is stopped by PID at the end.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from redis import Redis

from contract.redisconn import sync_client
from modelgate.redis_server import free_port
from tests.conftest import (
    ROOT,
    WorkerProc,
    gateway_up,
    is_present,
    jobs_run,
    metric,
    process_env,
    start_worker,
    stop_process,
    wait_until,
)
from tests.drills import Load, Tally, await_jobs, tail_logs
from tests.hacluster import SentinelSet

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MODEL = "scaleout"
MODEL_TIMEOUT_S = 10.0
SLEEPY = "sleepy"
"""A model with ``scale_to_zero``: no worker until a request comes."""


@dataclass
class Gateway:
    url: str
    proc: subprocess.Popen[bytes]

    def stop(self) -> int | None:
        return stop_process(self.proc)


@dataclass
class HAStack:
    redis: SentinelSet
    config: Path
    log_dir: Path
    gateways: list[Gateway] = field(default_factory=list)
    workers: list[WorkerProc] = field(default_factory=list)
    started: list[WorkerProc | Gateway] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.redis.url

    def client(self) -> Redis:
        return sync_client(self.url, socket_timeout=2, socket_connect_timeout=1)

    def start_gateway(self) -> Gateway:
        port = free_port()
        log = open(self.log_dir / f"gateway-{port}.log", "ab")  # noqa: SIM115
        proc = subprocess.Popen(
            [sys.executable, "-m", "modelgate", "gateway", "--port", str(port)],
            env=process_env(self.url, self.config),
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        gateway = Gateway(f"http://127.0.0.1:{port}", proc)
        self.started.append(gateway)
        wait_until(lambda: gateway_up(gateway.url) or proc.poll() is not None, 60, "a gateway")
        assert proc.poll() is None, self.logs()
        return gateway

    def start_worker(self, wait: bool = True, model: str = MODEL) -> WorkerProc:
        name = f"{model}-w{sum(isinstance(p, WorkerProc) for p in self.started)}"
        worker = start_worker(
            self.url, self.config, model, name, wait=wait, log_path=self.log_dir / f"{name}.log"
        )
        self.started.append(worker)
        return worker

    def logs(self) -> str:
        return tail_logs(self.log_dir)


@pytest.fixture(scope="module")
def ha(tmp_path_factory: pytest.TempPathFactory, model_dirs: dict[str, Path]) -> Iterator[HAStack]:
    base = tmp_path_factory.mktemp("scaleout")
    config = base / "models.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "models": [
                    {
                        "name": MODEL,
                        "task": "text-classification",
                        "source": {"path": str(model_dirs["tiny"])},
                        "timeout_s": MODEL_TIMEOUT_S,
                        "max_batch_size": 8,
                        "replicas": 2,
                    },
                    {
                        "name": SLEEPY,
                        "task": "text-classification",
                        "source": {"path": str(model_dirs["tiny"])},
                        "timeout_s": 60,
                        "scale_to_zero": True,
                    },
                ]
            }
        )
    )
    log_dir = base / "logs"
    log_dir.mkdir()
    stack = HAStack(SentinelSet(), config, log_dir)
    try:
        stack.redis.start()
        stack.workers = [stack.start_worker(wait=False) for _ in range(2)]
        client = stack.client()
        for w in stack.workers:
            wait_until(
                lambda w=w: is_present(client, MODEL, w.name) or w.proc.poll() is not None,
                120,
                f"worker {w.name}",
            )
            assert w.proc.poll() is None, stack.logs()
        stack.gateways = [stack.start_gateway() for _ in range(2)]
        yield stack
    finally:
        for p in reversed(stack.started):
            if isinstance(p, WorkerProc):
                p.stop(signal.SIGKILL)
            else:
                p.stop()
        stack.redis.stop()


def _predict(url: str, text: str) -> httpx.Response:
    return httpx.post(f"{url}/models/{MODEL}/predict", json={"inputs": text}, timeout=30)


def _report(tally: Tally, events: list[str], name: str, tmp_path: Path, **extra: Any) -> dict:
    report = {**tally.report(), "events": events, **extra}
    out = tmp_path / f"{name}.json"
    out.write_text(json.dumps(report, indent=2))
    print(f"\n{name} ({out}):\n{json.dumps(report, indent=2)}")
    return report


def _executions(client: Redis, job_id: str) -> int:
    """How many times a job's result was computed: its result stream's distinct values. A
    worker that replays its results after a failover (the write may have reached the old
    master only) adds an entry with the same value; a second run times its own batch."""
    entries = client.xrange(f"rq:results:{job_id}")
    return len({fields.get(b"return_value") for _, fields in entries})


def test_two_gateways_share_jobs_cache_and_single_flight(ha: HAStack) -> None:
    a, b = ha.gateways[0].url, ha.gateways[1].url
    # A job submitted to one gateway is read (and waited for) through the other.
    submitted = httpx.post(f"{a}/models/{MODEL}/jobs", json={"inputs": ["one", "two"]}, timeout=10)
    assert submitted.status_code == 202, submitted.text
    job_id = submitted.json()["job_id"]
    read = httpx.get(f"{b}/jobs/{job_id}", params={"wait": 10}, timeout=20)
    assert read.status_code == 200 and read.json()["status"] == "finished", read.text
    assert len(read.json()["outputs"]) == 2
    # The cache one gateway filled answers the other.
    text = f"shared cache {time.time_ns()}"
    first = _predict(a, text)
    assert first.status_code == 200 and first.headers["x-cache"] == "miss"
    second = _predict(b, text)
    assert second.headers["x-cache"] == "hit" and second.json() == first.json()
    # Identical concurrent requests through both gateways run once: both workers paused, so
    # both requests are in flight together; the second joins the first's job.
    client = ha.client()
    before = jobs_run(client, MODEL)
    text = f"single flight {time.time_ns()}"
    for w in ha.workers:
        w.proc.send_signal(signal.SIGSTOP)
    try:

        async def both() -> list[httpx.Response]:
            async with httpx.AsyncClient(timeout=30) as http:
                sent = [
                    asyncio.create_task(
                        http.post(f"{url}/models/{MODEL}/predict", json={"inputs": text})
                    )
                    for url in (a, b)
                ]
                await asyncio.sleep(1.0)
                for w in ha.workers:
                    w.proc.send_signal(signal.SIGCONT)
                return await asyncio.gather(*sent)

        responses = asyncio.run(both())
    finally:
        for w in ha.workers:
            w.proc.send_signal(signal.SIGCONT)
    assert [r.status_code for r in responses] == [200, 200], [r.text for r in responses]
    assert responses[0].json()["outputs"] == responses[1].json()["outputs"]
    assert jobs_run(client, MODEL) == before + 1


def _live(url: str) -> int:
    body = httpx.get(f"{url}/metrics", timeout=5).text
    return int(metric(body, "modelgate_live_workers", model=SLEEPY))


def test_a_scaled_to_zero_model_queues_until_a_worker_wakes(ha: HAStack) -> None:
    """No worker: the request is queued (not 503), the queue shows it to an autoscaler (depth
    and the oldest job's age), the gateway stays ready, and the worker that starts (as KEDA
    would start one) answers it."""
    url = ha.gateways[0].url
    assert httpx.get(f"{url}/readyz", timeout=5).status_code == 200
    assert httpx.get(f"{url}/v2/models/{SLEEPY}/ready", timeout=5).status_code == 200
    assert httpx.get(f"{url}/readyz", params={"models": "false"}, timeout=5).json() == {
        "status": "ready"
    }

    async def cold_start() -> tuple[httpx.Response, str]:
        async with httpx.AsyncClient(timeout=90) as http:
            sent = asyncio.create_task(
                http.post(f"{url}/models/{SLEEPY}/predict", json={"inputs": "wake up"})
            )
            await asyncio.sleep(1.5)
            metrics = (await http.get(f"{url}/metrics")).text
            assert not sent.done(), "the request was answered with no worker"
            worker = await asyncio.to_thread(ha.start_worker, True, SLEEPY)
            try:
                woken = await sent
                warm = await http.post(f"{url}/models/{SLEEPY}/predict", json={"inputs": "warm"})
                assert warm.status_code == 200 and warm.headers["x-cache"] == "miss"
                return woken, metrics
            finally:
                await asyncio.to_thread(worker.stop)

    response, metrics = asyncio.run(cold_start())
    # Asleep again: what its workers computed is still answered from the cache, without a wake.
    wait_until(lambda: not _live(url), 20, "the model to be asleep again")
    again = httpx.post(f"{url}/models/{SLEEPY}/predict", json={"inputs": "warm"}, timeout=10)
    assert again.status_code == 200 and again.headers["x-cache"] == "hit", again.text
    assert response.status_code == 200, response.text
    assert response.json()["outputs"]["label"]
    assert metric(metrics, "modelgate_queue_depth", model=SLEEPY, lane="interactive") == 1
    assert metric(metrics, "modelgate_queue_oldest_seconds", model=SLEEPY, lane="interactive") >= 1
    assert metric(metrics, "modelgate_queue_oldest_seconds", model=SLEEPY, lane="bulk") == 0
    assert metric(metrics, "modelgate_live_workers", model=SLEEPY) == 0


def test_rolling_restart_under_load_has_no_errors(ha: HAStack, tmp_path: Path) -> None:
    """Every worker replaced one by one (a new one ready, then SIGTERM to the old one, which
    finishes its batch), then a gateway (taken out of the rotation, then SIGTERM): the load
    meets not one error and every async job ends."""
    tally = Tally()
    events: list[str] = []
    t0 = time.monotonic()
    targets = [g.url for g in ha.gateways]
    exits: dict[str, int | None] = {}

    def mark(what: str) -> None:
        events.append(f"{time.monotonic() - t0:5.1f} s  {what}")

    async def roll() -> None:
        await asyncio.sleep(3)
        for old in list(ha.workers):
            new = await asyncio.to_thread(ha.start_worker)
            mark(f"{new.name} ready")
            exits[old.name] = await asyncio.to_thread(old.stop, signal.SIGTERM, 60)
            mark(f"{old.name} stopped by SIGTERM, exit {exits[old.name]}")
            ha.workers = [*(w for w in ha.workers if w is not old), new]
        old_gateway = ha.gateways[0]
        new_gateway = await asyncio.to_thread(ha.start_gateway)
        targets.append(new_gateway.url)
        targets.remove(old_gateway.url)  # the load balancer stops sending to it first
        mark(f"gateway {new_gateway.url} in, {old_gateway.url} out of the rotation")
        await asyncio.sleep(1.0)
        exits["gateway"] = await asyncio.to_thread(old_gateway.stop)
        mark(f"gateway {old_gateway.url} stopped by SIGTERM, exit {exits['gateway']}")
        ha.gateways = [ha.gateways[1], new_gateway]

    async def drill() -> None:
        # Until the roll is over (bounded): every restart happens under load.
        load = Load(
            targets, MODEL, tally, senders=6, duration_s=120, max_requests=20_000, tag="roll "
        )

        async def roll_then_stop() -> None:
            try:
                await roll()
                await asyncio.sleep(2.0)
            finally:
                load.until = time.monotonic()

        await asyncio.gather(load.run(), roll_then_stop())
        mark("load ended")
        await await_jobs(ha.gateways[0].url, tally, bound_s=40)
        mark("async jobs polled")

    asyncio.run(drill())
    report = _report(tally, events, "rolling_restart", tmp_path, exits=exits)
    assert set(exits) == {"scaleout-w0", "scaleout-w1", "gateway"}, report
    assert all(code == 0 for code in exits.values()), (report, ha.logs())
    assert report["requests"]["lost"] == 0, report
    assert tally.failed == {} and not tally.unexpected, report
    assert tally.succeeded > 50, report
    assert report["async_jobs"]["finished"] == len(tally.jobs) > 0, report


def test_failover_under_load_loses_no_accepted_job(ha: HAStack, tmp_path: Path) -> None:
    """SIGKILL the Redis primary under load: the sentinels promote the replica, gateways and
    workers reconnect by themselves, requests meet at most 503 redis_unavailable (with
    Retry-After) during the switch, and every accepted async job ends, run once."""
    tally = Tally()
    events: list[str] = []
    t0 = time.monotonic()
    killed: list[float] = []
    switch: list[float] = []

    def mark(what: str) -> None:
        events.append(f"{time.monotonic() - t0:5.1f} s  {what}")

    async def kill() -> None:
        await asyncio.sleep(5)
        killed.append(time.monotonic())
        await asyncio.to_thread(ha.redis.kill_primary)
        mark("primary SIGKILLed")
        switch.append(await asyncio.to_thread(ha.redis.wait_failover, 30))
        mark(f"sentinels promoted the replica in {switch[0]:.1f} s")

    async def drill() -> None:
        targets = [g.url for g in ha.gateways]
        load = Load(targets, MODEL, tally, senders=6, duration_s=25, max_requests=5000, tag="ha ")
        await asyncio.gather(load.run(), kill())
        mark("load ended")
        await await_jobs(ha.gateways[0].url, tally, bound_s=40)
        mark("async jobs polled")

    asyncio.run(drill())
    failing = tally.failing_between(killed[0])
    client = ha.client()
    runs = {j: _executions(client, j) for j in tally.jobs}
    figures = {
        "answered": tally.succeeded + sum(tally.failed.values()),
        "errors": dict(tally.failed),
        "failover_s": round(switch[0], 2),
        "errors_until_s": round(failing[1] - killed[0], 2) if failing else 0.0,
        "jobs_accepted": len(tally.jobs),
        "jobs_lost": len(tally.unended)
        + sum(v for k, v in tally.job_states.items() if k != "finished"),
        "jobs_run_twice": sum(1 for n in runs.values() if n > 1),
    }
    report = _report(tally, events, "failover", tmp_path, figures=figures)
    assert report["requests"]["lost"] == 0, report
    assert not tally.unexpected, report
    assert set(tally.failed) <= {"503 redis_unavailable"}, report
    assert figures["jobs_accepted"] > 0 and figures["jobs_lost"] == 0, report
    assert figures["jobs_run_twice"] == 0, report
    # Everyone reconnected: both workers serve (their presence is on the new master) and
    # both gateways answer from it.
    for w in ha.workers:
        assert w.proc.poll() is None, ha.logs()
        wait_until(lambda w=w: is_present(client, MODEL, w.name), 20, f"{w.name} back")
    for g in ha.gateways:
        assert _predict(g.url, f"after failover {time.time_ns()}").status_code == 200
    client.close()
