"""``modelgate evaluate``: a teacher and its cheaper candidates side by side, in one run, on
held-out text.

Every row is built by the worker's own ``build_engine`` (so a quantized or half-precision row
is exactly what ``quantize:`` or ``dtype:`` in models.yaml would serve) and called the way a
worker calls it. Quality is measured against the teacher's outputs: for embeddings the cosine
of each text's vector to the teacher's (mean and min) and retrieval agreement (each held-out
text as a query over the others: the share of the teacher's top 10 the candidate also ranks in
its top 10); for classifiers agreement with the teacher's label, and accuracy and macro-F1 when
the corpus has labels. Speed: p50 latency of single-text calls and texts per second in calls of
32, measured round robin so a change in the machine's load hits every row alike; size: the
bytes of the row's saved state dict."""

from __future__ import annotations

import io
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

from modelgate.compress.data import CompressError, Corpus, cannot_load
from modelgate.compress.models import ModelRef
from modelgate.modelfiles import quiet_transformers
from modelgate.sentiment.corpus import macro_f1

VARIANTS = ("dynamic-int8", "float16", "bfloat16")
"""Cheaper forms of a model that evaluate can add beside it (``--variants``)."""

TOP_K = 10


@dataclass
class Row:
    """One model in one form, and what was measured of it."""

    label: str
    ref: ModelRef
    variant: str = "float32"
    engine: Any = None
    outputs: list[Any] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    texts_done: int = 0
    calls_b: int = 0
    busy_s: float = 0.0
    figures: dict[str, Any] = field(default_factory=dict)


def supported(variant: str, device: str) -> str | None:
    """None when ``device`` runs ``variant``; else why not."""
    import torch

    if variant == "dynamic-int8":
        return None if device == "cpu" else "dynamic int8 has CPU kernels only"
    if device.startswith("cuda"):
        if variant == "bfloat16" and not torch.cuda.is_bf16_supported():
            return "this GPU has no bfloat16"
        return None
    mkldnn = torch.ops.mkldnn
    check = {"float16": "_is_mkldnn_fp16_supported", "bfloat16": "_is_mkldnn_bf16_supported"}
    probe = getattr(mkldnn, check[variant], None)
    if probe is None or not probe():
        return f"this CPU has no native {variant} matrix kernels (it would run slower, not faster)"
    return None


def spec_for(row: Row, device: str, index: int) -> Any:
    from contract.config import ModelSpec, Source

    ref = row.ref
    source = (
        Source(hub=ref.location, revision=ref.revision)
        if ref.revision
        else Source(path=ref.location)
    )
    options: dict[str, Any] = {}
    if row.variant == "dynamic-int8":
        options["quantize"] = "dynamic-int8"
    elif row.variant in ("float16", "bfloat16"):
        options["dtype"] = row.variant
    return ModelSpec(
        name=f"candidate-{index}",
        task=ref.task,
        source=source,
        device=device,
        pooling=ref.pooling,  # type: ignore[arg-type]
        max_batch_size=32,
        max_inputs=100_000,
        **options,
    )


def build_rows(
    teacher: ModelRef, candidates: list[ModelRef], variants: list[str], device: str, say: Any
) -> tuple[list[Row], list[dict[str, str]]]:
    """The teacher first, then each candidate, each followed by its supported variants."""
    from workers.pipelines import build_engine

    rows, skipped = [], []
    for ref in [teacher, *candidates]:
        rows.append(Row(ref.name, ref))
        for variant in variants:
            why = supported(variant, device)
            if why:
                skipped.append({"model": ref.name, "variant": variant, "why": why})
            else:
                rows.append(Row(f"{ref.name} {variant}", ref, variant))
    for i, row in enumerate(rows):
        started = time.perf_counter()
        try:
            with quiet_transformers():
                row.engine = build_engine(spec_for(row, device, i))
        except Exception as err:  # a model that does not load is the user's to fix: say which
            raise cannot_load(f"{row.ref.location} ({row.variant})", err) from None
        say(f"loaded {row.label} ({time.perf_counter() - started:.1f} s)")
    return rows, skipped


def run_all(engine: Any, texts: list[str]) -> list[Any]:
    outputs: list[Any] = []
    for start in range(0, len(texts), 256):
        outputs += engine(texts[start : start + 256], {})
    return outputs


