"""A sync request whose client goes away is withdrawn from its queue before it costs a model
call, unless another request waits for the same job (single-flight): that one still gets its
answer."""

from __future__ import annotations

import json
import signal
import socket
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from urllib.parse import urlsplit

import httpx
import pytest
from redis import Redis

from tests.conftest import PREFIX, Stack, jobs_run, metric, wait_until

pytestmark = pytest.mark.integration

MODEL = "tiny-cls"
QUEUE = f"rq:queue:{PREFIX}:{MODEL}"


def open_request(url: str, path: str, body: object, request_id: str) -> socket.socket:
    """Send a POST and leave its answer unread: the caller closes the socket to walk away."""
    parts = urlsplit(url)
    data = json.dumps(body).encode()
    sock = socket.create_connection((parts.hostname, parts.port), timeout=10)
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\nX-Request-Id: {request_id}\r\n\r\n"
    )
    sock.sendall(head.encode() + data)
    return sock


def queued_job(client: Redis, request_id: str) -> str | None:
    """The id of the job in the model's queue that the request with ``request_id`` made."""
    for raw in client.lrange(QUEUE, 0, -1):
        meta = client.hget(f"rq:job:{raw.decode()}", "meta")
        if meta and json.loads(meta).get("request_id") == request_id:
            return str(raw.decode())
    return None


@contextmanager
def stopped_worker(stack: Stack, client: Redis) -> Iterator[ThreadPoolExecutor]:
    """The model's worker SIGSTOPped, with a first request sent, so that the requests after it
    stay in the queue (a stopped worker's blocking dequeue may still take one). Yields a pool
    that ran the first request; the worker resumes on exit and that request must succeed."""
    worker = stack.workers[MODEL].proc
    intermediate = f"{QUEUE}:intermediate"
    held = client.llen(QUEUE) + client.llen(intermediate)
    worker.send_signal(signal.SIGSTOP)
    pool = ThreadPoolExecutor(max_workers=2)
    try:
        plug = pool.submit(
            httpx.post,
            f"{stack.url}/models/{MODEL}/predict",
            json={"inputs": f"plug {uuid.uuid4()}"},
            timeout=60,
        )
        wait_until(
            lambda: client.llen(QUEUE) + client.llen(intermediate) > held, 5, "the first job"
        )
        yield pool
    finally:
        worker.send_signal(signal.SIGCONT)
    assert plug.result().status_code == 200
    pool.shutdown()


def counts(stack: Stack) -> tuple[float, float, float]:
    """Jobs withdrawn, requests answered 499, requests waiting (this gateway's metrics)."""
    text = httpx.get(f"{stack.url}/metrics").text
    try:
        gone = metric(text, "modelgate_requests_total", model=MODEL, status="499")
    except AssertionError:  # no such request yet
        gone = 0.0
    return (
        metric(text, "modelgate_withdrawn_jobs_total"),
        gone,
        metric(text, "modelgate_waiting_requests"),
    )


def test_a_request_whose_client_left_is_withdrawn_before_any_model_call(
    stack: Stack, redis_client: Redis
) -> None:
    request_id = f"leaves-{uuid.uuid4().hex}"
    withdrawn, left, _ = counts(stack)
    with stopped_worker(stack, redis_client):
        sock = open_request(
            stack.url, f"/models/{MODEL}/predict", {"inputs": f"left {request_id}"}, request_id
        )
        wait_until(lambda: queued_job(redis_client, request_id), 5, "the request's job")
        job_id = queued_job(redis_client, request_id)
        sock.close()  # the client walks away while its job waits for the worker
        wait_until(
            lambda: not redis_client.exists(f"rq:job:{job_id}"), 5, "the job to be withdrawn"
        )
        assert job_id.encode() not in redis_client.lrange(QUEUE, 0, -1)
        ran = jobs_run(redis_client, MODEL)
    assert counts(stack)[:2] == (withdrawn + 1, left + 1)
    wait_until(lambda: jobs_run(redis_client, MODEL) >= ran + 1, 10, "the first job to run")
    log = (stack.log_dir / f"{MODEL}.log").read_text()
    assert f"job {job_id} done" not in log
    assert not any(redis_client.scan_iter(match=f"*{job_id}*"))


def test_a_job_another_request_waits_for_is_kept_when_one_client_leaves(
    stack: Stack, redis_client: Redis
) -> None:
    request_id = f"shares-{uuid.uuid4().hex}"
    body = {"inputs": f"wanted twice {request_id}"}
    withdrawn, left, waiting = counts(stack)
    with stopped_worker(stack, redis_client) as pool:
        sock = open_request(stack.url, f"/models/{MODEL}/predict", body, request_id)
        wait_until(lambda: queued_job(redis_client, request_id), 5, "the request's job")
        job_id = queued_job(redis_client, request_id)
        stays = pool.submit(
            httpx.post, f"{stack.url}/models/{MODEL}/predict", json=body, timeout=60
        )
        # The plug, the leaving request and this one wait: this one joined the same job.
        wait_until(lambda: counts(stack)[2] == waiting + 3, 5, "the second request to join")
        sock.close()
        wait_until(lambda: counts(stack)[1] == left + 1, 5, "the gateway to see the client go")
        assert redis_client.exists(f"rq:job:{job_id}")
    answer = stays.result()
    assert answer.status_code == 200, answer.text
    assert counts(stack)[0] == withdrawn
    log = (stack.log_dir / f"{MODEL}.log").read_text()
    assert f"job {job_id} done" in log
