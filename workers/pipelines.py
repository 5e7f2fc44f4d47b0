"""Loading one models.yaml entry as the engine a worker serves with.

Hub models load with ``from_pretrained`` semantics at their pinned revision; local and packaged
models load from their folder. :func:`build_engine` is what a worker calls: it places the model
(``device``, ``dtype``), picks the task's engine from :data:`workers.engines.ENGINES` (or, with
``fast_path: false`` for feature extraction and text classification, this module's
:class:`PipelineEngine`, the transformers pipeline itself, kept as the reference), and applies
``quantize`` and ``compile`` (:mod:`workers.optimize`) before the worker announces itself.

Threads: a worker sets torch's intra-op threads from ``--threads``, else the entry's ``threads``,
else torch's default (every core). ``modelgate up`` passes ``--threads`` itself when an entry sets
none: the host's cores divided among the CPU worker processes it starts (at least one each;
see :meth:`contract.config.Registry.worker_threads`), so several CPU workers on one machine do
not oversubscribe its cores.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import FeatureExtractionPipeline, Pipeline, pipeline

from contract.config import ModelSpec, resolve_source
from contract.tasks import Item
from workers.engines import ENGINES
from workers.engines.base import (
    Engine,
    check_lengths,
    count_tokens,
    mean_pool,
    to_json,
    token_limit,
)
from workers.engines.embedding import finish_embeddings
from workers.optimize import compile_model, quantize_dynamic_int8
from workers.tasks import Group, InvalidItem

log = logging.getLogger("modelgate.worker")

PIPELINE_TASKS = frozenset({"feature-extraction", "text-classification"})
"""Tasks ``fast_path: false`` serves with :class:`PipelineEngine`; the others' engines already
post-process with the pipeline's own code, or compute what it does (tested)."""

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class DeviceError(RuntimeError):
    """The configured device does not exist on this machine."""


