"""Token classification (NER): entities with ``start``/``end`` character offsets into the input,
per token or grouped by ``aggregation_strategy``, by the transformers pipeline's own rules."""

from __future__ import annotations

from transformers import AutoModelForTokenClassification

from workers.engines.base import PipelineTask


class TokenClassificationEngine(PipelineTask):
    task = "token-classification"
    pipeline_task = "token-classification"
    auto_class = AutoModelForTokenClassification
