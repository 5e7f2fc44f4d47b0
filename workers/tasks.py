"""Turning a batch of RQ jobs into pipeline calls, one outcome per job.

Jobs are checked before anything runs: the function must be on the allowlist, the payload must
parse, and the caller's deadline must not have passed. Valid jobs that share parameters become
one batched call (a task that can batch across parameters, zero-shot, makes one call of all).
If that call raises, each job is re-run alone, so one poisoned input fails only its own job.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from contract.cache import params_key
from contract.jobs import (
    ALLOWED_FUNCS,
    ERR_BAD_PAYLOAD,
    ERR_DEADLINE_EXCEEDED,
    ERR_FORBIDDEN_FUNC,
    ERR_INFERENCE_FAILED,
    ERR_INPUT_TOO_LONG,
    ERR_INVALID_INPUT,
    JobPayload,
)
from contract.tasks import Item

log = logging.getLogger("modelgate.worker")

Group = tuple[list[Item], dict[str, Any]]
"""Items that share their parameters, with those parameters."""


class Runner(Protocol):
    """What runs batches: items and parameters in, one JSON value per item out."""

    across_groups: bool
    """Whether ``run_groups`` makes one call of groups with different parameters."""

    def __call__(self, items: list[Item], params: dict[str, Any]) -> list[Any]: ...
    def count_tokens(self, items: list[Item]) -> list[int]: ...
    def run_groups(self, groups: Sequence[Group]) -> list[list[Any]]: ...


class JobLike(Protocol):
    @property
    def id(self) -> str: ...
    @property
    def func_name(self) -> str: ...
    @property
    def kwargs(self) -> dict[str, Any]: ...


class InferenceError(Exception):
    """A job that cannot produce a result; ``code`` is the stable machine-readable reason."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        self.message = message
        super().__init__(f"{code}: {message}")


@dataclass
class Outcome:
    """What happened to one job: its return value, or the error that failed it."""

    value: list[Any] | None = None
    error: InferenceError | None = None
    payload: JobPayload | None = None
    tokens: list[int] | None = None
    """Tokens of each input, by the model's tokenizer, once it succeeded."""
    canceled: bool = False
    """A job run in chunks stopped between two of them because a client canceled it (or a
    coalesced job's segment whose caller went away before it ran)."""
    segments: list[tuple[str, Outcome]] | None = None
    """A coalesced job's outcome: each segment's id and own Outcome."""


class InputTooLong(ValueError):
    """An input has more tokens than the model takes, and its truncation is off."""


class InvalidItem(ValueError):
    """An input the task cannot take as it is (fill-mask text without a mask token)."""


def _admit(job: JobLike, now: float) -> JobPayload:
    try:
        func_name = job.func_name
        kwargs = job.kwargs
    except Exception as err:  # undecodable data, e.g. a pickled job: never run, never crash
        raise InferenceError(
            ERR_BAD_PAYLOAD, f"job data cannot be read as JSON ({type(err).__name__})"
        ) from None
    if func_name not in ALLOWED_FUNCS:
        # Never import or call what a job names: anyone who can write to Redis could choose it.
        raise InferenceError(ERR_FORBIDDEN_FUNC, f"job function {func_name!r} is not allowed")
    try:
        payload = JobPayload.from_kwargs(kwargs)
    except (ValueError, TypeError, AttributeError) as err:
        raise InferenceError(ERR_BAD_PAYLOAD, str(err)) from None
    if payload.deadline is not None and payload.deadline < now:
        raise InferenceError(
            ERR_DEADLINE_EXCEEDED, "the caller's deadline passed before the job ran"
        )
    return payload


def _call_alone(engine: Runner, payload: JobPayload, job_id: str) -> Outcome:
    try:
        return Outcome(value=engine(payload.inputs, payload.parameters))
    except InputTooLong as err:
        return Outcome(error=InferenceError(ERR_INPUT_TOO_LONG, str(err)))
    except InvalidItem as err:
        return Outcome(error=InferenceError(ERR_INVALID_INPUT, str(err)))
    except Exception as err:
        log.exception("job %s failed (request %s)", job_id, payload.request_id or "-")
        return Outcome(error=InferenceError(ERR_INFERENCE_FAILED, _safe_message(err)))


def _safe_message(err: Exception) -> str:
    text = str(err).splitlines()[0] if str(err) else type(err).__name__
    return f"the model failed on this input ({type(err).__name__}: {text[:200]})"


