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

import redis.exceptions
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

REDIS_DOWN = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)
"""What a Redis restart, outage or failover raises."""

_GIVE_BACK = """
for i = #ARGV, 1, -1 do
  if redis.call('LREM', KEYS[2], 1, ARGV[i]) == 1 then
    redis.call('LPUSH', KEYS[1], ARGV[i])
  end
end
"""


def give_back(connection: Redis, queue_key: str, job_ids: list[str]) -> None:
    """Return jobs taken from ``queue_key`` (moved into its intermediate list) and not started
    to the head of the queue, in their order, in one step. Only those still in the intermediate
    list go back: after a failover the new master may lack the take (the job is then still
    queued, and pushing it again would run it twice), or the reaper may have requeued it."""
    if job_ids:
        intermediate = IntermediateQueue.get_intermediate_queue_key(queue_key)
        connection.eval(_GIVE_BACK, 2, queue_key, intermediate, *job_ids)


class TakenUnread(Exception):
    """Redis went away between taking a job and reading it: the job waits in the intermediate
    list for its worker to give it back (:func:`give_back`) once Redis answers, instead of for
    the reaper (seconds, past a sync caller's deadline)."""

    def __init__(self, queue_key: str, job_id: str) -> None:
        super().__init__(f"job {job_id} taken from {queue_key} but not read: Redis went away")
        self.queue_key = queue_key
        self.job_id = job_id


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
            try:
                found = rqadapter.fetch_taken(
                    cls,
                    connection,
                    taken[0],
                    taken[1],
                    job_class=job_class,
                    serializer=serializer,
                    death_penalty_class=death_penalty_class,
                )
            except REDIS_DOWN as err:
                raise TakenUnread(*taken) from err
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
