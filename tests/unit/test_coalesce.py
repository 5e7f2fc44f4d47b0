"""The gateway's coalescing, as pure logic: what goes together, when, and what a caller that
leaves or a failed write does to its neighbours (the writes to Redis are a fake here; the
integration tests run the real ones)."""

from __future__ import annotations

import asyncio
from collections import deque

import pytest

from contract.config import ModelSpec
from contract.jobs import JobPayload, group_kwargs, inputs_count, segments_of
from gateway.coalesce import Coalescer, Entry, group_limit, take


def spec(max_batch_size: int = 8, name: str = "m") -> ModelSpec:
    return ModelSpec.model_validate(
        {
            "name": name,
            "task": "feature-extraction",
            "source": {"path": "/nowhere"},
            "max_batch_size": max_batch_size,
        }
    )


def payload(n: int = 1, priority: str = "low") -> JobPayload:
    return JobPayload([f"text {i}" for i in range(n)], priority=priority)


class Writes:
    """A fake write: records each group and waits for the test to let it end."""

    def __init__(self) -> None:
        self.groups: list[list[str]] = []
        self.gate = asyncio.Event()
        self.fail: Exception | None = None

    async def __call__(self, _: ModelSpec, group: list[Entry]) -> None:
        self.groups.append([e.job_id for e in group])
        await self.gate.wait()
        if self.fail is not None:
            raise self.fail


async def test_take_keeps_order_and_the_batch_size() -> None:
    sizes = [3, 4, 2, 1]
    pending = deque(Entry(str(i), payload(n)) for i, n in enumerate(sizes))
    assert [e.job_id for e in take(pending, 8)] == ["0", "1"]  # 3 + 4; the 2 would overfill
    assert [e.job_id for e in take(pending, 8)] == ["2", "3"]
    big = deque([Entry("big", payload(20)), Entry("next", payload(1))])
    assert [e.job_id for e in take(big, 8)] == ["big"]  # larger than a batch: alone


async def test_a_lone_request_goes_at_once_and_alone() -> None:
    writes = Writes()
    writes.gate.set()
    coalescer = Coalescer(writes)
    entry = Entry("a", payload())
    await coalescer.submit(spec(), entry)
    assert writes.groups == [["a"]] and entry.group is None and entry.sent


async def test_requests_arriving_during_a_write_go_together_after_it() -> None:
    writes = Writes()
    coalescer = Coalescer(writes)
    first = asyncio.create_task(coalescer.submit(spec(), Entry("first", payload())))
    await asyncio.sleep(0)  # the first write is in flight
    later = [Entry(f"r{i}", payload(3)) for i in range(4)]
    tasks = [asyncio.create_task(coalescer.submit(spec(), e)) for e in later]
    await asyncio.sleep(0)
    assert writes.groups == [["first"]]
    writes.gate.set()
    await asyncio.gather(first, *tasks)
    # 3 + 3 inputs fit a batch of 8, a third request would not: two groups of two.
    assert writes.groups == [["first"], ["r0", "r1"], ["r2", "r3"]]
    assert later[0].group == later[1].group != later[2].group == later[3].group
    assert later[0].group is not None and later[2].group is not None
    assert (coalescer.groups, coalescer.coalesced) == (2, 4)


def test_a_group_is_the_batch_split_among_live_workers() -> None:
    assert group_limit(32, 1) == 32
    assert group_limit(32, 2) == 16
    assert group_limit(32, 3) == 11
    assert group_limit(32, 0) == 32  # none seen yet (a model scaled to zero)
    assert group_limit(2, 5) == 1


async def test_a_burst_becomes_a_job_for_each_live_worker() -> None:
    writes = Writes()
    coalescer = Coalescer(writes, lambda s: group_limit(s.max_batch_size, 2))
    first = asyncio.create_task(coalescer.submit(spec(), Entry("first", payload())))
    await asyncio.sleep(0)
    later = [Entry(f"r{i}", payload()) for i in range(8)]
    tasks = [asyncio.create_task(coalescer.submit(spec(), e)) for e in later]
    await asyncio.sleep(0)
    writes.gate.set()
    await asyncio.gather(first, *tasks)
    # A batch of 8 between two workers: groups of at most 4.
    assert writes.groups == [["first"], ["r0", "r1", "r2", "r3"], ["r4", "r5", "r6", "r7"]]


async def test_priorities_and_models_never_share_a_job() -> None:
    writes = Writes()
    coalescer = Coalescer(writes)
    entries = [Entry("low", payload()), Entry("high", payload(priority="high"))]
    tasks = [asyncio.create_task(coalescer.submit(spec(), e)) for e in entries]
    other = spec(name="n")
    tasks.append(asyncio.create_task(coalescer.submit(other, Entry("other", payload()))))
    await asyncio.sleep(0)
    writes.gate.set()
    await asyncio.gather(*tasks)
    assert sorted(writes.groups) == [["high"], ["low"], ["other"]]


async def test_a_caller_that_leaves_before_its_write_is_never_sent() -> None:
    writes = Writes()
    coalescer = Coalescer(writes)
    first = asyncio.create_task(coalescer.submit(spec(), Entry("first", payload())))
    await asyncio.sleep(0)
    leaving = Entry("leaves", payload())
    staying = Entry("stays", payload())
    gone = asyncio.create_task(coalescer.submit(spec(), leaving))
    kept = asyncio.create_task(coalescer.submit(spec(), staying))
    await asyncio.sleep(0)
    gone.cancel()
    writes.gate.set()
    await asyncio.gather(first, kept)
    with pytest.raises(asyncio.CancelledError):
        await gone
    assert writes.groups == [["first"], ["stays"]] and not leaving.sent


async def test_a_failed_write_fails_each_of_its_callers_and_no_later_one() -> None:
    writes = Writes()
    coalescer = Coalescer(writes)
    entries = [Entry(f"r{i}", payload()) for i in range(3)]
    tasks = [asyncio.create_task(coalescer.submit(spec(), e)) for e in entries]
    await asyncio.sleep(0)
    writes.fail = ConnectionError("redis went away")
    writes.gate.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(r, ConnectionError) for r in results)
    writes.fail = None
    await coalescer.submit(spec(), Entry("after", payload()))
    assert writes.groups[-1] == ["after"]


def test_segments_round_trip_and_count_their_inputs() -> None:
    kwargs = group_kwargs([("a", payload(2)), ("b", payload(3))])
    segments = segments_of(kwargs)
    assert segments is not None and [s for s, _ in segments] == ["a", "b"]
    assert JobPayload.from_kwargs(segments[1][1]).inputs == payload(3).inputs
    assert inputs_count(kwargs) == 5 and inputs_count(payload(4).to_kwargs()) == 4
    assert segments_of(payload().to_kwargs()) is None
    with pytest.raises(ValueError):
        segments_of({"segments": [{"inputs": ["no id"]}]})
    assert inputs_count({"segments": "not a list"}) == 1
