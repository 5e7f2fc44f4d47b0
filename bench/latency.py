"""Single-request latency at concurrency 1: the in-process engine vs /predict, cache miss vs hit.

    python -m bench.latency [--requests 200] [--model minilm] [--threads 2]

One run starts its own redis-server, one worker and the gateway (loopback only), then measures
in turn, for the same sentence ("hello"): the worker's engine called in this process; /predict
computing it every time (``Cache-Control: no-store``); /predict with distinct sentences (cache
misses that store); and /predict answered from the cache (hits). Prints p50/p99 per row.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import yaml

from bench.throughput import ROOT, Stack, load_engine, machine, percentile, write_config


def timed(calls: int, fn: Callable[[int], None]) -> list[float]:
    for i in range(5):  # warm-up
        fn(-1 - i)
    out = []
    for i in range(calls):
        started = time.perf_counter()
        fn(i)
        out.append(1000 * (time.perf_counter() - started))
    return out


def row(name: str, ms: list[float]) -> str:
    p50, p99 = statistics.median(ms), percentile(ms, 99)
    return f"{name:<42} {p50:8.2f} {p99:8.2f} {len(ms):6d}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.latency",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--requests", type=int, default=200, help="measured calls per row")
    parser.add_argument("--model", default="minilm")
    parser.add_argument(
        "--threads", type=int, default=2, help="torch threads, worker and in-process"
    )
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="modelgate-latency-"))
    config = write_config(ROOT / "models.yaml", args.model, workdir / "models.yaml")
    data = yaml.safe_load(config.read_text())
    data["models"][0]["cache_ttl_s"] = 3600  # this bench measures the cache too
    config.write_text(yaml.safe_dump(data))
    stack = Stack(workdir, config, args.model, args.threads)
    try:
        stack.start()
        engine = load_engine(config, args.model, args.threads)
        stack.wait_ready(180)
        rows = measure(stack.url, args.model, engine, args.requests)
    finally:
        stack.stop()
    info = machine()
    print(f"modelgate latency at concurrency 1, model {args.model}; {info}")
    print(f"{'row':<42} {'p50 ms':>8} {'p99 ms':>8} {'n':>6}")
    for name, ms in rows:
        print(row(name, ms))
    miss = statistics.median(dict(rows)["/predict miss (distinct inputs)"])
    hit = statistics.median(dict(rows)["/predict cache hit"])
    inproc = statistics.median(dict(rows)["in-process engine, 'hello'"])
    computed = statistics.median(dict(rows)["/predict 'hello', no-store"])
    print(
        f"ratios: /predict computed / in-process = {computed / inproc:.2f}; "
        f"hit / miss = {hit / miss:.3f}"
    )
    return 0


def measure(url: str, model: str, engine: object, n: int) -> list[tuple[str, list[float]]]:
    client = httpx.Client(base_url=url, timeout=60)
    path = f"/models/{model}/predict"

    def post(body: dict[str, object], headers: dict[str, str] | None = None) -> None:
        r = client.post(path, json=body, headers=headers or {})
        r.raise_for_status()

    rows = [
        ("in-process engine, 'hello'", timed(n, lambda i: engine(["hello"], {}))),  # type: ignore[operator]
        (
            "/predict 'hello', no-store",
            timed(n, lambda i: post({"inputs": "hello"}, {"Cache-Control": "no-store"})),
        ),
        (
            "/predict miss (distinct inputs)",
            timed(n, lambda i: post({"inputs": f"the quick brown fox number {time.time_ns()}"})),
        ),
    ]
    post({"inputs": "cached sentence"})
    rows.append(("/predict cache hit", timed(n, lambda i: post({"inputs": "cached sentence"}))))
    client.close()
    return rows


if __name__ == "__main__":
    raise SystemExit(main())
