"""Feature extraction: one pooled sentence vector per input (mean over the attention mask, or
the CLS token), optionally truncated to Matryoshka ``dimensions``, unit length by default."""

from __future__ import annotations

from typing import Any

import torch
from transformers import AutoModel

from contract.tasks import Item
from workers.engines.base import TaskEngine, mean_pool


class EmbeddingEngine(TaskEngine):
    task = "feature-extraction"
    auto_class = AutoModel

    def _forward(self, items: list[Item], params: dict[str, Any]) -> torch.Tensor:
        encoded = self.encode([str(i) for i in items], side=params.get("truncation_direction"))
        # Pool in float32: under fp16 a sum over many tokens loses digits the reference keeps.
        tokens: torch.Tensor = self.model(**encoded)[0].float()
        if self.spec.pooling == "cls":
            return tokens[:, 0]
        return mean_pool(tokens, encoded["attention_mask"])

    def _outputs(self, rows: torch.Tensor, items: list[Item], params: dict[str, Any]) -> list[Any]:
        return finish_embeddings(rows, params)


def finish_embeddings(rows: torch.Tensor, params: dict[str, Any]) -> list[Any]:
    """Pooled rows as the API returns them: the first ``dimensions`` (Matryoshka), then unit
    length unless ``normalize`` is false."""
    dimensions = params.get("dimensions")
    if dimensions is not None:
        if dimensions > rows.shape[-1]:
            raise ValueError(f"dimensions {dimensions} > the model's {rows.shape[-1]}")
        rows = rows[:, :dimensions]
    if params.get("normalize", True):
        rows = torch.nn.functional.normalize(rows, dim=-1)
    vectors: list[Any] = rows.cpu().tolist()
    return vectors
