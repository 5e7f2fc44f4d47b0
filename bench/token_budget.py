"""Token-budget batching (``max_batch_tokens``) against the item count alone, in one process.

``python -m bench.token_budget [--budgets none,8192,4096,2048,1024,512] [--source DIR]
[--batches N] [--seconds S] [--rounds R] [--threads N]``

A batch of inputs of mixed lengths computes every row as long as its longest input (padding),
so a batch of short queries with a few long passages costs as much as a batch of passages. With
``max_batch_tokens`` the engine sorts the batch by length and runs it in passes whose padded
size (inputs x the longest) stays under the budget (``workers.policy.forward_chunks``). This
measures texts per second for batches of 32 (the default ``max_batch_size``) on MiniLM with the
worker's own ``build_engine``, one engine per budget, round robin so that load on the machine
hits each alike, the median of ``--rounds``:

- **uniform**: 32 distinct sentences of 22 tokens (what ``make bench`` sends);
- **mixed**: 32 inputs, three quarters short queries (8 to 24 tokens) and a quarter passages
  (100 to 250 tokens), shuffled: a search workload (queries and documents through one model);
- **long**: 32 passages of 150 to 250 tokens (what a smaller budget splits into more passes).

The last column compares each budget's embeddings of the mixed batches with the unbudgeted
engine's (chunking changes only the padding, which mean pooling ignores).
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import random
import statistics
import time
from typing import Any

import torch

from bench.optimizations import MINILM, WORDS, agreement
from contract.config import ModelSpec, Source
from workers.engines import Engine
from workers.pipelines import build_engine
from workers.policy import forward_chunks

BATCH = 32


def sentence(rng: random.Random, words: int, tag: int) -> str:
    """``words`` common words (each one MiniLM token) ending with a distinct number."""
    return " ".join(rng.choice(WORDS) for _ in range(max(1, words - 1))) + f" {tag}"


def batches(kind: str, count: int, seed: int = 0) -> list[list[str]]:
    """``count`` batches of :data:`BATCH` inputs of the workload ``kind``."""
    rng = random.Random(seed)
    out = []
    for b in range(count):
        if kind == "uniform":
            lengths = [20] * BATCH
        elif kind == "long":
            lengths = [rng.randint(150, 250) for _ in range(BATCH)]
        else:
            lengths = [rng.randint(6, 22) for _ in range(BATCH * 3 // 4)]
            lengths += [rng.randint(98, 248) for _ in range(BATCH - len(lengths))]
            rng.shuffle(lengths)
        out.append([sentence(rng, n, b * BATCH + i) for i, n in enumerate(lengths)])
    return out


def parse_budget(text: str) -> int:
    """A ``--budgets`` value; 'none' is 0 (models.yaml's "no budget")."""
    return 0 if text.strip().lower() == "none" else int(text)


def label(budget: int) -> str:
    return str(budget) if budget else "none"


def run_for(engine: Engine, work: list[list[str]], seconds: float) -> float:
    """Texts per second over calls of one batch each, back to back for ``seconds`` (every
    batch of ``work`` at least once)."""
    done, calls = 0, 0
    started = time.perf_counter()
    while calls < len(work) or time.perf_counter() - started < seconds:
        engine(work[calls % len(work)], {})
        done, calls = done + BATCH, calls + 1
    return done / (time.perf_counter() - started)


def passes(engine: Engine, work: list[list[str]], budget: int) -> float:
    """Forward passes per batch the policy chooses for ``work`` (the engine's own counts)."""
    counts = [
        len(forward_chunks(engine.count_tokens(list(b)), BATCH, budget or None))  # type: ignore[arg-type]
        for b in work
    ]
    return statistics.mean(counts)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.token_budget",
        description="Texts per second of MiniLM batches of 32 under several max_batch_tokens, "
        "for uniform and mixed input lengths, in this process.",
    )
    p.add_argument(
        "--budgets",
        default="none,8192,4096,2048,1024,512",
        help="comma-separated max_batch_tokens values; 'none': the item count alone",
    )
    p.add_argument(
        "--source",
        help="a model folder to measure instead of the packaged MiniLM (feature-extraction; "
        "e.g. the BERT-base-sized one `python -m bench.heavy_model` builds)",
    )
    p.add_argument("--batches", type=int, default=8, help="distinct batches a workload (8)")
    p.add_argument("--seconds", type=float, default=4.0, help="seconds per measurement (4)")
    p.add_argument("--rounds", type=int, default=3, help="round-robin rounds; medians (3)")
    p.add_argument(
        "--threads", type=int, default=1, help="torch threads (1: what one worker of two uses)"
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    budgets = [parse_budget(b) for b in args.budgets.split(",")]
    engines: dict[int, Engine] = {}
    for budget in budgets:
        spec = ModelSpec(
            name="minilm",
            task="feature-extraction",
            source=Source(path=args.source) if args.source else MINILM,
            max_batch_tokens=budget,
        )
        engines[budget] = build_engine(spec)
    work = {kind: batches(kind, args.batches, seed=1) for kind in ("uniform", "mixed", "long")}
    for engine in engines.values():  # untimed: each batch's shapes once (first use is slow)
        for batch_list in work.values():
            for batch in batch_list:
                engine(batch, {})
    rates: dict[tuple[int, str], list[float]] = {}
    for _ in range(args.rounds):
        for budget, engine in engines.items():
            for kind, batch_list in work.items():
                rates.setdefault((budget, kind), []).append(
                    run_for(engine, batch_list, args.seconds)
                )
    reference: Any = None
    if 0 in engines:
        reference = [engines[0](b, {}) for b in work["mixed"]]
    base = {kind: statistics.median(rates[(budgets[0], kind)]) for kind in work}
    print(
        f"{args.source or 'MiniLM'}, batches of {BATCH}, {args.threads} torch thread(s), "
        f"{os.cpu_count()} CPUs, "
        f"{platform.processor() or platform.machine()}; medians of {args.rounds} x "
        f"{args.seconds:g} s"
    )
    print(
        f"{'max_batch_tokens':>16} {'uniform texts/s':>16} {'mixed texts/s':>14} "
        f"{'vs ' + label(budgets[0]):>9} {'long texts/s':>13} {'vs ' + label(budgets[0]):>9} "
        f"{'passes (mixed/long)':>20}  mixed outputs vs none"
    )
    for budget, engine in engines.items():
        rate = {kind: statistics.median(rates[(budget, kind)]) for kind in work}
        same = "-"
        if reference is not None and budget:
            got = [row for b in work["mixed"] for row in engine(b, {})]
            same = agreement(got, [row for rows in reference for row in rows])
        mixed_passes, long_passes = (passes(engine, work[k], budget) for k in ("mixed", "long"))
        counts = f"{mixed_passes:.1f} / {long_passes:.1f}"
        print(
            f"{label(budget):>16} {rate['uniform']:>16.1f} {rate['mixed']:>14.1f} "
            f"{rate['mixed'] / base['mixed']:>8.2f}x {rate['long']:>13.1f} "
            f"{rate['long'] / base['long']:>8.2f}x {counts:>20}  {same}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
