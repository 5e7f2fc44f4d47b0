"""Waiting for job endings with one connection per gateway process, however many requests wait.

Workers append an entry to this gateway's inbox stream when a job it waits for ends (see
``workers.replies``). One task reads the inbox with ``XREAD BLOCK`` and resolves the futures of
the requests waiting for that job; a waiting request holds no connection and no thread. Entries
are deleted once read. The stream survives a dropped connection, so the reader resumes after
the last entry it handled and loses nothing; the inbox expires ``INBOX_TTL_S`` after this
process stops renewing it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import OrderedDict
from typing import Any

import redis.asyncio as aredis
from redis.exceptions import RedisError

from contract.jobs import ERR_REDIS_UNAVAILABLE, INBOX_TTL_S, Keys, Reply

log = logging.getLogger("modelgate.gateway")

BLOCK_MS = 10_000
"""Longest one read blocks; it returns at once when an entry arrives."""

READ_COUNT = 512
"""Most entries taken per read."""

RETRY_MAX_S = 1.0
"""Longest pause between reconnection attempts while Redis is unreachable."""

UNCLAIMED_KEEP = 4096
"""Replies kept for a waiter not registered yet (a single-flight joiner learns the job's id in
the same step that joins it, and its reply may be read first); the oldest are dropped."""


class ReplyListener:
    """Reads this gateway's inbox and hands each reply to the requests waiting for its job."""

    def __init__(self, client: aredis.Redis, keys: Keys, gateway_id: str | None = None) -> None:
        self.client = client
        self.gateway_id = gateway_id or uuid.uuid4().hex
        self.keys = keys
        self.inbox = keys.inbox(self.gateway_id)
        self._waiters: dict[str, set[asyncio.Future[Reply]]] = {}
        self._unclaimed: OrderedDict[str, Reply] = OrderedDict()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._renewed = 0.0
        self._written: set[str] = set()
        """Awaited jobs known to be in Redis: written by this process, or found there when
        joined (see :meth:`written`)."""
        self.lost = 0
        """Waits ended because their job vanished with a failed Redis (see :meth:`_recheck`)."""

    def expect(self, job_id: str) -> asyncio.Future[Reply]:
        """A future for ``job_id``'s reply; register it before the job can end."""
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        early = self._unclaimed.pop(job_id, None)
        if early is not None:
            future.set_result(early)
            return future
        self._waiters.setdefault(job_id, set()).add(future)
        self.ensure_started()
        return future

    def written(self, job_id: str) -> None:
        """``job_id`` and its replies set are in Redis now: from here on, a Redis that loses
        them (a failover) ends its waits at once (see :meth:`_recheck`)."""
        if job_id in self._waiters:
            self._written.add(job_id)

    def forget(self, job_id: str, future: asyncio.Future[Reply]) -> None:
        waiters = self._waiters.get(job_id)
        if waiters is not None:
            waiters.discard(future)
            if not waiters:
                del self._waiters[job_id]
                self._written.discard(job_id)

    def others_wait(self, job_id: str, future: asyncio.Future[Reply]) -> bool:
        """Whether a request of this process other than ``future``'s waits for ``job_id``."""
        return bool(self._waiters.get(job_id, set()) - {future})

    @property
    def waiting(self) -> int:
        return sum(len(w) for w in self._waiters.values())

    def ensure_started(self) -> None:
        """Start reading in the running loop, once (also when no lifespan ran, as in tests)."""
        if not self._stopping and (self._task is None or self._task.done()):
            self._task = asyncio.create_task(self._run(), name="reply-listener")

    async def stop(self) -> None:
        self._stopping = True
        if self._task is not None:
            # redis-py may turn a cancellation inside a read into a connection error, which the
            # loop retries: the flag ends it then, and the wait is bounded either way.
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(self._task, RETRY_MAX_S + 1)
        await self.client.aclose()

    async def _run(self) -> None:
        last_id = "0-0"
        pause = 0.05
        broken = False  # reading failed, until a read succeeds again
        while not self._stopping:
            try:
                # Back from a lost connection: read what is there without blocking, then look
                # for waits whose job was lost, before blocking again.
                last_id = await self._read(last_id, None if broken else BLOCK_MS)
                pause = 0.05
                if broken:
                    last_id = await self._recheck(last_id)
                    broken = False
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as err:
                broken = True
                # Read from the start once back: a new master's entry ids come from its own
                # clock, which may be behind the old one's. Entries are deleted once read.
                last_id = "0-0"
                log.warning("reply inbox unreadable, retrying in %.2f s: %s", pause, err)
                await asyncio.sleep(pause)
                pause = min(RETRY_MAX_S, pause * 2)
            except Exception:  # never let the one reader die: every sync request needs it
                log.exception("reply listener failed; restarting it")
                await asyncio.sleep(pause)

    async def _recheck(self, last_id: str) -> str:
        """After the inbox was unreadable: end the waits whose job Redis no longer knows.

        A Redis that failed over to a replica has lost the writes it had not passed on yet: a
        job written just before, or its reply. Its waiters would wait out their deadline (a
        504, seconds later); instead they get 503 ``redis_unavailable`` now, which a client
        retries. A job still unanswered has its replies set (written with the job, deleted in
        the same transaction as its reply), so a wait whose set is gone has either a reply in
        the inbox, read once more here first, or nothing coming.

        Every wait whose job is known to be written is checked, whenever it was written: a write
        the old master acknowledged just before it died may reach its caller after this reader
        saw the connection fail (the caller resumes a step later), and a write made since, to
        the new master, is there to be found (or has replied, and its reply is read here)."""
        waiting = list(self._written)
        if not waiting:
            return last_id
        pipe = self.client.pipeline(transaction=False)
        for job_id in waiting:
            pipe.exists(self.keys.replies(job_id))
        found = await pipe.execute()
        gone = [j for j, n in zip(waiting, found, strict=True) if not n]
        if not gone:
            return last_id
        while True:  # every entry there, page by page
            before = last_id
            last_id = await self._read(last_id, None)
            if last_id == before:
                break
        ended = [j for j in gone if j in self._waiters]  # the rest had a reply after all
        for job_id in ended:
            self._deliver(
                Reply(
                    job_id,
                    error={
                        "code": ERR_REDIS_UNAVAILABLE,
                        "message": "the job was lost when Redis failed over; retry it",
                    },
                )
            )
        self.lost += len(ended)
        if ended:
            log.warning("%d wait(s) ended: their jobs were lost when Redis failed", len(ended))
        return last_id

    async def _read(self, last_id: str, block_ms: int | None) -> str:
        reply: Any = await self.client.xread(
            {self.inbox: last_id}, count=READ_COUNT, block=block_ms
        )
        if reply:
            entries = reply[0][1]
            for _, fields in entries:
                self._deliver(Reply.parse(fields))
            last_id = entries[-1][0].decode()
            await self.client.xdel(self.inbox, *(msg_id for msg_id, _ in entries))
        if time.monotonic() - self._renewed > INBOX_TTL_S / 4:
            await self.client.expire(self.inbox, INBOX_TTL_S)
            self._renewed = time.monotonic()
        return last_id

    def _deliver(self, reply: Reply) -> None:
        waiters = self._waiters.pop(reply.job_id, None)
        self._written.discard(reply.job_id)
        if not waiters:
            self._unclaimed[reply.job_id] = reply
            while len(self._unclaimed) > UNCLAIMED_KEEP:
                self._unclaimed.popitem(last=False)
            return
        for future in waiters:
            if not future.done():
                future.set_result(reply)
