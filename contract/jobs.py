"""What crosses Redis between gateway and workers: key names, the job payload, error codes.

Everything here is plain JSON. The gateway enqueues RQ jobs that name :data:`PREDICT_FUNC`;
a worker runs only the functions in :data:`ALLOWED_FUNCS`, whatever a job in Redis claims.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

DEFAULT_PREFIX = "modelgate"
"""Namespace for modelgate's own keys and queue names."""

PREDICT_FUNC = "workers.tasks.predict"
"""The dotted name the gateway enqueues; workers map it to code themselves."""

ALLOWED_FUNCS = frozenset({PREDICT_FUNC})
"""The only job functions a worker will run."""

PRESENCE_TTL_S = 5.0
"""A worker that has not heart-beaten for this long counts as gone. Four missed beats: a loaded
machine can stall a process for a few seconds (CPU starvation, a long collection), and a live
worker that lapses makes its model answer 503 until the next beat."""

HEARTBEAT_INTERVAL_S = 1.0
"""How often a worker renews its presence."""

INBOX_TTL_S = 120
"""A gateway's reply inbox lives this long after its last renewal or reply."""

SYNC_RESULT_TTL_S = 0
"""A sync job's ``result_ttl``: its caller gets the result in its inbox, so RQ keeps nothing.
A worker deletes such a job, its result and its bookkeeping when it replies."""

SYNC_FAILURE_TTL_S = 60
"""A sync job's ``failure_ttl``, for a failure recorded by RQ itself rather than replied."""


INTERACTIVE = "interactive"
"""The lane of sync requests (``/predict`` and the client APIs' sync calls)."""

BULK = "bulk"
"""The lane of async jobs and Batch API lines."""

LANES = (INTERACTIVE, BULK)

BULK_SUFFIX = ":bulk"
"""How a bulk lane's queue name ends."""


RQ_SERIES = (3, 0)
"""The RQ release series (major, minor) that the gateway's and the workers' RQ adapters
(``gateway.rqadapter``, ``workers.rqadapter``) were written against; pyproject pins it."""

RQ_QUEUE_PREFIX = "rq:queue:"
"""Where RQ keeps a queue's list of job ids (``Queue.redis_queue_namespace_prefix``; a test
pins it to the RQ version installed)."""


RQ_STARTED_PREFIX = "rq:wip:"
"""Where RQ keeps a queue's started jobs, a sorted set (``StartedJobRegistry.key_template``;
a test pins it)."""


def started_key(queue_name: str) -> str:
    """The Redis key of an RQ queue's started-job registry: jobs a worker runs right now."""
    return RQ_STARTED_PREFIX + queue_name


def queue_key(queue_name: str) -> str:
    """The Redis key of an RQ queue's list of job ids."""
    return RQ_QUEUE_PREFIX + queue_name


def lane_of(queue_name: str) -> str:
    """The lane of an RQ queue name (or key) that :meth:`Keys.queue` made."""
    return BULK if queue_name.endswith(BULK_SUFFIX) else INTERACTIVE


