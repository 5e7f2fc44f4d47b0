"""Async jobs: submit, poll, long-poll, cancel, expiry, restarts, large jobs, cache."""

from __future__ import annotations

import signal
import threading
import time
import uuid

import httpx
import pytest
from redis import Redis

from contract.config import load_registry
from contract.jobs import Keys
from gateway.app import create_app
from gateway.dispatch import Dispatcher
from gateway.settings import GatewaySettings
from tests.conftest import PREFIX, Stack, jobs_run, paused_worker, wait_until

pytestmark = pytest.mark.integration


def submit(stack: Stack, model: str, body: object) -> httpx.Response:
    return httpx.post(f"{stack.url}/models/{model}/jobs", json=body, timeout=30)


def get(stack: Stack, job_id: str, wait: float | None = None) -> httpx.Response:
    params = {"wait": wait} if wait is not None else {}
    return httpx.get(f"{stack.url}/jobs/{job_id}", params=params, timeout=90)


def test_submit_then_wait_gives_the_same_outputs_as_predict(stack: Stack) -> None:
    texts = [f"job input {uuid.uuid4().hex}", "second"]
    r = submit(stack, "tiny-cls", {"inputs": texts})
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["status"] == "queued" and len(body["job_id"]) == 32
    assert r.headers["location"] == body["status_url"] == f"/jobs/{body['job_id']}"
    done = get(stack, body["job_id"], wait=30).json()
    assert done["status"] == "finished" and done["model"] == "tiny-cls"
    assert done["created_at"] and done["started_at"] and done["ended_at"]
    sync = httpx.post(f"{stack.url}/models/tiny-cls/predict", json={"inputs": texts}).json()
    assert done["outputs"] == sync["outputs"]
    single = submit(stack, "tiny-cls", {"inputs": "one string"}).json()
    out = get(stack, single["job_id"], wait=30).json()["outputs"]
    assert isinstance(out, dict) and "label" in out


def cancel(stack: Stack, job_id: str) -> httpx.Response:
    return httpx.post(f"{stack.url}/jobs/{job_id}/cancel", timeout=30)


def test_delete_removes_a_job_and_its_result(stack: Stack, redis_client: Redis) -> None:
    job_id = submit(stack, "tiny-cls", {"inputs": f"to delete {uuid.uuid4().hex}"}).json()["job_id"]
    assert get(stack, job_id, wait=30).json()["status"] == "finished"
    deleted = httpx.delete(f"{stack.url}/jobs/{job_id}")
    assert deleted.status_code == 204 and not deleted.content
    gone = get(stack, job_id)
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "unknown_job"
    assert not redis_client.exists(f"rq:job:{job_id}", f"rq:results:{job_id}")
    assert httpx.delete(f"{stack.url}/jobs/{job_id}").status_code == 404
    with paused_worker(stack, "victim", "victim-delete"):
        ahead = submit(stack, "victim", {"inputs": "ahead of it"}).json()["job_id"]
        queued = submit(stack, "victim", {"inputs": "still queued"}).json()["job_id"]
        assert httpx.delete(f"{stack.url}/jobs/{queued}").status_code == 204
        assert get(stack, queued).status_code == 404
        assert not redis_client.lpos("rq:queue:mgtest:victim:bulk", queued)
        # A paused worker blocks on the interactive lane only: the job ahead is still queued
        # too. Leave nothing for the next test's victim worker to run.
        assert httpx.delete(f"{stack.url}/jobs/{ahead}").status_code == 204


def test_a_running_job_cannot_be_deleted_until_it_ends(stack: Stack) -> None:
    texts = [f"a running job's input {i} {uuid.uuid4().hex}" for i in range(1500)]
    job_id = submit(stack, "minilm", {"inputs": texts}).json()["job_id"]
    wait_until(lambda: get(stack, job_id).json()["status"] != "queued", 30, "the job to start")
    held = httpx.delete(f"{stack.url}/jobs/{job_id}")
    assert held.status_code == 409 and held.json()["error"]["code"] == "job_running"
    assert get(stack, job_id, wait=60).json()["status"] == "finished"
    assert httpx.delete(f"{stack.url}/jobs/{job_id}").status_code == 204


def test_a_job_the_cache_answers_whole_is_created_finished(stack: Stack) -> None:
    texts = [f"cached first {uuid.uuid4().hex}", "cached second"]
    sync = httpx.post(f"{stack.url}/models/tiny-cls/predict", json={"inputs": texts}).json()
    created = submit(stack, "tiny-cls", {"inputs": texts})
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["status"] == "finished" and body["outputs"] == sync["outputs"]
    assert created.headers["location"] == f"/jobs/{body['job_id']}"
    assert get(stack, body["job_id"]).json()["outputs"] == sync["outputs"]


def test_validation_applies_before_enqueue(stack: Stack) -> None:
    assert submit(stack, "nope", {"inputs": "x"}).status_code == 404
    assert submit(stack, "tiny-cls", {"inputs": 3}).status_code == 422
    assert submit(stack, "ghost", {"inputs": "x"}).status_code == 503
    r = get(stack, "0" * 32)
    assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_job"
    assert get(stack, "not-a-job!").status_code == 404


