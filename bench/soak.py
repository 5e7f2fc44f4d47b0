"""Soak: does anything grow under steady load? RSS of every process and Redis memory over time.

``python -m bench.soak [--duration 600] [--concurrency 8] [--cache off|on] [--interval 30]``

Starts its own stack on loopback, the way ``modelgate up`` does: a job Redis (``noeviction``), a
cache Redis (``allkeys-lru``, ``--cache-maxmemory``), one worker and one gateway. Then it sends
sync predicts, one distinct sentence each, from ``--concurrency`` closed-loop clients for
``--duration`` seconds (with ``--cache off`` every request says ``Cache-Control: no-store``, so
nothing may stay in Redis at all). Every ``--interval`` seconds it records each process's RSS,
each Redis's ``used_memory`` and key count; at the end it prints the table and each series'
slope in MB/min (least squares over the samples after the first minute, warm-up excluded).
Everything it started is stopped on exit, Ctrl-C included. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import yaml
from redis import Redis

from modelgate.redis_server import CACHE_POLICY, JOBS_POLICY, RedisServer, free_port

ROOT = Path(__file__).resolve().parent.parent
PREFIX = "mgsoak"
TEXT = "The quick brown fox jumps over the lazy dog {}"
WARMUP_S = 60.0
"""Samples before this are left out of the slope (model warm-up, allocator growth)."""


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def slope_mb_per_min(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, MB) points, in MB per minute."""
    if len(points) < 2:
        return 0.0
    n = len(points)
    mean_t = sum(t for t, _ in points) / n
    mean_v = sum(v for _, v in points) / n
    var = sum((t - mean_t) ** 2 for t, _ in points)
    if var == 0:
        return 0.0
    cov = sum((t - mean_t) * (v - mean_v) for t, v in points)
    return 60 * cov / var


def write_config(source: Path, model: str, dest: Path) -> Path:
    data = yaml.safe_load(source.read_text(encoding="utf-8"))
    entry = next((m for m in data["models"] if m.get("name") == model), None)
    if entry is None:
        raise SystemExit(f"{source}: no model named {model!r}")
    dest.write_text(yaml.safe_dump({"models": [{**entry, "replicas": 1}]}), encoding="utf-8")
    return dest


