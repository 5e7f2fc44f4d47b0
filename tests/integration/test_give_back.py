"""Jobs a worker took but could not read because Redis went away (a restart, a failover) go
back to their queue once Redis answers, instead of waiting seconds for the reaper: against a
real redis-server, stopped at the exact moment between a take and its read."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from redis import Redis
from rq.intermediate_queue import IntermediateQueue
from rq.serializers import JSONSerializer

from modelgate.redis_server import RedisServer
from workers import lanes, rqadapter
from workers.lanes import LaneQueue, TakenUnread, give_back

pytestmark = pytest.mark.integration


@pytest.fixture
def redis() -> Iterator[tuple[RedisServer, Redis]]:
    server = RedisServer(persistent=True).start()
    client = Redis.from_url(server.url)
    try:
        yield server, client
    finally:
        client.close()
        server.stop()


def ids(client: Redis, key: str) -> list[str]:
    return [i.decode() for i in client.lrange(key, 0, -1)]


def test_give_back_returns_taken_jobs_in_order_and_never_queues_one_twice(
    redis: tuple[RedisServer, Redis],
) -> None:
    _, client = redis
    queue = f"rq:queue:giveback-{uuid.uuid4().hex[:8]}"
    intermediate = IntermediateQueue.get_intermediate_queue_key(queue)
    client.rpush(queue, "a", "b", "c", "d")
    for _ in range(3):
        client.lmove(queue, intermediate)  # a worker took a, b, c
    # c's take was lost in a failover: the new master still has it queued, not taken.
    client.lrem(intermediate, 1, "c")
    client.lpush(queue, "c")
    give_back(client, queue, ["a", "b", "c"])
    assert ids(client, queue) == ["a", "b", "c", "d"]
    assert ids(client, intermediate) == []
    give_back(client, queue, [])
    assert ids(client, queue) == ["a", "b", "c", "d"]


def test_a_take_whose_read_redis_interrupted_goes_back_to_the_queue(
    redis: tuple[RedisServer, Redis], monkeypatch: pytest.MonkeyPatch
) -> None:
    server, client = redis
    queue = LaneQueue(
        f"giveback-{uuid.uuid4().hex[:8]}", connection=client, serializer=JSONSerializer
    )
    job = queue.enqueue("math.sqrt", 4)
    real_fetch = rqadapter.fetch_taken

    def redis_dies_first(*args: Any, **kwargs: Any) -> Any:
        server.kill()  # between the take (done) and its read
        return real_fetch(*args, **kwargs)

    monkeypatch.setattr(lanes.rqadapter, "fetch_taken", redis_dies_first)
    with pytest.raises(TakenUnread) as raised:
        LaneQueue.dequeue_any([queue], None, connection=client, serializer=JSONSerializer)
    assert (raised.value.queue_key, raised.value.job_id) == (queue.key, job.id)

    server.start()  # same port, same data: the take is there, in the intermediate list
    monkeypatch.setattr(lanes.rqadapter, "fetch_taken", real_fetch)
    assert ids(client, queue.intermediate_queue_key) == [job.id]
    give_back(client, raised.value.queue_key, [raised.value.job_id])
    taken = LaneQueue.dequeue_any([queue], None, connection=client, serializer=JSONSerializer)
    assert taken is not None and taken[0].id == job.id
