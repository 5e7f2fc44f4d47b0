"""Predict through the real gateway, Redis and worker processes."""

from __future__ import annotations

import asyncio
import math
from datetime import UTC, datetime

import httpx
import numpy as np
import pytest
from sentence_transformers import SentenceTransformer

from tests.conftest import Stack
from tests.modelfactory import MINILM_DIR

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def reference() -> SentenceTransformer:
    return SentenceTransformer(str(MINILM_DIR), device="cpu")


def predict(stack: Stack, model: str, body: object, **kw: object) -> httpx.Response:
    return httpx.post(f"{stack.url}/models/{model}/predict", json=body, timeout=60, **kw)  # type: ignore[arg-type]


def test_single_string_gives_one_unit_vector_equal_to_sentence_transformers(
    stack: Stack, reference: SentenceTransformer
) -> None:
    r = predict(stack, "minilm", {"inputs": "hello"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "minilm"
    vec = np.array(body["outputs"])
    assert vec.shape == (384,)
    assert math.isclose(float(np.linalg.norm(vec)), 1.0, abs_tol=1e-5)
    expected = reference.encode(["hello"], normalize_embeddings=True)[0]
    assert np.abs(vec - expected).max() < 1e-5
    assert r.headers["x-request-id"]


def test_list_keeps_order_and_matches_reference(
    stack: Stack, reference: SentenceTransformer
) -> None:
    texts = [
        "a short one",
        "a considerably longer sentence that pads the others in a batch",
        "x",
        "",
    ]
    r = predict(stack, "minilm", {"inputs": texts})
    assert r.status_code == 200, r.text
    got = np.array(r.json()["outputs"])
    expected = reference.encode(texts, normalize_embeddings=True)
    assert got.shape == (4, 384)
    assert np.abs(got - expected).max() < 1e-5


def test_normalize_false_returns_raw_mean_pooling(
    stack: Stack, reference: SentenceTransformer
) -> None:
    r = predict(stack, "minilm", {"inputs": ["hello world"], "parameters": {"normalize": False}})
    assert r.status_code == 200, r.text
    got = np.array(r.json()["outputs"][0])
    # all-MiniLM-L6-v2 ends in a Normalize module, so the reference is always unit length:
    # the raw mean pooling must point the same way and not be unit length itself.
    expected = reference.encode(["hello world"], normalize_embeddings=True)[0]
    assert np.abs(got / np.linalg.norm(got) - expected).max() < 1e-5
    assert np.linalg.norm(got) > 1.5


def test_fifty_concurrent_distinct_requests_each_get_their_own_answer(
    stack: Stack, reference: SentenceTransformer
) -> None:
    texts = [f"request number {i} about topic {i * 7 % 13}" for i in range(50)]

    async def run() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=stack.url, timeout=120) as client:
            return await asyncio.gather(
                *(client.post("/models/minilm/predict", json={"inputs": t}) for t in texts)
            )

    responses = asyncio.run(run())
    assert [r.status_code for r in responses] == [200] * 50
    got = np.array([r.json()["outputs"] for r in responses])
    expected = reference.encode(texts, normalize_embeddings=True)
    assert np.abs(got - expected).max() < 1e-5
    assert len({r.headers["x-request-id"] for r in responses}) == 50


def test_text_classification_labels_and_top_k(stack: Stack) -> None:
    r = predict(stack, "tiny-cls", {"inputs": ["good", "bad"]})
    assert r.status_code == 200, r.text
    outs = r.json()["outputs"]
    assert len(outs) == 2
    for out in outs:
        assert out["label"] in {"negative", "positive"}
        assert 0.5 <= out["score"] <= 1.0
    r = predict(stack, "tiny-cls", {"inputs": "good", "parameters": {"top_k": 2}})
    assert r.status_code == 200, r.text
    ranked = r.json()["outputs"]
    assert {o["label"] for o in ranked} == {"negative", "positive"}
    assert math.isclose(sum(o["score"] for o in ranked), 1.0, abs_tol=1e-5)
    assert ranked[0]["score"] >= ranked[1]["score"]


def test_service_endpoints(stack: Stack) -> None:
    root = httpx.get(stack.url + "/").json()
    assert root["service"] == "modelgate" and "minilm" in root["models"]
    assert httpx.get(stack.url + "/healthz").json() == {"status": "ok"}
    models = {m["name"]: m for m in httpx.get(stack.url + "/models").json()}
    assert models["minilm"]["ready"] is True and models["minilm"]["live_workers"] >= 1
    assert models["ghost"]["ready"] is False and models["ghost"]["live_workers"] == 0
    assert "workers" not in models["minilm"], "no null where a list is meant"
    one = httpx.get(stack.url + "/models/minilm").json()
    worker = one["workers"][0]
    assert worker["device"] == "cpu" and worker["fingerprint"].startswith("sha256:")
    assert isinstance(worker["pid"], int) and worker["pid"] > 0
    ready_at = datetime.fromisoformat(worker["ready_at"])  # ISO 8601, like the jobs' times
    assert ready_at.tzinfo is not None and ready_at < datetime.now(UTC)
    assert one["queue_depth"] == 0
    # ghost has no worker, so the whole service is not ready
    ready = httpx.get(stack.url + "/readyz")
    assert ready.status_code == 503
    assert ready.json()["models"]["minilm"] >= 1
    assert httpx.get(stack.url + "/docs").status_code == 200
    assert httpx.get(stack.url + "/redoc").status_code == 200
    spec = httpx.get(stack.url + "/openapi.json").json()
    assert "/models/minilm/predict" in spec["paths"]
