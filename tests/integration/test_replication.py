"""Waiting for a replica (Redis WAIT) against a real primary and replica: a write is confirmed
once the replica holds it, whichever connection made it; a replica that stops answering costs
one timed-out wait, after which writes go on unconfirmed (and are counted) until a recheck
finds a replica again."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator

import pytest
from redis import Redis

from contract.redisconn import ReplicaAcks, replicated
from modelgate.redis_server import RedisServer

pytestmark = pytest.mark.integration


@pytest.fixture
def pair() -> Iterator[tuple[RedisServer, RedisServer]]:
    primary = RedisServer().start()
    replica = RedisServer(extra_args=["--replicaof", "127.0.0.1", str(primary.port)])
    try:
        replica.start()
        client = Redis.from_url(replica.url)
        deadline = time.monotonic() + 20
        while client.info("replication").get("master_link_status") != "up":
            assert time.monotonic() < deadline, "the replica never synced"
            time.sleep(0.05)
        yield primary, replica
    finally:
        if replica.proc is not None and replica.proc.poll() is None:
            replica.proc.send_signal(signal.SIGCONT)
        replica.stop()
        primary.stop()


def test_a_wait_covers_writes_of_other_connections_and_a_stalled_replica(
    pair: tuple[RedisServer, RedisServer],
) -> None:
    primary, replica = pair
    writer = Redis.from_url(primary.url)
    waiter = Redis.from_url(primary.url, single_connection_client=True)
    on_replica = Redis.from_url(replica.url)
    acks = ReplicaAcks("t:mark", wanted=1, timeout_ms=300, recheck_s=0.5)

    writer.set("job", "accepted")  # another connection's write
    replicated(waiter, acks)
    assert on_replica.get("job") == b"accepted"  # confirmed means the replica has it
    assert acks.short == 0 and acks.expected == 1

    assert replica.proc is not None
    replica.proc.send_signal(signal.SIGSTOP)  # alive and connected, but answers nothing
    writer.set("job", "while stalled")
    started = time.monotonic()
    replicated(waiter, acks)
    assert time.monotonic() - started >= 0.25  # one wait ran out
    assert acks.short == 1 and acks.expected == 0
    started = time.monotonic()
    replicated(waiter, acks)  # no replica expected now: no wait
    assert time.monotonic() - started < 0.25 and acks.short == 2

    replica.proc.send_signal(signal.SIGCONT)
    time.sleep(0.6)
    replicated(waiter, acks)  # the recheck reads ROLE: the replica is listed again
    assert acks.expected == 1
    writer.set("job", "after")
    replicated(waiter, acks)
    assert on_replica.get("job") == b"after"
    for client in (writer, waiter, on_replica):
        client.close()
