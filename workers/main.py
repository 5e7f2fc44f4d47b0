"""Entry point of one worker process: load the model once, warm it up, announce it, serve."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import time
import uuid
from pathlib import Path

import torch
import transformers
from redis import Redis
from redis.exceptions import RedisError
from rq.queue import Queue
from rq.serializers import JSONSerializer

from contract.config import ConfigError, ModelSpec, Registry, load_registry
from contract.jobs import LANES, LOAD_ERROR_TTL_S, Keys
from contract.logs import configure_logging
from contract.redisconn import sync_client
from contract.settings import CommonSettings, unreachable
from workers.batching import BatchingWorker
from workers.engines import Engine
from workers.lanes import LaneQueue
from workers.pipelines import build_engine
from workers.policy import BatchPolicy, LanePolicy
from workers.presence import Presence, stuck_check
from workers.reaper import Reaper
from workers.runtime import export_root

log = logging.getLogger("modelgate.worker")

WORKER_TTL_S = 60
"""RQ's worker key TTL; its blocking dequeue times out 15 s before, so a broken connection is
noticed within a minute rather than RQ's default seven."""

MAINTENANCE_INTERVAL_S = 30
"""How often RQ's maintenance (stale started jobs, registries) runs on this worker."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="modelgate worker",
        description="Serve one model from models.yaml: load its pipeline once, then run its queue's"
        " jobs in batches. Redis comes from MODELGATE_REDIS_URL (or REDIS_URL); the file from"
        " --config or MODELGATE_CONFIG. Exit codes: 1 Redis unreachable, 2 bad config,"
        " 3 the model cannot load.",
    )
    parser.add_argument("--model", required=True, help="the model's name in models.yaml")
    parser.add_argument(
        "--config", help="path to models.yaml (default: MODELGATE_CONFIG or ./models.yaml)"
    )
    parser.add_argument("--redis-url", help="Redis URL (default: MODELGATE_REDIS_URL)")
    parser.add_argument("--name", help="worker name (default: <model>-<random>)")
    parser.add_argument(
        "--threads",
        type=int,
        help="intra-op threads of the model, torch's or the onnx/openvino session's "
        "(default: models.yaml 'threads', else all cores)",
    )
    parser.add_argument(
        "--log-format", choices=["text", "json"], help="log line format (default: text)"
    )
    parser.add_argument(
        "--burst",
        action="store_true",
        help="exit when the queue is empty (for tests and batch runs)",
    )
    return parser


def _spec(registry: Registry, name: str) -> ModelSpec:
    spec = registry.get(name)
    if spec is None:
        names = ", ".join(m.name for m in registry.models)
        raise ConfigError(name, [f"--model: no model named {name!r} (models: {names})"])
    return spec


LOAD_FAILED = 3
"""Exit code of a worker whose model cannot load (its supervisor retries it with backoff)."""


def quiet_unless_terminal() -> None:
    """No progress bars (weights loading, downloads) in a log: only on a terminal."""
    if not sys.stderr.isatty():
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        transformers.utils.logging.disable_progress_bar()  # type: ignore[no-untyped-call]


def _cannot_load(spec: ModelSpec, err: Exception) -> str:
    """One line: the model, its source and the cause."""
    # The first two lines: some libraries put the field on one and the reason on the next.
    text = " ".join(line.strip() for line in str(err).strip().splitlines()[:2])
    cause = f"{type(err).__name__}: {text}"[:500]
    engine = f", engine {spec.engine}" if spec.engine != "torch" else ""
    return f"model {spec.name!r} ({spec.source.describe()}{engine}) cannot load: {cause}"


def try_load(
    spec: ModelSpec, registry: Registry, exports: Path | None = None
) -> tuple[Engine | None, str | None]:
    """The model loaded (``engine: onnx``/``openvino``: exported into ``exports`` first if
    need be) and warmed up; or None and why not, in one line (model, source, cause; the
    traceback goes to the debug log)."""
    quiet_unless_terminal()
    try:
        engine = build_engine(spec, registry.base_dir, exports)
        log.info("warm-up call took %.0f ms", 1000 * engine.warm_up())
    except Exception as err:
        log.debug("the load error in full", exc_info=True)
        return None, _cannot_load(spec, err)
    return engine, None


def _load(
    spec: ModelSpec, registry: Registry, connection: Redis, keys: Keys, exports: Path
) -> Engine | None:
    """The warmed-up engine; or None, with the cause logged and left in Redis for the gateway
    to answer with (``/models/{name}``, 503 ``model_unavailable``)."""
    engine, problem = try_load(spec, registry, exports)
    with contextlib.suppress(RedisError, OSError):
        if problem:
            log.error("%s", problem)
            connection.set(keys.load_error(spec.name), problem, ex=LOAD_ERROR_TTL_S)
        else:
            connection.delete(keys.load_error(spec.name))
    return engine


def serve(
    settings: CommonSettings, model: str, *, name: str | None, threads: int | None, burst: bool
) -> int:
    registry = load_registry(settings.config)
    spec = _spec(registry, model)
    problem = unreachable(settings.redis_url)
    if problem:
        log.error("%s", problem)
        return 1
    n_threads = threads or spec.threads
    if n_threads:
        torch.set_num_threads(n_threads)
    log.info("torch threads: %d", torch.get_num_threads())
    keys = Keys(settings.prefix)
    connection = sync_client(settings.redis_url, socket_connect_timeout=5, health_check_interval=10)
    engine = _load(spec, registry, connection, keys, export_root(settings.export_dir))
    if engine is None:
        return LOAD_FAILED
    # Interactive first: RQ's own code (and rq info) sees a worker of two queues.
    queues: list[Queue] = [
        LaneQueue(keys.queue(spec.name, lane), connection=connection, serializer=JSONSerializer)
        for lane in LANES
    ]
    cache_connection = None
    if settings.cache_url and settings.cache_url != settings.redis_url:
        # Short timeouts: a cache that is away costs recomputation, never a batch's results.
        cache_connection = sync_client(
            settings.cache_url, socket_connect_timeout=1, socket_timeout=1
        )
    worker = BatchingWorker(
        queues,
        engine=engine,
        policy=BatchPolicy(spec.max_batch_size, spec.max_batch_delay_ms, spec.timeout_s),
        keys=keys,
        model=spec.name,
        fingerprint=engine.fingerprint,
        cache_connection=cache_connection,
        lanes=LanePolicy(spec.bulk_share),
        replica_acks=settings.acks,
        queue_class=LaneQueue,
        name=name or f"{spec.name}-{uuid.uuid4().hex[:8]}",
        connection=connection,
        serializer=JSONSerializer,
        worker_ttl=WORKER_TTL_S,
        maintenance_interval=MAINTENANCE_INTERVAL_S,
        log_job_description=False,
    )
    info = {
        "device": engine.device,
        "dtype": spec.dtype,
        "engine": spec.engine,
        "fingerprint": engine.fingerprint,
        "max_batch_size": str(spec.max_batch_size),
        "ready_at": str(time.time()),
    }
    reaper = Reaper(connection, keys, spec.name, worker.name)
    presence = Presence(
        connection,
        keys,
        spec.name,
        worker.name,
        info,
        healthy=stuck_check(lambda: worker.busy_since, lambda: worker.batch_timeout_s),
        on_tick=reaper.run_once,
    )
    presence.start()
    log.info(
        "worker %s ready: serving queues %s (interactive first, bulk share %.2f)",
        worker.name,
        ", ".join(q.name for q in queues),
        spec.bulk_share,
    )
    try:
        worker.work(burst=burst, logging_level=settings.log_level, with_scheduler=False)
    finally:
        presence.stop()
    log.info("worker %s stopped", worker.name)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    overrides = {
        k: v
        for k, v in {
            "config": args.config,
            "redis_url": args.redis_url,
            "log_format": args.log_format,
        }.items()
        if v
    }
    settings = CommonSettings(**overrides)
    configure_logging(settings.log_format, settings.log_level)
    quiet_unless_terminal()
    try:
        return serve(settings, args.model, name=args.name, threads=args.threads, burst=args.burst)
    except ConfigError as err:
        log.error("%s", err)
        return 2
