"""The gateway's reply listener across a Redis that loses writes (a failover to a replica that
had not received them), against a real redis-server it stops and starts on one port."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from redis import Redis

from contract.jobs import ERR_REDIS_UNAVAILABLE, Keys
from contract.redisconn import async_client
from gateway.replies import ReplyListener
from modelgate.redis_server import RedisServer
from workers.replies import Replier

pytestmark = pytest.mark.integration


async def test_a_wait_whose_job_was_lost_ends_at_once_even_if_its_writer_resumed_late() -> None:
    """A write the old master acknowledged just before it died can reach its caller after the
    listener saw the connection fail: its wait is checked all the same, and ends with 503
    redis_unavailable at once instead of a 504 at its deadline. A wait whose job survived
    keeps waiting and gets its reply."""
    server = RedisServer(persistent=True).start()  # the "replica": what it holds survives
    keys = Keys(f"replies-{uuid.uuid4().hex[:8]}")
    sync = Redis.from_url(server.url)
    listener = ReplyListener(async_client(server.url), keys)
    try:
        lost = listener.expect("lost")
        kept = listener.expect("kept")
        # Both jobs are written; "lost" expires while Redis is away, standing for a write the
        # promoted replica never received.
        sync.sadd(keys.replies("kept"), listener.inbox)
        sync.sadd(keys.replies("lost"), listener.inbox)
        sync.pexpire(keys.replies("lost"), 400)
        listener.written("kept")
        await asyncio.sleep(0.3)  # the listener blocks on its inbox
        server.kill()
        await asyncio.sleep(0.3)  # it has seen its connection fail
        listener.written("lost")  # the writer of "lost" resumes only now
        await asyncio.sleep(0.3)
        server.start()
        t0 = time.monotonic()
        reply = await asyncio.wait_for(lost, 5)
        assert reply.error is not None and reply.error["code"] == ERR_REDIS_UNAVAILABLE, reply
        assert time.monotonic() - t0 < 3, "the lost wait ran on instead of ending at once"
        assert listener.lost == 1
        assert not kept.done()
        with sync.pipeline() as pipe:
            Replier(sync, keys).notify(pipe, "kept", result={"outputs": [1]})
            pipe.execute()
        answer = await asyncio.wait_for(kept, 5)
        assert answer.result == {"outputs": [1]} and answer.error is None
    finally:
        await listener.stop()
        sync.close()
        server.stop()
