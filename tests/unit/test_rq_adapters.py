"""The RQ internals the two adapters (gateway.rqadapter, workers.rqadapter) rely on are there,
in the RQ series they were written for: an RQ upgrade that moves them fails here, not in
production. pyproject's rq requirement is the same series."""

from __future__ import annotations

import inspect
import re
import tomllib
from pathlib import Path

import rq
from redis import Redis
from rq.job import Job
from rq.queue import Queue
from rq.registry import StartedJobRegistry
from rq.serializers import JSONSerializer
from rq.utils import get_version
from rq.worker import SimpleWorker

from contract.jobs import RQ_QUEUE_PREFIX, RQ_SERIES, queue_key, started_key
from gateway.rqadapter import knows_server_version, recorded, tell_server_version
from modelgate.redis_server import RedisServer
from workers import rqadapter

ROOT = Path(__file__).resolve().parents[2]


def client() -> Redis:
    return Redis(host="127.0.0.1", port=1)  # never connected: nothing here talks to a server


def test_the_installed_rq_is_the_series_the_adapters_were_written_for() -> None:
    major, minor = (int(p) for p in rq.__version__.split(".")[:2])
    assert (major, minor) == RQ_SERIES
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    [requirement] = [r for r in project["project"]["dependencies"] if r.startswith("rq")]
    low, high = RQ_SERIES, (RQ_SERIES[0], RQ_SERIES[1] + 1)
    assert re.sub(r"\s", "", requirement) == f"rq>={low[0]}.{low[1]},<{high[0]}.{high[1]}"


def test_queue_keys_are_rqs_own() -> None:
    assert Queue.redis_queue_namespace_prefix == RQ_QUEUE_PREFIX
    assert queue_key("mg:m") == Queue("mg:m", connection=client()).key
    queue = Queue("mg:m", connection=client())
    assert started_key("mg:m") == StartedJobRegistry(queue=queue).key


def test_the_server_version_is_left_where_rq_reads_it() -> None:
    conn = client()
    assert not knows_server_version(conn)
    tell_server_version(conn, "7.2")
    assert knows_server_version(conn)
    assert get_version(conn) == (7, 2, 0)  # read from the cache: no server to ask


def test_rqs_enqueue_is_recorded_not_sent() -> None:
    conn = client()
    tell_server_version(conn, "7.2.4")
    queue = Queue("mg:m", connection=conn, serializer=JSONSerializer)
    job = queue.create_job("workers.tasks.predict", kwargs={"inputs": ["x"]}, job_id="j1")
    commands = recorded(conn, lambda pipe: queue.enqueue_job(job, pipeline=pipe))
    names = [args[0] for args, _ in commands]
    assert "HSET" in names and "RPUSH" in names
    assert any(args[:3] == ("RPUSH", queue.key, "j1") for args, _ in commands)


def test_the_private_job_handlers_take_what_the_adapters_pass() -> None:
    success = inspect.signature(Job._handle_success).parameters
    assert {
        "result_ttl",
        "pipeline",
        "worker_name",
        "execution_id",
        "execution_started_at",
        "execution_ended_at",
    } <= set(success)
    assert list(inspect.signature(Job._handle_failure).parameters)[:3] == [
        "self",
        "exc_string",
        "pipeline",
    ]
    fetch = inspect.signature(Queue._fetch_dequeued_job).parameters
    assert list(fetch)[:3] == ["connection", "queue_key", "job_id"]
    assert {"job_class", "serializer", "death_penalty_class"} <= set(fetch)
    job = Job(id="j", connection=client())
    rqadapter.mark_failed(job)
    assert job.get_status(refresh=False) == "failed"


def test_the_worker_attributes_the_adapter_sets_are_rqs(redis_server: RedisServer) -> None:
    conn = Redis.from_url(redis_server.url)  # an RQ worker names its connection at birth
    queues = [Queue("a", connection=conn), Queue("b", connection=conn)]
    worker = SimpleWorker(queues, connection=conn)
    assert rqadapter.state(worker) == str(worker.get_state())
    rqadapter.set_state_locally(worker, "busy")
    assert worker.get_state() == "busy"
    rqadapter.order_queues(worker, list(reversed(queues)))
    assert [q.name for q in worker._ordered_queues] == ["b", "a"]
