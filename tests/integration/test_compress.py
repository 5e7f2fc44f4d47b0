"""A distilled student end to end: ``modelgate distill`` (the CLI, in its own process) writes a
folder and a models.yaml entry; that entry, pasted into a models.yaml, is served by a normal
worker behind a normal gateway, and answers what the saved model computes."""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import torch
import yaml
from transformers import AutoModel, AutoTokenizer

from modelgate.redis_server import RedisServer, free_port
from tests.conftest import ROOT, gateway_up, process_env, start_worker, wait_until
from tests.modelfactory import build_tiny

pytestmark = pytest.mark.integration

TEXTS = ["the student answers", "a second, longer sentence for the student to embed"]


def test_a_distilled_student_is_served_by_a_worker_through_the_gateway(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    teacher = build_tiny("feature-extraction", tmp_path / "teacher", layers=4)
    rng = random.Random(0)
    words = [
        "red",
        "green",
        "blue",
        "fast",
        "slow",
        "river",
        "music",
        "phone",
        "rain",
        "sunny",
        "city",
    ]
    corpus = tmp_path / "texts.txt"
    corpus.write_text(
        "\n".join(" ".join(rng.choice(words) for _ in range(8)) + f" {i}" for i in range(200))
    )
    out = tmp_path / "student"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "modelgate",
            "distill",
            str(teacher),
            "--corpus",
            str(corpus),
            "--out",
            str(out),
            "--steps",
            "10",
            "--batch-size",
            "8",
            "--eval-texts",
            "20",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "step 10/10: loss" in done.stdout  # a line per tenth when not on a terminal

    entry = yaml.safe_load((out / "models-entry.yaml").read_text())
    [spec] = entry
    spec["name"] = "tiny-student"
    config = tmp_path / "models.yaml"
    config.write_text(yaml.safe_dump({"models": [spec]}))

    port = free_port()
    log = (tmp_path / "gateway.log").open("ab")
    gateway = subprocess.Popen(
        [sys.executable, "-m", "modelgate", "gateway", "--port", str(port)],
        env=process_env(redis_server.url, config),
        cwd=ROOT,
        stdout=log,
        stderr=log,
    )
    worker = start_worker(
        redis_server.url,
        config,
        "tiny-student",
        "tiny-student-w0",
        log_path=tmp_path / "worker.log",
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: gateway_up(url), 60, "gateway")
        r = httpx.post(f"{url}/models/tiny-student/predict", json={"inputs": TEXTS}, timeout=60)
        assert r.status_code == 200, r.text
        served = torch.tensor(r.json()["outputs"])
    finally:
        worker.stop()
        gateway.terminate()
        try:
            gateway.wait(timeout=20)
        except subprocess.TimeoutExpired:
            gateway.kill()
            gateway.wait()
        log.close()
    # What the saved folder computes (mean pooled, unit length), loaded by plain transformers.
    tokenizer, model = AutoTokenizer.from_pretrained(out), AutoModel.from_pretrained(out).eval()
    assert model.config.num_hidden_layers == 2
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        tokens = model(**batch)[0]
    mask = batch["attention_mask"].unsqueeze(-1).float()
    want = torch.nn.functional.normalize((tokens * mask).sum(1) / mask.sum(1), dim=-1)
    assert served.shape == (2, 32)
    torch.testing.assert_close(served, want, atol=1e-5, rtol=1e-5)