class SentenceEmbeddingPipeline(FeatureExtractionPipeline):
    """Feature extraction that returns one pooled (and by default unit-length) vector per input."""

    pooling = "mean"

    def _sanitize_parameters(  # type: ignore[override]
        self, truncation: bool | None = None, normalize: bool | None = None, **_: Any
    ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        pre = {"truncation": True if truncation is None else truncation}
        post = {} if normalize is None else {"normalize": normalize}
        return {"tokenize_kwargs": pre}, {}, post

    def preprocess(  # type: ignore[override]
        self, inputs: Any, tokenize_kwargs: dict[str, Any] | None = None
    ) -> Any:
        assert self.tokenizer is not None
        return self.tokenizer(inputs, return_tensors="pt", **(tokenize_kwargs or {}))

    def _forward(  # type: ignore[override]
        self, model_inputs: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        tokens = self.model(**model_inputs)[0]
        if self.pooling == "cls":
            return {"embeddings": tokens[:, 0]}
        return {"embeddings": mean_pool(tokens, model_inputs["attention_mask"])}

    def postprocess(  # type: ignore[override]
        self, model_outputs: dict[str, torch.Tensor], normalize: bool = True
    ) -> Any:
        emb = model_outputs["embeddings"].float()
        if normalize:
            emb = torch.nn.functional.normalize(emb, dim=-1)
        return emb[0].tolist() if emb.dim() == 2 else emb.tolist()


def resolve_device(device: str) -> str:
    """Map a models.yaml device to a torch device, failing clearly when CUDA is missing."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DeviceError(f"device {device!r} requested but CUDA is not available here")
        index = int(device.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            count = torch.cuda.device_count()
            raise DeviceError(f"device {device!r} requested but only {count} CUDA device(s) exist")
    return device


def fingerprint(spec: ModelSpec, location: str) -> str:
    """What identifies the loaded weights: hub id and revision, or a hash of a folder's files."""
    if spec.source.hub:
        return f"{spec.source.hub}@{spec.source.revision}"
    digest = hashlib.sha256()
    root = Path(location)
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode())
        with path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return "sha256:" + digest.hexdigest()[:32]


class PipelineEngine:
    """The transformers pipeline for feature extraction or text classification, called with a
    batch of inputs (``fast_path: false``; the reference the task engines are tested against)."""

    across_groups = False

    def __init__(self, spec: ModelSpec, base_dir: str = ".") -> None:
        self.spec = spec
        self.location = resolve_source(spec, base_dir)
        self.device = resolve_device(spec.device)
        started = time.perf_counter()
        where = spec.source.describe()
        log.info("loading %s (%s) from %s on %s", spec.name, spec.task, where, self.device)
        self.pipe = self._load()
        self.load_s = time.perf_counter() - started
        log.info("loaded %s in %.1f s", spec.name, self.load_s)
        self.fingerprint = fingerprint(spec, self.location)

    def _load(self) -> Pipeline:
        kwargs: dict[str, Any] = {"device": self.device, "dtype": DTYPES[self.spec.dtype]}
        if self.spec.source.revision:
            kwargs["revision"] = self.spec.source.revision
        if self.spec.task == "feature-extraction":
            kwargs["pipeline_class"] = SentenceEmbeddingPipeline
        pipe: Pipeline = pipeline(self.spec.task, model=self.location, **kwargs)  # type: ignore[call-overload]
        if isinstance(pipe, SentenceEmbeddingPipeline):
            pipe.pooling = self.spec.pooling
        return pipe

    @property
    def model(self) -> torch.nn.Module:
        model: torch.nn.Module = self.pipe.model
        return model

    @property
    def max_tokens(self) -> int:
        return token_limit(self.pipe.tokenizer, self.pipe.model.config)

    def count_tokens(self, items: list[Item]) -> list[int]:
        cap = self.max_tokens if self.spec.truncation else None
        return count_tokens(self.pipe.tokenizer, items, cap)

    def __call__(self, items: list[Item], params: dict[str, Any]) -> list[Any]:
        if not all(isinstance(item, str) for item in items):
            raise InvalidItem("this model takes texts only (token-id inputs need fast_path: true)")
        inputs = [str(item) for item in items]
        if not self.spec.truncation:
            check_lengths(self.pipe.tokenizer, inputs, self.spec.name, self.max_tokens)
        batch = min(len(inputs), self.spec.max_batch_size)
        if self.spec.task == "feature-extraction":
            return self._embed(inputs, batch, params)
        out = self.pipe(inputs, batch_size=batch, truncation=self.spec.truncation, **params)
        if "top_k" not in params:
            out = [o[0] if isinstance(o, list) else o for o in out]
        values: list[Any] = to_json(out)
        return values

    def _embed(self, inputs: list[str], batch: int, params: dict[str, Any]) -> list[Any]:
        """Pooled vectors from the pipeline, then ``dimensions`` and ``normalize`` as the
        embedding engine applies them; ``truncation_direction`` on the pipeline's tokenizer."""
        tokenizer = self.pipe.tokenizer
        assert tokenizer is not None
        default_side = tokenizer.truncation_side
        tokenizer.truncation_side = params.get("truncation_direction") or default_side
        try:
            out = self.pipe(
                inputs, batch_size=batch, truncation=self.spec.truncation, normalize=False
            )
        finally:
            tokenizer.truncation_side = default_side
        return finish_embeddings(torch.tensor(out, dtype=torch.float32), params)

    def run_groups(self, groups: Sequence[Group]) -> list[list[Any]]:
        return [self(items, params) for items, params in groups]

    def warm_up(self) -> float:
        started = time.perf_counter()
        self(["modelgate warm-up"], {})
        return time.perf_counter() - started


def load_engine(spec: ModelSpec, base_dir: str = ".", exports: Path | None = None) -> Engine:
    """The model on its device, as its task's engine or (``fast_path: false``) the pipeline;
    with ``engine: onnx`` or ``openvino``, its forward pass on that runtime (exported into
    ``exports``, else :func:`workers.runtime.export_root`)."""
    if not spec.fast_path and spec.task in PIPELINE_TASKS:
        return PipelineEngine(spec, base_dir)
    location = resolve_source(spec, base_dir)
    device = resolve_device(spec.device)
    engine_class = ENGINES[spec.task]
    print_ = fingerprint(spec, location)
    return engine_class(spec, location, device, DTYPES[spec.dtype], print_, exports)


def build_engine(spec: ModelSpec, base_dir: str = ".", exports: Path | None = None) -> Engine:
    """Load, quantize and compile (as models.yaml asks) the engine a worker serves with."""
    engine = load_engine(spec, base_dir, exports)
    model = engine.model
    if isinstance(model, torch.nn.Module):  # the config allows neither on an exported graph
        if spec.quantize == "dynamic-int8":
            quantize_dynamic_int8(model)
        if spec.compile:
            compile_model(
                model, engine, max_batch_size=spec.max_batch_size, max_tokens=engine.max_tokens
            )
    return engine
