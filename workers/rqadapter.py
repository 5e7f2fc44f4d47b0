"""Every use the workers make of RQ beyond its public API, in one place.

The batching worker finishes many jobs in one transaction, which RQ's own ``perform_job`` does
one job at a time; to write an async job's result and failure as RQ would, it calls the job's
own handlers, which RQ keeps private. The lanes' dequeue reuses RQ's fetch of a job taken from a
queue, and the worker sets the queue order and its state the way RQ's own work loop does.
``tests/unit/test_rq_adapters.py`` pins the RQ series these were written for
(``contract.jobs.RQ_SERIES``).
"""

from __future__ import annotations

from typing import Any

from redis import Redis
from rq.executions import Execution
from rq.job import Job, JobStatus
from rq.queue import Queue
from rq.worker import BaseWorker, Worker, WorkerStatus


def store_success(
    job: Job, value: Any, result_ttl: int | None, pipe: Any, worker: str, execution: Execution
) -> None:
    """An async job FINISHED with ``value`` as its result, as RQ's worker records it."""
    job._result = value
    job._status = JobStatus.FINISHED
    job._handle_success(
        result_ttl,
        pipeline=pipe,
        worker_name=worker,
        execution_id=execution.id,
        execution_started_at=execution.created_at,
        execution_ended_at=job.ended_at,
    )


def mark_failed(job: Job) -> None:
    """The job's status as RQ's ``handle_job_failure`` expects to find it."""
    job._status = JobStatus.FAILED


def store_failure(job: Job, message: str, pipe: Any) -> None:
    """A job FAILED with ``message``, written as RQ's worker writes a failure."""
    job._handle_failure(message, pipeline=pipe)


def fetch_taken(
    queue_class: type[Queue],
    connection: Redis,
    queue_key: str,
    job_id: str,
    **options: Any,
) -> tuple[Job, Queue] | None:
    """RQ's own fetch of a job just moved out of ``queue_key``; None if it expired."""
    return queue_class._fetch_dequeued_job(connection, queue_key, job_id, **options)


WORKER_KEY_PREFIX = Worker.redis_worker_namespace_prefix
"""Where RQ keeps a worker's hash (its ``state`` among the fields): this plus its name."""

BUSY = WorkerStatus.BUSY.value
"""The ``state`` a worker running a job records."""


def order_queues(worker: BaseWorker, queues: list[Queue]) -> None:
    """The order RQ's work loop dequeues from next."""
    worker._ordered_queues = queues


def state(worker: BaseWorker) -> str:
    """The state the worker last recorded."""
    return str(worker._state)


def set_state_locally(worker: BaseWorker, value: str) -> None:
    """The worker's state, in the process only (written to Redis with its next batch)."""
    worker._state = value
