"""``modelgate build-sentiment``: the shipped head on the packaged encoder is a standard
classifier folder that the transformers pipeline loads, with the head's exact weights."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file
from transformers import pipeline

from modelgate.sentiment import HEAD_FILE, REPORT_FILE, build
from tests.conftest import ROOT

pytestmark = pytest.mark.models


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build(tmp_path_factory.mktemp("sentiment") / "model")


def test_the_folder_carries_the_shipped_head_exactly(built: Path) -> None:
    weights = load_file(str(built / "model.safetensors"))
    for key, tensor in load_file(str(HEAD_FILE)).items():
        assert weights[key].equal(tensor), key
    config = json.loads((built / "config.json").read_text())
    assert config["id2label"] == {"0": "negative", "1": "neutral", "2": "positive"}
    assert json.loads((built / "report.json").read_text()) == json.loads(REPORT_FILE.read_text())


def test_the_pipeline_reads_sentiment(built: Path) -> None:
    classify = pipeline("text-classification", model=str(built))
    labels = [p["label"] for p in classify(["I love this phone", "this is terrible"])]
    assert labels == ["positive", "negative"]


def test_the_shipped_report_beats_the_majority_baseline() -> None:
    report = json.loads(REPORT_FILE.read_text())
    assert report["test"]["macro_f1"] > report["baseline"]["macro_f1"] + 0.3
    assert report["pipeline_agrees_with_trained_head"] == 1.0


def test_building_over_an_existing_folder_is_one_clear_line(built: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "modelgate", "build-sentiment", "--out", str(built)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"modelgate build-sentiment: {built}: exists; remove it to build again"
    ]