def run_jobs(engine: Runner, jobs: Sequence[JobLike], now: float | None = None) -> list[Outcome]:
    """Run ``jobs`` with as few engine calls as possible; one Outcome per job, in order, with
    the tokens of each input of the jobs that succeeded."""
    outcomes = _run_all(engine, jobs, time.time() if now is None else now)
    _count_tokens(engine, outcomes)
    return outcomes


@dataclass(frozen=True)
class Part:
    """A job's inputs, or some of them, run as a job of their own: a chunk of a large job, or
    one segment (one request) of a coalesced job."""

    id: str
    func_name: str
    kwargs: dict[str, Any]


Done = dict[int, tuple[list[Any], list[int]]]
"""Finished chunks of a job by start offset: their outputs and tokens."""


class ChunkStore(Protocol):
    """Where a job's finished chunks are kept while it runs (Redis for an async job, so that
    another worker resumes it; memory for a sync one, whose caller waits for all of it)."""

    def covered(self) -> int: ...
    def load(self) -> Done: ...
    def started(self, done: int, total: int) -> None: ...
    def save(
        self, start: int, values: list[Any], tokens: list[int], done: int, total: int
    ) -> None: ...


@dataclass
class MemoryChunks:
    """A ChunkStore that forgets: the chunks live as long as the run."""

    chunks: Done = field(default_factory=dict)
    seen: list[tuple[int, int]] = field(default_factory=list)
    """Progress as reported, ``(done, total)`` inputs."""

    def covered(self) -> int:
        return _covered(self.chunks)

    def load(self) -> Done:
        return self.chunks

    def started(self, done: int, total: int) -> None:
        self.seen.append((done, total))

    def save(self, start: int, values: list[Any], tokens: list[int], done: int, total: int) -> None:
        self.chunks[start] = (values, tokens)
        self.seen.append((done, total))


class ChunkedRun:
    """One job's inputs computed a chunk at a time, from the first input its ``store`` does not
    hold yet (a job resumed after its worker died starts there), each finished chunk saved under
    its start offset. The caller chooses each chunk's size and how it is computed: alone, or in
    the same model call as other jobs (a chunk is a job of its own, see :meth:`next_chunk`).

    A job larger than a batch thus never becomes one model call of thousands of inputs. The
    first failing chunk fails the job."""

    def __init__(self, job: JobLike, store: ChunkStore, now: float | None = None) -> None:
        self.job, self.store = job, store
        self.chunks = 0
        """Chunks this run computed."""
        self.failed: Outcome | None = None
        self.pos = self.total = 0
        try:
            self.payload: JobPayload | None = _admit(job, time.time() if now is None else now)
        except InferenceError as err:
            self.payload, self.failed = None, Outcome(error=err)
            return
        self.total = len(self.payload.inputs)
        self.pos = store.covered()  # the chunks' contents are read once, at the end
        store.started(self.pos, self.total)

    @property
    def finished(self) -> bool:
        return self.failed is not None or self.pos >= self.total

    def next_chunk(self, n: int) -> JobLike:
        """The next ``n`` inputs (fewer at the end) as a job of their own."""
        assert self.payload is not None
        inputs = self.payload.inputs[self.pos : self.pos + max(1, n)]
        return Part(self.job.id, self.job.func_name, {**self.payload.to_kwargs(), "inputs": inputs})

    def record(self, part: Outcome) -> None:
        """The outcome of the chunk :meth:`next_chunk` last gave: saved, or the job failed."""
        if part.error is not None or part.value is None:
            self.failed = Outcome(error=part.error, payload=self.payload)
            return
        tokens = part.tokens or [0] * len(part.value)
        start, self.pos = self.pos, self.pos + len(part.value)
        self.chunks += 1
        self.store.save(start, part.value, tokens, self.pos, self.total)

    def outcome(self) -> Outcome:
        """The job's Outcome once :attr:`finished`: all its chunks' outputs, in order."""
        if self.failed is not None:
            return self.failed
        done = self.store.load()
        starts = _chain(done)
        values = [v for start in starts for v in done[start][0]]
        tokens = [n for start in starts for n in done[start][1]]
        return Outcome(value=values, payload=self.payload, tokens=tokens)


