"""The predict hot path (``gateway.hotpath``) answers exactly as the FastAPI route would, and
the reads requests share (``Admission.load``, ``BatchedReads``) give each caller its own answer
in fewer Redis commands."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis.asyncio as aredis
from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from contract.config import load_registry
from contract.jobs import Keys
from contract.tasks import TASKS
from gateway import hotpath
from gateway.admission import Admission
from gateway.app import create_app
from gateway.cache import BatchedReads, ResponseCache
from gateway.dispatch import Dispatcher
from gateway.settings import GatewaySettings
from modelgate.redis_server import RedisServer, free_port
from tests.conftest import PREFIX, TASK_MODELS, Stack, metric

pytestmark = pytest.mark.integration

MODELS = {"minilm": "feature-extraction", "tiny-cls": "text-classification", **TASK_MODELS}

VARYING = {"x-request-id", "x-cache", "x-queue-time-ms", "x-inference-time-ms", "date"}
"""Headers whose values differ between two calls."""


REQUESTS = "modelgate_requests_total"

ROUTED = "application/vnd.test+json"
"""A JSON media type FastAPI reads as JSON and the hot path leaves to it."""


def body_for(task: str) -> dict[str, Any]:
    """The task's example body, made unique so that the first call computes it."""
    body = json.loads(json.dumps(TASKS[task].example))
    tag = uuid.uuid4().hex[:8]

    def tagged(value: Any) -> Any:
        if isinstance(value, str):
            return f"{value} {tag}"
        if isinstance(value, list):
            return [tagged(v) for v in value]
        if isinstance(value, dict):
            return {k: tagged(v) for k, v in value.items()}
        return value

    body["inputs"] = tagged(body["inputs"])
    return body


@pytest.mark.parametrize("model", sorted(MODELS))
def test_hot_path_answers_what_the_fastapi_route_answers(stack: Stack, model: str) -> None:
    """The same body as ``application/json`` (the hot path) and as ``application/...+json``
    (which only FastAPI's route takes as JSON): equal bodies, the same headers. The first call
    computes and caches; the second is a cache hit, so the outputs are the very same numbers,
    and every field the response model adds (a null ``entity_group``, ``document``) must be in
    both."""
    url = f"{stack.url}/models/{model}/predict"
    raw = json.dumps(body_for(MODELS[model])).encode()
    hot = httpx.post(url, content=raw, headers={"content-type": "application/json"}, timeout=60)
    routed = httpx.post(url, content=raw, headers={"content-type": ROUTED}, timeout=60)
    assert hot.status_code == routed.status_code == 200, (hot.text, routed.text)
    assert hot.content == routed.content
    assert (hot.headers["x-cache"], routed.headers["x-cache"]) == ("miss", "hit")
    timing = {"x-queue-time-ms", "x-inference-time-ms"}  # a computed answer's only
    assert timing <= set(hot.headers)
    assert set(hot.headers) - timing == set(routed.headers)
    for name in set(hot.headers) - VARYING:
        assert hot.headers[name] == routed.headers[name], name