def embedding_quality(got: list[list[float]], want: list[list[float]]) -> dict[str, float]:
    """Cosine of each vector to the teacher's, and top-10 retrieval agreement."""
    import torch

    a = torch.nn.functional.normalize(torch.tensor(got, dtype=torch.float64), dim=-1)
    b = torch.nn.functional.normalize(torch.tensor(want, dtype=torch.float64), dim=-1)
    if a.shape != b.shape:
        raise CompressError(
            f"a candidate's vectors have {a.shape[-1]} dimensions, the teacher's {b.shape[-1]}"
        )
    cosine = (a * b).sum(dim=-1)
    figures = {
        "mean_cosine": round(float(cosine.mean()), 6),
        "min_cosine": round(float(cosine.min()), 6),
    }
    if len(got) > TOP_K:
        figures[f"top{TOP_K}_overlap"] = round(top_k_overlap(a, b, TOP_K), 4)
    return figures


def top_k_overlap(a: Any, b: Any, k: int) -> float:
    """Each row as a query over the other rows: the mean share of ``b``'s k nearest that are
    also among ``a``'s k nearest."""
    import torch

    def nearest(x: Any) -> Any:
        scores = x @ x.T
        scores.fill_diagonal_(-torch.inf)
        return scores.topk(k, dim=-1).indices

    mine, theirs = nearest(a), nearest(b)
    shared = [len(set(m.tolist()) & set(t.tolist())) for m, t in zip(mine, theirs, strict=True)]
    return sum(shared) / (k * len(shared))


def class_quality(
    got: list[dict[str, Any]],
    want: list[dict[str, Any]],
    truth: list[int] | None,
    names: tuple[str, ...] | None,
) -> dict[str, float]:
    """Agreement with the teacher's labels; accuracy and macro-F1 against the corpus's labels."""
    labels = [o["label"] for o in got]
    figures = {
        "agreement": round(
            sum(x == o["label"] for x, o in zip(labels, want, strict=True)) / len(got), 4
        )
    }
    if truth is not None and names is not None and set(labels) <= set(names):
        predicted = [names.index(x) for x in labels]
        figures["accuracy"] = round(
            sum(p == t for p, t in zip(predicted, truth, strict=True)) / len(truth), 4
        )
        figures["macro_f1"] = round(macro_f1(truth, predicted, len(names)), 4)
    return figures


def quality(rows: list[Row], corpus: Corpus, truth: list[int] | None) -> None:
    want = rows[0].outputs
    for row in rows:
        if row.ref.is_classifier:
            row.figures |= class_quality(row.outputs, want, truth, corpus.label_names)
        else:
            row.figures |= embedding_quality(row.outputs, want)


def quality_of(
    teacher: ModelRef, candidate: ModelRef, corpus: Corpus, limit: int
) -> dict[str, Any]:
    """The quality figures of one candidate against its teacher on the first ``limit``
    held-out texts (what distill and prune put in their reports)."""
    rows, _ = build_rows(teacher, [candidate], [], "cpu", lambda _: None)
    texts = corpus.held_out[:limit]
    truth = corpus.held_out_labels[:limit] if corpus.held_out_labels is not None else None
    for row in rows:
        row.outputs = run_all(row.engine, texts)
    quality(rows, corpus, truth)
    figures = {"texts": len(texts), "candidate": rows[1].figures}
    if teacher.is_classifier and "accuracy" in rows[0].figures:
        figures["teacher"] = {k: rows[0].figures[k] for k in ("accuracy", "macro_f1")}
    return figures


