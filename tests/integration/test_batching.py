"""Dynamic batching in the workers: batches form, answers stay each request's own, a poisoned
input fails only its own request, and the models.yaml knobs are honoured."""

from __future__ import annotations

import asyncio
import signal
import uuid

import httpx
import numpy as np
import pytest
from redis import Redis
from rq.job import Job
from rq.queue import Queue
from rq.serializers import JSONSerializer

from contract.config import load_registry
from contract.jobs import PREDICT_FUNC
from tests.conftest import PREFIX, Stack, start_worker, wait_until
from workers.pipelines import build_engine

pytestmark = pytest.mark.integration


def batch_sizes(client: Redis, model: str) -> dict[int, int]:
    raw = client.hgetall(f"{PREFIX}:stats:{model}")
    return {int(k.split(b":")[1]): int(v) for k, v in raw.items() if k.startswith(b"batch_size:")}


async def burst(stack: Stack, model: str, bodies: list[object]) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=stack.url, timeout=120) as client:
        return await asyncio.gather(
            *(
                client.post(
                    f"/models/{model}/predict", json=b, headers={"Cache-Control": "no-store"}
                )
                for b in bodies
            )
        )


def test_concurrent_requests_form_batches_and_keep_their_own_answers(
    stack: Stack, redis_client: Redis
) -> None:
    registry = load_registry(stack.config)
    spec = registry.get("tiny-pipe")
    assert spec is not None
    reference = build_engine(spec, registry.base_dir)
    texts = [f"request {i} says {'good' if i % 3 else 'bad'} things" for i in range(40)]
    before = batch_sizes(redis_client, "tiny-pipe")
    responses = asyncio.run(burst(stack, "tiny-pipe", [{"inputs": t} for t in texts]))
    assert [r.status_code for r in responses] == [200] * 40
    expected = reference(texts, {})
    for r, want in zip(responses, expected, strict=True):
        got = r.json()["outputs"]
        assert got["label"] == want["label"]
        assert np.isclose(got["score"], want["score"], atol=1e-5)
    after = batch_sizes(redis_client, "tiny-pipe")
    new = {size: after.get(size, 0) - before.get(size, 0) for size in after}
    assert max(s for s, n in new.items() if n > 0) > 1, new  # batches really formed
    assert max(s for s, n in new.items() if n > 0) <= spec.max_batch_size  # the knob holds


def test_a_poisoned_input_fails_only_its_own_request(stack: Stack) -> None:
    bodies: list[object] = [{"inputs": f"innocent {i}"} for i in range(12)]
    bodies.insert(5, {"inputs": " ".join(["poison"] * 100)})  # more positions than the model has
    responses = asyncio.run(burst(stack, "tiny-pipe", bodies))
    codes = [r.status_code for r in responses]
    assert codes[5] == 413 and responses[5].json()["error"]["code"] == "payload_too_large"
    assert codes[:5] + codes[6:] == [200] * 12


def test_requests_of_several_inputs_never_overfill_a_batch(
    stack: Stack, redis_client: Redis
) -> None:
    # tiny-pipe: batches of 16, a 50 ms wait for company. Requests of 5 inputs: a batch holds
    # three of them; the worker once took one job per free input and ran batches of up to 80.
    bodies: list[object] = [
        {"inputs": [f"request {i} input {j} is fine" for j in range(5)]} for i in range(24)
    ]
    before = batch_sizes(redis_client, "tiny-pipe")
    responses = asyncio.run(burst(stack, "tiny-pipe", bodies))
    assert [r.status_code for r in responses] == [200] * 24
    assert all(len(r.json()["outputs"]) == 5 for r in responses)
    after = batch_sizes(redis_client, "tiny-pipe")
    new = {size: after.get(size, 0) - before.get(size, 0) for size in after}
    ran = {size: n for size, n in new.items() if n > 0}
    assert sum(size * n for size, n in ran.items()) == 120, ran  # every input ran once
    assert max(ran) <= 16 and max(ran) >= 10, ran  # full batches formed, none overfilled


def test_idle_workers_share_a_burst_instead_of_one_taking_it_all(
    stack: Stack, redis_client: Redis
) -> None:
    """Eight jobs land at once on two idle workers of a model: each takes its share. Taking
    all it could, the first would run 7 or 8 in one batch while the second idled."""
    workers = [start_worker(stack.redis_url, stack.config, "slowpoke", f"share-{k}") for k in "ab"]
    try:
        for w in workers:
            w.proc.send_signal(signal.SIGSTOP)
        before = batch_sizes(redis_client, "slowpoke")
        queue = Queue(f"{PREFIX}:slowpoke", connection=redis_client, serializer=JSONSerializer)
        jobs = [
            queue.enqueue(
                PREDICT_FUNC,
                kwargs={"inputs": [f"burst text {i}"]},
                meta={"model": "slowpoke"},
                result_ttl=60,
                failure_ttl=60,
                job_id=uuid.uuid4().hex,
            )
            for i in range(8)
        ]
        for w in workers:
            w.proc.send_signal(signal.SIGCONT)

        def done() -> bool:
            return all(
                Job.fetch(j.id, connection=redis_client).get_status() == "finished" for j in jobs
            )

        wait_until(done, 60, "the burst to finish")
        after = batch_sizes(redis_client, "slowpoke")
        new = {size: after.get(size, 0) - before.get(size, 0) for size in after}
        ran = {size: n for size, n in new.items() if n > 0}
        assert sum(size * n for size, n in ran.items()) == 8, ran
        assert max(ran) <= 5, ran
    finally:
        for w in workers:
            w.proc.send_signal(signal.SIGCONT)
            w.stop()