def test_errors_and_metrics_on_the_hot_path(stack: Stack) -> None:
    """An error the handler raises is the API's JSON error, with the request id; the metrics
    count hot-path requests under the route's generic path and model, as for routed ones."""
    url = f"{stack.url}/models/minilm/predict"

    def too_large() -> float:
        labels = {"model": "minilm", "endpoint": "/models/{name}/predict", "status": "413"}
        try:
            return metric(httpx.get(stack.url + "/metrics").text, REQUESTS, **labels)
        except AssertionError:  # none yet
            return 0.0

    before = too_large()
    r = httpx.post(url, json={"inputs": ["x"] * 65}, headers={"x-request-id": "hot-413"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large", r.text
    assert r.headers["x-request-id"] == "hot-413"
    assert too_large() == before + 1


@pytest.fixture
def spied(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The models whose calls the hot path handled."""
    calls: list[str] = []
    real = hotpath.run_predict

    async def spy(spec: Any, call: Any) -> dict[str, Any]:
        calls.append(spec.name)
        return await real(spec, call)

    monkeypatch.setattr(hotpath, "run_predict", spy)
    return calls


async def test_hot_path_takes_valid_json_and_leaves_the_rest_to_fastapi(
    stack: Stack, spied: list[str]
) -> None:
    settings = GatewaySettings(config=str(stack.config), redis_url=stack.redis_url, prefix=PREFIX)
    dispatcher = Dispatcher(stack.redis_url, Keys(PREFIX))
    app = create_app(settings, registry=load_registry(stack.config), dispatcher=dispatcher)
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            ok = await client.post("/models/minilm/predict", json={"inputs": "hot"})
            assert ok.status_code == 200 and len(ok.json()["outputs"]) == 384
            assert spied == ["minilm"]
            # Not valid for the schema, not JSON, not declared JSON: FastAPI answers, unchanged.
            bad = await client.post("/models/minilm/predict", json={"inputs": 3})
            assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_input"
            assert bad.json()["error"]["problems"][0].startswith("inputs")
            broken = await client.post(
                "/models/minilm/predict",
                content=b'{"inputs": ',
                headers={"content-type": "application/json"},
            )
            assert broken.status_code == 422, broken.text
            plain = await client.post(
                "/models/minilm/predict", content=b"hot", headers={"content-type": "text/plain"}
            )
            assert plain.status_code == 422, plain.text
            routed = await client.post(
                "/models/minilm/predict",
                content=b'{"inputs": "hot"}',
                headers={"content-type": ROUTED},
            )
            assert routed.status_code == 200 and routed.json() == ok.json()
            unknown = await client.post("/models/nope/predict", json={"inputs": "x"})
            assert unknown.status_code == 404
            assert spied == ["minilm"]
    finally:
        await dispatcher.close()


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    """A Redis of the test's own: its command counts are this test's alone."""
    server = RedisServer()
    server.start()
    yield server
    server.stop()


def calls_of(url: str, command: str) -> int:
    client = Redis.from_url(url)
    try:
        stats = client.info("commandstats").get(f"cmdstat_{command}", {})
        return int(stats.get("calls", 0))
    finally:
        client.close()


async def test_concurrent_admission_reads_share_one_in_flight(
    private_redis: RedisServer,
) -> None:
    keys = Keys("share")
    conn = aredis.Redis.from_url(private_redis.url)
    sync = Redis.from_url(private_redis.url)
    sync.rpush(keys.queue_key("m", "interactive"), "a", "b")
    admission = Admission(conn, keys)
    try:
        await admission.load("m")  # scripts loaded
        before = calls_of(private_redis.url, "evalsha")
        loads = await asyncio.gather(*(admission.load("m") for _ in range(20)))
        shared = calls_of(private_redis.url, "evalsha") - before
        assert 1 <= shared < 20
        assert {(x.live_workers, x.queue_depth) for x in loads} == {(0, 2)}
        # A caller that leaves does not take the read from the others.
        first = asyncio.ensure_future(admission.load("m"))
        second = asyncio.ensure_future(admission.load("m"))
        await asyncio.sleep(0)
        first.cancel()
        assert (await second).queue_depth == 2
        # A later call reads again: what changed since is seen.
        sync.rpush(keys.queue_key("m", "interactive"), "c")
        assert (await admission.load("m")).queue_depth == 3
    finally:
        await conn.aclose()
        sync.close()


async def test_batched_cache_reads_give_each_reader_its_values(
    private_redis: RedisServer,
) -> None:
    conn = aredis.Redis.from_url(private_redis.url)
    sync = Redis.from_url(private_redis.url)
    sync.mset({f"k{i}": f"v{i}" for i in range(0, 40, 2)})  # odd keys are absent
    reads = BatchedReads(conn)
    try:
        before = calls_of(private_redis.url, "mget")
        asked = [[f"k{i}", f"k{i + 1}"] for i in range(0, 40, 2)]
        got = await asyncio.gather(*(reads.mget(keys) for keys in asked))
        assert got == [[f"v{i}".encode(), None] for i in range(0, 40, 2)]
        assert 1 <= calls_of(private_redis.url, "mget") - before < len(asked)
        # A reader that leaves is dropped; the others still get theirs.
        leaving = asyncio.ensure_future(reads.mget(["k0"]))
        staying = asyncio.ensure_future(reads.mget(["k2"]))
        await asyncio.sleep(0)
        leaving.cancel()
        assert await staying == [b"v2"]
    finally:
        await conn.aclose()
        sync.close()


async def test_batched_cache_reads_fail_each_reader_and_lookup_counts_misses() -> None:
    dead = aredis.Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=1)
    reads = BatchedReads(dead)
    try:
        results = await asyncio.gather(
            *(reads.mget([f"k{i}"]) for i in range(5)), return_exceptions=True
        )
        assert all(isinstance(r, RedisConnectionError) for r in results), results
        lookup = await ResponseCache(dead, "p").lookup("m", "fp", {}, ["a", "b"])
        assert lookup.missing == [0, 1]
    finally:
        await dead.aclose()
