"""Model optimisations a models.yaml entry can ask for: dynamic int8 and ``torch.compile``.

Both change the loaded ``torch.nn.Module`` in place, so they apply to the fast path and to the
reference pipeline alike. Compilation happens during start-up: :func:`compile_model` runs the
engine on every shape family it will meet (batch of one, larger batches, short and long inputs)
before the worker announces itself, so no request pays for tracing or code generation.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch

log = logging.getLogger("modelgate.worker")

WARM_UP_TOKENS = (8, 48, 160)
"""Approximate input lengths, in words, that the compile warm-up runs (clipped to the model's
limit). With ``dynamic=True`` one graph serves every length, but Dynamo specialises a dimension of
size one, so a single input and a batch are separate graphs: the warm-up compiles both."""

Engine = Callable[[list[Any], dict[str, Any]], list[Any]]


def quantize_dynamic_int8(model: torch.nn.Module) -> torch.nn.Module:
    """Replace every ``nn.Linear`` with a dynamically quantized int8 Linear (CPU kernels only):
    int8 weights with one scale per output channel, activations quantized per call."""
    # torch.ao.quantization is deprecated in favour of torchao, which this project does not
    # depend on; in torch 2.13 the eager API still works and only warns, so keep the log clean.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        from torch.ao.nn.quantized.dynamic import Linear as _QuantizedLinear
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

        started = time.perf_counter()
        # Per output channel weight scales: on MiniLM the mean cosine to float32 rises from
        # ~0.92 (per tensor, torch's default) to ~0.97; activations stay per tensor, per call.
        qconfig = {torch.nn.Linear: per_channel_dynamic_qconfig}
        quantize_dynamic(model, qconfig, dtype=torch.qint8, inplace=True)  # type: ignore[no-untyped-call]
    count = sum(1 for m in model.modules() if isinstance(m, _QuantizedLinear))
    elapsed = time.perf_counter() - started
    log.info("dynamic int8: %d Linear layers quantized in %.2f s", count, elapsed)
    return model


def warm_up_batches(max_batch_size: int, max_tokens: int) -> list[list[str]]:
    """Inputs that exercise a single text and a batch, each at several lengths that fit the
    model (each word is one token, plus the two special tokens)."""
    lengths = sorted({max(1, min(n, max_tokens - 2)) for n in WARM_UP_TOKENS})
    texts = [" ".join(["warm"] * n) for n in lengths]
    batch = max(2, min(max_batch_size, 4))
    batches = [[t] for t in texts]
    batches += [[texts[i % len(texts)] for i in range(k, k + batch)] for k in range(len(texts))]
    return batches


def compile_model(
    model: torch.nn.Module, engine: Engine, *, max_batch_size: int, max_tokens: int
) -> float:
    """``torch.compile`` the model in place with dynamic shapes, then warm it up through
    ``engine``; return the seconds it took."""
    started = time.perf_counter()
    model.compile(dynamic=True)
    for batch in warm_up_batches(max_batch_size, max_tokens):
        engine(batch, {})
    elapsed = time.perf_counter() - started
    log.info("torch.compile and warm-up took %.1f s", elapsed)
    return elapsed