@dataclass(frozen=True)
class Keys:
    """Redis key and queue names under one prefix."""

    prefix: str = DEFAULT_PREFIX

    def queue(self, model: str, lane: str = INTERACTIVE) -> str:
        """The RQ queue name of a model's lane (RQ stores it at ``rq:queue:<name>``): sync
        requests go to the interactive lane, async jobs and Batch API lines to the bulk one."""
        if lane == BULK:
            return f"{self.prefix}:{model}{BULK_SUFFIX}"
        return f"{self.prefix}:{model}"

    def queue_key(self, model: str, lane: str = INTERACTIVE) -> str:
        """The Redis key of a model's lane: the list of its queued job ids."""
        return queue_key(self.queue(model, lane))

    def started_key(self, model: str, lane: str = INTERACTIVE) -> str:
        """The Redis key of the jobs of a model's lane that workers are running."""
        return started_key(self.queue(model, lane))

    def replication_mark(self) -> str:
        """Written just before a ``WAIT``, so the wait covers every earlier write (see
        ``contract.redisconn.ReplicaAcks``); it expires in seconds."""
        return f"{self.prefix}:replication-mark"

    def reaper_lock(self, model: str) -> str:
        """Held for a moment by the one worker of a model that is recovering lost jobs."""
        return f"{self.prefix}:reaper:{model}"

    def cancel(self, job_id: str) -> str:
        """Set when a client cancels a job a worker is running in chunks: the worker stops it
        at the next chunk boundary."""
        return f"{self.prefix}:cancel:{job_id}"

    def bucket(self, key_id: str, kind: str) -> str:
        """Hash of one API key's token bucket (``requests`` or ``inputs``): level and time."""
        return f"{self.prefix}:bucket:{key_id}:{kind}"

    def chunks(self, job_id: str) -> str:
        """Hash of a large job's finished chunks (index to outputs and tokens), so a worker
        that picks the job up again (after a kill, or after yielding to interactive work)
        never computes a chunk twice; gone once the job's result is written."""
        return f"{self.prefix}:chunks:{job_id}"

    def presence(self, model: str) -> str:
        """Sorted set of live worker names scored by the time their presence expires."""
        return f"{self.prefix}:presence:{model}"

    def worker_info(self, worker: str) -> str:
        """Hash describing one worker (model, device, fingerprint, pid, host)."""
        return f"{self.prefix}:worker:{worker}"

    def fingerprints(self, model: str) -> str:
        """Hash of worker name to the fingerprint of the weights it serves."""
        return f"{self.prefix}:fingerprints:{model}"

    def stats(self, model: str) -> str:
        """Hash of counters a model's workers keep (jobs, items, batches)."""
        return f"{self.prefix}:stats:{model}"

    def inbox(self, gateway: str) -> str:
        """Stream of the replies one gateway process waits for (one reader, any number of
        waiters); it expires :data:`INBOX_TTL_S` after its gateway stops renewing it."""
        return f"{self.prefix}:inbox:{gateway}"

    def seen(self, job_id: str) -> str:
        """When the reaper first saw a job taken from the queue but not yet started."""
        return f"{self.prefix}:seen:{job_id}"

    def load_error(self, model: str) -> str:
        """Why the model's last worker could not load it (one line); gone once one loads."""
        return f"{self.prefix}:load_error:{model}"

    def file(self, file_id: str) -> str:
        """Hash of one uploaded or produced file (Batch API): its content and description."""
        return f"{self.prefix}:file:{file_id}"

    def batch(self, batch_id: str) -> str:
        """Hash of one batch (Batch API): its state and its lines' jobs."""
        return f"{self.prefix}:batch:{batch_id}"

    def recent(self, model: str, start: int) -> str:
        """Hash of one model's counters over the ten seconds from ``start`` (epoch seconds);
        see :mod:`contract.recent`."""
        return f"{self.prefix}:recent:{model}:{start}"

    def recent_jobs(self) -> str:
        """Sorted set of the newest async jobs' ids, scored by creation time (the dashboard's
        list); trimmed to its newest entries on every submit."""
        return f"{self.prefix}:recent_jobs"

    def replies(self, job_id: str) -> str:
        """Set of the inboxes to tell when a job ends (its owner's, and any joiner's)."""
        return f"{self.prefix}:replies:{job_id}"


@dataclass(frozen=True)
class JobPayload:
    """The keyword arguments of a predict job, as the gateway writes them."""

    inputs: list[str | dict[str, Any]]
    parameters: dict[str, Any] = field(default_factory=dict)
    deadline: float | None = None
    request_id: str = ""
    cache_ttl_s: int = 0
    priority: str = "low"

    def to_kwargs(self) -> dict[str, Any]:
        return {
            "inputs": self.inputs,
            "parameters": self.parameters,
            "deadline": self.deadline,
            "request_id": self.request_id,
            "cache_ttl_s": self.cache_ttl_s,
        }

    @classmethod
    def from_kwargs(cls, kwargs: dict[str, Any]) -> JobPayload:
        inputs = kwargs.get("inputs")
        if not isinstance(inputs, list) or not all(isinstance(i, str | dict) for i in inputs):
            raise ValueError("job inputs must be a list of strings or objects")
        params = kwargs.get("parameters") or {}
        if not isinstance(params, dict):
            raise ValueError("job parameters must be an object")
        deadline = kwargs.get("deadline")
        return cls(
            inputs=inputs,
            parameters=params,
            deadline=float(deadline) if deadline is not None else None,
            request_id=str(kwargs.get("request_id") or ""),
            cache_ttl_s=max(0, int(kwargs.get("cache_ttl_s") or 0)),
        )


SEGMENTS = "segments"
"""The keyword argument of a coalesced job: the requests it carries, each ``{"id": ...}`` plus
that request's own :class:`JobPayload` kwargs (see :func:`group_kwargs`)."""


def group_kwargs(segments: list[tuple[str, JobPayload]]) -> dict[str, Any]:
    """The kwargs of one job that carries several sync requests (the gateway's coalescing):
    each segment keeps its own id (what its callers wait on, its replies set, its cancel key),
    inputs, parameters, deadline and cache TTL, and is answered on its own."""
    return {SEGMENTS: [{"id": seg_id, **payload.to_kwargs()} for seg_id, payload in segments]}


