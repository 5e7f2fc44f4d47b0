"""CancelOnDisconnect with a fake ASGI ``receive``: a client that leaves cancels the wait, which
ends as ClientDisconnected; an answer first, or a cancellation from elsewhere, passes as is."""

from __future__ import annotations

import asyncio

import pytest

from gateway.disconnect import CancelOnDisconnect
from gateway.errors import ClientDisconnected


class FakeClient:
    """``receive`` blocks until the client leaves (``leave``), then says so."""

    def __init__(self) -> None:
        self.left = asyncio.Event()
        self.receives = 0

    async def receive(self) -> dict[str, str]:
        self.receives += 1
        await self.left.wait()
        return {"type": "http.disconnect"}

    def leave(self) -> None:
        self.left.set()


async def test_a_client_that_leaves_ends_the_wait_as_client_disconnected() -> None:
    client = FakeClient()
    finished = []

    async def request() -> None:
        async with CancelOnDisconnect(client.receive):
            await asyncio.sleep(30)  # a model that takes its time
            finished.append(True)

    task = asyncio.create_task(request())
    await asyncio.sleep(0.01)
    client.leave()
    with pytest.raises(ClientDisconnected):
        await asyncio.wait_for(task, 1)
    assert not finished and client.receives == 1
    assert task.cancelling() == 0  # the cancellation was taken back


async def test_an_answer_before_the_client_leaves_is_returned_and_the_watch_stops() -> None:
    client = FakeClient()
    async with CancelOnDisconnect(client.receive) as watch:
        await asyncio.sleep(0.01)
        answer = 42
    client.leave()  # after the answer: nothing is cancelled any more
    await asyncio.sleep(0.01)
    assert answer == 42 and not watch.gone


async def test_a_cancellation_from_elsewhere_stays_a_cancellation() -> None:
    client = FakeClient()

    async def request() -> None:
        async with CancelOnDisconnect(client.receive):
            await asyncio.sleep(30)

    task = asyncio.create_task(request())
    await asyncio.sleep(0.01)
    task.cancel()  # a server shutting down
    with pytest.raises(asyncio.CancelledError):
        await task