def test_large_job_beyond_predict_limit(stack: Stack) -> None:
    texts = [f"item {i}" for i in range(150)]
    over = httpx.post(f"{stack.url}/models/minilm/predict", json={"inputs": texts})
    assert over.status_code == 413
    r = submit(stack, "minilm", {"inputs": texts})
    assert r.status_code == 202
    done = get(stack, r.json()["job_id"], wait=60).json()
    assert done["status"] == "finished" and len(done["outputs"]) == 150


def test_queue_position_cancel_and_long_poll_returning_early(
    stack: Stack, redis_client: Redis
) -> None:
    with paused_worker(stack, "victim", "victim-jobs") as worker:
        first = submit(stack, "victim", {"inputs": "first"}).json()["job_id"]
        second = submit(stack, "victim", {"inputs": "second"}).json()["job_id"]
        first_pos = get(stack, first).json()["position"]
        second_pos = get(stack, second).json()["position"]
        assert first_pos is not None and second_pos is not None
        assert 0 <= first_pos < second_pos
        canceled = cancel(stack, second)
        assert canceled.status_code == 200 and canceled.json()["status"] == "canceled"
        assert cancel(stack, second).json()["status"] == "canceled", "cancel is idempotent"
        assert get(stack, second).json()["status"] == "canceled"
        assert redis_client.ttl(f"rq:job:{second}") > 0  # not kept forever

        polled: dict[str, object] = {}

        def long_poll() -> None:
            started = time.monotonic()
            polled["body"] = get(stack, first, wait=30).json()
            polled["took"] = time.monotonic() - started

        poller = threading.Thread(target=long_poll)
        poller.start()
        time.sleep(1.0)
        before = jobs_run(redis_client, "victim")
        worker.proc.send_signal(signal.SIGCONT)
        poller.join(timeout=40)
        assert polled["body"]["status"] == "finished"  # type: ignore[index]
        assert float(polled["took"]) < 15  # type: ignore[arg-type]
        time.sleep(0.5)
        assert jobs_run(redis_client, "victim") == before + 1  # the canceled job never ran
        assert get(stack, second).json()["status"] == "canceled"
        late = cancel(stack, first)
        assert late.status_code == 409 and late.json()["error"]["code"] == "job_not_cancelable"


def test_wait_without_result_returns_after_the_bound(stack: Stack) -> None:
    with paused_worker(stack, "victim", "victim-bound"):
        job = submit(stack, "victim", {"inputs": "stays queued"}).json()["job_id"]
        started = time.monotonic()
        body = get(stack, job, wait=1.5).json()
        assert body["status"] == "queued"
        assert 1.4 <= time.monotonic() - started < 5


def app_for(stack: Stack, **overrides: object) -> tuple[httpx.AsyncClient, Dispatcher]:
    settings = GatewaySettings(
        config=str(stack.config), redis_url=stack.redis_url, prefix=PREFIX, **overrides
    )  # type: ignore[arg-type]
    dispatcher = Dispatcher(stack.redis_url, Keys(PREFIX))
    app = create_app(settings, registry=load_registry(stack.config), dispatcher=dispatcher)
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://gw"
    ), dispatcher


async def test_results_expire_after_the_job_ttl(stack: Stack) -> None:
    client, dispatcher = app_for(stack, job_ttl_s=2)
    async with client:
        r = await client.post("/models/tiny-cls/jobs", json={"inputs": uuid.uuid4().hex})
        job_id = r.json()["job_id"]
        done = await client.get(f"/jobs/{job_id}", params={"wait": 30})
        assert done.json()["status"] == "finished"
        time.sleep(3)
        gone = await client.get(f"/jobs/{job_id}")
        assert gone.status_code == 404 and gone.json()["error"]["code"] == "unknown_job"
    await dispatcher.close()


async def test_a_gateway_restart_loses_nothing(stack: Stack) -> None:
    with paused_worker(stack, "victim", "victim-restart") as worker:
        client, dispatcher = app_for(stack)
        async with client:
            r = await client.post("/models/victim/jobs", json={"inputs": "survives"})
            job_id = r.json()["job_id"]
        await dispatcher.close()  # this gateway is gone
        worker.proc.send_signal(signal.SIGCONT)
        client2, dispatcher2 = app_for(stack)  # a fresh gateway process state
        async with client2:
            body = (await client2.get(f"/jobs/{job_id}", params={"wait": 30})).json()
        await dispatcher2.close()
        assert body["status"] == "finished"
        assert get(stack, job_id).json()["outputs"] == body["outputs"]  # any replica answers


def test_jobs_use_the_cache(stack: Stack, redis_client: Redis) -> None:
    text = f"cached job {uuid.uuid4().hex}"
    httpx.post(f"{stack.url}/models/tiny-cls/predict", json={"inputs": [text]})
    before = jobs_run(redis_client, "tiny-cls")
    job = submit(stack, "tiny-cls", {"inputs": [text]}).json()["job_id"]
    body = get(stack, job).json()
    assert body["status"] == "finished" and len(body["outputs"]) == 1
    assert jobs_run(redis_client, "tiny-cls") == before