def segments_of(kwargs: dict[str, Any]) -> list[tuple[str, dict[str, Any]]] | None:
    """A coalesced job's segments as ``(id, kwargs)``; None for a job of one request. Raises
    ValueError for a segments list that is not one (the job fails as unreadable)."""
    raw = kwargs.get(SEGMENTS)
    if raw is None:
        return None
    if not isinstance(raw, list) or not all(
        isinstance(s, dict) and isinstance(s.get("id"), str) and s["id"] for s in raw
    ):
        raise ValueError("job segments must be a list of objects with an id")
    return [(s["id"], {k: v for k, v in s.items() if k != "id"}) for s in raw]


def inputs_count(kwargs: dict[str, Any]) -> int:
    """How many inputs a job's kwargs carry (a coalesced job's segments' together); 1 for
    kwargs that cannot be read (the job still fails on its own)."""
    try:
        segments = segments_of(kwargs)
    except ValueError:
        return 1
    parts = [kw for _, kw in segments] if segments is not None else [kwargs]
    total = 0
    for part in parts:
        inputs = part.get("inputs")
        total += len(inputs) if isinstance(inputs, list) else 1
    return total


LOAD_ERROR_TTL_S = 3600
"""How long a load error stays readable; each failed attempt renews it."""


def job_result(
    outputs: list[Any],
    fingerprint: str,
    inference_ms: float,
    batch_items: int,
    queue_ms: float = 0.0,
    tokens: list[int] | None = None,
) -> dict[str, Any]:
    """A predict job's return value, as RQ stores it in the job's result stream. ``queue_ms`` is
    from enqueue (gateway clock) to start (worker clock); ``tokens`` counts each input's tokens
    by the model's tokenizer."""
    return {
        "outputs": outputs,
        "tokens": tokens if tokens is not None else [0] * len(outputs),
        "fingerprint": fingerprint,
        "inference_ms": round(inference_ms, 3),
        "queue_ms": round(queue_ms, 3),
        "batch_items": batch_items,
    }


def is_oom(err: BaseException) -> bool:
    """Whether Redis refused a write at its ``maxmemory``: a plain command, a transaction, or a
    script (Redis 6 reports the last as a generic script error, with this text inside)."""
    # redis-py drops the "OOM" error prefix from the message of a failed pipeline command.
    return "command not allowed when used memory" in str(err)


def is_sync(result_ttl: int | None) -> bool:
    """Whether a job is a sync request's: nobody reads its result after the reply."""
    return result_ttl == SYNC_RESULT_TTL_S


def reply_fields(
    job_id: str, result: dict[str, Any] | None = None, error: dict[str, str] | None = None
) -> dict[str, str | bytes]:
    """One inbox entry: the job's id and, for a sync job, its result or its error. An async
    job's entry carries neither: it only wakes its long-polls, which read the job itself."""
    fields: dict[str, str | bytes] = {"job": job_id}
    if result is not None:
        fields["result"] = orjson.dumps(result)  # 384 floats: ~10x faster than json.dumps
    if error is not None:
        fields["error"] = orjson.dumps(error)
    return fields


@dataclass(frozen=True)
class Reply:
    """An inbox entry as the gateway reads it."""

    job_id: str
    result: dict[str, Any] | None = None
    error: dict[str, str] | None = None

    @classmethod
    def parse(cls, fields: dict[bytes, bytes]) -> Reply:
        def field_json(name: bytes) -> Any:
            raw = fields.get(name)
            return orjson.loads(raw) if raw is not None else None

        return cls(fields.get(b"job", b"").decode(), field_json(b"result"), field_json(b"error"))


ERROR_META_KEY = "error"
"""job.meta key where a worker stores a failed job's ``{"code", "message"}``."""

RECOVERIES_META_KEY = "recoveries"
"""job.meta key counting how often the reaper requeued a job whose worker died."""

SEGMENTS_META_KEY = "segments"
"""job.meta key of a coalesced job: how many requests it carries."""

ERR_INFERENCE_FAILED = "inference_failed"
ERR_INFERENCE_TIMEOUT = "inference_timeout"
"""A batch ran past its job's ``timeout`` (the worker's own limit, not the caller's deadline)."""
ERR_DEADLINE_EXCEEDED = "deadline_exceeded"
ERR_FORBIDDEN_FUNC = "forbidden_function"
ERR_BAD_PAYLOAD = "invalid_job"
ERR_WORKER_LOST = "worker_lost"
ERR_REDIS_UNAVAILABLE = "redis_unavailable"
"""A job lost with a Redis that failed over before passing it on (the gateway's own verdict)."""
ERR_INPUT_TOO_LONG = "input_too_long"
ERR_INVALID_INPUT = "invalid_input"
"""An input the model cannot take as it is (a fill-mask text without the mask token)."""
