"""Prometheus metrics: the gateway's own, plus what workers and queues report through Redis.

Workers keep counters in a per-model Redis hash (jobs, items, batches, a count per batch size);
the gateway reads them, with queue depth and live workers, when ``/metrics`` is scraped. So one
scrape of any gateway replica shows the whole deployment, and workers need no open port.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import redis.asyncio as aredis
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from redis.exceptions import RedisError

from contract.config import Registry
from contract.jobs import Keys
from contract.recent import BOUNDS_MS, LANES, Tally, binned
from gateway.census import Census, RedisFacts
from gateway.dispatch import Dispatcher

log = logging.getLogger("modelgate.gateway")

NO_MODEL = "-"
"""The model label of a request that names none (``/healthz``, ``/metrics``)."""
UNKNOWN = "unknown"
"""The model label of a request naming a model that is not configured."""

LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class RedisCollector(Collector):
    """Exposes Redis memory and keys by kind (last census), and this process's connections."""

    def __init__(self) -> None:
        self.facts: dict[str, RedisFacts] = {}
        self.pools: dict[str, tuple[int, int, int]] = {}
        self.waiting = 0
        self.withdrawn = 0
        self.unreplicated = 0
        self.lost_in_failover = 0

    def collect(self) -> Iterator[Any]:
        used = GaugeMetricFamily(
            "modelgate_redis_memory_bytes", "memory Redis uses", labels=["redis"]
        )
        limit = GaugeMetricFamily(
            "modelgate_redis_maxmemory_bytes", "Redis maxmemory (0: none)", labels=["redis"]
        )
        keys = GaugeMetricFamily(
            "modelgate_redis_keys", "keys in Redis by kind", labels=["redis", "kind"]
        )
        complete = GaugeMetricFamily(
            "modelgate_redis_keys_complete", "1 if the key census read every key", labels=["redis"]
        )
        for name, facts in sorted(self.facts.items()):
            used.add_metric([name], facts.used_bytes)
            limit.add_metric([name], facts.max_bytes)
            complete.add_metric([name], int(facts.complete))
            for kind, count in sorted(facts.keys.items()):
                keys.add_metric([name, kind], count)
        conns = GaugeMetricFamily(
            "modelgate_redis_connections",
            "this gateway process's pooled Redis connections",
            labels=["pool", "state"],
        )
        for pool, (in_use, opened, bound) in sorted(self.pools.items()):
            conns.add_metric([pool, "in_use"], in_use)
            conns.add_metric([pool, "open"], opened)
            conns.add_metric([pool, "max"], bound)
        waiting = GaugeMetricFamily(
            "modelgate_waiting_requests", "requests of this process waiting for a reply"
        )
        waiting.add_metric([], self.waiting)
        withdrawn = CounterMetricFamily(
            "modelgate_withdrawn_jobs",
            "sync jobs of this process withdrawn before a model call, their client gone",
        )
        withdrawn.add_metric([], self.withdrawn)
        unreplicated = CounterMetricFamily(
            "modelgate_unreplicated_writes",
            "async jobs this process accepted without a replica's acknowledgement (Sentinel: "
            "none in sync, or none left)",
        )
        unreplicated.add_metric([], self.unreplicated)
        lost = CounterMetricFamily(
            "modelgate_failover_lost_waits",
            "waits of this process ended with 503 because Redis lost their job in a failover",
        )
        lost.add_metric([], self.lost_in_failover)
        yield from (used, limit, keys, complete, conns, waiting, withdrawn, unreplicated, lost)


class DeploymentCollector(Collector):
    """Exposes the last snapshot of queues, workers and worker counters."""

    def __init__(self) -> None:
        self.snapshot: dict[str, dict[str, Any]] = {}

    def collect(self) -> Iterator[Any]:
        depth = GaugeMetricFamily(
            "modelgate_queue_depth",
            "jobs waiting in the model's lane (interactive: sync requests; bulk: async jobs)",
            labels=["model", "lane"],
        )
        oldest = GaugeMetricFamily(
            "modelgate_queue_oldest_seconds",
            "how long the oldest job waiting in the model's lane has waited (0: none waits)",
            labels=["model", "lane"],
        )
        live = GaugeMetricFamily(
            "modelgate_live_workers", "workers heart-beating for the model", labels=["model"]
        )
        jobs = CounterMetricFamily(
            "modelgate_worker_jobs", "jobs executed by workers", labels=["model"]
        )
        items = CounterMetricFamily(
            "modelgate_worker_items", "inputs run through the model", labels=["model"]
        )
        batch = HistogramMetricFamily(
            "modelgate_batch_size", "inputs per batched model call", labels=["model"]
        )
        lane_items = CounterMetricFamily(
            "modelgate_lane_items",
            "inputs run through the model from each lane (interactive: sync; bulk: async jobs)",
            labels=["model", "lane"],
        )
        lane_wait = HistogramMetricFamily(
            "modelgate_lane_wait_seconds",
            "a job's wait in its lane, from enqueue to the start of its batch",
            labels=["model", "lane"],
        )
        for model, snap in sorted(self.snapshot.items()):
            depth.add_metric([model, "interactive"], snap["queue_depth"])
            depth.add_metric([model, "bulk"], snap["bulk_queue_depth"])
            for lane, age in snap["oldest_s"].items():
                oldest.add_metric([model, lane], age)
            live.add_metric([model], snap["live_workers"])
            stats: dict[str, int] = snap["stats"]
            jobs.add_metric([model], stats.get("jobs", 0))
            items.add_metric([model], stats.get("items", 0))
            sizes = {
                int(k.split(":")[1]): v for k, v in stats.items() if k.startswith("batch_size:")
            }
            buckets = [(str(b), sum(n for s, n in sizes.items() if s <= b)) for b in BATCH_BUCKETS]
            buckets.append(("+Inf", sum(sizes.values())))
            batch.add_metric([model], buckets, sum_value=sum(s * n for s, n in sizes.items()))
            for lane in LANES:
                lane_items.add_metric([model, lane], stats.get(f"items_{lane}", 0))
                lane_wait.add_metric([model, lane], *_wait_histogram(stats, lane))
        yield from (depth, oldest, live, jobs, items, batch, lane_items, lane_wait)