class SoakStack:
    """Two redis-servers, one worker, one gateway; each stopped by PID."""

    def __init__(self, config: Path, model: str, cache_maxmemory: str, threads: int) -> None:
        self.jobs = RedisServer(maxmemory="1gb", policy=JOBS_POLICY)
        self.cache = RedisServer(maxmemory=cache_maxmemory, policy=CACHE_POLICY)
        self.config, self.model, self.threads = config, model, threads
        self.url = f"http://127.0.0.1:{free_port()}"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, log_dir: Path) -> None:
        self.jobs.start()
        self.cache.start()
        env = {
            **os.environ,
            "MODELGATE_REDIS_URL": self.jobs.url,
            "MODELGATE_CACHE_URL": self.cache.url,
            "MODELGATE_CONFIG": str(self.config),
            "MODELGATE_PREFIX": PREFIX,
        }
        py = sys.executable
        commands = {
            "worker": [py, "-m", "workers", "--model", self.model, "--threads", str(self.threads)],
            "gateway": [py, "-m", "modelgate", "gateway", "--port", self.url.rsplit(":", 1)[1]],
        }
        for role, cmd in commands.items():
            with (log_dir / f"{role}.log").open("ab") as log:
                self.procs[role] = subprocess.Popen(
                    cmd,
                    env=env,
                    cwd=ROOT,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )

    def wait_ready(self, timeout_s: float = 180) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for role, proc in self.procs.items():
                if proc.poll() is not None:
                    raise SystemExit(f"{role} exited with {proc.returncode}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return
            time.sleep(0.25)
        raise SystemExit(f"stack not ready after {timeout_s} s")

    def pids(self) -> dict[str, int]:
        pids = {role: p.pid for role, p in self.procs.items()}
        for role, server in (("redis-jobs", self.jobs), ("redis-cache", self.cache)):
            if server.proc is not None:
                pids[role] = server.proc.pid
        return pids

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self.jobs.stop()
        self.cache.stop()


def sample(stack: SoakStack, started: float, answered: int) -> dict[str, Any]:
    row: dict[str, Any] = {"t_s": round(time.monotonic() - started, 1), "requests": answered}
    for role, pid in stack.pids().items():
        row[f"{role}_rss_mb"] = round(rss_mb(pid), 1)
    for role, server in (("jobs", stack.jobs), ("cache", stack.cache)):
        client = Redis.from_url(server.url)
        row[f"redis_{role}_used_mb"] = round(int(client.info("memory")["used_memory"]) / 2**20, 2)
        row[f"redis_{role}_keys"] = int(client.dbsize())
        client.close()
    return row


async def drive(
    stack: SoakStack, args: argparse.Namespace
) -> tuple[list[dict[str, Any]], Counter[int]]:
    url = f"{stack.url}/models/{args.model}/predict"
    headers = {"Cache-Control": "no-store"} if args.cache == "off" else {}
    codes: Counter[int] = Counter()
    rows: list[dict[str, Any]] = []
    started = time.monotonic()
    end = started + args.duration

    async def user(client: httpx.AsyncClient, uid: int) -> None:
        n = 0
        while time.monotonic() < end:
            n += 1
            body = {"inputs": TEXT.format(uid * 10**9 + n)}
            try:
                r = await client.post(url, json=body, headers=headers)
                codes[r.status_code] += 1
            except httpx.HTTPError:
                codes[0] += 1

    async def sampler() -> None:
        while True:
            rows.append(sample(stack, started, sum(codes.values())))
            print(json.dumps(rows[-1]), flush=True)
            if time.monotonic() >= end:
                return
            await asyncio.sleep(min(args.interval, max(0.0, end - time.monotonic())))

    limits = httpx.Limits(max_connections=args.concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:
        await asyncio.gather(sampler(), *(user(client, u) for u in range(args.concurrency)))
    return rows, codes


def report(rows: list[dict[str, Any]], codes: Counter[int], args: argparse.Namespace) -> str:
    series = [k for k in rows[0] if k.endswith("_mb")]
    lines = [f"soak: {args.model}, c={args.concurrency}, {args.duration:g} s, cache {args.cache}"]
    lines.append(" | ".join(["t_s", "requests", *series, "redis_jobs_keys", "redis_cache_keys"]))
    for row in rows:
        values = [row["t_s"], row["requests"], *(row[k] for k in series)]
        values += [row["redis_jobs_keys"], row["redis_cache_keys"]]
        lines.append(" | ".join(str(v) for v in values))
    steady = [r for r in rows if r["t_s"] >= min(WARMUP_S, args.duration / 2)]
    lines.append("slope MB/min (after warm-up):")
    for key in series:
        slope = slope_mb_per_min([(r["t_s"], r[key]) for r in steady])
        lines.append(f"  {key}: {slope:+.3f}")
    total = sum(codes.values())
    rate = total / args.duration if args.duration else 0.0
    lines.append(f"answers: {dict(codes)} ({rate:.1f} req/s)")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.soak",
        description="Steady load for a while; RSS of every process and Redis memory over time.",
    )
    parser.add_argument("--duration", type=float, default=600, help="seconds of load (600)")
    parser.add_argument("--concurrency", type=int, default=8, help="closed-loop clients (8)")
    parser.add_argument("--interval", type=float, default=30, help="seconds between samples (30)")
    parser.add_argument(
        "--cache",
        choices=["off", "on"],
        default="off",
        help="off: every request is no-store (Redis must stay flat); on: entries are cached",
    )
    parser.add_argument("--cache-maxmemory", default="64mb", help="the cache Redis budget (64mb)")
    parser.add_argument("--model", default="minilm", help="model entry of --config (minilm)")
    parser.add_argument("--config", type=Path, default=ROOT / "models.yaml", help="models.yaml")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="worker threads")
    parser.add_argument("--json", type=Path, help="also write the samples to this file")
    return parser.parse_args(argv)


def _interrupt(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    with tempfile.TemporaryDirectory(prefix="modelgate-soak-") as tmp:
        config = write_config(args.config, args.model, Path(tmp) / "models.yaml")
        stack = SoakStack(config, args.model, args.cache_maxmemory, args.threads)
        try:
            stack.start(Path(tmp))
            stack.wait_ready()
            rows, codes = asyncio.run(drive(stack, args))
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130
        finally:
            stack.stop()
    print(report(rows, codes, args))
    if args.json:
        args.json.write_text(json.dumps({"samples": rows, "codes": dict(codes)}, indent=1))
    return 0 if set(codes) == {200} else 1


if __name__ == "__main__":
    sys.exit(main())
