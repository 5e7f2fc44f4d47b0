"""The fast path returns what the reference pipeline returns, within FP32_TOL on CPU."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.models.cases import (
    FP32_TOL,
    TEXTS,
    assert_same_labels,
    classifier_spec,
    max_abs_diff,
    minilm_spec,
    with_config,
)
from workers.engines import Engine
from workers.engines.classification import ClassificationEngine
from workers.engines.embedding import EmbeddingEngine
from workers.pipelines import PipelineEngine, build_engine
from workers.tasks import InputTooLong

pytestmark = pytest.mark.models


def test_fast_path_is_the_default_and_pipeline_is_opt_out(
    minilm_fast: Engine, minilm_pipeline: PipelineEngine
) -> None:
    assert isinstance(minilm_fast, EmbeddingEngine)
    assert minilm_fast.device == "cpu"
    assert minilm_fast.fingerprint == minilm_pipeline.fingerprint


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("texts", [TEXTS[:3], TEXTS], ids=["one-chunk", "chunked"])
def test_mean_pooled_embeddings_match_pipeline(
    minilm_fast: Engine, minilm_pipeline: PipelineEngine, texts: list[str], normalize: bool
) -> None:
    want = minilm_pipeline(texts, {"normalize": normalize})
    got = minilm_fast(texts, {"normalize": normalize})
    assert len(got) == len(texts) and all(len(v) == 384 for v in got)
    assert all(isinstance(x, float) for x in got[0])
    assert max_abs_diff(got, want) <= FP32_TOL


def test_default_normalizes_to_unit_length(minilm_fast: Engine) -> None:
    for vector in minilm_fast(TEXTS, {}):
        assert abs(sum(x * x for x in vector) - 1.0) < 1e-5


def test_cls_pooling_matches_pipeline() -> None:
    reference = PipelineEngine(minilm_spec(pooling="cls", fast_path=False))
    fast = build_engine(minilm_spec(pooling="cls"))
    for normalize in (True, False):
        params = {"normalize": normalize}
        assert max_abs_diff(fast(TEXTS, params), reference(TEXTS, params)) <= FP32_TOL


def test_long_input_is_truncated_as_the_pipeline_does(
    minilm_fast: Engine, minilm_pipeline: PipelineEngine
) -> None:
    texts = ["word " * 2000, "short"]
    assert max_abs_diff(minilm_fast(texts, {}), minilm_pipeline(texts, {})) <= FP32_TOL


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"top_k": 1},
        {"top_k": 2},
        {"top_k": None},
        {"function_to_apply": "sigmoid"},
        {"function_to_apply": "none", "top_k": 2},
        {"function_to_apply": "softmax", "top_k": 5},
    ],
)
def test_classification_matches_pipeline(
    tiny_fast: Engine, tiny_pipeline: PipelineEngine, params: dict[str, object]
) -> None:
    assert isinstance(tiny_fast, ClassificationEngine)
    assert_same_labels(tiny_fast(TEXTS, params), tiny_pipeline(TEXTS, params))


@pytest.mark.parametrize(
    ("problem_type", "function"),
    [("multi_label_classification", "sigmoid"), ("regression", "none")],
)
def test_default_function_follows_problem_type_like_pipeline(
    model_dirs: dict[str, Path], tmp_path: Path, problem_type: str, function: str
) -> None:
    path = with_config(model_dirs["tiny"], tmp_path / "m", problem_type=problem_type)
    fast = build_engine(classifier_spec(path))
    reference = PipelineEngine(classifier_spec(path, fast_path=False))
    assert isinstance(fast, ClassificationEngine) and fast.default_function() == function
    for params in ({}, {"top_k": None}):
        assert_same_labels(fast(TEXTS, params), reference(TEXTS, params))


def test_too_long_input_without_truncation_fails_clearly(model_dirs: dict[str, Path]) -> None:
    engine = build_engine(classifier_spec(model_dirs["tiny32"], truncation=False))
    assert engine.max_tokens == 32
    with pytest.raises(InputTooLong, match=r"102 tokens .* at most 32 .*truncation is off"):
        engine(["short", " ".join(["word"] * 100)], {})
    assert len(engine(["short"], {})) == 1


def test_truncation_caps_at_the_models_positions(model_dirs: dict[str, Path]) -> None:
    # Its tokenizer claims 512 tokens but the model has 32 positions: cut at 32, not crash.
    engine = build_engine(classifier_spec(model_dirs["tiny32"]))
    assert engine.max_tokens == 32
    [result] = engine([" ".join(["word"] * 100)], {})
    assert 0.0 <= result["score"] <= 1.0


def test_unknown_parameter_and_empty_batch(minilm_fast: Engine) -> None:
    with pytest.raises(ValueError, match="not accepted by feature-extraction: top_k"):
        minilm_fast(["x"], {"top_k": 1})
    assert minilm_fast([], {}) == []


def passes_of(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The inputs of each forward pass ``engine`` makes from now on."""
    seen: list[list[str]] = []
    forward = engine._forward  # type: ignore[attr-defined]

    def spy(items: list[str], params: dict[str, object]) -> object:
        seen.append(list(items))
        return forward(items, params)

    monkeypatch.setattr(engine, "_forward", spy)
    return seen


def test_a_token_budget_changes_the_passes_never_an_output(
    minilm_pipeline: PipelineEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """max_batch_tokens 256: short queries go through together, each long passage in a pass of
    its own (within the budget, padding counted); every embedding stays the pipeline's. With
    0, no budget: one pass of everything."""
    passage = "the market rose sharply after the report on the river bridge " * 12
    texts = ["quick search", passage, "password reset", f"{passage} again", "weather"]
    budgeted = build_engine(minilm_spec(max_batch_tokens=256))
    seen = passes_of(budgeted, monkeypatch)
    got = budgeted(texts, {})
    assert max_abs_diff(got, minilm_pipeline(texts, {})) <= FP32_TOL
    assert seen == [["weather", "quick search", "password reset"], [passage], [f"{passage} again"]]
    for chunk in seen:
        lengths = budgeted.count_tokens(list(chunk))
        assert len(chunk) * max(lengths) <= 256 or len(chunk) == 1
    unbudgeted = build_engine(minilm_spec(max_batch_tokens=0))
    seen = passes_of(unbudgeted, monkeypatch)
    assert max_abs_diff(unbudgeted(texts, {}), got) <= FP32_TOL
    assert seen == [texts]