def _wait_histogram(stats: dict[str, int], lane: str) -> tuple[list[tuple[str, int]], float]:
    """Prometheus buckets (seconds, cumulative) and an approximate sum from the workers' binned
    waits (``wait_<lane>:<bin>``, bins of :data:`contract.recent.BOUNDS_MS`)."""
    counts = [0] * (len(BOUNDS_MS) + 1)
    for index, n in binned(stats, f"wait_{lane}").items():
        counts[min(index, len(BOUNDS_MS))] += n
    buckets, seen = [], 0
    for bound, n in zip(BOUNDS_MS, counts, strict=False):
        seen += n
        buckets.append((f"{bound / 1000:g}", seen))
    buckets.append(("+Inf", seen + counts[-1]))
    total = sum(n * b / 1000 for n, b in zip(counts, BOUNDS_MS, strict=False))
    return buckets, total


class Metrics:
    """The gateway's metrics, in a registry of its own (no process-global state), and its share
    of the recent-activity buckets (:mod:`contract.recent`), written by :meth:`flush`."""

    def __init__(self, models: frozenset[str] = frozenset()) -> None:
        self.models = models
        """Configured models: only these get recent-activity buckets."""
        self.recent: dict[str, Tally] = {}
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "modelgate_requests",
            "HTTP requests",
            ["model", "endpoint", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "modelgate_request_seconds",
            "request latency at the gateway",
            ["model", "endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.queue_time = Histogram(
            "modelgate_queue_seconds",
            "time a job waited for a worker",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.inference_time = Histogram(
            "modelgate_inference_seconds",
            "batched model call time",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.cache = Counter(
            "modelgate_cache_items",
            "response cache lookups per input item",
            ["model", "result"],
            registry=self.registry,
        )
        self.deployment = DeploymentCollector()
        self.registry.register(self.deployment)
        self.redis = RedisCollector()
        self.registry.register(self.redis)
        self._census: Census | None = None

    def _tally(self, model: str) -> Tally | None:
        if model not in self.models:
            return None
        return self.recent.setdefault(model, Tally())

    def observe_request(
        self, model: str, endpoint: str, status: int, seconds: float, code: str | None = None
    ) -> None:
        # Label values come only from configured models and routes: a name a client made up
        # must not add series (memory here, load on the scraper) without bound.
        if model not in self.models and model != NO_MODEL:
            model = UNKNOWN
        self.requests.labels(model, endpoint, str(status)).inc()
        self.latency.labels(model, endpoint).observe(seconds)
        tally = self._tally(model)
        if tally is not None:
            tally.add("requests")
            tally.time("latency", seconds * 1000)
            if status >= 400:
                tally.add("errors")
                tally.add(f"error:{code or f'http_{status}'}")

    def observe_job(self, model: str, queue_ms: float | None, inference_ms: float | None) -> None:
        if queue_ms is not None:
            self.queue_time.labels(model).observe(max(0.0, queue_ms) / 1000)
        if inference_ms is not None:
            self.inference_time.labels(model).observe(inference_ms / 1000)

    def observe_cache(self, model: str, hits: int, misses: int) -> None:
        if hits:
            self.cache.labels(model, "hit").inc(hits)
        if misses:
            self.cache.labels(model, "miss").inc(misses)
        tally = self._tally(model)
        if tally is not None:
            tally.add("cache_hit", hits)
            tally.add("cache_miss", misses)

    async def flush(self, conn: aredis.Redis, keys: Keys) -> None:
        """Add what this process counted since the last flush to the recent-activity buckets,
        in one round trip. Counts are dropped if Redis refuses them: the window is a view, not
        a ledger, and Prometheus keeps the totals."""
        taken, self.recent = self.recent, {}
        if not taken:
            return
        pipe = conn.pipeline(transaction=False)
        for model, tally in taken.items():
            tally.write(pipe, keys, model)
        try:
            await pipe.execute()
        except (RedisError, OSError) as err:
            log.warning("recent activity not recorded: %s", err)

    async def render(self, registry: Registry, dispatcher: Dispatcher) -> bytes:
        self.deployment.snapshot = {
            m.name: await _snapshot(m.name, dispatcher) for m in registry.models
        }
        if self._census is None:
            conns = dispatcher.connections
            self._census = Census(conns.conn, conns.cache, dispatcher.keys)
        self.redis.facts = await self._census.take()
        self.redis.pools = dispatcher.connections.pool_stats()
        self.redis.waiting = dispatcher.listener.waiting
        self.redis.withdrawn = dispatcher.withdrawn
        self.redis.unreplicated = dispatcher.replica_acks.short
        self.redis.lost_in_failover = dispatcher.listener.lost
        return generate_latest(self.registry)


async def _snapshot(model: str, dispatcher: Dispatcher) -> dict[str, Any]:
    load = await dispatcher.admission.load(model)
    raw = await dispatcher.conn.hgetall(dispatcher.keys.stats(model))
    stats = {k.decode(): int(v) for k, v in raw.items()}
    return {
        "queue_depth": load.queue_depth,
        "bulk_queue_depth": load.bulk_depth,
        "live_workers": load.live_workers,
        "oldest_s": await dispatcher.admission.oldest(model),
        "stats": stats,
    }
