"""The fast path: a tokenizer and a bare model instead of a transformers pipeline.

A pipeline tokenizes, collates and post-processes every input on its own in Python; on a GPU that
overhead, not the model, sets the throughput. An engine here makes one batched tokenizer call per
chunk of ``max_batch_size`` inputs, one forward pass per chunk under ``torch.inference_mode``,
pools or scores in torch on the model's device, and moves the result to the host once. It returns
what :class:`workers.pipelines.PipelineEngine` returns for the same inputs and parameters, within
floating-point tolerance (the tests state it), and raises a clear error where the pipeline would
fail deep inside the model.
"""

from __future__ import annotations

import inspect
import logging
import time
from typing import Any, ClassVar

import torch
from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer

from contract.config import ModelSpec
from workers.tasks import InputTooLong

log = logging.getLogger("modelgate.worker")

NO_LIMIT = 1_000_000
"""Stands in for a tokenizer or model that declares no maximum length."""


class InputTooLongError(InputTooLong):
    """An input has more tokens than the model takes, and the model's truncation is off."""


def token_limit(tokenizer: Any, config: Any) -> int:
    """The most tokens one input may have: the tokenizer's maximum, capped by the model's
    position embeddings when a locally built model has fewer than its tokenizer claims."""
    declared = getattr(tokenizer, "model_max_length", None) or NO_LIMIT
    positions = getattr(config, "max_position_embeddings", None) or NO_LIMIT
    return int(min(declared, positions, NO_LIMIT))


class FastEngine:
    """Tokenizer plus bare model on one device; subclasses add the task's head and outputs."""

    task: ClassVar[str]
    params: ClassVar[frozenset[str]]

    def __init__(
        self, spec: ModelSpec, location: str, device: str, dtype: torch.dtype, fingerprint: str
    ) -> None:
        self.spec = spec
        self.location = location
        self.device = device
        self.fingerprint = fingerprint
        started = time.perf_counter()
        log.info("loading %s (%s, fast path) from %s on %s", spec.name, spec.task, location, device)
        revision = {"revision": spec.source.revision} if spec.source.revision else {}
        self.tokenizer = AutoTokenizer.from_pretrained(location, **revision)
        self.model = self._load_model(location, dtype=dtype, **revision).to(device).eval()
        self.config: Any = self.model.config
        self.max_tokens = token_limit(self.tokenizer, self.config)
        self.load_s = time.perf_counter() - started
        log.info("loaded %s in %.1f s", spec.name, self.load_s)

    def _load_model(self, location: str, **kwargs: Any) -> torch.nn.Module:
        raise NotImplementedError

    def _forward(self, encoded: dict[str, torch.Tensor]) -> torch.Tensor:
        """One float32 row per input, still on the model's device."""
        raise NotImplementedError

    def _outputs(self, rows: torch.Tensor, params: dict[str, Any]) -> list[Any]:
        """The JSON value of each row, in order."""
        raise NotImplementedError

    def __call__(self, inputs: list[str], params: dict[str, Any]) -> list[Any]:
        unknown = set(params) - self.params
        if unknown:
            names = ", ".join(sorted(unknown))
            raise ValueError(f"parameters not accepted by {self.task}: {names}")
        if not inputs:
            return []
        with torch.inference_mode():
            return self._outputs(self._rows(inputs), params)

    def _rows(self, inputs: list[str]) -> torch.Tensor:
        size = self.spec.max_batch_size
        if len(inputs) <= size:
            return self._forward(self._encode(inputs))
        # Chunks of similar length waste less compute on padding; the rows go back in input order.
        order = sorted(range(len(inputs)), key=lambda i: len(inputs[i]))
        chunks = [order[k : k + size] for k in range(0, len(order), size)]
        rows = torch.cat([self._forward(self._encode([inputs[i] for i in c])) for c in chunks])
        restore = torch.tensor(order).argsort()
        return rows[restore.to(rows.device)]

    def _encode(self, texts: list[str]) -> dict[str, torch.Tensor]:
        truncate = self.spec.truncation
        encoded = self.tokenizer(
            texts,
            padding=True,
            truncation=truncate,
            max_length=self.max_tokens if truncate else None,
            return_tensors="pt",
        )
        if not truncate and encoded["input_ids"].shape[1] > self.max_tokens:
            longest = int(encoded["attention_mask"].sum(dim=1).max())
            raise InputTooLongError(
                f"an input has {longest} tokens but model {self.spec.name!r} takes at most "
                f"{self.max_tokens} and its truncation is off"
            )
        return {k: v.to(self.device, non_blocking=True) for k, v in encoded.items()}

    def warm_up(self) -> float:
        started = time.perf_counter()
        self(["modelgate warm-up"], {})
        return time.perf_counter() - started


class EmbeddingEngine(FastEngine):
    """Feature extraction: mean (over the attention mask) or CLS pooling, optionally unit length."""

    task = "feature-extraction"
    params = frozenset({"normalize"})

    def _load_model(self, location: str, **kwargs: Any) -> torch.nn.Module:
        model: torch.nn.Module = AutoModel.from_pretrained(location, **kwargs)
        return model

    def _forward(self, encoded: dict[str, torch.Tensor]) -> torch.Tensor:
        # Pool in float32: under fp16 a sum over many tokens loses digits the reference keeps.
        tokens: torch.Tensor = self.model(**encoded)[0].float()
        if self.spec.pooling == "cls":
            return tokens[:, 0]
        mask = encoded["attention_mask"].unsqueeze(-1).to(tokens.dtype)
        return (tokens * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)

    def _outputs(self, rows: torch.Tensor, params: dict[str, Any]) -> list[Any]:
        if params.get("normalize", True):
            rows = torch.nn.functional.normalize(rows, dim=-1)
        vectors: list[Any] = rows.cpu().tolist()
        return vectors


class ClassificationEngine(FastEngine):
    """Text classification: softmax, sigmoid or raw logits as the HF pipeline picks them; the best
    label per input, or the ``top_k`` best as a list."""

    task = "text-classification"
    params = frozenset({"top_k", "function_to_apply"})

    def _load_model(self, location: str, **kwargs: Any) -> torch.nn.Module:
        model: torch.nn.Module = AutoModelForSequenceClassification.from_pretrained(
            location, **kwargs
        )
        # The pipeline turns the cache off for sequence classification; so do we.
        self._no_cache = "use_cache" in inspect.signature(model.forward).parameters
        return model

    def _forward(self, encoded: dict[str, torch.Tensor]) -> torch.Tensor:
        extra = {"use_cache": False} if self._no_cache else {}
        logits: torch.Tensor = self.model(**encoded, **extra).logits
        return logits.float()

    def default_function(self) -> str:
        """What the HF pipeline applies when the request names no function."""
        config = self.config
        if config.problem_type == "regression":
            return "none"
        if config.problem_type == "multi_label_classification" or config.num_labels == 1:
            return "sigmoid"
        if config.problem_type == "single_label_classification" or config.num_labels > 1:
            return "softmax"
        return str(getattr(config, "function_to_apply", "none"))

    def _outputs(self, rows: torch.Tensor, params: dict[str, Any]) -> list[Any]:
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


FAST_ENGINES: dict[str, type[FastEngine]] = {
    EmbeddingEngine.task: EmbeddingEngine,
    ClassificationEngine.task: ClassificationEngine,
}
"""Task name to the fast-path engine that serves it."""
