"""Feature extraction: one pooled sentence vector per input (mean over the attention mask, or
the CLS token), optionally truncated to Matryoshka ``dimensions``, unit length by default."""

from __future__ import annotations

from typing import Any

import torch
from transformers import AutoModel

from contract.tasks import TOKEN_IDS, Item
from workers.engines.base import TaskEngine, mean_pool, too_long
from workers.tasks import InvalidItem


class EmbeddingEngine(TaskEngine):
    task = "feature-extraction"
    auto_class = AutoModel

    def _forward(self, items: list[Item], params: dict[str, Any]) -> torch.Tensor:
        side = params.get("truncation_direction")
        if all(isinstance(item, str) for item in items):
            encoded = self.encode([str(i) for i in items], side=side)
        else:
            encoded = self.encode_ids([self._ids(item, side) for item in items])
        # Pool in float32: under fp16 a sum over many tokens loses digits the reference keeps.
        tokens: torch.Tensor = self.model(**encoded)[0].float()
        if self.spec.pooling == "cls":
            return tokens[:, 0]
        return mean_pool(tokens, encoded["attention_mask"])

    def _ids(self, item: Item, side: str | None) -> list[int]:
        """One input as the model's token ids: a text tokenized, given ids checked; cut to the
        model's limit (from ``side``) when truncation is on, refused when it is off."""
        truncate = self.spec.truncation
        if isinstance(item, str):
            with self.cut_from(side):
                ids: list[int] = self.tokenizer(
                    item, truncation=truncate, max_length=self.max_tokens if truncate else None
                )["input_ids"]
        else:
            ids = item.get(TOKEN_IDS)  # type: ignore[assignment]
            vocab = len(self.tokenizer)
            if (
                not isinstance(ids, list)
                or not ids
                or not all(type(i) is int and 0 <= i < vocab for i in ids)
            ):
                raise InvalidItem(
                    f"token ids must be a non-empty list of integers from 0 to {vocab - 1} "
                    f"(the vocabulary of model {self.spec.name!r})"
                )
        if len(ids) <= self.max_tokens:
            return ids
        if not truncate:
            raise too_long(self.spec.name, len(ids), self.max_tokens)
        keep = self.max_tokens
        cut_left = (side or self.tokenizer.truncation_side) == "left"
        return ids[-keep:] if cut_left else ids[:keep]

    def encode_ids(self, ids: list[list[int]]) -> dict[str, torch.Tensor]:
        """A padded batch of token-id inputs on the model's device."""
        padded = self.tokenizer.pad({"input_ids": ids}, padding=True, return_tensors="pt")
        return {k: v.to(self.device, non_blocking=True) for k, v in padded.items()}

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
