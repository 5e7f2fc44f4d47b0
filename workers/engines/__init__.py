"""The task engines a worker serves with, by task name: adding a task is one module here and
one line in :data:`ENGINES` (plus its request and response shapes in :mod:`contract.tasks`)."""

from __future__ import annotations

from workers.engines.base import Engine, TaskEngine
from workers.engines.classification import ClassificationEngine
from workers.engines.embedding import EmbeddingEngine
from workers.engines.fill_mask import FillMaskEngine
from workers.engines.question_answering import QuestionAnsweringEngine
from workers.engines.rerank import RerankEngine
from workers.engines.token_classification import TokenClassificationEngine
from workers.engines.zero_shot import ZeroShotEngine

ENGINES: dict[str, type[TaskEngine]] = {
    engine.task: engine
    for engine in (
        EmbeddingEngine,
        ClassificationEngine,
        TokenClassificationEngine,
        ZeroShotEngine,
        FillMaskEngine,
        QuestionAnsweringEngine,
        RerankEngine,
    )
}
"""Task name to the engine that serves it."""

__all__ = ["ENGINES", "Engine", "TaskEngine"]
