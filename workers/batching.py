"""The batching worker: RQ's SimpleWorker, taking many jobs per model call.

RQ runs one job per ``execute_job``. This worker, handed one job, drains more from the same queue
(LMOVE into the queue's intermediate list, exactly as RQ's own dequeue does) until the batch holds
``max_batch_size`` inputs or ``max_batch_delay_ms`` has passed, runs them with as few pipeline
calls as possible, and finalizes each job with its own result. The bookkeeping RQ does per job
(execution records, started registry, status, result stream) is written for the whole batch in
one Redis pipeline before and one after, instead of several round trips per job.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import redis.exceptions
from rq.executions import Execution
from rq.job import Job, JobStatus
from rq.queue import Queue
from rq.registry import CanceledJobRegistry
from rq.results import Result
from rq.timeouts import JobTimeoutException
from rq.utils import now
from rq.worker import SimpleWorker, WorkerStatus

from contract.cache import entry, item_key
from contract.jobs import (
    BULK,
    ERR_INFERENCE_FAILED,
    ERR_INFERENCE_TIMEOUT,
    ERROR_META_KEY,
    INTERACTIVE,
    PRESENCE_TTL_S,
    Keys,
    inputs_count,
    is_oom,
    is_sync,
    job_result,
    lane_of,
    segments_of,
)
from contract.recent import Tally
from contract.redisconn import ReplicaAcks, replicated
from workers import rqadapter
from workers.chunks import RedisChunks
from workers.lanes import REDIS_DOWN, LaneQueue, TakenUnread, give_back
from workers.policy import (
    BULK_LINGER_S,
    LINGER_S,
    SHARED_FOR_S,
    BatchPolicy,
    BulkPace,
    LanePolicy,
    fair_share,
)
from workers.replies import Replier
from workers.tasks import (
    ChunkedRun,
    InferenceError,
    JobLike,
    MemoryChunks,
    Outcome,
    Part,
    Runner,
    run_chunked,
    run_jobs,
)

BLOCKING_WAIT_MIN_S = 0.2
"""Below this, waiting for more jobs polls; above, it blocks in BLMOVE."""

HEARTBEAT_EVERY_S = 1.0
"""Least time between two of RQ's worker heartbeats outside a batch's own pipeline."""

POLL_INTERVAL_S = 0.0005
"""Poll step while a batch waits ``max_batch_delay_ms`` for more jobs."""


class RedisFull(Exception):
    """Redis refused a write at its ``maxmemory`` (policy ``noeviction``)."""


REDIS_REFUSING = (*REDIS_DOWN, RedisFull)
"""What a batch's own writes wait out: an outage, or a full Redis that frees memory as sync
jobs are answered and async results expire."""


@contextlib.contextmanager
def _full_as_refusal() -> Iterator[None]:
    """Raise a Redis OOM refusal (however Redis words it) as :class:`RedisFull`."""
    try:
        yield
    except redis.exceptions.ResponseError as err:
        if is_oom(err):
            raise RedisFull(str(err)) from err
        raise


JOB_HEARTBEAT_S = 15.0
"""How often a running bulk job's heartbeat is renewed (RQ's started-job registry takes a job
without one for 90 s as abandoned; a large job sharing its worker may run for minutes)."""

REDIS_RETRY_S = 30.0
"""How long a batch keeps retrying its start or its results while Redis is away."""


@dataclass
class Batch:
    """Jobs taken together from one lane, and what running them took."""

    jobs: list[Job]
    queue: Queue
    lane: str
    calls: list[tuple[int, float]] = field(default_factory=list)
    """The model calls made for this batch: inputs and milliseconds of each."""
    items: int = 0
    """Inputs of this batch's jobs computed, in its own calls or riding along others'."""
    chunks: dict[str, int] = field(default_factory=dict)
    """Chunks each large job of the batch computed in this run."""
    riding: dict[str, int] = field(default_factory=dict)
    """Of those, the chunks that rode along an interactive batch."""
    stores: dict[str, RedisChunks] = field(default_factory=dict)
    """The chunk stores of the batch's large async jobs."""
    withdrawn: set[str] = field(default_factory=set)
    """Segments of its coalesced jobs whose callers went away before the batch started."""


_IN_SIGHT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local idle = 0
for _, name in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], now, '+inf')) do
  if redis.call('HGET', ARGV[1] .. name, 'state') ~= ARGV[2] then idle = idle + 1 end
end
return {redis.call('LLEN', KEYS[1]), idle}
"""
"""A lane's queued jobs and its model's live workers (by presence) whose RQ state is not
busy. The worker hashes' keys are derived in the script (a standalone Redis or Sentinel, not
Redis Cluster, as the gateway's scripts)."""


def _queue_ms(job: Job) -> float:
    if job.enqueued_at is None or job.started_at is None:
        return 0.0
    return max(0.0, (job.started_at - job.enqueued_at).total_seconds() * 1000)


