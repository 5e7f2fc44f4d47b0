"""A worker of an ``engine: onnx`` model, end to end: it exports MiniLM on its first start (into
``MODELGATE_EXPORT_DIR``), announces the engine it serves with, and answers through the gateway
what the torch worker of the same weights answers."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.conftest import Stack, start_worker
from tests.models.cases import FP32_TOL, TEXTS
from workers.runtime import MANIFEST

pytestmark = pytest.mark.integration

NO_STORE = {"Cache-Control": "no-store"}


def vectors(stack: Stack, model: str) -> np.ndarray:
    r = httpx.post(
        f"{stack.url}/models/{model}/predict", json={"inputs": TEXTS}, headers=NO_STORE, timeout=60
    )
    assert r.status_code == 200, r.text
    return np.array(r.json()["outputs"])


def test_an_onnx_worker_exports_once_and_answers_as_the_torch_one(
    stack: Stack, tmp_path: Path
) -> None:
    exports = tmp_path / "exports"
    log = stack.log_dir / "minilm-onnx.log"
    worker = start_worker(
        stack.redis_url,
        stack.config,
        "minilm-onnx",
        "minilm-onnx-w0",
        log_path=log,
        MODELGATE_EXPORT_DIR=str(exports),
    )
    try:
        assert len(list(exports.glob(f"minilm-onnx/*/{MANIFEST}"))) == 1
        got, want = vectors(stack, "minilm-onnx"), vectors(stack, "minilm")
        assert got.shape == want.shape == (len(TEXTS), 384)
        assert float(np.abs(got - want).max()) < FP32_TOL
        info = httpx.get(f"{stack.url}/models/minilm-onnx", timeout=10).json()
        assert [w["engine"] for w in info["workers"]] == ["onnx"]
    finally:
        worker.stop()
    restarted = start_worker(
        stack.redis_url,
        stack.config,
        "minilm-onnx",
        "minilm-onnx-w1",
        log_path=log,
        MODELGATE_EXPORT_DIR=str(exports),
    )
    try:
        text = log.read_text()
        assert text.count("exporting minilm-onnx to ONNX") == 1, "the second start exported again"
        assert "using the ONNX export in" in text
        assert float(np.abs(vectors(stack, "minilm-onnx") - want).max()) < FP32_TOL
    finally:
        restarted.stop()
