"""Failure behaviour: dead and hung workers, overload, deadlines, priority, untrusted jobs."""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest
from redis import Redis
from rq.job import Job
from rq.queue import Queue
from rq.serializers import JSONSerializer

from tests.conftest import PREFIX, Stack, jobs_run, paused_worker, start_worker, wait_until

pytestmark = pytest.mark.integration


def job_state(stack: Stack, job_id: str) -> dict[str, object]:
    return httpx.get(f"{stack.url}/jobs/{job_id}", timeout=30).json()  # type: ignore[no-any-return]


def worker_of(redis_client: Redis, job_id: str) -> str:
    return (redis_client.hget(f"rq:job:{job_id}", "worker_name") or b"").decode()


def test_killed_worker_jobs_are_requeued_once_then_fail_worker_lost(
    stack: Stack, redis_client: Redis
) -> None:
    workers = {
        w.name: w
        for w in (
            start_worker(stack.redis_url, stack.config, "slowpoke", "slow-a"),
            start_worker(stack.redis_url, stack.config, "slowpoke", "slow-b"),
        )
    }
    try:
        texts = [f"a sentence in a long job, number {i}" for i in range(600)]
        job = httpx.post(f"{stack.url}/models/slowpoke/jobs", json={"inputs": texts}).json()[
            "job_id"
        ]
        wait_until(lambda: job_state(stack, job)["status"] == "started", 30, "job start")
        first = worker_of(redis_client, job)
        workers[first].stop(signal.SIGKILL)
        killed = time.monotonic()
        survivor = next(n for n in workers if n != first)
        wait_until(
            lambda: (
                worker_of(redis_client, job) == survivor
                and job_state(stack, job)["status"] in ("started", "finished")
            ),
            15,
            "the job to be requeued to the surviving worker",
        )
        assert time.monotonic() - killed < 15
        meta = JSONSerializer.loads(redis_client.hget(f"rq:job:{job}", "meta"))
        assert meta["recoveries"] == 1
        # a third worker joins; the job's second worker dies too: it fails, it does not hang
        workers["slow-c"] = start_worker(stack.redis_url, stack.config, "slowpoke", "slow-c")
        if job_state(stack, job)["status"] == "started":
            workers[survivor].stop(signal.SIGKILL)
            wait_until(lambda: job_state(stack, job)["status"] == "failed", 15, "worker_lost")
            assert job_state(stack, job)["error"]["code"] == "worker_lost"  # type: ignore[index]
        else:  # the survivor was quick enough to finish it: also never stuck
            assert job_state(stack, job)["status"] == "finished"
    finally:
        for w in workers.values():
            w.stop(signal.SIGKILL)


def test_sync_caller_gets_the_answer_when_its_worker_is_killed(
    stack: Stack, redis_client: Redis
) -> None:
    a = start_worker(stack.redis_url, stack.config, "slowpoke", "slow-sync-a")
    b = start_worker(stack.redis_url, stack.config, "slowpoke", "slow-sync-b")
    workers = {a.name: a, b.name: b}
    result: dict[str, httpx.Response] = {}
    texts = [f"synchronous but long input number {i}" for i in range(64)] * 1
    t = threading.Thread(
        target=lambda: result.update(
            r=httpx.post(f"{stack.url}/models/slowpoke/predict", json={"inputs": texts}, timeout=90)
        )
    )
    try:
        t.start()
        started_key = f"rq:wip:{PREFIX}:slowpoke"
        wait_until(lambda: redis_client.zcard(started_key) > 0, 30, "the sync job to start")
        member = redis_client.zrange(started_key, 0, 0)[0].decode()
        runner = worker_of(redis_client, member.split(":")[0])
        workers[runner].stop(signal.SIGKILL)
        t.join(timeout=90)
        assert result["r"].status_code == 200, result["r"].text
        assert len(result["r"].json()["outputs"]) == 64
    finally:
        for w in workers.values():
            w.stop(signal.SIGKILL)


