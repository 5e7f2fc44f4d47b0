"""The response cache: per item, keyed on weights + parameters + input, single-flight."""

from __future__ import annotations

import asyncio
import uuid

import httpx
import pytest
from redis import Redis

from tests.conftest import Stack, jobs_run, start_worker

pytestmark = pytest.mark.integration


def unique(tag: str) -> str:
    return f"{tag} {uuid.uuid4().hex}"


def post(stack: Stack, model: str, body: object, **headers: str) -> httpx.Response:
    return httpx.post(f"{stack.url}/models/{model}/predict", json=body, headers=headers, timeout=60)


def test_hit_miss_partial_and_the_model_is_not_called_for_a_hit(
    stack: Stack, redis_client: Redis
) -> None:
    a, b, c = unique("a"), unique("b"), unique("c")
    first = post(stack, "tiny-cls", {"inputs": [a, b]})
    assert first.status_code == 200 and first.headers["x-cache"] == "miss"
    before = jobs_run(redis_client, "tiny-cls")
    hit = post(stack, "tiny-cls", {"inputs": [a, b]})
    assert hit.headers["x-cache"] == "hit"
    assert hit.json() == first.json()
    assert jobs_run(redis_client, "tiny-cls") == before
    partial = post(stack, "tiny-cls", {"inputs": [b, c, a]})
    assert partial.headers["x-cache"] == "partial"
    outs = partial.json()["outputs"]
    assert outs[0] == first.json()["outputs"][1] and outs[2] == first.json()["outputs"][0]
    assert jobs_run(redis_client, "tiny-cls") == before + 1
    alone = post(stack, "tiny-cls", {"inputs": c}, **{"Cache-Control": "no-store"})
    assert alone.json()["outputs"] == outs[1]  # the partial's computed item is the real answer


def test_a_parameter_change_is_a_miss(stack: Stack) -> None:
    text = unique("param")
    assert post(stack, "tiny-cls", {"inputs": text}).headers["x-cache"] == "miss"
    other = post(stack, "tiny-cls", {"inputs": text, "parameters": {"top_k": 2}})
    assert other.headers["x-cache"] == "miss"
    assert isinstance(other.json()["outputs"], list)
    again = post(stack, "tiny-cls", {"inputs": text, "parameters": {"top_k": 2}})
    assert again.headers["x-cache"] == "hit" and again.json() == other.json()


def test_single_flight_runs_identical_concurrent_requests_once(
    stack: Stack, redis_client: Redis
) -> None:
    text = unique("flight")
    before = jobs_run(redis_client, "minilm")

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=stack.url, timeout=60) as client:
            return await asyncio.gather(
                *(client.post("/models/minilm/predict", json={"inputs": [text]}) for _ in range(8))
            )

    responses = asyncio.run(burst())
    assert all(r.status_code == 200 for r in responses)
    assert len({r.text for r in responses}) == 1
    assert jobs_run(redis_client, "minilm") == before + 1


def test_cache_control_no_cache_and_no_store(stack: Stack, redis_client: Redis) -> None:
    text = unique("cc")
    assert (
        post(stack, "tiny-cls", {"inputs": text}, **{"Cache-Control": "no-store"}).headers[
            "x-cache"
        ]
        == "miss"
    )
    assert (
        post(stack, "tiny-cls", {"inputs": text}).headers["x-cache"] == "miss"
    )  # nothing was stored
    before = jobs_run(redis_client, "tiny-cls")
    refreshed = post(stack, "tiny-cls", {"inputs": text}, **{"Cache-Control": "no-cache"})
    assert refreshed.headers["x-cache"] == "miss"
    assert jobs_run(redis_client, "tiny-cls") == before + 1
    assert post(stack, "tiny-cls", {"inputs": text}).headers["x-cache"] == "hit"


def test_cache_ttl_zero_disables_the_cache(stack: Stack, redis_client: Redis) -> None:
    worker = start_worker(stack.redis_url, stack.config, "victim", "victim-nocache")
    try:
        before = jobs_run(redis_client, "victim")
        for _ in range(2):
            r = post(stack, "victim", {"inputs": "same input"})
            assert r.status_code == 200 and r.headers["x-cache"] == "miss"
        assert jobs_run(redis_client, "victim") == before + 2
        assert not redis_client.keys("mgtest:cache:victim:*")
    finally:
        worker.stop()
