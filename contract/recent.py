"""Recent activity per model, in ten-second buckets that Redis keeps for a few minutes.

What the dashboard and ``modelgate status`` show: requests per second, p50/p99 of request,
queue and compute time, batch sizes, cache hits and errors by code, over the last minutes.
Workers and every gateway replica add to the same buckets (``HINCRBY``, batched per flush or per
batch), so any replica reports the whole deployment. Prometheus keeps the cumulative series for
Grafana; these are the windowed figures a person reads on the page itself.

A bucket is a hash at ``Keys.recent(model, start)``; its fields are counters:

- gateway: ``requests``, ``errors``, ``error:<code>``, ``latency:<bin>``, ``cache_hit``,
  ``cache_miss`` (per input item);
- workers: ``batches`` (model calls), ``items``, ``jobs``, ``compute:<bin>`` (per model call),
  ``failed:<code>`` (async jobs; a sync job's failure is the gateway's error); per lane
  (``interactive``, ``bulk``): ``jobs_<lane>``, ``items_<lane>`` and ``wait_<lane>:<bin>`` (a
  job's wait in that lane; a job's wait in either is the ``queue_ms`` of the summary).

Times are binned on :data:`BOUNDS_MS`; quantiles interpolate within a bin, so p50/p99 are as
exact as the bins (a bin's upper bound is at most 1.5 times its lower one from 2 ms to 100 ms).
"""

from __future__ import annotations

import bisect
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from contract.jobs import Keys

BUCKET_S = 10
"""Seconds one bucket covers."""

MAX_WINDOW_S = 600
"""Longest window a reader may ask for."""

KEEP_S = MAX_WINDOW_S + 2 * BUCKET_S
"""A bucket's TTL, renewed by every write to it."""

RATE_S = 60
"""Requests per second are averaged over this much of the recent past."""

BOUNDS_MS = (
    1, 1.5, 2, 3, 4, 5, 7, 10, 15, 20, 30, 40, 50, 70, 100, 150, 200, 300, 500, 700,
    1000, 1500, 2000, 3000, 5000, 7000, 10000, 15000, 20000, 30000, 60000, 120000,
)  # fmt: skip
"""Upper bounds of the time bins, in milliseconds; a last bin takes the rest."""

LANES = ("interactive", "bulk")
"""The lanes of a model's work (``contract.jobs.LANES``)."""

TIMES = ("latency", "compute", *(f"wait_{lane}" for lane in LANES))
"""The binned times: a request at the gateway, one model call, and a job's wait in each lane."""


def bucket_of(t: float) -> int:
    """The start of the bucket that ``t`` (epoch seconds) falls in."""
    return int(t // BUCKET_S) * BUCKET_S


def bin_of(ms: float) -> int:
    """The index of the bin ``ms`` falls in (``len(BOUNDS_MS)`` past the last bound)."""
    return bisect.bisect_left(BOUNDS_MS, ms)


@dataclass
class Tally:
    """Counter increments for one model's bucket, collected before one write to Redis."""

    counts: Counter[str] = field(default_factory=Counter)

    def add(self, name: str, n: int = 1) -> None:
        if n:
            self.counts[name] += n

    def time(self, kind: str, ms: float) -> None:
        self.counts[f"{kind}:{bin_of(max(0.0, ms))}"] += 1

    def increment(self, pipe: Any, key: str) -> None:
        """Queue the increments of the hash ``key`` on a Redis pipeline (sync or async)."""
        for name, n in self.counts.items():
            pipe.hincrby(key, name, n)

    def write(self, pipe: Any, keys: Keys, model: str, at: float | None = None) -> None:
        """Queue the increments of the model's current bucket, and its TTL, on a pipeline."""
        if not self.counts:
            return
        key = keys.recent(model, bucket_of(time.time() if at is None else at))
        self.increment(pipe, key)
        pipe.expire(key, KEEP_S)


def binned(counts: Mapping[str, int], kind: str) -> dict[int, int]:
    """The ``<kind>:<bin>`` counters of ``counts``, by bin."""
    prefix = f"{kind}:"
    return {
        int(name[len(prefix) :]): n
        for name, n in counts.items()
        if name.startswith(prefix) and name[len(prefix) :].isdigit()
    }


def bucket_starts(now: float, window_s: int) -> list[int]:
    """The buckets a window of ``window_s`` ending at ``now`` covers, oldest first."""
    last = bucket_of(now)
    n = max(1, -(-min(window_s, MAX_WINDOW_S) // BUCKET_S))
    return [last - BUCKET_S * i for i in range(n - 1, -1, -1)]


def quantile(hist: dict[int, int], q: float) -> float | None:
    """The ``q`` quantile of a binned time, in ms, interpolated within its bin; None if empty."""
    total = sum(hist.values())
    if total == 0:
        return None
    rank, seen = q * total, 0
    for index in sorted(hist):
        n = hist[index]
        if seen + n >= rank:
            low = BOUNDS_MS[index - 1] if index > 0 else 0.0
            high = BOUNDS_MS[index] if index < len(BOUNDS_MS) else 2 * BOUNDS_MS[-1]
            return round(low + (high - low) * ((rank - seen) / n), 2)
        seen += n
    return None


def summarize(buckets: list[tuple[int, dict[str, int]]], now: float) -> dict[str, Any]:
    """One model's figures over ``buckets`` (start, counters), oldest first."""
    total: Counter[str] = Counter()
    for _, counts in buckets:
        total.update(counts)
    hists = {kind: binned(total, kind) for kind in TIMES}
    waits: Counter[int] = Counter()
    for lane in LANES:
        waits.update(hists[f"wait_{lane}"])
    errors: dict[str, int] = {}
    for name, n in total.items():
        kind, _, rest = name.partition(":")
        if kind in ("error", "failed") and rest:
            errors[rest] = errors.get(rest, 0) + n
    batches, items = total.get("batches", 0), total.get("items", 0)
    hits, misses = total.get("cache_hit", 0), total.get("cache_miss", 0)
    return {
        "requests": total.get("requests", 0),
        "requests_per_s": _rate(buckets, now, "requests"),
        "requests_series": [c.get("requests", 0) for _, c in buckets],
        "errors": dict(sorted(errors.items())),
        "latency_ms": _quantiles(hists["latency"]),
        "queue_ms": _quantiles(dict(waits)),
        "compute_ms": _quantiles(hists["compute"]),
        "jobs": total.get("jobs", 0),
        "batches": batches,
        "items": items,
        "mean_batch_size": round(items / batches, 2) if batches else None,
        "cache_hits": hits,
        "cache_misses": misses,
        "cache_hit_ratio": round(hits / (hits + misses), 4) if hits + misses else None,
        "lanes": {
            lane: {
                "jobs": total.get(f"jobs_{lane}", 0),
                "items": total.get(f"items_{lane}", 0),
                "items_per_s": _rate(buckets, now, f"items_{lane}"),
                "wait_ms": _quantiles(hists[f"wait_{lane}"]),
            }
            for lane in LANES
        },
    }


def _rate(buckets: list[tuple[int, dict[str, int]]], now: float, name: str) -> float:
    """A counter's rate per second over the last :data:`RATE_S` seconds."""
    recent = [(start, c.get(name, 0)) for start, c in buckets if start >= now - RATE_S]
    first = min((start for start, _ in recent), default=now)
    return round(sum(n for _, n in recent) / max(1.0, now - first), 3)


def _quantiles(hist: dict[int, int]) -> dict[str, float | None]:
    return {"p50": quantile(hist, 0.5), "p99": quantile(hist, 0.99)}
