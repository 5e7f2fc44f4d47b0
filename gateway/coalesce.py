"""Coalescing: concurrent sync requests for one model reach its workers as one RQ job.

While a write of a model's work to Redis is in flight, the requests for that model that arrive
queue up here; when the write ends they go together, as one job of segments (see
``contract.jobs.group_kwargs``), up to the model's batch size in inputs split among its live
workers (:func:`group_limit`). A request that finds nothing in flight goes at once, alone, as a
plain job: the window is the round trip itself, never a timer, so a lone caller waits for
nothing. What a job costs in Redis commands and in the worker's bookkeeping is then paid once
per group instead of once per request, while each segment keeps its own id, replies, deadline,
cache entries and cancel.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from contract.config import ModelSpec
from contract.jobs import JobPayload


@dataclass(eq=False)
class Entry:
    """One sync request waiting to be written: its job id (a segment's id once coalesced)."""

    job_id: str
    payload: JobPayload
    future: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    group: str | None = None
    """The coalesced job that carries it; None while unsent, or when it went alone."""
    sent: bool = False
    """Whether a write of it to Redis began (a caller that leaves before it is simply dropped)."""


Send = Callable[[ModelSpec, list["Entry"]], Awaitable[None]]
"""Writes one group of entries for a model (one plain job for a single entry)."""

Limit = Callable[[ModelSpec], int]
"""The most inputs one group of a model's requests may hold."""


def group_limit(max_batch_size: int, live_workers: int) -> int:
    """Most inputs in one coalesced job: the model's batch split among its live workers, so
    that a burst of requests becomes a job for each of them (a worker takes a job whole; one
    job of everything would keep one worker busy and leave the others idle)."""
    return max(1, -(-max_batch_size // max(1, live_workers)))


def take(pending: deque[Entry], max_items: int) -> list[Entry]:
    """The next group from ``pending``, oldest first: the first entry whatever its size, then
    the entries that keep the group within ``max_items`` inputs, in order (one that would
    overfill it waits for the next group, with those behind it)."""
    group = [pending.popleft()]
    items = len(group[0].payload.inputs)
    while pending and items + len(pending[0].payload.inputs) <= max_items:
        entry = pending.popleft()
        items += len(entry.payload.inputs)
        group.append(entry)
    return group


class Coalescer:
    """Groups concurrent sync requests per model and priority, one write in flight at a time."""

    def __init__(self, send: Send, limit: Limit | None = None) -> None:
        self._send = send
        self._limit = limit or (lambda spec: spec.max_batch_size)
        self._pending: dict[tuple[str, str], deque[Entry]] = {}
        self._drains: dict[tuple[str, str], asyncio.Task[None]] = {}
        self.groups = 0
        """Coalesced jobs written (groups of two requests or more)."""
        self.coalesced = 0
        """Requests that went in them."""

    async def submit(self, spec: ModelSpec, entry: Entry) -> None:
        """Write ``entry`` (alone, or with the requests that arrive while a write for the same
        model is in flight); returns once it is in Redis, raises what that write raised. A
        caller cancelled before its write began is dropped, never sent."""
        key = (spec.name, entry.payload.priority)
        pending = self._pending.setdefault(key, deque())
        pending.append(entry)
        if key not in self._drains:
            self._drains[key] = asyncio.create_task(self._drain(key, spec, pending))
        try:
            await entry.future
        except asyncio.CancelledError:
            if not entry.sent:
                with contextlib.suppress(ValueError):
                    pending.remove(entry)
            raise

    async def _drain(self, key: tuple[str, str], spec: ModelSpec, pending: deque[Entry]) -> None:
        try:
            while pending:
                group = take(pending, self._limit(spec))
                if len(group) > 1:
                    group_id = uuid.uuid4().hex
                    for entry in group:
                        entry.group = group_id
                    self.groups += 1
                    self.coalesced += len(group)
                for entry in group:
                    entry.sent = True
                try:
                    await self._send(spec, group)
                except asyncio.CancelledError:
                    for entry in group:
                        entry.future.cancel()
                    raise
                except Exception as err:  # each waiting caller raises it
                    for entry in group:
                        if not entry.future.done():
                            entry.future.set_exception(err)
                else:
                    for entry in group:
                        if not entry.future.done():
                            entry.future.set_result(None)
        finally:
            del self._drains[key]
            if pending:  # cancelled with callers left: they must not wait for nothing
                for entry in pending:
                    if not entry.future.done():
                        entry.future.cancel()
                pending.clear()
            if self._pending.get(key) is pending:
                del self._pending[key]

    async def close(self) -> None:
        for task in list(self._drains.values()):
            task.cancel()
        for task in list(self._drains.values()):
            with contextlib.suppress(asyncio.CancelledError):
                await task
