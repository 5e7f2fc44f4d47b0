"""Engines on real small models, loaded once per session: MiniLM (the packaged
all-MiniLM-L6-v2) and the tiny BERT classifier from ``tests.modelfactory``."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.models.cases import classifier_spec, minilm_spec
from workers.engines import Engine
from workers.pipelines import PipelineEngine, build_engine


@pytest.fixture(autouse=True, scope="session")
def _quiet_transformers() -> None:
    import transformers

    transformers.utils.logging.disable_progress_bar()  # type: ignore[no-untyped-call]


@pytest.fixture(scope="session")
def minilm_pipeline() -> PipelineEngine:
    return PipelineEngine(minilm_spec(fast_path=False))


@pytest.fixture(scope="session")
def minilm_fast() -> Engine:
    return build_engine(minilm_spec(max_batch_size=4))


@pytest.fixture(scope="session")
def tiny_pipeline(model_dirs: dict[str, Path]) -> PipelineEngine:
    return PipelineEngine(classifier_spec(model_dirs["tiny"], fast_path=False))


@pytest.fixture(scope="session")
def tiny_fast(model_dirs: dict[str, Path]) -> Engine:
    return build_engine(classifier_spec(model_dirs["tiny"]))
