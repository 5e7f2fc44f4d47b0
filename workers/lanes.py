"""Two lanes per model: interactive (sync requests) first, bulk (async jobs, Batch API) with a
guaranteed share, so a search box is never stuck behind an indexing job and the job still moves.

The policy (which lane the next batch comes from, how a bulk job is paced, how long a worker
lingers on the interactive lane) is in :mod:`workers.policy`. :class:`LaneQueue` is RQ's
``dequeue_any`` for a worker of several queues that keeps RQ's single-queue guarantee: every
take is an ``LMOVE`` into the lane's intermediate list, so a worker killed between taking a job
and starting it loses nothing (RQ's own multi-queue dequeue is a plain ``LPOP``). It blocks on
the first lane only, for :data:`BLOCK_S` at most, then looks at the others again: interactive
work wakes a worker at once, bulk work within that bound.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from redis import Redis
from rq.exceptions import DequeueTimeout
from rq.intermediate_queue import IntermediateQueue
from rq.job import Job
from rq.queue import Queue
from rq.timeouts import BaseDeathPenalty
from rq.utils import as_text

from contract.jobs import INTERACTIVE, lane_of
from workers import rqadapter

BLOCK_S = 0.25
"""Longest blocking wait on the interactive lane before the others are looked at again."""

POLL_S = 0.0005
"""Poll step while lingering (Redis's blocking timeouts are too coarse for milliseconds)."""


class LaneQueue(Queue):
    """A Queue whose ``dequeue_any`` moves each job into its lane's intermediate list."""

    linger_until: float = 0.0
    """Until this ``time.monotonic()``, a dequeue that would look at this lane first looks at
    nothing else (set on the interactive lane after each of its batches)."""

    @classmethod
    def dequeue_any(
        cls,
        queues: Iterable[Queue],
        timeout: int | None,
        connection: Redis,
        job_class: type[Job] | None = None,
        serializer: Any = None,
        death_penalty_class: type[BaseDeathPenalty] | None = None,
    ) -> tuple[Job, Queue] | None:
        ordered = list(queues)
        while True:
            taken = cls._take(ordered, timeout, connection)
            if taken is None:
                return None
            found = rqadapter.fetch_taken(
                cls,
                connection,
                taken[0],
                taken[1],
                job_class=job_class,
                serializer=serializer,
                death_penalty_class=death_penalty_class,
            )
            if found is not None:  # None: the job expired while queued; take the next
                return found

    @classmethod
    def _take(
        cls, queues: list[Queue], timeout: int | None, connection: Redis
    ) -> tuple[str, str] | None:
        first = queues[0]
        until = getattr(first, "linger_until", 0.0)
        while time.monotonic() < until:
            job_id = connection.lmove(first.key, IntermediateQueue(first.key, connection).key)
            if job_id is not None:
                return first.key, as_text(job_id)
            time.sleep(POLL_S)
        for queue in queues:
            job_id = connection.lmove(queue.key, IntermediateQueue(queue.key, connection).key)
            if job_id is not None:
                return queue.key, as_text(job_id)
        if timeout is None:
            return None
        # Block where waiting costs a person: the interactive lane, whichever lane is first.
        lane = next((q for q in queues if lane_of(q.name) == INTERACTIVE), queues[0]).key
        wait = min(float(timeout), BLOCK_S)
        # BLMOVE takes fractional seconds; redis-py's annotation says int.
        job_id = connection.blmove(lane, IntermediateQueue(lane, connection).key, wait)  # type: ignore[arg-type]
        if job_id is None:
            raise DequeueTimeout(wait, lane)
        return lane, as_text(job_id)
