"""What crosses Redis between gateway and workers: key names, the job payload, error codes.

Everything here is plain JSON. The gateway enqueues RQ jobs that name :data:`PREDICT_FUNC`;
a worker runs only the functions in :data:`ALLOWED_FUNCS`, whatever a job in Redis claims.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

DEFAULT_PREFIX = "modelgate"
"""Namespace for modelgate's own keys and queue names."""

PREDICT_FUNC = "workers.tasks.predict"
"""The dotted name the gateway enqueues; workers map it to code themselves."""

ALLOWED_FUNCS = frozenset({PREDICT_FUNC})
"""The only job functions a worker will run."""

PRESENCE_TTL_S = 3.0
"""A worker that has not heart-beaten for this long counts as gone."""

HEARTBEAT_INTERVAL_S = 1.0
"""How often a worker renews its presence."""


@dataclass(frozen=True)
class Keys:
    """Redis key and queue names under one prefix."""

    prefix: str = DEFAULT_PREFIX

    def queue(self, model: str) -> str:
        """The RQ queue name for a model (RQ stores it at ``rq:queue:<name>``)."""
        return f"{self.prefix}:{model}"

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


@dataclass(frozen=True)
class JobPayload:
    """The keyword arguments of a predict job, as the gateway writes them."""

    inputs: list[str]
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
        if not isinstance(inputs, list) or not all(isinstance(i, str) for i in inputs):
            raise ValueError("job inputs must be a list of strings")
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


def job_result(
    outputs: list[Any],
    fingerprint: str,
    inference_ms: float,
    batch_items: int,
    queue_ms: float = 0.0,
) -> dict[str, Any]:
    """A predict job's return value, as RQ stores it in the job's result stream. ``queue_ms`` is
    from enqueue (gateway clock) to start (worker clock)."""
    return {
        "outputs": outputs,
        "fingerprint": fingerprint,
        "inference_ms": round(inference_ms, 3),
        "queue_ms": round(queue_ms, 3),
        "batch_items": batch_items,
    }


ERROR_META_KEY = "error"
"""job.meta key where a worker stores a failed job's ``{"code", "message"}``."""

ERR_INFERENCE_FAILED = "inference_failed"
ERR_DEADLINE_EXCEEDED = "deadline_exceeded"
ERR_FORBIDDEN_FUNC = "forbidden_function"
ERR_BAD_PAYLOAD = "invalid_job"
ERR_WORKER_LOST = "worker_lost"
ERR_INPUT_TOO_LONG = "input_too_long"