def run_chunked(
    engine: Runner,
    job: JobLike,
    size: int | Callable[[], int],
    store: ChunkStore,
    now: float | None = None,
) -> tuple[Outcome, list[tuple[int, float]]]:
    """Run one job's inputs alone, a chunk at a time (``size`` inputs, or as many as ``size()``
    says before each chunk; see :class:`ChunkedRun`); the job's Outcome, and the model calls
    this run made (inputs and milliseconds of each chunk computed)."""
    run = ChunkedRun(job, store, now)
    calls: list[tuple[int, float]] = []
    while not run.finished:
        chunk = run.next_chunk(size() if callable(size) else size)
        began = time.perf_counter()
        [part] = run_jobs(engine, [chunk], now)
        calls.append((len(chunk.kwargs["inputs"]), 1000 * (time.perf_counter() - began)))
        run.record(part)
    return run.outcome(), calls


def _chain(done: Done) -> list[int]:
    """The start offsets of the stored chunks that follow each other from offset 0."""
    starts, pos = [], 0
    while pos in done and done[pos][0]:
        starts.append(pos)
        pos += len(done[pos][0])
    return starts


def _covered(done: Done) -> int:
    """How many inputs from the start the stored chunks cover without a gap."""
    starts = _chain(done)
    return starts[-1] + len(done[starts[-1]][0]) if starts else 0


def _count_tokens(engine: Runner, outcomes: list[Outcome]) -> None:
    """One tokenizer call for the whole batch (a fraction of a millisecond for 32 short texts,
    against tens of milliseconds of forward pass)."""
    done = [o for o in outcomes if o.value is not None and o.payload is not None]
    items = [item for o in done for item in o.payload.inputs]  # type: ignore[union-attr]
    if not items:
        return
    try:
        counts = engine.count_tokens(items)
    except Exception:
        log.exception("counting the tokens of %d inputs failed; usage reports 0", len(items))
        return
    sizes = [len(o.payload.inputs) for o in done]  # type: ignore[union-attr]
    for outcome, tokens in zip(done, _slices(counts, sizes), strict=True):
        outcome.tokens = tokens


def _run_all(engine: Runner, jobs: Sequence[JobLike], now: float) -> list[Outcome]:
    outcomes: list[Outcome] = [Outcome() for _ in jobs]
    groups: dict[str, list[tuple[int, JobPayload]]] = {}
    for i, job in enumerate(jobs):
        try:
            payload = _admit(job, now)
        except InferenceError as err:
            outcomes[i].error = err
            continue
        outcomes[i].payload = payload
        groups.setdefault(params_key(payload.parameters), []).append((i, payload))
    if len(groups) > 1 and engine.across_groups:
        try:
            calls = [(_items(m), m[0][1].parameters) for m in groups.values()]
            for members, values in zip(groups.values(), engine.run_groups(calls), strict=True):
                _spread(members, values, outcomes)
            return outcomes
        except Exception:
            log.warning("one call for %d parameter groups failed; running each alone", len(groups))
    for members in groups.values():
        _run_group(engine, jobs, members, outcomes)
    return outcomes


def _items(members: list[tuple[int, JobPayload]]) -> list[Item]:
    return [item for _, payload in members for item in payload.inputs]


def _slices(values: list[Any], sizes: list[int]) -> list[list[Any]]:
    """``values`` cut into consecutive runs of ``sizes``: one batch's results, per job."""
    cuts, start = [], 0
    for size in sizes:
        cuts.append(values[start : start + size])
        start += size
    return cuts


def _spread(
    members: list[tuple[int, JobPayload]], values: list[Any], outcomes: list[Outcome]
) -> None:
    sizes = [len(payload.inputs) for _, payload in members]
    for (i, _), value in zip(members, _slices(values, sizes), strict=True):
        outcomes[i].value = value


def _run_group(
    engine: Runner,
    jobs: Sequence[JobLike],
    members: list[tuple[int, JobPayload]],
    outcomes: list[Outcome],
) -> None:
    try:
        values = engine(_items(members), members[0][1].parameters)
    except Exception:
        if len(members) == 1 and len(members[0][1].inputs) == 1:
            i, payload = members[0]
            outcomes[i] = _call_alone(engine, payload, jobs[i].id)
            outcomes[i].payload = payload
            return
        log.warning("batched call of %d jobs failed; re-running each alone", len(members))
        for i, payload in members:
            outcomes[i] = _call_alone(engine, payload, jobs[i].id)
            outcomes[i].payload = payload
        return
    _spread(members, values, outcomes)
