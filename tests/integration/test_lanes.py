"""Interactive requests never wait behind bulk work: a large async job runs in chunks in the bulk
lane, its worker serves sync requests between its chunks (the job's next chunk riding along them
in one model call), and it resumes from its last finished chunk after its worker is killed.
Behaviour, not timing: what is asserted is the order of events."""

from __future__ import annotations

import re
import signal
import time
import uuid
from typing import Any

import httpx
import pytest
from redis import Redis

from tests.conftest import PREFIX, Stack, WorkerProc, metric, start_worker, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

NO_CACHE = {"cache-control": "no-store"}


def job_state(stack: Stack, job_id: str, wait: float = 0) -> dict[str, Any]:
    params = {"wait": wait} if wait else {}
    r = httpx.get(f"{stack.url}/jobs/{job_id}", params=params, timeout=wait + 30)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def submit(stack: Stack, model: str, texts: list[str]) -> str:
    r = httpx.post(
        f"{stack.url}/models/{model}/jobs", json={"inputs": texts}, headers=NO_CACHE, timeout=60
    )
    assert r.status_code == 202, r.text
    job_id: str = r.json()["job_id"]
    return job_id


def finished(stack: Stack, job_id: str, within_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + within_s
    while True:
        state = job_state(stack, job_id, wait=min(30.0, max(1.0, deadline - time.monotonic())))
        if state["status"] in ("finished", "failed", "canceled") or time.monotonic() > deadline:
            return state


def test_sync_requests_are_answered_while_a_large_job_runs(stack: Stack) -> None:
    texts = [f"bulk {uuid.uuid4().hex} {i}" for i in range(2000)]  # minilm: 63 chunks of 32
    job_id = submit(stack, "minilm", texts)
    wait_until(
        lambda: (job_state(stack, job_id).get("progress") or {}).get("done", 0) > 0,
        60,
        "the job's first chunk",
    )
    answered = []
    for i in range(5):
        r = httpx.post(
            f"{stack.url}/models/minilm/predict",
            json={"inputs": f"interactive {uuid.uuid4().hex} {i}"},
            headers=NO_CACHE,
            timeout=60,
        )
        assert r.status_code == 200, r.text
        answered.append(job_state(stack, job_id))
    # Every sync answer came while the job was still at work (not after it).
    assert all(s["status"] in ("queued", "started") for s in answered), answered
    progress = [s["progress"]["done"] for s in answered]
    assert progress == sorted(progress) and progress[-1] < len(texts)
    done = finished(stack, job_id, 180)
    assert done["status"] == "finished" and done["progress"] == {"done": 2000, "total": 2000}
    assert len(done["outputs"]) == 2000
    sync = httpx.post(
        f"{stack.url}/models/minilm/predict", json={"inputs": texts[1999]}, headers=NO_CACHE
    ).json()["outputs"]
    assert done["outputs"][1999] == pytest.approx(sync, abs=1e-5)
    # The sync requests were served by the job's worker, the job's chunks riding along them.
    log = (stack.log_dir / "minilm.log").read_text()
    assert re.search(
        rf"job {job_id} done: 2000 inputs in \d+ chunks of up to 32, \d+ of them riding", log
    )


def test_a_killed_worker_leaves_a_job_that_resumes_from_its_last_chunk(
    stack: Stack, redis_client: Redis
) -> None:
    def slowpoke(name: str) -> WorkerProc:
        log = stack.log_dir / f"{name}.log"
        return start_worker(stack.redis_url, stack.config, "slowpoke", name, log_path=log)

    stats = f"{PREFIX}:stats:slowpoke"
    first = slowpoke("slowpoke-first")
    second = None
    try:
        chunks_before = int(redis_client.hget(stats, "chunks") or 0)
        texts = [f"resume {uuid.uuid4().hex} {i}" for i in range(480)]  # 30 chunks of 16
        job_id = submit(stack, "slowpoke", texts)
        wait_until(
            lambda: (job_state(stack, job_id).get("progress") or {}).get("done", 0) >= 64,
            90,
            "a few chunks",
        )
        first.stop(signal.SIGKILL)
        killed_at = job_state(stack, job_id)["progress"]["done"]
        assert killed_at < len(texts), "the job must still be running when its worker dies"
        second = slowpoke("slowpoke-second")
        done = finished(stack, job_id, 180)
        assert done["status"] == "finished", done
        assert done["progress"] == {"done": 480, "total": 480}
        # Every chunk was computed and saved exactly once, across both workers.
        assert int(redis_client.hget(stats, "chunks") or 0) - chunks_before == 30
        assert not redis_client.exists(f"{PREFIX}:chunks:{job_id}")  # dropped with the result
        sync = httpx.post(
            f"{stack.url}/models/slowpoke/predict",
            json={"inputs": [texts[0], texts[479]]},
            headers=NO_CACHE,
            timeout=60,
        ).json()["outputs"]
        assert done["outputs"][0] == pytest.approx(sync[0], abs=1e-5)
        assert done["outputs"][479] == pytest.approx(sync[1], abs=1e-5)
        resumed = (stack.log_dir / "slowpoke-second.log").read_text()
        assert f"job {job_id} done: 480 inputs" in resumed
    finally:
        first.stop(signal.SIGKILL)
        if second is not None:
            second.stop()


def test_a_running_large_job_is_canceled_at_its_next_chunk(
    stack: Stack, redis_client: Redis
) -> None:
    texts = [f"cancel {uuid.uuid4().hex} {i}" for i in range(2000)]
    job_id = submit(stack, "minilm", texts)
    wait_until(
        lambda: (job_state(stack, job_id).get("progress") or {}).get("done", 0) > 0,
        60,
        "the job's first chunk",
    )
    r = httpx.post(f"{stack.url}/jobs/{job_id}/cancel", timeout=30)
    assert r.status_code in (200, 202), r.text  # 200: it was between chunks, back in its queue
    ended = finished(stack, job_id, 60)
    assert ended["status"] == "canceled", ended
    assert ended["progress"]["done"] < len(texts)
    assert "outputs" not in ended or ended["outputs"] is None
    assert not redis_client.exists(f"{PREFIX}:chunks:{job_id}")
    assert not redis_client.exists(f"{PREFIX}:cancel:{job_id}")
    again = httpx.post(f"{stack.url}/jobs/{job_id}/cancel", timeout=30)
    assert again.status_code == 200 and again.json()["status"] == "canceled"


def test_lanes_are_reported_per_model(stack: Stack) -> None:
    info = httpx.get(f"{stack.url}/models/minilm").json()
    assert info["queue_depth"] >= 0 and info["bulk_queue_depth"] >= 0
    assert info["bulk_share"] == 0.25
    # Per lane over the last minute (the jobs above ran in the bulk lane within it).
    assert info["lanes"]["bulk"]["items"] > 0 and info["lanes"]["bulk"]["items_per_s"] >= 0
    assert info["lanes"]["bulk"]["wait_ms"]["p50"] is not None
    assert set(info["lanes"]) == {"interactive", "bulk"}
    report = httpx.get(f"{stack.url}/status").json()
    [minilm] = [m for m in report["models"] if m["name"] == "minilm"]
    lanes = minilm["recent"]["lanes"]
    assert set(lanes) == {"interactive", "bulk"}
    assert lanes["bulk"]["items"] > 0  # the jobs above ran in the bulk lane
    assert lanes["bulk"]["wait_ms"]["p50"] is not None
    scraped = httpx.get(f"{stack.url}/metrics").text
    for lane in ("interactive", "bulk"):
        assert metric(scraped, "modelgate_lane_items_total", model="minilm", lane=lane) > 0
        waits = metric(scraped, "modelgate_lane_wait_seconds_count", model="minilm", lane=lane)
        assert waits > 0, lane
