"""Text classification: softmax, sigmoid or raw logits as the transformers pipeline picks them;
the best label per input, or the ``top_k`` best as a list."""

from __future__ import annotations

import inspect
from typing import Any

import torch
from transformers import AutoModelForSequenceClassification

from contract.tasks import Item
from workers.engines.base import TaskEngine


class SequenceScorer(TaskEngine):
    """A sequence-classification model's float32 logits, one row per input (or input pair)."""

    auto_class = AutoModelForSequenceClassification

    def _loaded(self) -> None:
        # The pipeline turns the cache off for sequence classification; so do we.
        forward = inspect.signature(self._model.forward).parameters
        self._extra = {"use_cache": False} if "use_cache" in forward else {}

    def logits(self, encoded: dict[str, torch.Tensor]) -> torch.Tensor:
        out: torch.Tensor = self.model(**encoded, **self._extra).logits
        return out.float()


class ClassificationEngine(SequenceScorer):
    task = "text-classification"

    def _forward(self, items: list[Item], params: dict[str, Any]) -> torch.Tensor:
        return self.logits(self.encode([str(i) for i in items]))

    def default_function(self) -> str:
        """What the transformers pipeline applies when the request names no function."""
        config = self.config
        if config.problem_type == "regression":
            return "none"
        if config.problem_type == "multi_label_classification" or config.num_labels == 1:
            return "sigmoid"
        if config.problem_type == "single_label_classification" or config.num_labels > 1:
            return "softmax"
        return str(getattr(config, "function_to_apply", "none"))

    def _outputs(self, rows: torch.Tensor, items: list[Item], params: dict[str, Any]) -> list[Any]:
        function = params.get("function_to_apply") or self.default_function()
        if function == "softmax":
            rows = torch.softmax(rows, dim=-1)
        elif function == "sigmoid":
            rows = torch.sigmoid(rows)
        elif function != "none":
            raise ValueError(f"unknown function_to_apply {function!r}")
        scores: list[list[float]] = rows.cpu().tolist()
        if "top_k" not in params:
            return [self._best(row) for row in scores]
        return [self._ranked(row, params["top_k"]) for row in scores]

    def _best(self, row: list[float]) -> dict[str, Any]:
        best = max(range(len(row)), key=row.__getitem__)
        return {"label": self.config.id2label[best], "score": row[best]}

    def _ranked(self, row: list[float], top_k: int | None) -> list[dict[str, Any]]:
        labels = self.config.id2label
        ranked = sorted(
            ({"label": labels[i], "score": s} for i, s in enumerate(row)),
            key=lambda d: d["score"],
            reverse=True,
        )
        return ranked if top_k is None else ranked[:top_k]
