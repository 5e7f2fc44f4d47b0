"""Redis under load: nothing left behind by sync requests, a cache that cannot crowd out jobs,
a full Redis answered with 503 and recovered from, and bursts bounded by the queue, not by
connections.

These tests count keys, so they run on a stack of their own: a job Redis (noeviction), a cache
Redis (small maxmemory, allkeys-lru), a gateway and workers, shared by this module only.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from redis import Redis

from contract.config import load_registry
from contract.jobs import Keys
from contract.recent import KEEP_S
from gateway.app import create_app
from gateway.connections import Connections, redis_errors
from gateway.dispatch import Dispatcher
from gateway.errors import Overloaded
from gateway.settings import GatewaySettings
from modelgate.redis_server import CACHE_POLICY, JOBS_POLICY, RedisServer, free_port
from tests.conftest import (
    PREFIX,
    ROOT,
    WorkerProc,
    gateway_up,
    jobs_run,
    metric,
    process_env,
    start_worker,
    wait_until,
)

pytestmark = pytest.mark.integration

CACHE_BUDGET = 4 * 1024 * 1024
"""The cache Redis's maxmemory: a few hundred MiniLM embeddings."""

POOL_SIZE = 8
"""The gateway's connections per pool: small, so a burst has to wait for them."""

JOB_TTL_S = 3
"""The async job TTL of the in-process gateway that checks expiry."""


@dataclass
class LoadStack:
    url: str
    jobs: Redis
    cache: Redis
    jobs_url: str
    cache_url: str
    config: Path
    log_dir: Path
    workers: dict[str, WorkerProc]
    gateway_pid: int