def speed(rows: list[Row], texts: list[str], seconds: float, rounds: int, batch: int) -> None:
    """p50 of single-text calls and texts/s in calls of ``batch``, round robin over rows."""
    for row in rows:
        row.engine(texts[:batch], {})
    share = seconds / rounds
    windows = max(1, len(texts) - batch + 1)
    for _ in range(rounds):
        for row in rows:
            # Every row walks the same texts in the same order: row k's i-th call gets text i.
            deadline, calls = time.perf_counter() + share, 0
            while calls < 5 or time.perf_counter() < deadline:
                text = texts[len(row.latencies) % len(texts)]
                started = time.perf_counter()
                row.engine([text], {})
                row.latencies.append(time.perf_counter() - started)
                calls += 1
            deadline, calls, done = time.perf_counter() + share, 0, 0
            started = time.perf_counter()
            while calls < 2 or time.perf_counter() < deadline:
                offset = (row.calls_b + calls) * batch % windows
                chunk = texts[offset : offset + batch]
                row.engine(chunk, {})
                calls, done = calls + 1, done + len(chunk)
            row.busy_s += time.perf_counter() - started
            row.texts_done += done
            row.calls_b += calls
    base = rows[0]
    for row in rows:
        row.figures["p50_ms_b1"] = round(1000 * statistics.median(row.latencies), 2)
        row.figures[f"texts_per_s_b{batch}"] = round(row.texts_done / row.busy_s, 1)
    for row in rows:
        row.figures["speedup_b1"] = round(base.figures["p50_ms_b1"] / row.figures["p50_ms_b1"], 2)
        key = f"texts_per_s_b{batch}"
        row.figures[f"speedup_b{batch}"] = round(row.figures[key] / base.figures[key], 2)


def state_bytes(engine: Any) -> int:
    """Bytes of the model's state dict as ``torch.save`` writes it (int8 weights packed)."""
    import torch

    buffer = io.BytesIO()
    torch.save(engine.model.state_dict(), buffer)
    return buffer.tell()


def evaluate(
    teacher: ModelRef,
    candidates: list[ModelRef],
    corpus: Corpus,
    *,
    variants: list[str],
    device: str = "cpu",
    limit: int | None = 1000,
    seconds: float = 6.0,
    rounds: int = 3,
    batch: int = 32,
    say: Any = print,
) -> dict[str, Any]:
    """The report: one entry per row (teacher first) with its quality, speed and size."""
    if device not in ("cpu", "cuda") and not (device.startswith("cuda:") and device[5:].isdigit()):
        raise CompressError(f"--device {device}: cpu, cuda or cuda:N")
    if device.startswith("cuda") and not _has_cuda():
        raise CompressError(f"--device {device}: CUDA is not available on this machine")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise CompressError(f"--variants {','.join(unknown)}: choose from {', '.join(VARIANTS)}")
    kinds = {c.is_classifier for c in candidates} | {teacher.is_classifier}
    if len(kinds) > 1:
        raise CompressError("the teacher and every candidate must be the same kind of model")
    texts = corpus.held_out[:limit] if limit else list(corpus.held_out)
    truth = None
    if corpus.held_out_labels is not None:
        truth = corpus.held_out_labels[: len(texts)]
    if len(texts) < 2:
        raise CompressError("need at least 2 held-out texts")
    rows, skipped = build_rows(teacher, candidates, variants, device, say)
    say(f"answering {len(texts)} held-out texts with each of {len(rows)} rows")
    for row in rows:
        row.outputs = run_all(row.engine, texts)
    quality(rows, corpus, truth)
    if seconds > 0:
        say(f"timing: {seconds:.0f} s per row and measure, {rounds} rounds round robin")
        speed(rows, texts, seconds, rounds, batch)
    for row in rows:
        row.figures["size_mb"] = round(state_bytes(row.engine) / 1e6, 2)
    return {
        "teacher": teacher.describe(),
        "corpus": corpus.describe(),
        "texts": len(texts),
        "device": device,
        "threads": _threads(),
        "rows": [{"model": r.label, "variant": r.variant} | r.figures for r in rows],
        "skipped": skipped,
    }


def _has_cuda() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def table(report: dict[str, Any]) -> str:
    """The report's rows as a fixed-width table."""
    rows = report["rows"]
    columns = [k for k in rows[0] if k not in ("model", "variant")]
    width = max(len(r["model"]) for r in rows) + 2
    lines = [f"{'model':<{width}}" + "".join(f"{c:>16}" for c in columns)]
    for r in rows:
        lines.append(f"{r['model']:<{width}}" + "".join(f"{r.get(c, ''):>16}" for c in columns))
    for s in report["skipped"]:
        lines.append(f"skipped {s['model']} {s['variant']}: {s['why']}")
    return "\n".join(lines)
