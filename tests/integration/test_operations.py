"""Operations: metrics, timing headers, request ids in worker logs, JSON logs, graceful shutdown."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest

from modelgate.redis_server import free_port
from tests.conftest import (
    PREFIX,
    ROOT,
    Stack,
    gateway_up,
    metric,
    process_env,
    start_worker,
    wait_until,
)

pytestmark = pytest.mark.integration


def test_timing_headers_and_request_id_reach_the_worker_log(stack: Stack) -> None:
    rid = f"trace-{uuid.uuid4().hex[:12]}"
    r = httpx.post(
        f"{stack.url}/models/minilm/predict",
        json={"inputs": f"timed {rid}"},
        headers={"X-Request-Id": rid},
        timeout=60,
    )
    assert r.status_code == 200
    assert r.headers["x-request-id"] == rid
    assert float(r.headers["x-inference-time-ms"]) > 0
    assert float(r.headers["x-queue-time-ms"]) >= 0
    log = stack.log_dir / "minilm.log"
    wait_until(lambda: rid in log.read_text(), 10, "the request id in the worker's log")


def test_metrics_cover_requests_latency_batches_cache_queues_and_workers(stack: Stack) -> None:
    text = f"metrics {uuid.uuid4().hex}"
    for _ in range(2):
        httpx.post(f"{stack.url}/models/tiny-cls/predict", json={"inputs": [text]}, timeout=60)
    httpx.post(f"{stack.url}/models/tiny-cls/predict", json={"inputs": 1}, timeout=60)
    r = httpx.get(stack.url + "/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    body = r.text
    ok = metric(
        body,
        "modelgate_requests_total",
        model="tiny-cls",
        endpoint="/models/{name}/predict",
        status="200",
    )
    assert ok >= 2
    assert metric(body, "modelgate_requests_total", model="tiny-cls", status="422") >= 1
    assert metric(body, "modelgate_request_seconds_count", model="tiny-cls") >= 3
    assert metric(body, "modelgate_queue_seconds_count", model="tiny-cls") >= 1
    assert metric(body, "modelgate_inference_seconds_count", model="tiny-cls") >= 1
    assert metric(body, "modelgate_cache_items_total", model="tiny-cls", result="hit") >= 1
    assert metric(body, "modelgate_cache_items_total", model="tiny-cls", result="miss") >= 1
    assert metric(body, "modelgate_live_workers", model="tiny-cls") >= 1
    assert metric(body, "modelgate_live_workers", model="ghost") == 0
    assert metric(body, "modelgate_queue_depth", model="tiny-cls", lane="interactive") == 0
    assert metric(body, "modelgate_queue_depth", model="tiny-cls", lane="bulk") == 0
    assert metric(body, "modelgate_queue_oldest_seconds", model="tiny-cls", lane="bulk") == 0
    assert metric(body, "modelgate_unreplicated_writes_total") == 0  # no replicas asked for
    assert metric(body, "modelgate_failover_lost_waits_total") == 0
    assert metric(body, "modelgate_worker_jobs_total", model="tiny-cls") >= 1
    assert metric(body, "modelgate_batch_size_count", model="tiny-cls") >= 1
    assert metric(body, "modelgate_batch_size_bucket", model="tiny-cls", le="+Inf") >= 1


def series(text: str) -> set[str]:
    """The metric series of a Prometheus text (name and labels, without the value)."""
    return {line.rsplit(" ", 1)[0] for line in text.splitlines() if line and line[0] != "#"}


def test_made_up_names_add_no_metric_series(stack: Stack) -> None:
    def made_up(client: httpx.Client, n: int) -> None:
        for i in range(n):
            name = f"card{uuid.uuid4().hex[:8]}"
            kind = i % 4
            if kind == 0:
                r = client.post(f"/models/{name}/predict", json={"inputs": "x"})
            elif kind == 1:
                r = client.get(f"/models/{name}")
            elif kind == 2:
                r = client.post(f"/v2/models/{name}/infer", json={"inputs": []})
            else:
                r = client.get(f"/{name}")
            assert r.status_code in (404, 422), (r.status_code, r.text)

    with httpx.Client(base_url=stack.url, timeout=30) as client:
        made_up(client, 8)  # each kind of answer once: its series exist from here on
        client.get("/metrics")  # and the scrape's own
        before = series(client.get("/metrics").text)
        made_up(client, 1000)
        after = series(client.get("/metrics").text)
    grown = {s for s in after - before if "modelgate_request" in s}
    assert grown == set(), sorted(grown)[:10]
    assert not any("card" in s for s in after)
    assert any('model="unknown"' in s for s in after)


def test_sigterm_worker_finishes_its_batch_takes_no_more_and_exits_0(
    stack: Stack, tmp_path: Path
) -> None:
    log = tmp_path / "slowpoke.log"
    worker = start_worker(
        stack.redis_url,
        stack.config,
        "slowpoke",
        "slowpoke-term",
        log_path=log,
        MODELGATE_LOG_FORMAT="json",
    )
    texts = [f"sentence {i} of a long batch job that keeps the worker busy" for i in range(400)]
    job = httpx.post(f"{stack.url}/models/slowpoke/jobs", json={"inputs": texts}).json()["job_id"]
    wait_until(
        lambda: httpx.get(f"{stack.url}/jobs/{job}").json()["status"] == "started",
        30,
        "the big job to start",
    )
    worker.proc.send_signal(signal.SIGTERM)
    later = httpx.post(f"{stack.url}/models/slowpoke/jobs", json={"inputs": "after stop"}).json()[
        "job_id"
    ]
    assert worker.proc.wait(timeout=60) == 0
    done = httpx.get(f"{stack.url}/jobs/{job}").json()
    assert done["status"] == "finished" and len(done["outputs"]) == 400
    assert httpx.get(f"{stack.url}/jobs/{later}").json()["status"] == "queued"
    httpx.delete(f"{stack.url}/jobs/{later}")
    records = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    assert records, "worker wrote no JSON log lines"
    assert any(r.get("job_id") == job and "request_id" in r for r in records)
    assert any("loading slowpoke" in r["msg"] for r in records)


def test_sigterm_gateway_finishes_in_flight_requests(stack: Stack) -> None:
    port = free_port()
    gateway = subprocess.Popen(
        [sys.executable, "-m", "modelgate", "gateway", "--port", str(port)],
        env=process_env(stack.redis_url, stack.config),
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"

    worker = start_worker(stack.redis_url, stack.config, "victim", "victim-gw-term")
    try:
        wait_until(lambda: gateway_up(url), 60, "second gateway")
        worker.proc.send_signal(signal.SIGSTOP)
        result: dict[str, httpx.Response] = {}
        t = threading.Thread(
            target=lambda: result.update(
                r=httpx.post(
                    url + "/models/victim/predict", json={"inputs": "in flight"}, timeout=30
                )
            )
        )
        t.start()
        time.sleep(0.5)
        gateway.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        worker.proc.send_signal(signal.SIGCONT)
        t.join(timeout=30)
        assert result["r"].status_code == 200
        assert gateway.wait(timeout=30) == 0
        with pytest.raises(httpx.ConnectError):
            httpx.get(url + "/healthz", timeout=1)
    finally:
        worker.proc.send_signal(signal.SIGCONT)
        worker.stop()
        if gateway.poll() is None:
            gateway.kill()


def test_rq_info_lists_each_models_queue_and_its_workers(stack: Stack) -> None:
    """RQ's own monitor works on modelgate's Redis: operators can keep their RQ tooling."""
    done = subprocess.run(
        [
            str(Path(sys.executable).parent / "rq"),
            "info",
            "--url",
            stack.redis_url,
            "-R",
            "-S",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    for model in ("minilm", "tiny-cls", "tiny-rerank"):
        assert f"{PREFIX}:{model}" in done.stdout, done.stdout
    assert stack.workers["minilm"].name in done.stdout
