"""``GET /status`` (what the dashboard and ``modelgate status`` show) and progress on large jobs,
against the session's real stack."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import uuid
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from redis import Redis

from contract.recent import BUCKET_S, bucket_of
from modelgate.redis_server import free_port
from tests.conftest import PREFIX, ROOT, Stack, wait_until

pytestmark = pytest.mark.integration


def status(stack: Stack, **params: Any) -> dict[str, Any]:
    r = httpx.get(f"{stack.url}/status", params=params, timeout=30)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def model(report: dict[str, Any], name: str) -> dict[str, Any]:
    [found] = [m for m in report["models"] if m["name"] == name]
    return found


def test_status_lists_each_model_with_its_live_workers(stack: Stack) -> None:
    report = status(stack)
    assert report["window_s"] == 300 and report["bucket_s"] == 10
    assert report["redis"]["used_bytes"] > 0
    cls = model(report, "tiny-cls")
    assert cls["ready"] and cls["task"] == "text-classification" and cls["max_batch_size"] == 8
    [worker] = [w for w in cls["workers"] if w["name"] == "tiny-cls-w0"]
    assert worker["pid"] == stack.workers["tiny-cls"].proc.pid
    assert worker["max_batch_size"] == 8
    beat = datetime.fromisoformat(worker["last_beat"])
    assert abs((datetime.now(UTC) - beat).total_seconds()) < 5
    ghost = model(report, "ghost")  # configured with no replicas
    assert not ghost["ready"] and ghost["workers"] == []
    assert len(cls["recent"]["requests_series"]) == 30


def buckets_since(client: Redis, model: str, t0: float) -> Counter[str]:
    """The recent-activity counters of ``model`` from the bucket holding ``t0`` on: exact
    deltas, where the windowed figures of /status slide (old buckets leave the window)."""
    total: Counter[str] = Counter()
    for start in range(bucket_of(t0), bucket_of(time.time()) + BUCKET_S, BUCKET_S):
        raw = client.hgetall(f"{PREFIX}:recent:{model}:{start}")
        total.update({k.decode(): int(v) for k, v in raw.items()})
    return total


def test_requests_and_errors_show_up_in_the_recent_figures(
    stack: Stack, redis_client: Redis
) -> None:
    t0 = time.time()
    before = buckets_since(redis_client, "tiny-cls", t0)
    texts = [f"status {uuid.uuid4().hex} {i}" for i in range(3)]
    for text in texts:
        r = httpx.post(f"{stack.url}/models/tiny-cls/predict", json={"inputs": text}, timeout=30)
        assert r.status_code == 200
    bad = httpx.post(f"{stack.url}/models/tiny-cls/predict", json={"inputs": 5}, timeout=30)
    assert bad.status_code == 422
    again = httpx.post(f"{stack.url}/models/tiny-cls/predict", json={"inputs": texts[0]})
    assert again.headers["x-cache"] == "hit"

    def counted() -> bool:
        now = buckets_since(redis_client, "tiny-cls", t0)
        return now["requests"] >= before["requests"] + 5

    wait_until(counted, 15, "the gateway to flush its counts")
    after = buckets_since(redis_client, "tiny-cls", t0)
    assert after["error:invalid_input"] >= before["error:invalid_input"] + 1
    assert after["jobs"] >= before["jobs"] + 3  # the workers' side, in the same buckets
    assert after["jobs_interactive"] >= before["jobs_interactive"] + 3
    assert after["cache_hit"] >= before["cache_hit"] + 1
    assert after["cache_miss"] >= before["cache_miss"] + 3
    # /status reads the same buckets: these requests are in its figures.
    shown = model(status(stack, window=60), "tiny-cls")["recent"]
    assert shown["requests"] >= 5 and shown["errors"].get("invalid_input", 0) >= 1
    assert shown["latency_ms"]["p50"] is not None and shown["compute_ms"]["p99"] is not None
    assert shown["queue_ms"]["p50"] is not None and shown["mean_batch_size"] >= 1
    assert shown["requests_per_s"] > 0
    assert shown["lanes"]["interactive"]["wait_ms"]["p50"] is not None


def test_a_job_larger_than_a_batch_runs_in_chunks_with_progress(
    stack: Stack, redis_client: Redis
) -> None:
    texts = [f"chunked {uuid.uuid4().hex} {i}" for i in range(21)]  # tiny-cls: batches of 8
    full = f"{PREFIX}:stats:tiny-cls"
    r = httpx.post(f"{stack.url}/models/tiny-cls/jobs", json={"inputs": texts}, timeout=30)
    assert r.status_code == 202, r.text
    job_id = r.json()["job_id"]
    done = httpx.get(f"{stack.url}/jobs/{job_id}", params={"wait": 30}, timeout=60).json()
    assert done["status"] == "finished"
    assert done["progress"] == {"done": 21, "total": 21}
    sync = httpx.post(
        f"{stack.url}/models/tiny-cls/predict",
        json={"inputs": texts[:8]},
        headers={"cache-control": "no-cache"},
    ).json()
    for got, want in zip(done["outputs"][:8], sync["outputs"], strict=True):
        assert got["label"] == want["label"] and got["score"] == pytest.approx(want["score"])
    assert int(redis_client.hget(full, "batch_size:21") or 0) == 0  # never one call of 21
    log = (stack.log_dir / "tiny-cls.log").read_text()
    # 3 chunks of 8, or smaller ones while sync requests came in (the test before this one).
    ran = re.search(rf"job {job_id} done: 21 inputs in (\d+) chunks of up to 8", log)
    assert ran is not None and 3 <= int(ran[1]) <= 21, log[-2000:]
    listed = [j for j in status(stack)["jobs"] if j["job_id"] == job_id]
    assert listed and listed[0]["progress"] == {"done": 21, "total": 21}
    assert listed[0]["model"] == "tiny-cls" and listed[0]["status"] == "finished"


def test_status_refuses_a_window_it_cannot_cover(stack: Stack) -> None:
    for window in (5, 601, "soon"):
        r = httpx.get(f"{stack.url}/status", params={"window": window})
        assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_input"
    assert len(status(stack, window=60)["models"][0]["recent"]["requests_series"]) == 6


def test_the_dashboard_page_and_its_assets_are_served_by_the_gateway(stack: Stack) -> None:
    page = httpx.get(f"{stack.url}/dashboard")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for asset in ("/dashboard-assets/dashboard.js", "/dashboard-assets/dashboard.css"):
        assert f'"{asset}"' in page.text
        assert httpx.get(stack.url + asset).status_code == 200
    assert "http://" not in page.text.replace('"http://www.w3.org', "")
    assert "https://" not in page.text  # nothing from a CDN


def modelgate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "modelgate", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


def test_modelgate_status_prints_json_to_a_pipe_and_a_table_when_asked(stack: Stack) -> None:
    piped = modelgate("status", "--url", stack.url, "--window", "60")
    assert piped.returncode == 0, piped.stderr
    report = json.loads(piped.stdout)
    assert report["window_s"] == 60
    assert {m["name"] for m in report["models"]} >= {"minilm", "tiny-cls", "ghost"}
    table = modelgate("status", "--url", stack.url, "--table")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].startswith(f"modelgate at {stack.url}: ")
    header = next(line for line in lines if line.startswith("MODEL"))
    assert "LATENCY ms p50/p99" in header and "ERRORS" in header
    assert any(line.split()[:2] == ["ghost", "text-classification"] for line in lines)
    assert any(line.startswith("tiny-cls-w0 ") for line in lines)  # the workers table


def test_modelgate_status_says_in_one_line_what_is_wrong(stack: Stack) -> None:
    down = modelgate("status", "--url", f"http://127.0.0.1:{free_port()}")
    assert down.returncode == 1 and down.stdout == ""
    assert down.stderr.startswith("cannot reach a modelgate gateway at http://127.0.0.1:")
    assert len(down.stderr.strip().splitlines()) == 1
    wrong = modelgate("status", "--url", stack.url, "--window", "5")
    assert wrong.returncode == 2 and "from 10 to 600" in wrong.stderr
