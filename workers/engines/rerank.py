"""Rerank with a cross-encoder: one relevance score per (query, document) item, the sigmoid of
a one-logit model (what sentence-transformers' CrossEncoder and the text-classification pipeline
on the pair give), or the last label's softmax probability for a two-label model. The gateway
orders a request's documents by these scores."""

from __future__ import annotations

from typing import Any

import torch

from contract.tasks import Item
from workers.engines.classification import SequenceScorer
from workers.tasks import Group, InvalidItem


def _pair(item: Item) -> tuple[str, str]:
    if (
        not isinstance(item, dict)
        or not isinstance(item.get("query"), str)
        or not isinstance(item.get("document"), str)
    ):
        raise InvalidItem("a rerank item is an object with string 'query' and 'document'")
    return item["query"], item["document"]


class RerankEngine(SequenceScorer):
    task = "rerank"

    def _loaded(self) -> None:
        super()._loaded()
        if self.config.num_labels > 2:
            raise ValueError(
                f"rerank needs a cross-encoder with one or two outputs; this model has "
                f"{self.config.num_labels} labels"
            )

    def warm_up_input(self) -> Group:
        return [{"query": "modelgate", "document": "warm-up"}], {}

    def _forward(self, items: list[Item], params: dict[str, Any]) -> torch.Tensor:
        queries, documents = zip(*map(_pair, items), strict=True)
        return self.logits(self.encode(list(queries), list(documents)))

    def _outputs(self, rows: torch.Tensor, items: list[Item], params: dict[str, Any]) -> list[Any]:
        if rows.shape[-1] == 1:
            scores = torch.sigmoid(rows[:, 0])
        else:
            scores = torch.softmax(rows, dim=-1)[:, -1]
        values: list[Any] = scores.cpu().tolist()
        return values