def _error_of(error: InferenceError | None) -> InferenceError:
    """A failed outcome's error (a model call that returned nothing has none of its own)."""
    return error or InferenceError(ERR_INFERENCE_FAILED, "the model returned no output")


class BatchingWorker(SimpleWorker):
    """A SimpleWorker (no fork: the preloaded model stays) that executes jobs in batches."""

    # RQ backs off up to 60 s between reconnects; come back within seconds of Redis returning.
    max_connection_wait_time = 1.0

    def __init__(
        self,
        queues: list[Queue],
        *,
        engine: Runner,
        policy: BatchPolicy,
        keys: Keys,
        model: str,
        fingerprint: str = "",
        on_batch: Callable[[int], None] | None = None,
        cache_connection: redis.Redis | None = None,
        lanes: LanePolicy | None = None,
        replica_acks: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(queues, **kwargs)
        self.replica_acks = ReplicaAcks(keys.replication_mark(), replica_acks)
        """Replicas that must hold a batch's start and its results before the worker goes
        on (Redis WAIT): a failover then neither hands a started job to a second worker nor
        loses a result."""
        self.lanes = lanes or LanePolicy(1.0)
        self.pace = BulkPace(self.lanes.bulk_share, policy.max_size)
        self.interactive = queues[0]
        """The lane a running bulk job serves between its chunks."""
        self.interactive_at = float("-inf")
        """When interactive work was last seen (``time.monotonic()``): while it is recent, a
        bulk job's chunks of its own are small, so that a request never waits long behind one."""
        self.in_bulk = False
        """Whether a bulk job is running (the interactive batches it serves meanwhile run their
        own large jobs in memory)."""
        self.cache_connection = cache_connection
        self.replier = Replier(self.connection, keys)
        self.engine = engine
        self.fingerprint = fingerprint
        self.policy = policy
        self.keys = keys
        self.model = model
        self.on_batch = on_batch
        self.busy_since: float | None = None
        self.batch_timeout_s = float(policy.timeout_s)
        self.last_batch_items = 0
        self._sight = self.connection.register_script(_IN_SIGHT)

    def register_birth(self, *args: Any, **kwargs: Any) -> None:
        """RQ's birth, and this worker's queues in RQ's queue registry: RQ adds a queue there
        only when it enqueues, so without this ``rq info`` lists no queue until a job came."""
        super().register_birth(*args, **kwargs)
        self.connection.sadd(Queue.redis_queues_keys, *(q.key for q in self.queues))

    def reorder_queues(self, reference_queue: Queue) -> None:
        """The lane the next batch comes from first (see :class:`workers.lanes.LanePolicy`)."""
        bulk_first = self.lanes.next_lane() == BULK
        rqadapter.order_queues(
            self, sorted(self.queues, key=lambda q: (lane_of(q.name) == BULK) != bulk_first)
        )

    def heartbeat(self, timeout: int | None = None, pipeline: Any = None) -> None:
        # RQ heart-beats before and after every dequeue and after every job, three round trips
        # each; once a second is plenty for a key that lives worker_ttl + 60 s.
        if pipeline is not None:
            super().heartbeat(timeout, pipeline=pipeline)
            return
        last = self.last_heartbeat
        if (
            timeout is None
            and last is not None
            and (now() - last).total_seconds() < HEARTBEAT_EVERY_S
        ):
            return
        with self._unless_redis_down("heartbeat"), self.connection.pipeline() as pipe:
            super().heartbeat(timeout, pipeline=pipe)
            pipe.execute()

    def set_state(self, state: str, pipeline: Any = None) -> None:
        if pipeline is not None:
            super().set_state(state, pipeline=pipeline)
            return
        if state == rqadapter.state(self):
            return  # unchanged: no round trip
        with self._unless_redis_down(f"recording state {state}"):
            super().set_state(state)

    # RQ's work() quits on a Redis error anywhere but in its dequeue ("unhandled exception,
    # quitting"). A Redis restart must not end the worker: skip the step; the dequeue that
    # follows backs off (max_connection_wait_time) until Redis is back.
    def check_for_suspension(self, burst: bool) -> None:
        with self._unless_redis_down("suspension check"):
            super().check_for_suspension(burst)

    def run_maintenance_tasks(self) -> None:
        with self._unless_redis_down("maintenance"):
            super().run_maintenance_tasks()

    @contextlib.contextmanager
    def _unless_redis_down(self, what: str) -> Iterator[None]:
        """Skip a bookkeeping step while Redis is unreachable or full, with a warning."""
        try:
            with _full_as_refusal():
                yield
        except REDIS_REFUSING as err:
            self.log.warning("%s skipped, Redis unreachable or full: %s", what, err)

    def dequeue_job_and_maintain_ttl(
        self, timeout: int | None, max_idle_time: int | None = None
    ) -> Any:
        # RQ waits out an unreachable Redis here but quits on any other error; a full Redis
        # (taking a job is a write) is waited out too, so the worker recovers by itself.
        while True:
            try:
                with _full_as_refusal():
                    return super().dequeue_job_and_maintain_ttl(timeout, max_idle_time)
            except RedisFull as err:
                self.log.warning("cannot take jobs, Redis is full; retrying in 1 s: %s", err)
                time.sleep(1.0)
            except TakenUnread as err:
                self._give_back(err.queue_key, [err.job_id])

    def _install_signal_handlers(self) -> None:
        # Under `modelgate up` the terminal's Ctrl-C reaches the whole process group; the
        # supervisor follows it with SIGTERM, and RQ would treat that second signal as a cold
        # (mid-batch) stop. So a supervised worker leaves SIGINT to its supervisor.
        super()._install_signal_handlers()
        if os.environ.get("MODELGATE_SUPERVISED"):
            signal.signal(signal.SIGINT, signal.SIG_IGN)

    def execute_job(self, job: Job, queue: Queue) -> None:
        # Busy from the first moment, so a SIGTERM while the batch is still being collected
        # waits for it (warm shutdown) instead of abandoning jobs taken from the queue.
        rqadapter.set_state_locally(self, WorkerStatus.BUSY)
        self.busy_since = time.monotonic()
        try:
            lane = lane_of(queue.name)
            batch = Batch(self._collect(job, queue), queue, lane)
            if lane == INTERACTIVE:
                self.interactive_at = time.monotonic()
            # A transaction that raised may still have been applied (Redis stopping after EXEC):
            # replaying it is harmless; giving up would leave jobs STARTED by a live worker.
            executions = self._retrying(lambda: self._start(batch))
            outcomes, elapsed_ms = self._run(batch)
            self._retrying(lambda: self._finish(batch, executions, outcomes, elapsed_ms))
        except REDIS_REFUSING as err:
            self.log.error("batch abandoned, Redis refused it for %.0f s: %s", REDIS_RETRY_S, err)
        finally:
            self.busy_since = None
            if queue.key == self.interactive.key and isinstance(self.interactive, LaneQueue):
                self.interactive.linger_until = time.monotonic() + LINGER_S
            self.set_state(WorkerStatus.IDLE)

    def _retrying(self, step: Callable[[], Any]) -> Any:
        """Run a batch's Redis step until Redis answers: its results are worth the wait."""
        give_up = time.monotonic() + REDIS_RETRY_S
        pause = 0.1
        while True:
            try:
                with _full_as_refusal():
                    return step()
            except REDIS_REFUSING as err:
                if time.monotonic() + pause > give_up:
                    raise
                self.log.warning("Redis refused a write, retrying in %.1f s: %s", pause, err)
                time.sleep(pause)
                pause = min(1.0, pause * 2)

    def _items(self, jobs: Sequence[JobLike | Job]) -> int:
        total = 0
        for job in jobs:
            try:
                kwargs = job.kwargs
            except Exception:  # an undecodable job still counts once; run_jobs fails it
                kwargs = None
            total += inputs_count(kwargs) if isinstance(kwargs, dict) else 1
        return total

    def _collect(self, first: Job, queue: Queue) -> list[Job]:
        return self._gather(queue, [first], self.policy.max_size)

    def _gather(self, queue: Queue, jobs: list[Job], size: int) -> list[Job]:
        """``jobs`` and more from ``queue``, up to ``size`` inputs in all (the first job is
        taken whatever its size; a job that would overfill the batch goes back to the head of
        its queue, for the next batch)."""
        # Wait for company only under load (the last batch had some): a request arriving alone
        # after a quiet spell runs at once, so the delay never costs a lone caller anything.
        deadline = time.monotonic() + self.policy.delay_s(self.last_batch_items)
        items = self._items(jobs)
        while (room := size - items) > 0:
            ids, share_taken = self._take_ids(queue, room, deadline, taken=len(jobs))
            if not ids:
                break
            fetched = self._fetch(queue, ids)
            if fetched is None:
                break
            for i, job in enumerate(fetched):
                more = self._items([job])
                if items + more > size:
                    self._put_back(queue, fetched[i:])
                    return jobs
                jobs.append(job)
                items += more
            if share_taken:
                break
        return jobs

    def _put_back(self, queue: Queue, jobs: list[Job]) -> None:
        """Return taken jobs to the head of ``queue``, in their order, atomically (a worker
        killed meanwhile leaves them in the intermediate list, where the reaper finds them)."""
        self._give_back(queue.key, [job.id for job in jobs])

    def _give_back(self, queue_key: str, ids: list[str]) -> None:
        """:func:`workers.lanes.give_back` once Redis answers; after :data:`REDIS_RETRY_S`
        without it, the jobs are left to the reaper."""
        try:
            self._retrying(lambda: give_back(self.connection, queue_key, ids))
        except REDIS_REFUSING as err:
            self.log.error("%d taken job(s) left to the reaper, Redis refused: %s", len(ids), err)

    def _take_ids(
        self, queue: Queue, room: int, deadline: float, taken: int | None = None
    ) -> tuple[list[str], bool]:
        try:
            with _full_as_refusal():
                return self._drain_ids(queue, room, deadline, taken)
        except REDIS_REFUSING:
            # Ids moved by a command whose reply was lost stay in the intermediate list: the
            # reaper requeues them.
            return [], True

    def _fetch(self, queue: Queue, ids: list[str]) -> list[Job] | None:
        """The jobs of ``ids`` taken from ``queue``, less those gone or canceled meanwhile;
        None if Redis went away since the take: then they go back to the queue once it answers
        (a failover a sync caller outlives must not leave them to the reaper)."""
        try:
            fetched = Job.fetch_many(ids, connection=self.connection, serializer=self.serializer)
        except REDIS_DOWN:
            self._give_back(queue.key, ids)
            return None
        jobs = []
        for job_id, job in zip(ids, fetched, strict=True):
            if job is None or job.get_status(refresh=False) == JobStatus.CANCELED:
                # Expired, deleted or canceled while queued: drop it, never run it (if Redis
                # is away, the reaper requeues it, and whoever takes it next drops it).
                with contextlib.suppress(*REDIS_REFUSING), _full_as_refusal():
                    self.connection.lrem(queue.intermediate_queue_key, 1, job_id)
            else:
                jobs.append(job)
        return jobs

    def _drain_ids(
        self, queue: Queue, room: int, deadline: float, taken: int | None = None
    ) -> tuple[list[str], bool]:
        """Move up to ``room`` queued ids to the intermediate list; wait until ``deadline``.
        With ``taken`` (the jobs already in the batch), only this worker's fair share of the
        queued jobs among its model's idle workers (:func:`workers.policy.fair_share`). Also
        whether the batch is complete: the share, not the room or the queue, bounded the take
        (what is left is the other idle workers'; looking again, a worker would take it once
        they start their own batches, and make one batch of most of a burst after all)."""
        while True:
            want = room
            if taken is not None:
                queued, idle = self._in_sight(queue)
                want = min(room, fair_share(queued, taken, idle))
                if want < min(room, queued):
                    return self._move(queue, want), True
            ids = self._move(queue, want)
            wait = deadline - time.monotonic()
            if ids or wait <= 0:
                return ids, False
            if wait < BLOCKING_WAIT_MIN_S:
                # Redis checks blocking timeouts on its 100 ms timer, and truncates timeouts under
                # 1 ms to "forever": short waits poll instead.
                time.sleep(min(wait, POLL_INTERVAL_S))
                continue
            # BLMOVE takes fractional seconds; redis-py's annotation says int.
            got = self.connection.blmove(
                queue.key,
                queue.intermediate_queue_key,
                round(wait, 2),  # type: ignore[arg-type]
            )
            return ([got.decode()] if got is not None else []), False

    def _move(self, queue: Queue, count: int) -> list[str]:
        """Up to ``count`` queued ids moved to the intermediate list, in one round trip."""
        if count <= 0:
            return []
        with self.connection.pipeline(transaction=False) as pipe:
            for _ in range(count):
                pipe.lmove(queue.key, queue.intermediate_queue_key)
            return [i.decode() for i in pipe.execute() if i is not None]

    def _in_sight(self, queue: Queue) -> tuple[int, int]:
        """Jobs in ``queue`` and the model's live workers not running a batch (this one among
        them: it records itself busy only when its batch starts), in one round trip."""
        queued, idle = self._sight(
            keys=[queue.key, self.keys.presence(self.model)],
            args=[rqadapter.WORKER_KEY_PREFIX, rqadapter.BUSY],
        )
        return int(queued), int(idle)

    def _start(self, batch: Batch) -> list[Execution]:
        """The batch's jobs STARTED, in one transaction that also reads which segments of its
        coalesced jobs were withdrawn (their callers went away) into ``batch.withdrawn``."""
        jobs, queue = batch.jobs, batch.queue
        segment_ids = [s for job in jobs for s in self._segment_ids(job)]
        executions = []
        with self.connection.pipeline() as pipe:
            self.set_state(WorkerStatus.BUSY, pipeline=pipe)
            for job in jobs:
                ttl = self.get_heartbeat_ttl(job)
                execution = Execution.create(job, ttl, pipeline=pipe, worker_name=self.name)
                self.executions[execution.id] = execution
                executions.append(execution)
                job.heartbeat(now(), ttl, pipeline=pipe)
                job.prepare_for_execution(self.name, pipeline=pipe)
                pipe.persist(job.key)
                pipe.lrem(queue.intermediate_queue_key, 1, job.id)
                pipe.delete(self.keys.seen(job.id))
            self.heartbeat(self.get_heartbeat_ttl(jobs[0]), pipeline=pipe)
            if segment_ids:
                pipe.mget([self.keys.cancel(s) for s in segment_ids])
            replies = pipe.execute()
        replicated(self.connection, self.replica_acks)
        if segment_ids:
            batch.withdrawn = {s for s, v in zip(segment_ids, replies[-1], strict=True) if v}
        return executions

    def _segment_ids(self, job: Job) -> list[str]:
        return [part.id for part in self._segments(job) or []]

    def _run(self, batch: Batch) -> tuple[list[Outcome], float]:
        # A batch may run as long as its longest job may (the gateway scales a large job's
        # timeout with its size); SIGALRM takes whole seconds.
        jobs = batch.jobs
        timeout = max(1, *(int(j.timeout or 0) for j in jobs))
        self.batch_timeout_s = timeout
        started = time.perf_counter()
        try:
            with self.death_penalty_class(timeout, JobTimeoutException, job_id=jobs[0].id):
                outcomes, _ = self._run_jobs(batch)
        except JobTimeoutException:
            err = InferenceError(ERR_INFERENCE_TIMEOUT, f"the batch ran over {timeout} s")
            outcomes = [Outcome(error=err) for _ in jobs]
        elapsed_ms = 1000 * (time.perf_counter() - started)
        self.log.debug("batch of %d jobs took %.1f ms", len(jobs), elapsed_ms)
        return outcomes, elapsed_ms

    def _run_jobs(
        self, batch: Batch, riding: JobLike | None = None
    ) -> tuple[list[Outcome], Outcome | None]:
        """The batch's jobs that fit a batch run together, with ``riding`` (a bulk job's chunk)
        in the same model call; a job larger than a batch runs alone, a chunk at a time. The
        batch's Outcomes, and the riding chunk's."""
        jobs = batch.jobs
        large = [i for i, job in enumerate(jobs) if self.policy.is_large(self._items([job]))]
        small = [i for i in range(len(jobs)) if i not in large]
        outcomes: list[Outcome] = [Outcome() for _ in jobs]
        together: list[JobLike] = []
        # Per small job: its index in ``together``, or a coalesced job's segments, each with
        # its index there (None: withdrawn, not run).
        parts: list[int | list[tuple[str, int | None]]] = []
        for i in small:
            segments = self._segments(jobs[i])
            if segments is None:
                parts.append(len(together))
                together.append(cast(JobLike, jobs[i]))
                continue
            placed: list[tuple[str, int | None]] = []
            for segment in segments:
                if segment.id in batch.withdrawn:
                    placed.append((segment.id, None))
                else:
                    placed.append((segment.id, len(together)))
                    together.append(segment)
            parts.append(placed)
        ridden = None
        if riding is not None:
            together.append(riding)
        if together:
            results, ms = self._call(together)
            batch.calls.append((self._items(together), ms))
            batch.items += self._items([jobs[i] for i in small])
            if riding is not None:
                ridden = results.pop()
        else:
            results = []
        for i, where in zip(small, parts, strict=True):
            if isinstance(where, int):
                outcomes[i] = results[where]
                continue
            outcomes[i] = Outcome(
                segments=[
                    (seg_id, Outcome(canceled=True) if at is None else results[at])
                    for seg_id, at in where
                ]
            )
        for i in large:
            outcomes[i] = self._run_large(jobs[i], batch)
        return outcomes, ridden

    @staticmethod
    def _segments(job: Job) -> list[Part] | None:
        """A coalesced job's segments, each run as a job of its own; None for any other job
        (one whose segments cannot be read runs as itself, and fails as unreadable)."""
        try:
            segments = segments_of(job.kwargs)
        except Exception:
            return None
        if segments is None:
            return None
        return [Part(seg_id, job.func_name or "", kwargs) for seg_id, kwargs in segments]

    def _call(self, jobs: Sequence[JobLike]) -> tuple[list[Outcome], float]:
        """One model call (or as few as the jobs' parameters allow), timed and learnt from."""
        began = time.perf_counter()
        outcomes = run_jobs(self.engine, jobs)
        seconds = time.perf_counter() - began
        self.pace.observe(self._items(jobs), seconds)
        return outcomes, 1000 * seconds

    def _run_large(self, job: Job, batch: Batch) -> Outcome:
        """A job larger than a batch, in chunks. An async job's chunks are kept in Redis and it
        serves the interactive lane meanwhile (:meth:`_run_bulk`); a sync job's caller waits
        for all of it, so it runs to the end."""
        if not is_sync(job.result_ttl) and not self.in_bulk:
            chunks = RedisChunks(self.connection, self.keys, self.model, job, self._retrying)
            batch.stores[job.id] = chunks
            return self._run_bulk(job, chunks, batch)
        outcome, calls = run_chunked(
            self.engine, cast(JobLike, job), self.policy.max_size, MemoryChunks()
        )
        for n, ms in calls:
            self.pace.observe(n, ms / 1000)
        batch.calls.extend(calls)
        batch.items += sum(n for n, _ in calls)
        batch.chunks[job.id] = len(calls)
        return outcome

    def _run_bulk(self, job: Job, store: RedisChunks, batch: Batch) -> Outcome:
        """A bulk job, a chunk at a time, serving the interactive lane as it goes: interactive
        jobs that wait (or come within :data:`BULK_LINGER_S` of the last interactive batch) run
        first, and the inputs the job is owed (:class:`BulkPace`) ride along in the same model
        call. With no interactive work waiting the job runs chunks of its own: small while
        interactive work came recently, full batches otherwise. A client's cancel stops it
        between two chunks."""
        run = ChunkedRun(cast(JobLike, job), store)
        self.pace.start()
        rode, alive_at = 0, time.monotonic()
        self.in_bulk = True
        try:
            while not run.finished:
                began = time.perf_counter()
                if time.monotonic() - alive_at > JOB_HEARTBEAT_S:
                    self._keep_alive(job)
                    alive_at = time.monotonic()
                if run.chunks and self._canceled(job):
                    return Outcome(payload=run.payload, canceled=True)
                owed = self.pace.owed(time.monotonic())
                company = self._company(self.policy.max_size - owed)
                recent = time.monotonic() - self.interactive_at < SHARED_FOR_S
                want = self.policy.own_chunk(owed, bool(company), recent)
                chunk = run.next_chunk(want) if want else None
                if company:
                    part = self._serve(company, chunk)
                    rode += chunk is not None
                else:
                    assert chunk is not None
                    [part], ms = self._call([chunk])
                    batch.calls.append((self._items([chunk]), ms))
                if chunk is not None and part is not None:
                    n = len(chunk.kwargs["inputs"])
                    self.pace.spend(n)
                    batch.items += n
                    run.record(part)
                    if not company and n == self.policy.max_size:
                        self.pace.observe(n, time.perf_counter() - began, alone=True)
        finally:
            self.in_bulk = False
            batch.chunks[job.id], batch.riding[job.id] = run.chunks, rode
        return run.outcome()

    def _keep_alive(self, job: Job) -> None:
        """Renew a running job's heartbeat as RQ's own work-horse monitor does."""
        execution = next((e for e in self.executions.values() if e.job_id == job.id), None)
        if execution is not None:
            with self._unless_redis_down("job heartbeat"):
                self.maintain_heartbeats(job, execution)

    def _canceled(self, job: Job) -> bool:
        try:
            return bool(self.connection.exists(self.keys.cancel(job.id)))
        except REDIS_DOWN:
            return False

    def _company(self, size: int) -> list[Job]:
        """Interactive jobs waiting now, or coming while the lane lingers after its last batch,
        collected as a batch of up to ``size`` inputs would be."""
        lane = self.interactive
        if size <= 0:
            return []
        ids, _ = self._take_ids(lane, 1, getattr(lane, "linger_until", 0.0))
        if not ids:
            return []
        self.interactive_at = time.monotonic()
        jobs = self._fetch(lane, ids)
        return self._gather(lane, jobs, size) if jobs else []

    def _serve(self, jobs: list[Job], riding: JobLike | None) -> Outcome | None:
        """An interactive batch served while a bulk job runs, with the job's chunk ``riding``
        along in the same model call; the chunk's Outcome. The batch is started, answered and
        counted as any interactive batch."""
        lane = self.interactive
        batch = Batch(jobs, lane, INTERACTIVE)
        executions = self._retrying(lambda: self._start(batch))
        started = time.perf_counter()
        try:
            outcomes, ridden = self._run_jobs(batch, riding)
        except JobTimeoutException:  # the bulk job's own timeout: answer these, then stop it
            err = InferenceError(ERR_INFERENCE_TIMEOUT, "the worker's running batch timed out")
            outcomes = [Outcome(error=err) for _ in jobs]
            self._retrying(lambda: self._finish(batch, executions, outcomes, 0.0))
            raise
        elapsed_ms = 1000 * (time.perf_counter() - started)
        self._retrying(lambda: self._finish(batch, executions, outcomes, elapsed_ms))
        if isinstance(lane, LaneQueue):
            lane.linger_until = time.monotonic() + BULK_LINGER_S
        return ridden

    def _finish(
        self, batch: Batch, executions: list[Execution], outcomes: list[Outcome], elapsed_ms: float
    ) -> None:
        ended = now()
        jobs = batch.jobs
        items = self._items(jobs)
        self.last_batch_items = items
        largest = max((n for n, _ in batch.calls), default=items)
        # Cache first: a single-flight joiner that finds the job already gone reads the cache.
        self._cache(outcomes)
        with self.connection.pipeline() as pipe:
            for job, execution, outcome in zip(jobs, executions, outcomes, strict=True):
                if outcome.segments is not None:
                    job.ended_at = ended
                    self._answer_segments(
                        job, execution, outcome.segments, pipe, elapsed_ms, largest
                    )
                    continue
                if outcome.canceled:
                    self._cancel(job, execution, batch.stores[job.id], pipe)
                    continue
                job.ended_at = ended
                if job.id in batch.stores:
                    batch.stores[job.id].drop(pipe)
                if outcome.error is not None or outcome.value is None:
                    if is_sync(job.result_ttl):
                        self._reply_failure(job, execution, outcome.error, pipe)
                    continue
                value = self._result(outcome.value, outcome, elapsed_ms, largest, _queue_ms(job))
                self._record_success(job, execution, value, pipe)
            self._count(pipe, batch, outcomes, items, elapsed_ms)
            pipe.execute()
        for job, execution, outcome in zip(jobs, executions, outcomes, strict=True):
            if outcome.error is not None and not is_sync(job.result_ttl):
                self._record_failure(job, execution, outcome.error, batch.queue)
        replicated(self.connection, self.replica_acks)
        self._log_done(batch, outcomes, items, elapsed_ms)
        if self.on_batch is not None:
            self.on_batch(items)

    def _result(
        self, value: list[Any], outcome: Outcome, elapsed_ms: float, largest: int, queue_ms: float
    ) -> dict[str, Any]:
        """A job's (or a segment's) result: its outputs and how the batch computed them."""
        batch_items = min(largest, self.policy.max_size)
        return job_result(
            value, self.fingerprint, elapsed_ms, batch_items, queue_ms, outcome.tokens
        )

    def _answer_segments(
        self,
        job: Job,
        execution: Execution,
        segments: list[tuple[str, Outcome]],
        pipe: Any,
        elapsed_ms: float,
        largest: int,
    ) -> None:
        """A coalesced job ended: each segment's callers get that segment's own result or
        error (one failing segment never fails its neighbours), and nothing of the job stays,
        as for any sync job. A withdrawn segment's caller is gone: it gets no reply."""
        queue_ms = _queue_ms(job)
        failed = 0
        for seg_id, outcome in segments:
            if outcome.canceled:
                pipe.delete(self.keys.replies(seg_id), self.keys.cancel(seg_id))
                continue
            if outcome.error is not None or outcome.value is None:
                error = _error_of(outcome.error)
                self.log.warning("job %s segment %s failed: %s", job.id, seg_id, error)
                self.replier.notify(
                    pipe, seg_id, error={"code": error.code, "message": error.message}
                )
                failed += 1
                continue
            value = self._result(outcome.value, outcome, elapsed_ms, largest, queue_ms)
            self.replier.notify(pipe, seg_id, result=value)
        if failed:
            self.increment_failed_job_count(pipeline=pipe)
        else:
            self.increment_successful_job_count(pipeline=pipe)
        pipe.delete(job.key, Result.get_key(job.id), self.keys.replies(job.id))
        self.cleanup_execution(job, pipeline=pipe, execution=execution)

    def _count(
        self, pipe: Any, batch: Batch, outcomes: list[Outcome], items: int, elapsed_ms: float
    ) -> None:
        """The batch in the model's counters (``/metrics``), its recent-activity bucket (the
        dashboard) and this worker's description (its last batch). Each model call counts in
        the batch that made it; the inputs of a bulk chunk that rode along an interactive batch
        count in the bulk lane's items."""
        jobs, lane = batch.jobs, batch.lane
        calls = batch.calls or [(items, elapsed_ms)]  # none noted: the batch timed out
        both = Tally()  # counted alike in the model's counters and in its recent bucket
        requests = [len(o.segments) if o.segments is not None else 1 for o in outcomes]
        both.add("batches", len(calls))
        both.add("jobs", sum(requests))  # a coalesced job's segments count one by one
        both.add("items", sum(n for n, _ in calls))  # what the model computed
        both.add(f"jobs_{lane}", sum(requests))
        both.add(f"items_{lane}", batch.items if batch.calls else items)
        stats, recent = Tally(both.counts.copy()), Tally(both.counts.copy())
        for size, ms in calls:
            stats.add(f"batch_size:{size}")
            recent.time("compute", ms)
        for job, outcome, n in zip(jobs, outcomes, requests, strict=True):
            waited = _queue_ms(job)
            for _ in range(n):
                stats.time(f"wait_{lane}", waited)
                recent.time(f"wait_{lane}", waited)
            if outcome.error is not None and not is_sync(job.result_ttl):
                recent.add(f"failed:{outcome.error.code}")
        stats.increment(pipe, self.keys.stats(self.model))
        recent.write(pipe, self.keys, self.model)
        described = self.keys.worker_info(self.name)
        pipe.hset(described, mapping={"last_batch": calls[-1][0], "last_batch_at": time.time()})
        pipe.expire(described, int(PRESENCE_TTL_S) + 60)

    def _log_done(
        self, batch: Batch, outcomes: list[Outcome], items: int, elapsed_ms: float
    ) -> None:
        for job, outcome in zip(batch.jobs, outcomes, strict=True):
            chunks = batch.chunks.get(job.id)
            if outcome.segments is not None:
                self.log.info(
                    "job %s done: %d coalesced requests (%d withdrawn) in a batch of %d, %.1f ms",
                    job.id,
                    len(outcome.segments),
                    sum(o.canceled for _, o in outcome.segments),
                    items,
                    elapsed_ms,
                    extra={"job_id": job.id, "model": self.model},
                )
            elif outcome.canceled:
                self.log.info("job %s canceled between two chunks, after %d", job.id, chunks)
            elif outcome.error is None:
                request_id = outcome.payload.request_id if outcome.payload else ""
                n = len(outcome.value or [])
                if chunks is None:
                    how = f"in a batch of {items}"
                else:
                    rode = batch.riding.get(job.id, 0)
                    how = f"in {chunks} chunks of up to {self.policy.max_size}" + (
                        f", {rode} of them riding along interactive batches" if rode else ""
                    )
                self.log.info(
                    "job %s done: %d inputs %s, %.1f ms (request %s)",
                    job.id,
                    n,
                    how,
                    elapsed_ms,
                    request_id or "-",
                    extra={"job_id": job.id, "request_id": request_id, "model": self.model},
                )

    def _cache(self, outcomes: list[Outcome]) -> None:
        """Store each computed item in the response cache (its own Redis when configured)."""
        entries: dict[str, tuple[bytes, int]] = {}
        flat = [part for o in outcomes for _, part in (o.segments or [("", o)])]
        for outcome in flat:
            payload = outcome.payload
            if payload is None or payload.cache_ttl_s <= 0 or not outcome.value:
                continue
            if not self.fingerprint:
                continue
            tokens = outcome.tokens or [0] * len(outcome.value)
            for text, output, n in zip(payload.inputs, outcome.value, tokens, strict=True):
                key = item_key(
                    self.keys.prefix, self.model, self.fingerprint, payload.parameters, text
                )
                entries[key] = (entry(output, n), payload.cache_ttl_s)
        if not entries:
            return
        connection = self.cache_connection or self.connection
        try:
            with connection.pipeline(transaction=False) as pipe:
                for key, (value, ttl) in entries.items():
                    pipe.set(key, value, ex=ttl)
                pipe.execute()
        except (redis.exceptions.RedisError, OSError) as err:
            # A cache that cannot take entries only costs recomputation, never a result.
            self.log.warning("%d cache entries not stored: %s", len(entries), err)

    def _cancel(self, job: Job, execution: Execution, store: RedisChunks, pipe: Any) -> None:
        """A large job a client canceled while it ran: it ends canceled between two chunks, its
        finished chunks dropped, readable as canceled until its TTL, like a canceled queued
        job (see the gateway's cancel)."""
        ttl = job.get_result_ttl(self.default_result_ttl) or 1
        store.drop(pipe)
        self.cleanup_execution(job, pipeline=pipe, execution=execution)
        job.set_status(JobStatus.CANCELED, pipeline=pipe)
        pipe.zadd(CanceledJobRegistry.key_template.format(job.origin), {job.id: time.time() + ttl})
        pipe.expire(job.key, ttl)
        pipe.delete(self.keys.cancel(job.id))
        self.replier.notify(pipe, job.id)

    def _record_success(self, job: Job, execution: Execution, value: Any, pipe: Any) -> None:
        self.increment_successful_job_count(pipeline=pipe)
        assert job.ended_at is not None and job.started_at is not None
        self.increment_total_working_time(job.ended_at - job.started_at, pipe)
        if is_sync(job.result_ttl):
            self.replier.answer(pipe, job, result=value)
            self.cleanup_execution(job, pipeline=pipe, execution=execution)
            return
        result_ttl = job.get_result_ttl(self.default_result_ttl)
        rqadapter.store_success(job, value, result_ttl, pipe, self.name, execution)
        job.cleanup(result_ttl, pipeline=pipe, remove_from_queue=False)
        self.cleanup_execution(job, pipeline=pipe, execution=execution)
        self.replier.notify(pipe, job.id)

    def _reply_failure(
        self, job: Job, execution: Execution, error: InferenceError | None, pipe: Any
    ) -> None:
        """A sync job's failure goes to its caller's inbox; nothing of the job stays."""
        error = _error_of(error)
        self.log.warning("job %s failed: %s", job.id, error)
        self.increment_failed_job_count(pipeline=pipe)
        self.replier.answer(pipe, job, error={"code": error.code, "message": error.message})
        self.cleanup_execution(job, pipeline=pipe, execution=execution)

    def _record_failure(
        self, job: Job, execution: Execution, error: InferenceError, queue: Queue
    ) -> None:
        job.meta[ERROR_META_KEY] = {"code": error.code, "message": error.message}
        job.save_meta()
        rqadapter.mark_failed(job)
        self.log.warning("job %s failed: %s", job.id, error)
        self.handle_job_failure(
            job=job,
            queue=queue,
            started_job_registry=queue.started_job_registry,
            exc_string=str(error),
            execution=execution,
        )
        # After the failure is recorded: a long-poll that joins later sees it in the job itself.
        with self.connection.pipeline() as pipe:
            self.replier.notify(pipe, job.id)
            pipe.execute()
