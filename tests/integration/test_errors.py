"""Every error a client can meet, with its status and stable code, against the real stack."""

from __future__ import annotations

import signal
import time
import uuid

import httpx
import pytest
from redis import Redis
from rq.queue import Queue
from rq.serializers import JSONSerializer

from contract.config import load_registry
from contract.jobs import PREDICT_FUNC, PRESENCE_TTL_S, Keys
from gateway.app import create_app
from gateway.dispatch import Dispatcher
from gateway.settings import GatewaySettings
from modelgate.redis_server import free_port
from tests.conftest import PREFIX, Stack, start_worker, wait_until

pytestmark = pytest.mark.integration


def post(stack: Stack, model: str, body: object = None, **kw: object) -> httpx.Response:
    return httpx.post(f"{stack.url}/models/{model}/predict", json=body, timeout=60, **kw)  # type: ignore[arg-type]


def error_of(r: httpx.Response) -> str:
    body = r.json()
    assert set(body["error"]) >= {"code", "message"}
    assert body["error"]["message"]
    return str(body["error"]["code"])


def test_unknown_model_is_404(stack: Stack) -> None:
    r = post(stack, "no-such-model", {"inputs": "x"})
    assert r.status_code == 404 and error_of(r) == "unknown_model"
    assert httpx.get(stack.url + "/models/no-such-model").status_code == 404


@pytest.mark.parametrize(
    "body",
    [
        {"inputs": 5},
        {"inputs": [1, 2]},
        {"inputs": []},
        {},
        {"inputs": "x", "extra": 1},
        {"inputs": "x", "parameters": {"device": "cuda"}},
        {"inputs": "x", "parameters": {"normalize": "maybe"}},
    ],
)
def test_invalid_input_is_422(stack: Stack, body: object) -> None:
    r = post(stack, "minilm", body)
    assert r.status_code == 422, r.text
    assert error_of(r) == "invalid_input"


