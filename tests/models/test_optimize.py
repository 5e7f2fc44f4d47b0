"""Dynamic int8 and torch.compile keep outputs within their stated tolerances."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.models.cases import (
    COMPILE_TOL,
    INT8_MEAN_COSINE,
    INT8_MIN_COSINE,
    TEXTS,
    assert_same_labels,
    classifier_spec,
    cosines,
    minilm_spec,
)
from workers.optimize import warm_up_batches
from workers.pipelines import PipelineEngine, build_engine

pytestmark = pytest.mark.models

QUERIES = ["How do I reset my password?", "Stock markets fell sharply", "A man plays guitar"]
DOCS = [
    "I forgot my password and need to change it",
    "Shares dropped on Wall Street today",
    "Someone is performing music on a guitar",
    "The cat sat on the mat",
]


def layer_types(model: torch.nn.Module) -> list[str]:
    return [f"{type(m).__module__}.{type(m).__name__}" for m in model.modules()]


@pytest.mark.parametrize("fast_path", [True, False])
def test_dynamic_int8_embeddings_keep_their_direction(
    minilm_pipeline: PipelineEngine, fast_path: bool
) -> None:
    engine = build_engine(minilm_spec(quantize="dynamic-int8", fast_path=fast_path))
    types = layer_types(engine.model)
    # 6 layers x (q, k, v, out, up, down) + the pooler; no float Linear left.
    assert types.count("torch.ao.nn.quantized.dynamic.modules.linear.Linear") == 37
    assert "torch.nn.modules.linear.Linear" not in types
    similarity = cosines(engine(TEXTS, {}), minilm_pipeline(TEXTS, {}))
    assert float(similarity.min()) > INT8_MIN_COSINE
    assert float(similarity.mean()) > INT8_MEAN_COSINE


def test_dynamic_int8_keeps_nearest_neighbours() -> None:
    engine = build_engine(minilm_spec(quantize="dynamic-int8"))
    queries = engine(QUERIES, {})
    docs = engine(DOCS, {})
    nearest = (torch.tensor(queries) @ torch.tensor(docs).T).argmax(dim=1)
    assert nearest.tolist() == list(range(len(QUERIES)))


def test_warm_up_covers_single_inputs_and_batches_within_the_model_limit() -> None:
    def lengths(batches: list[list[str]]) -> set[int]:
        return {len(t.split()) for b in batches for t in b}

    batches = warm_up_batches(max_batch_size=32, max_tokens=512)
    assert {len(b) for b in batches} == {1, 4}
    assert lengths(batches) == {8, 48, 160}
    assert lengths(warm_up_batches(max_batch_size=2, max_tokens=32)) == {8, 30}


def test_compiled_model_matches_eager_and_never_recompiles_after_warm_up(
    model_dirs: dict[str, Path],
) -> None:
    # One compile test, on the 2-layer classifier: compiling MiniLM on CPU takes a minute.
    eager = build_engine(classifier_spec(model_dirs["tiny"]))
    compiled = build_engine(classifier_spec(model_dirs["tiny"], compile=True))
    # After the start-up warm-up, new lengths and batch sizes must not compile anything.
    texts = [*TEXTS, "seven words in this one right here", "x " * 70]
    with torch._dynamo.config.patch(error_on_recompile=True):
        for params in ({}, {"top_k": None}):
            assert_same_labels(compiled(texts, params), eager(texts, params), COMPILE_TOL)
        assert_same_labels(compiled(["one alone"], {}), eager(["one alone"], {}), COMPILE_TOL)
