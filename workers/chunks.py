"""Where an async job's finished chunks live while it runs: a Redis hash (``Keys.chunks``, one
field per chunk, by its start offset), so a
worker that takes the job up again (after a kill, or after the job yielded to interactive work)
starts from the first chunk not yet computed. Each save also moves the job's progress
(``meta.progress = {done, total}``, read by ``GET /jobs/{id}``) and counts the chunk in the
model's counters (``chunks``), in one round trip."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import orjson
from redis import Redis
from redis.exceptions import RedisError
from rq.job import Job

from contract.jobs import Keys
from workers.tasks import Done

log = logging.getLogger("modelgate.worker")

CHUNKS_TTL_S = 24 * 3600
"""How long finished chunks wait for their job to be resumed; renewed by every save."""


_SAVE = """
if redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) == 1 then
  redis.call('HINCRBY', KEYS[2], 'chunks', 1)
end
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('HSET', KEYS[3], 'meta', ARGV[4])
return 1
"""
"""Save one chunk and the job's progress; count the chunk only the first time it is saved, so a
save replayed after a lost reply (Redis restarting) counts once."""

Retrying = Callable[[Callable[[], Any]], Any]
"""Runs a Redis step until Redis answers (the worker's own retry of a batch's writes)."""


class RedisChunks:
    """One job's chunks in Redis. Loading and saving wait out a Redis outage as the batch's
    own writes do (``retrying``); a progress note that cannot be written is skipped."""

    def __init__(
        self,
        connection: Redis,
        keys: Keys,
        model: str,
        job: Job,
        retrying: Retrying = lambda step: step(),
    ) -> None:
        self.connection = connection
        self.keys = keys
        self.model = model
        self.job = job
        self.key = keys.chunks(job.id)
        self.retrying = retrying
        self._save = connection.register_script(_SAVE)

    def covered(self) -> int:
        """Inputs done from the start: the job's progress, which every save writes in the
        same step as its chunk (so resuming reads no chunk)."""
        return int((self.job.meta.get("progress") or {}).get("done", 0))

    def load(self) -> Done:
        raw: dict[bytes, bytes] = self.retrying(lambda: self.connection.hgetall(self.key))
        done: Done = {}
        for start, value in raw.items():
            outputs, tokens = orjson.loads(value)
            done[int(start)] = (outputs, tokens)
        return done

    def started(self, done: int, total: int) -> None:
        self.job.meta["progress"] = {"done": done, "total": total}
        try:
            self.job.save_meta()  # type: ignore[no-untyped-call]
        except RedisError as err:
            log.warning("progress of job %s not recorded: %s", self.job.id, err)

    def save(self, start: int, values: list[Any], tokens: list[int], done: int, total: int) -> None:
        self.job.meta["progress"] = {"done": done, "total": total}
        chunk = orjson.dumps([values, tokens])
        meta = self.job.serializer.dumps(self.job.meta)
        keys = [self.key, self.keys.stats(self.model), self.job.key]
        self.retrying(lambda: self._save(keys=keys, args=[str(start), chunk, CHUNKS_TTL_S, meta]))

    def drop(self, pipe: Any) -> None:
        """Forget the chunks, once the job's whole result is written (in the same pipeline)."""
        pipe.delete(self.key)
