"""Telling the gateways that a job ended, and leaving nothing behind for a sync job.

A waiting gateway does not hold a Redis connection per request: it reads one inbox stream, and
the job's replies set names every inbox waiting for it (its owner's, and those of gateways that
joined it: single-flight sharers, long-polls). When a job ends, the worker appends one entry to
each of those inboxes, in the same transaction as the job's own bookkeeping:

- a **sync** job (``result_ttl`` 0: a predict whose caller is waiting) gets its result or error
  in the entry itself, and its job hash, result stream, execution records and replies set are
  deleted in that transaction: once its caller has the answer, nothing of it is left in Redis;
- an **async** job keeps RQ's result with its TTL; the entry only wakes its long-polls.

A joiner adds its inbox to the replies set and then checks the job still exists; since the
reply and the deletion are one transaction, a job that still exists has not replied yet.
"""

from __future__ import annotations

from typing import Any

from redis import Redis
from rq.job import Job
from rq.results import Result

from contract.jobs import INBOX_TTL_S, Keys, reply_fields, segments_of

# The inboxes are read from the set, so they cannot be declared in KEYS: fine on a standalone
# Redis or Sentinel, not on Redis Cluster (which modelgate does not support).
_NOTIFY = """
local inboxes = redis.call('SMEMBERS', KEYS[1])
for _, inbox in ipairs(inboxes) do
  redis.call('XADD', inbox, '*', unpack(ARGV, 2))
  redis.call('EXPIRE', inbox, ARGV[1])
end
redis.call('DEL', KEYS[1])
return #inboxes
"""


class Replier:
    """Writes job endings to the waiting gateways' inboxes, inside the caller's pipeline."""

    def __init__(self, connection: Redis, keys: Keys) -> None:
        self.keys = keys
        self._notify = connection.register_script(_NOTIFY)

    def notify(
        self,
        pipe: Any,
        job_id: str,
        *,
        result: dict[str, Any] | None = None,
        error: dict[str, str] | None = None,
    ) -> None:
        fields = reply_fields(job_id, result, error)
        args: list[Any] = [INBOX_TTL_S]
        for name, value in fields.items():
            args += [name, value]
        self._notify(keys=[self.keys.replies(job_id)], args=args, client=pipe)

    def answer(
        self,
        pipe: Any,
        job: Job,
        *,
        result: dict[str, Any] | None = None,
        error: dict[str, str] | None = None,
    ) -> None:
        """Give a sync job's callers its result or error, and delete what RQ stored for it (the
        execution records are the worker's to clean, with ``cleanup_execution``). A coalesced
        job's error goes to each of its segments' callers (a job that failed whole: it timed
        out, or its worker died twice)."""
        try:
            segments = segments_of(job.kwargs)
        except Exception:
            segments = None
        if segments is not None and result is None:
            for seg_id, _ in segments:
                self.notify(pipe, seg_id, error=error)
        else:
            self.notify(pipe, job.id, result=result, error=error)
        pipe.delete(job.key, Result.get_key(job.id), self.keys.replies(job.id))
