"""Coalescing against the real stack: concurrent sync requests travel as one RQ job of segments,
and each keeps its own answer, its own error, its own withdrawal and its own worker_lost."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from redis import Redis
from rq.job import Job
from rq.serializers import JSONSerializer

from contract.config import ModelSpec, load_registry
from contract.jobs import ERR_WORKER_LOST, SYNC_RESULT_TTL_S, JobPayload, Keys
from gateway.dispatch import Dispatcher
from gateway.errors import PayloadTooLarge, WorkerLost
from tests.conftest import PREFIX, Stack
from tests.integration.test_disconnect import MODEL, QUEUE, stopped_worker
from workers.replies import Replier

pytestmark = pytest.mark.integration


def model(stack: Stack, name: str) -> ModelSpec:
    spec = load_registry(stack.config).get(name)
    assert spec is not None
    return spec


def payload(spec: ModelSpec, *texts: str) -> JobPayload:
    return JobPayload(list(texts), {}, time.time() + spec.timeout_s, uuid.uuid4().hex)


def leftovers(client: Redis, ids: list[str]) -> list[bytes]:
    return [k for i in ids for k in client.scan_iter(match=f"*{i}*")]


async def test_concurrent_requests_share_one_job_and_keep_their_own_answers_and_errors(
    stack: Stack, redis_client: Redis
) -> None:
    spec = model(stack, "tiny-pipe")
    dispatcher = Dispatcher(stack.redis_url, Keys(PREFIX))
    try:
        texts = [f"coalesced {i} {uuid.uuid4().hex[:6]} is good" for i in range(4)]
        poison = " ".join(["poison"] * 100)  # more positions than the model has
        bodies = [*texts[:2], poison, *texts[2:]]
        # Started in one tick: the first write takes them all, as one job of five segments.
        results = await asyncio.gather(
            *(dispatcher.run(spec, payload(spec, b)) for b in bodies), return_exceptions=True
        )
        assert (dispatcher.coalescer.groups, dispatcher.coalescer.coalesced) == (1, 5)
        assert isinstance(results[2], PayloadTooLarge)  # only the poisoned request fails
        alone = [await dispatcher.run(spec, payload(spec, t)) for t in texts]
        answers = [r for i, r in enumerate(results) if i != 2]
        for got, want in zip(answers, alone, strict=True):
            assert isinstance(got, dict), got
            assert got["outputs"][0]["label"] == want["outputs"][0]["label"]
            assert got["outputs"][0]["score"] == pytest.approx(want["outputs"][0]["score"])
        log = (stack.log_dir / "tiny-pipe.log").read_text()
        assert "5 coalesced requests (0 withdrawn)" in log
    finally:
        await dispatcher.close()


async def test_a_request_withdrawn_from_a_coalesced_job_is_skipped_and_the_rest_answered(
    stack: Stack, redis_client: Redis
) -> None:
    spec = model(stack, MODEL)
    dispatcher = Dispatcher(stack.redis_url, Keys(PREFIX))
    tag = uuid.uuid4().hex
    try:
        with stopped_worker(stack, redis_client):
            tasks = [
                asyncio.create_task(dispatcher.run(spec, payload(spec, f"{tag} request {i}")))
                for i in range(3)
            ]
            for _ in range(100):  # the coalesced job reaches the queue
                await asyncio.sleep(0.05)
                if dispatcher.coalescer.groups:
                    break
            assert dispatcher.coalescer.groups == 1
            group = [
                raw.decode()
                for raw in redis_client.lrange(QUEUE, 0, -1)
                if b'"segments"' in (redis_client.hget(f"rq:job:{raw.decode()}", "meta") or b"")
            ]
            assert len(group) == 1
            tasks[1].cancel()  # its client went away while the job waits for the worker
            with pytest.raises(asyncio.CancelledError):
                await tasks[1]
            assert dispatcher.withdrawn == 1
        answers = await asyncio.gather(tasks[0], tasks[2])
        assert all(len(a["outputs"]) == 1 for a in answers)
        for _ in range(50):
            if not redis_client.exists(f"rq:job:{group[0]}"):
                break
            await asyncio.sleep(0.1)
        log = (stack.log_dir / f"{MODEL}.log").read_text()
        assert f"job {group[0]} done: 3 coalesced requests (1 withdrawn)" in log
        assert not leftovers(redis_client, group)  # nothing of the job, its segments' keys
    finally:
        await dispatcher.close()


async def test_a_coalesced_job_that_fails_whole_answers_every_segment(
    stack: Stack, redis_client: Redis
) -> None:
    # What the reaper does to a job whose worker died twice: Replier.answer with worker_lost.
    spec = model(stack, "tiny-cls").model_copy(update={"name": f"nobody-{uuid.uuid4().hex[:6]}"})
    dispatcher = Dispatcher(stack.redis_url, Keys(PREFIX))
    try:
        tasks = [
            asyncio.create_task(dispatcher.run(spec, payload(spec, f"lost {i}"))) for i in range(3)
        ]
        for _ in range(100):
            await asyncio.sleep(0.05)
            if dispatcher.coalescer.groups:
                break
        queue = f"rq:queue:{PREFIX}:{spec.name}"
        [job_id] = [raw.decode() for raw in redis_client.lrange(queue, 0, -1)]
        job = Job.fetch(job_id, connection=redis_client, serializer=JSONSerializer)
        assert len(job.kwargs["segments"]) == 3 and job.result_ttl == SYNC_RESULT_TTL_S
        with redis_client.pipeline() as pipe:
            error = {"code": ERR_WORKER_LOST, "message": "the worker died"}
            Replier(redis_client, Keys(PREFIX)).answer(pipe, job, error=error)
            pipe.execute()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert all(isinstance(r, WorkerLost) for r in results), results
        redis_client.delete(queue)
    finally:
        await dispatcher.close()
