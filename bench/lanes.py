"""Interactive latency under bulk work: sync predicts while a large async job runs.

``python -m bench.lanes [--duration S] [--repeats 3] [--concurrency 4] [--job-inputs 5000]``

On its own stack (``bench.throughput``'s: a private redis-server, one worker, one gateway, the
model's entry alone with the response cache off) it measures, in one run:

1. sync ``/predict`` at ``--concurrency`` alone (p50, p99), ``--repeats`` times;
2. one async job of ``--job-inputs`` distinct texts alone (texts/s);
3. the same two together: sync predicts while a second such job runs (p50, p99), and the
   job's texts/s meanwhile, from its progress at the start and the end of each sync phase,
   ``--repeats`` times.

Each row is the median of its repeats (a p99 over ten seconds moves by a third from one run to
the next on a shared 2-core machine).

Targets (issue 16): interactive p99 under bulk ≤ 1.5x its p99 alone, and bulk keeps at least
the model's ``bulk_share`` of its throughput alone. Prints one table; exit 1 when a target fails.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.throughput import (
    ROOT,
    HttpBench,
    Stack,
    Steps,
    _raise_interrupt,
    grid,
    machine,
    median_of,
    phase_base,
    sanity_check,
    setup,
    texts,
)

NO_STORE = {"cache-control": "no-store"}


class BulkJob:
    """One async job of distinct texts, followed through its progress."""

    def __init__(self, url: str, model: str, inputs: list[str]) -> None:
        self.url, self.total = url, len(inputs)
        r = httpx.post(
            f"{url}/models/{model}/jobs", json={"inputs": inputs}, headers=NO_STORE, timeout=120
        )
        if r.status_code != 202:
            raise RuntimeError(f"job submit answered {r.status_code}: {r.text[:300]}")
        self.id = r.json()["job_id"]
        self.submitted = time.monotonic()

    def state(self) -> dict[str, Any]:
        body: dict[str, Any] = httpx.get(f"{self.url}/jobs/{self.id}", timeout=30).json()
        return body

    def done(self) -> int:
        return int((self.state().get("progress") or {}).get("done", 0))

    def started(self, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while self.done() == 0:
            if time.monotonic() > deadline:
                raise RuntimeError(f"job {self.id} did not start within {timeout_s} s")
            time.sleep(0.05)

    def wait(self, timeout_s: float = 900) -> float:
        """Seconds from submit to finished."""
        deadline = time.monotonic() + timeout_s
        while True:
            state = httpx.get(f"{self.url}/jobs/{self.id}", params={"wait": 30}, timeout=60).json()
            if state["status"] == "finished":
                return time.monotonic() - self.submitted
            if state["status"] in ("failed", "canceled") or time.monotonic() > deadline:
                raise RuntimeError(f"job {self.id} ended {state['status']}: {state.get('error')}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.lanes", description=__doc__.split("\n")[0])
    p.add_argument("--duration", type=float, default=10.0, help="seconds per sync phase (10)")
    p.add_argument("--repeats", type=int, default=3, help="sync phases alone and under bulk (3)")
    p.add_argument("--concurrency", type=int, default=4, help="sync concurrency (4)")
    p.add_argument("--job-inputs", type=int, default=5000, help="inputs of each bulk job (5000)")
    p.add_argument("--model", default="minilm", help="model name in --config (minilm)")
    p.add_argument("--config", default=str(ROOT / "models.yaml"), help="models.yaml to copy from")
    p.add_argument("--worker-threads", type=int, default=2, help="worker --threads (2)")
    p.add_argument("--loadgen", choices=["auto", "wrk", "httpx"], default="auto")
    return p.parse_args(argv)


def run(args: argparse.Namespace, workdir: Path) -> tuple[list[list[str]], bool, dict[str, Any]]:
    loadgen, config, spec = setup(args, workdir)
    stack = Stack(workdir, config, args.model, args.worker_threads)
    steps = Steps(total=3 + 2 * args.repeats)
    try:
        steps.step("starting the stack")
        stack.start()
        stack.wait_ready(240)
        bench = HttpBench(stack, args.model, loadgen, spec.timeout_s + 5)
        sanity_check(bench.url)
        bench.drive(args.concurrency, 3, phase_base(1))  # warm-up
        alones, unders, bulk_unders = [], [], []
        for i in range(args.repeats):
            steps.step(f"sync c={args.concurrency} alone ({i + 1}/{args.repeats})")
            alones.append(bench.measure(args.concurrency, args.duration, phase_base(10 + i)))
        steps.step(f"one job of {args.job_inputs} inputs alone")
        first = BulkJob(stack.url, args.model, texts(phase_base(3), 0, args.job_inputs))
        bulk_alone = args.job_inputs / first.wait()
        second = BulkJob(stack.url, args.model, texts(phase_base(4), 0, args.job_inputs))
        second.started()
        for i in range(args.repeats):
            steps.step(f"sync while a second job runs ({i + 1}/{args.repeats})")
            done0, t0 = second.done(), time.monotonic()
            unders.append(bench.measure(args.concurrency, args.duration, phase_base(20 + i)))
            done1, t1 = second.done(), time.monotonic()
            bulk_unders.append((done1 - done0) / (t1 - t0))
            if done1 >= args.job_inputs:
                print(
                    "warning: the job ended during the sync phases; raise --job-inputs",
                    file=sys.stderr,
                )
        steps.step("the second job's end")
        second.wait()
    finally:
        steps.close()
        stack.stop()
    alone, under = median_of(alones), median_of(unders)
    bulk_under = statistics.median(bulk_unders)
    p99_ratio = under.p99_ms / alone.p99_ms
    share = bulk_under / bulk_alone
    rows = [
        ["row", "rate", "unit", "p50 ms", "p99 ms", "errors", "ratio", "target", "result"],
        [
            f"sync c{args.concurrency} alone",
            f"{alone.rate:.1f}",
            "req/s",
            f"{alone.p50_ms:.1f}",
            f"{alone.p99_ms:.1f}",
            str(alone.errors),
            "(ref)",
            "-",
            "-",
        ],
        [
            f"sync c{args.concurrency} under bulk",
            f"{under.rate:.1f}",
            "req/s",
            f"{under.p50_ms:.1f}",
            f"{under.p99_ms:.1f}",
            str(under.errors),
            f"{p99_ratio:.2f}x p99",
            "p99 <= 1.5x alone, 0 err",
            "PASS" if p99_ratio <= 1.5 and not under.errors else "FAIL",
        ],
        ["bulk job alone", f"{bulk_alone:.1f}", "texts/s", "-", "-", "0", "(ref)", "-", "-"],
        [
            "bulk job under sync",
            f"{bulk_under:.1f}",
            "texts/s",
            "-",
            "-",
            "0",
            f"{share:.2f}x",
            f">= bulk_share {spec.bulk_share:g}x",
            "PASS" if share >= spec.bulk_share else "FAIL",
        ],
    ]
    ok = p99_ratio <= 1.5 and not under.errors and share >= spec.bulk_share
    info = {
        **machine(),
        "loadgen": loadgen,
        "by_phase": {"alone": alone.cores, "under": under.cores},
    }
    return rows, ok, info


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    workdir = Path(tempfile.mkdtemp(prefix="modelgate-bench-lanes-"))
    try:
        rows, ok, info = run(args, workdir)
    except KeyboardInterrupt:
        print("interrupted; everything started was stopped", file=sys.stderr)
        return 130
    except BaseException:
        print(f"stack logs kept in {workdir}", file=sys.stderr)
        raise
    shutil.rmtree(workdir, ignore_errors=True)
    print(
        f"modelgate lanes benchmark: model {args.model}, {info['loadgen']}, "
        f"{args.duration:g} s per sync phase, jobs of {args.job_inputs} inputs, "
        f"worker --threads {args.worker_threads}"
    )
    print(f"machine: {info['cpu']}, {info['cores']} cores, torch {info['torch']}")
    print()
    print(grid(rows))
    print()
    for phase, cores in info["by_phase"].items():
        shown = ", ".join(f"{k} {v:.2f}" for k, v in sorted(cores.items()))
        print(f"CPU cores during sync {phase}: {shown}")
    print(f"command: python -m bench.lanes {' '.join(sys.argv[1:])}".rstrip())
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