@pytest.fixture(scope="module")
def load_stack(config_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoadStack]:
    log_dir = tmp_path_factory.mktemp("load-logs")
    jobs_server = RedisServer(policy=JOBS_POLICY).start()
    cache_server = RedisServer(maxmemory=str(CACHE_BUDGET), policy=CACHE_POLICY).start()
    env = {"MODELGATE_CACHE_URL": cache_server.url}
    workers = {
        m: start_worker(
            jobs_server.url,
            config_path,
            m,
            f"{m}-load",
            wait=False,
            log_path=log_dir / f"{m}.log",
            **env,
        )
        for m in ("tiny-cls", "minilm")
    }
    port = free_port()
    gateway = subprocess.Popen(
        [sys.executable, "-m", "modelgate", "gateway", "--port", str(port)],
        env=process_env(
            jobs_server.url,
            config_path,
            MODELGATE_REDIS_MAX_CONNECTIONS=str(POOL_SIZE),
            **env,
        ),
        cwd=ROOT,
        stdout=open(log_dir / "gateway.log", "ab"),  # noqa: SIM115
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    jobs, cache = Redis.from_url(jobs_server.url), Redis.from_url(cache_server.url)
    try:
        wait_until(lambda: gateway_up(url), 60, "the load gateway")
        for model in workers:
            wait_until(lambda m=model: live(url, m), 180, f"a {model} worker")
        yield LoadStack(
            url,
            jobs,
            cache,
            jobs_server.url,
            cache_server.url,
            config_path,
            log_dir,
            workers,
            gateway.pid,
        )
    finally:
        gateway.terminate()
        gateway.wait(timeout=30)
        for worker in workers.values():
            worker.stop()
        jobs.close()
        cache.close()
        jobs_server.stop()
        cache_server.stop()


def live(url: str, model: str) -> bool:
    try:
        return bool(httpx.get(f"{url}/models/{model}", timeout=5).json()["ready"])
    except (httpx.HTTPError, KeyError):
        return False


async def post_all(
    url: str, bodies: list[dict[str, object]], *, no_store: bool, conc: int
) -> list[httpx.Response]:
    """POST every body to its model's predict, ``conc`` at a time."""
    headers = {"Cache-Control": "no-store"} if no_store else {}
    limits = httpx.Limits(max_connections=conc, max_keepalive_connections=conc)
    gate = asyncio.Semaphore(conc)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:

        async def one(body: dict[str, object]) -> httpx.Response:
            async with gate:
                model = body.pop("model")
                return await client.post(f"/models/{model}/predict", json=body, headers=headers)

        return await asyncio.gather(*(one(dict(b)) for b in bodies))


def keys_of(client: Redis) -> set[bytes]:
    return set(client.scan_iter(count=1000))


TRANSIENT = (b"mgtest:reaper:", b"rq:clean_registries:", b"mgtest:recent:")
"""Keys that come and go by themselves (the reaper's 1.5 s lock, RQ's maintenance mark, the
recent-activity buckets: one per model and ten seconds, whatever the traffic, each expiring)."""


def lasting(keys: set[bytes]) -> set[bytes]:
    return {k for k in keys if not k.startswith(TRANSIENT)}


def test_answered_sync_requests_leave_no_key_behind(load_stack: LoadStack) -> None:
    s = load_stack
    warm = httpx.post(f"{s.url}/models/tiny-cls/predict", json={"inputs": "warm"}, timeout=60)
    assert warm.status_code == 200
    baseline = lasting(keys_of(s.jobs))
    cache_before = s.cache.dbsize()
    tag = uuid.uuid4().hex
    bodies: list[dict[str, object]] = [
        {"model": "tiny-cls", "inputs": [f"leave nothing {tag} {i}", f"second {tag} {i}"]}
        for i in range(150)
    ]
    stored = asyncio.run(post_all(s.url, bodies[:75], no_store=True, conc=16))
    cached = asyncio.run(post_all(s.url, bodies[75:], no_store=False, conc=16))
    assert [r.status_code for r in stored + cached] == [200] * 150
    # Answered means gone: job hashes, result streams, reply sets, executions, registries.
    wait_until(lambda: lasting(keys_of(s.jobs)) <= baseline, 5, "the job Redis to be back")
    assert lasting(keys_of(s.jobs)) == baseline
    buckets = [k for k in keys_of(s.jobs) if k.startswith(b"mgtest:recent:")]
    assert buckets and all(0 < s.jobs.ttl(k) <= KEEP_S for k in buckets)
    # The cache entries live in the cache Redis: two per cached request, none for no-store.
    assert s.cache.dbsize() - cache_before == 150


async def test_a_second_gateway_shares_a_single_flight_result(load_stack: LoadStack) -> None:
    s = load_stack
    settings = GatewaySettings(
        config=str(s.config), redis_url=s.jobs_url, cache_url=s.cache_url, prefix=PREFIX
    )  # type: ignore[call-arg]
    dispatcher = Dispatcher(s.jobs_url, Keys(PREFIX), cache_url=s.cache_url)
    app = create_app(settings, registry=load_registry(s.config), dispatcher=dispatcher)
    transport = httpx.ASGITransport(app=app)
    body = {"inputs": [f"shared by two gateways {uuid.uuid4()}"]}
    before = jobs_run(s.jobs, "tiny-cls")
    worker = s.workers["tiny-cls"].proc
    worker.send_signal(signal.SIGSTOP)  # the first request's job waits: the second must join it
    try:
        async with (
            httpx.AsyncClient(base_url=s.url, timeout=60) as first_gw,
            httpx.AsyncClient(transport=transport, base_url="http://gw", timeout=60) as second_gw,
        ):
            first = asyncio.create_task(first_gw.post("/models/tiny-cls/predict", json=body))
            await asyncio.sleep(0.3)
            second = asyncio.create_task(second_gw.post("/models/tiny-cls/predict", json=body))
            await asyncio.sleep(0.3)
            worker.send_signal(signal.SIGCONT)
            a, b = await first, await second
    finally:
        worker.send_signal(signal.SIGCONT)
        await dispatcher.close()
    assert a.status_code == b.status_code == 200, (a.text, b.text)
    assert a.json()["outputs"] == b.json()["outputs"]
    assert jobs_run(s.jobs, "tiny-cls") == before + 1  # computed once, answered twice
    assert not any(s.jobs.scan_iter(match="mgtest:replies:*"))


async def test_async_jobs_keep_their_result_for_the_ttl_then_leave_nothing(
    load_stack: LoadStack,
) -> None:
    s = load_stack
    settings = GatewaySettings(
        config=str(s.config),
        redis_url=s.jobs_url,
        cache_url=s.cache_url,
        prefix=PREFIX,
        job_ttl_s=JOB_TTL_S,
    )  # type: ignore[call-arg]
    dispatcher = Dispatcher(s.jobs_url, Keys(PREFIX), cache_url=s.cache_url)
    app = create_app(settings, registry=load_registry(s.config), dispatcher=dispatcher)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
        r = await client.post("/models/tiny-cls/jobs", json={"inputs": [uuid.uuid4().hex]})
        job_id = r.json()["job_id"]
        done = await client.get(f"/jobs/{job_id}", params={"wait": 30}, timeout=60)
        assert done.json()["status"] == "finished"
        assert s.jobs.exists(f"rq:job:{job_id}", f"rq:results:{job_id}") == 2
        await asyncio.sleep(JOB_TTL_S + 1)
        assert not any(s.jobs.scan_iter(match=f"*{job_id}*")), "keys of an expired job remain"
        assert (await client.get(f"/jobs/{job_id}")).status_code == 404
    await dispatcher.close()


@pytest.mark.slow
def test_cache_past_its_budget_evicts_only_cache_entries(load_stack: LoadStack) -> None:
    s = load_stack
    jobs = []
    for i in range(3):
        r = httpx.post(
            f"{s.url}/models/tiny-cls/jobs", json={"inputs": [f"kept {i} {uuid.uuid4()}"]}
        )
        jobs.append(r.json()["job_id"])
    for job_id in jobs:
        assert (
            httpx.get(f"{s.url}/jobs/{job_id}", params={"wait": 30}, timeout=60).json()["status"]
            == "finished"
        )
    # ~1,300 embeddings of 384 floats: over three times the cache's budget.
    tag = uuid.uuid4().hex
    bodies: list[dict[str, object]] = [
        {"model": "minilm", "inputs": [f"fill the cache {tag} {i} {j}" for j in range(64)]}
        for i in range(20)
    ]
    answers = asyncio.run(post_all(s.url, bodies, no_store=False, conc=4))
    assert [r.status_code for r in answers] == [200] * 20
    stats = s.cache.info("stats")
    memory = s.cache.info("memory")
    assert int(stats["evicted_keys"]) > 0
    assert int(memory["used_memory"]) <= CACHE_BUDGET * 1.1
    assert s.cache.dbsize() < 20 * 64
    for job_id in jobs:  # the job Redis evicts nothing: every async result is still there
        body = httpx.get(f"{s.url}/jobs/{job_id}").json()
        assert body["status"] == "finished" and len(body["outputs"]) == 1
    assert int(s.jobs.info("stats")["evicted_keys"]) == 0


@pytest.mark.slow
def test_full_job_redis_is_503_then_recovers_without_losing_accepted_jobs(
    load_stack: LoadStack,
) -> None:
    s = load_stack
    worker = s.workers["tiny-cls"].proc
    worker.send_signal(signal.SIGSTOP)  # its blocking dequeue takes the job; it runs it later
    try:
        accepted = httpx.post(f"{s.url}/models/tiny-cls/jobs", json={"inputs": ["accepted"]})
        assert accepted.status_code == 202
        job_id = accepted.json()["job_id"]
        s.jobs.config_set("maxmemory", 1)  # every write refused from here on
    finally:
        worker.send_signal(signal.SIGCONT)  # it starts the job's batch in a full Redis
    try:
        r = httpx.post(
            f"{s.url}/models/tiny-cls/predict",
            json={"inputs": f"while full {uuid.uuid4()}"},
            headers={"Cache-Control": "no-store"},
            timeout=30,
        )
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "redis_out_of_memory"
        assert int(r.headers["retry-after"]) >= 1
        job = httpx.post(f"{s.url}/models/tiny-cls/jobs", json={"inputs": "x"}, timeout=30)
        assert job.status_code == 503 and job.json()["error"]["code"] == "redis_out_of_memory"
        time.sleep(4)  # long enough for the workers' presence to lapse
        r = httpx.post(f"{s.url}/models/tiny-cls/predict", json={"inputs": "y"}, timeout=30)
        assert r.status_code == 503 and r.json()["error"]["code"] == "redis_out_of_memory"
    finally:
        s.jobs.config_set("maxmemory", 0)
    # Memory is back: the stack recovers by itself, and the job accepted before is answered.
    wait_until(lambda: live(s.url, "tiny-cls"), 30, "the worker to be live again")
    body = httpx.get(f"{s.url}/jobs/{job_id}", params={"wait": 30}, timeout=60).json()
    assert body["status"] == "finished", body
    ok = httpx.post(f"{s.url}/models/tiny-cls/predict", json={"inputs": "after"}, timeout=30)
    assert ok.status_code == 200
    for worker in s.workers.values():
        assert worker.proc.poll() is None, "a worker died of the full Redis"


def test_metrics_report_redis_memory_keys_by_kind_and_connections(load_stack: LoadStack) -> None:
    s = load_stack
    r = httpx.post(f"{s.url}/models/tiny-cls/jobs", json={"inputs": [uuid.uuid4().hex]})
    job_id = r.json()["job_id"]
    assert httpx.get(f"{s.url}/jobs/{job_id}", params={"wait": 30}, timeout=60).json()["status"]
    text = httpx.get(f"{s.url}/metrics").text
    assert metric(text, "modelgate_redis_memory_bytes", redis="jobs") > 0
    assert metric(text, "modelgate_redis_maxmemory_bytes", redis="cache") == CACHE_BUDGET
    assert metric(text, "modelgate_redis_keys", redis="jobs", kind="jobs") >= 1
    assert metric(text, "modelgate_redis_keys", redis="jobs", kind="results") >= 1
    assert metric(text, "modelgate_redis_keys", redis="jobs", kind="queues") >= 0
    # The cache Redis sits at its budget, evicting: its count moves a little between two reads.
    cached = metric(text, "modelgate_redis_keys", redis="cache", kind="cache")
    assert cached == pytest.approx(s.cache.dbsize(), rel=0.05)
    assert metric(text, "modelgate_redis_keys_complete", redis="jobs") == 1
    assert metric(text, "modelgate_redis_connections", pool="jobs", state="max") == POOL_SIZE
    assert 1 <= metric(text, "modelgate_redis_connections", pool="jobs", state="open") <= POOL_SIZE
    assert metric(text, "modelgate_waiting_requests") == 0


async def test_an_exhausted_pool_is_429_overloaded_not_503(load_stack: LoadStack) -> None:
    conns = Connections(load_stack.jobs_url, max_connections=1, pool_timeout_s=0.2)
    try:
        holder = asyncio.create_task(conns.conn.blpop(["mgtest:nothing"], timeout=1))
        await asyncio.sleep(0.05)  # the pool's one connection is now blocked in BLPOP
        with pytest.raises(Overloaded) as caught:
            async with redis_errors():
                await conns.conn.ping()
        assert caught.value.status_code == 429 and caught.value.headers["Retry-After"]
        await holder
        async with redis_errors():  # freed: the next command gets it
            assert await conns.conn.ping()
    finally:
        await conns.close()


def gateway_connections(client: Redis, pid: int) -> int:
    """Connections the gateway process ``pid`` holds open to this Redis, as Redis sees them."""
    return sum(1 for c in client.client_list() if c["name"] == f"modelgate-gateway-{pid}")


@pytest.mark.slow
def test_burst_of_2000_sync_requests_is_200_or_429_never_503(load_stack: LoadStack) -> None:
    s = load_stack
    peak = [0]
    stop = threading.Event()

    def sample() -> None:
        probe = Redis.from_url(s.jobs_url)
        while not stop.is_set():
            peak[0] = max(peak[0], gateway_connections(probe, s.gateway_pid))
            time.sleep(0.05)
        probe.close()

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    tag = uuid.uuid4().hex
    bodies: list[dict[str, object]] = [
        {"model": "tiny-cls", "inputs": f"burst {tag} {i}"} for i in range(2000)
    ]
    try:
        answers = asyncio.run(
            asyncio.wait_for(post_all(s.url, bodies, no_store=True, conc=2000), 240)
        )
    finally:
        stop.set()
        sampler.join()
    codes = Counter(r.status_code for r in answers)
    print(f"2,000 at once: {dict(codes)}, peak gateway connections to Redis: {peak[0]}")
    assert set(codes) <= {200, 429}, codes
    assert codes[200] > 0
    for r in answers:
        if r.status_code == 429:
            assert r.json()["error"]["code"] == "overloaded" and r.headers["retry-after"]
    # Pooled connections (jobs) and the reply listener's one: never a connection per request.
    assert 0 < peak[0] <= POOL_SIZE + 1, peak[0]
