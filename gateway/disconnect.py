"""A sync request whose client has gone away stops waiting, and its queued job is withdrawn
before it costs a model call.

The ASGI server tells an app that its client left by answering ``receive()`` with
``http.disconnect``. Once the body has been read, nothing else reads from ``receive``, so one
small task per waiting request listens there; when the client leaves first, it cancels the
request's task. The cancellation reaches ``Dispatcher._await``, which withdraws the job when no
other request waits for it (see ``Dispatcher.withdraw``), and leaves here as
:class:`ClientDisconnected`: status 499, logged and counted, sent to nobody.
"""

from __future__ import annotations

import asyncio
from types import TracebackType

from starlette.types import Receive

from gateway.errors import ClientDisconnected


class CancelOnDisconnect:
    """``async with CancelOnDisconnect(request.receive):`` around a wait for a model. Enter it
    only after the request body has been read whole."""

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self._task: asyncio.Task[object] | None = None
        self._watcher: asyncio.Task[None] | None = None
        self.gone = False

    async def __aenter__(self) -> CancelOnDisconnect:
        self._task = asyncio.current_task()
        self._watcher = asyncio.create_task(self._watch())
        return self

    async def _watch(self) -> None:
        try:
            while (await self._receive())["type"] != "http.disconnect":
                pass
        except Exception:  # a server that cannot tell: the request just waits as before
            return
        assert self._task is not None
        self.gone = True
        self._task.cancel()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._watcher is not None and self._task is not None
        self._watcher.cancel()
        # When the cancellation was ours, and nothing else (a server shutdown) also cancelled
        # the task, it ends as a 499, not as a cancelled task.
        ours = self.gone and isinstance(exc, asyncio.CancelledError)
        if ours and self._task.uncancel() == 0:
            raise ClientDisconnected("the client closed the connection before its answer") from None
