"""Two lanes per model: interactive (sync requests) first, bulk (async jobs, Batch API) with a
guaranteed share, so a search box is never stuck behind an indexing job and the job still moves.

:class:`LanePolicy` is the pure part: which lane the next batch should come from.
:class:`LaneQueue` is RQ's ``dequeue_any`` for a worker of several queues that keeps RQ's
single-queue guarantee: every take is an ``LMOVE`` into the lane's intermediate list, so a worker
killed between taking a job and starting it loses nothing (RQ's own multi-queue dequeue is a
plain ``LPOP``). It blocks on the first lane only, for :data:`BLOCK_S` at most, then looks at the
others again: interactive work wakes a worker at once, bulk work within that bound.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from redis import Redis
from rq.exceptions import DequeueTimeout
from rq.intermediate_queue import IntermediateQueue
from rq.job import Job
from rq.queue import Queue
from rq.timeouts import BaseDeathPenalty
from rq.utils import as_text

from contract.jobs import BULK, INTERACTIVE, lane_of

BLOCK_S = 0.25
"""Longest blocking wait on the interactive lane before the others are looked at again."""

LINGER_S = 0.005
"""After an interactive batch, how long a worker keeps looking for the next interactive request
before it takes bulk work: a client that sends its next request as soon as it has its answer
(a few ms later) finds the worker free instead of behind a bulk chunk."""

BULK_LINGER_S = 0.025
"""The same wait after an interactive batch served while a bulk job runs: there, not waiting
long enough costs a request a whole model call of the job's own. Clients that send their next
request as soon as they have an answer (a few ms through the gateway) find the worker free; a
bulk job loses at most this much per interactive batch."""

POLL_S = 0.0005
"""Poll step while lingering (Redis's blocking timeouts are too coarse for milliseconds)."""


@dataclass
class LanePolicy:
    """Which lane comes first for the next batch: interactive, except for a ``bulk_share`` of
    the batches (a credit that grows by the share per batch and is spent a whole batch at a
    time), so while both lanes have work, bulk gets that share and never less."""

    bulk_share: float
    credit: float = 0.0

    def next_lane(self) -> str:
        self.credit += self.bulk_share
        if self.credit >= 1.0 - 1e-9:  # 0.1 added ten times is 0.999...9
            self.credit -= 1.0
            return BULK
        return INTERACTIVE


@dataclass
class BulkPace:
    """How many inputs of a running bulk job ride along each interactive batch, so that the job
    keeps ``share`` of the throughput it has alone however busy the interactive lane is.

    While the job runs, credit accrues at ``share`` x the rate a bulk job has alone (inputs per
    second, learnt from its full chunks of its own, each timed with its saving; before any, from
    the worker's model calls) and is spent in whole inputs. Riding along costs
    the interactive batch only the inputs' marginal compute, not a model call of their own: a
    request that finds the worker busy waits one ordinary batch, a little larger."""

    share: float
    max_size: int
    rate: float = 0.0
    """Inputs per second: of a bulk job's recent full chunks of its own; before any, of the
    worker's calls of at least half a batch; before any, the best of the smaller ones."""
    learnt: int = 0
    """Where :attr:`rate` comes from: 2 bulk chunks alone, 1 calls of half a batch or more,
    0 smaller calls."""
    credit: float = 0.0
    at: float | None = None

    def observe(self, inputs: int, seconds: float, alone: bool = False) -> None:
        """One model call (``alone``: a bulk job's whole step of a full chunk of its own, the
        call and the chunk's saving): its inputs and duration."""
        if inputs <= 0 or seconds <= 0:
            return
        rate = inputs / seconds
        source = 2 if alone else 1 if 2 * inputs >= self.max_size else 0
        if source < self.learnt:
            return
        if source == 0:
            self.rate = max(self.rate, rate)
        elif source > self.learnt:
            self.rate = rate
        else:  # the recent peak: a faster step raises it, a slower one lowers it by a tenth
            # of the gap, so a noisy neighbour's slowdown never shrinks what bulk is owed
            self.rate = max(rate, 0.9 * self.rate + 0.1 * rate)
        self.learnt = source

    def start(self) -> None:
        """A bulk job begins: no credit carried over from an earlier one, or from idle time."""
        self.credit, self.at = 0.0, None

    def owed(self, now: float) -> int:
        """Whole inputs the job is owed at ``now`` (``time.monotonic()``); at least one while
        the rate is still unknown, and never the whole batch (one slot stays interactive)."""
        if self.at is not None:
            self.credit += self.share * self.rate * max(0.0, now - self.at)
            self.credit = min(self.credit, float(self.max_size))
        self.at = now
        owed = int(self.credit) if self.rate > 0 else 1
        return max(0, min(owed, self.max_size - 1))

    def spend(self, inputs: int) -> None:
        self.credit = max(0.0, self.credit - inputs)


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
            found = cls._fetch_dequeued_job(
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