def test_malformed_json_is_422(stack: Stack) -> None:
    r = httpx.post(
        f"{stack.url}/models/minilm/predict",
        content=b"{not json",
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 422 and error_of(r) == "invalid_input"


def test_parameter_of_another_task_is_named(stack: Stack) -> None:
    r = post(stack, "minilm", {"inputs": "x", "parameters": {"top_k": 2}})
    assert r.status_code == 422
    assert "top_k" in r.json()["error"]["message"]


def test_too_many_inputs_too_long_input_and_huge_body_are_413(stack: Stack) -> None:
    r = post(stack, "minilm", {"inputs": ["x"] * 65})
    assert r.status_code == 413 and error_of(r) == "payload_too_large"
    r = post(stack, "minilm", {"inputs": ["ok", "y" * 2001]})
    assert r.status_code == 413 and "inputs[1]" in r.json()["error"]["message"]
    r = httpx.post(
        f"{stack.url}/models/minilm/predict",
        content=b"x" * (5 * 1024 * 1024),
        headers={"content-type": "application/json"},
        timeout=60,
    )
    assert r.status_code == 413 and error_of(r) == "payload_too_large"


def test_model_without_worker_is_503_at_once(stack: Stack, redis_client: Redis) -> None:
    started = time.monotonic()
    r = post(stack, "ghost", {"inputs": "x"})
    assert r.status_code == 503 and error_of(r) == "model_unavailable"
    assert time.monotonic() - started < 2
    for lane in ("", ":bulk"):  # nothing enqueued into a void, in either lane
        assert redis_client.llen(f"rq:queue:{PREFIX}:ghost{lane}") == 0


def test_too_many_tokens_with_truncation_off_is_413(stack: Stack) -> None:
    # tiny-strict has 32 positions and truncation off: a long input is rejected, not run.
    r = post(stack, "tiny-strict", {"inputs": ["fine", " ".join(["word"] * 100)]})
    assert r.status_code == 413, r.text
    assert error_of(r) == "payload_too_large"
    assert "at most 32" in r.json()["error"]["message"]
    assert "Traceback" not in r.text
    # the worker survives and serves the next request
    assert post(stack, "tiny-strict", {"inputs": "short"}).status_code == 200


def test_too_many_tokens_on_the_pipeline_engine_is_413_too(stack: Stack) -> None:
    # tiny-pipe runs the plain transformers pipeline (fast_path: false), 32 positions.
    r = post(stack, "tiny-pipe", {"inputs": " ".join(["word"] * 100)})
    assert r.status_code == 413 and error_of(r) == "payload_too_large", r.text
    assert post(stack, "tiny-pipe", {"inputs": "short"}).status_code == 200


def test_a_job_the_model_raises_on_fails_with_inference_failed(
    stack: Stack, redis_client: Redis
) -> None:
    # Written straight into Redis, past the gateway's validation: the pipeline itself raises.
    queue = Queue(f"{PREFIX}:tiny-pipe", connection=redis_client, serializer=JSONSerializer)
    job = queue.enqueue(
        PREDICT_FUNC,
        kwargs={"inputs": ["x"], "parameters": {"function_to_apply": "bogus"}},
        meta={"model": "tiny-pipe"},
        result_ttl=60,
        failure_ttl=60,
        job_id=uuid.uuid4().hex,
    )
    wait_until(lambda: job.get_status(refresh=True) == "failed", 15, "the job to fail")
    state = httpx.get(f"{stack.url}/jobs/{job.id}").json()
    assert state["status"] == "failed"
    assert state["error"]["code"] == "inference_failed"
    assert "Traceback" not in state["error"]["message"]
    assert post(stack, "tiny-pipe", {"inputs": "still serving"}).status_code == 200


def test_stopped_worker_gives_503_within_seconds(stack: Stack) -> None:
    worker = start_worker(stack.redis_url, stack.config, "victim", "victim-stop")
    assert post(stack, "victim", {"inputs": "x"}).status_code == 200
    assert worker.stop(signal.SIGTERM) == 0
    started = time.monotonic()
    r = post(stack, "victim", {"inputs": "x"})
    assert r.status_code == 503 and error_of(r) == "model_unavailable"
    assert time.monotonic() - started < 2


def test_killed_worker_gives_503_within_seconds(stack: Stack) -> None:
    worker = start_worker(stack.redis_url, stack.config, "victim", "victim-kill")
    assert post(stack, "victim", {"inputs": "x"}).status_code == 200
    worker.stop(signal.SIGKILL)
    killed = time.monotonic()
    wait_until(
        lambda: post(stack, "victim", {"inputs": "x"}).status_code == 503, 10, "503 after SIGKILL"
    )
    assert time.monotonic() - killed < PRESENCE_TTL_S + 3


def test_job_over_timeout_is_504(stack: Stack) -> None:
    worker = start_worker(stack.redis_url, stack.config, "victim", "victim-slow")
    try:
        assert post(stack, "victim", {"inputs": "x"}).status_code == 200
        worker.proc.send_signal(signal.SIGSTOP)  # a worker that stops making progress
        started = time.monotonic()
        r = post(stack, "victim", {"inputs": "not cached yet"})
        elapsed = time.monotonic() - started
        assert r.status_code == 504 and error_of(r) == "inference_timeout"
        assert 1.5 <= elapsed < 6  # victim's timeout_s is 2
    finally:
        worker.proc.send_signal(signal.SIGCONT)
        worker.stop()


async def test_redis_down_is_503_redis_unavailable(stack: Stack) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    settings = GatewaySettings(config=str(stack.config), redis_url=dead, prefix=PREFIX)
    dispatcher = Dispatcher(dead, Keys(PREFIX))
    app = create_app(settings, registry=load_registry(stack.config), dispatcher=dispatcher)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
        started = time.monotonic()
        r = await client.post("/models/minilm/predict", json={"inputs": "x"})
        assert r.status_code == 503 and error_of(r) == "redis_unavailable"
        assert time.monotonic() - started < 3
        ready = await client.get("/readyz")
        assert ready.status_code == 503
        assert (await client.get("/healthz")).status_code == 200
    await dispatcher.close()


def test_unknown_path_and_method_are_json(stack: Stack) -> None:
    r = httpx.get(stack.url + "/nope")
    assert r.status_code == 404 and error_of(r) == "not_found"
    r = httpx.get(stack.url + "/models/minilm/predict")
    assert r.status_code == 405 and error_of(r) == "method_not_allowed"