def test_full_queue_is_429_with_retry_after(stack: Stack, redis_client: Redis) -> None:
    with paused_worker(stack, "victim", "victim-full"):
        codes, queued = [], []
        for i in range(8):
            r = httpx.post(f"{stack.url}/models/victim/jobs", json={"inputs": f"fill {i}"})
            codes.append(r.status_code)
            if r.status_code == 202:
                queued.append(r.json()["job_id"])
            if r.status_code == 429:
                assert r.json()["error"]["code"] == "overloaded"
                assert int(r.headers["retry-after"]) >= 1
                break
        assert codes[-1] == 429 and len(codes) <= 5
        assert redis_client.llen(f"rq:queue:{PREFIX}:victim:bulk") <= 3
        for job_id in queued:  # leave an empty queue to the next test, not a full one
            httpx.delete(f"{stack.url}/jobs/{job_id}")
        assert redis_client.llen(f"rq:queue:{PREFIX}:victim:bulk") == 0


def test_job_of_a_caller_answered_504_never_runs_and_leaves_nothing(
    stack: Stack, redis_client: Redis
) -> None:
    with paused_worker(stack, "victim", "victim-deadline", log=True) as worker:
        r = httpx.post(
            f"{stack.url}/models/victim/predict", json={"inputs": "too late"}, timeout=30
        )
        assert r.status_code == 504
        job_id = r.json()["error"]["job_id"]
        # The paused worker's blocking dequeue may already hold the job: when it resumes, it
        # must refuse it (deadline passed), never run it, and delete it with its reply.
        worker.proc.send_signal(signal.SIGCONT)
        wait_until(
            lambda: not any(redis_client.scan_iter(match=f"*{job_id}*")),
            10,
            "every key of the abandoned job to be gone",
        )
        assert f"job {job_id} done" not in (stack.log_dir / "victim-deadline.log").read_text()
        gone = httpx.get(f"{stack.url}/jobs/{job_id}")
        assert gone.status_code == 404 and gone.json()["error"]["code"] == "unknown_job"


def test_high_priority_jumps_the_queue(stack: Stack) -> None:
    with paused_worker(stack, "victim", "victim-prio") as worker:
        ids = {}
        for name, prio in (("a", "low"), ("b", "low"), ("c", "high")):
            r = httpx.post(
                f"{stack.url}/models/victim/jobs", json={"inputs": f"prio {name}", "priority": prio}
            )
            assert r.status_code == 202
            ids[name] = r.json()["job_id"]
        worker.proc.send_signal(signal.SIGCONT)
        for job_id in ids.values():
            wait_until(lambda j=job_id: job_state(stack, j)["status"] == "finished", 20, "jobs")
        started = {k: str(job_state(stack, v)["started_at"]) for k, v in ids.items()}
        assert started["c"] < started["b"]


def test_a_job_naming_another_function_is_refused(
    stack: Stack, redis_client: Redis, tmp_path: Path
) -> None:
    target = tmp_path / "pwned"
    queue = Queue(f"{PREFIX}:tiny-cls", connection=redis_client, serializer=JSONSerializer)
    before = jobs_run(redis_client, "tiny-cls")
    evil = queue.enqueue("os.system", f"touch {target}", result_ttl=60, failure_ttl=60)
    wait_until(lambda: evil.get_status(refresh=True) == "failed", 15, "the evil job to be refused")
    assert not target.exists()
    meta = Job.fetch(evil.id, connection=redis_client, serializer=JSONSerializer).meta
    assert meta["error"]["code"] == "forbidden_function"
    assert jobs_run(redis_client, "tiny-cls") == before + 1
    # a job whose data is not JSON (e.g. pickle) is refused too, and the worker lives on
    bogus = Job.create(
        "workers.tasks.predict",
        kwargs={"inputs": ["x"]},
        connection=redis_client,
        serializer=JSONSerializer,
        result_ttl=60,
        failure_ttl=60,
    )
    bogus.origin = queue.name
    bogus.save()
    redis_client.hset(
        bogus.key, mapping={"data": b"\x80\x04\x95garbage-pickle", "status": "queued"}
    )
    redis_client.rpush(queue.key, bogus.id)
    wait_until(
        lambda: bogus.get_status(refresh=True) == "failed", 15, "the pickled job to be refused"
    )
    ok = httpx.post(
        f"{stack.url}/models/tiny-cls/predict",
        json={"inputs": "still alive?"},
        headers={"Cache-Control": "no-store"},
    )
    assert ok.status_code == 200
    assert json.loads(json.dumps(ok.json()))["outputs"]["label"]
