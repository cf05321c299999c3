"""The gRPC face of the traffic window: Envoy's ``MetricsService.StreamMetrics``.

Every Envoy's bootstrap points its ``envoy.stat_sinks.metrics_service`` sink at
the control plane, on the xDS port, so statistics need no Prometheus in
between. One stream per Envoy; its first message names the node (Envoy sends
the identifier once), every message is one flush.
https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/metrics/v3/metrics_service.proto

Reading a flush and folding it into the window is the costly part (megabytes a
second per proxy with thousands of clusters). One :class:`Folder` does it for
every stream, a flush at a time, streams in turn, and lets the event loop run
between two flushes. A stream whose previous message still waits when the next
arrives reads the waiting one itself (to merge it), but only in its turn: the
folder and such streams take turns through one lock, and reading (more than half
of the work) runs on a thread of its own: the event loop never holds more than
one fold at a time, and an API call waits for at most a few, not for one per
proxy, even when the control plane cannot keep up.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc

from controlplane.tasks import cancel_and_wait
from controlplane.telemetry.protocol import (
    METHOD,
    SERVICE,
    StreamMetricsResponse,
)
from controlplane.telemetry.window import Proxy, TrafficWindow
from controlplane.telemetry.wire import Flush, read

__all__ = ["Folder", "Inbox", "fold_stream", "metrics_service_handler"]

log = logging.getLogger(__name__)

_stream_ids = itertools.count(1)


class Inbox:
    """What one stream has received and not yet folded into the window: at
    most the newest message, still raw, and one flush (``Flush``) that sums
    every earlier one. A message that arrives while the previous one still
    waits makes the waiting one read and merged (``Flush.merge``: counts stay
    exact), so a control plane that falls behind holds two flushes per stream,
    not a queue."""

    def __init__(self) -> None:
        self._pending: Flush | None = None
        self._raw: bytes | None = None
        self.proxy: Proxy | None = None
        self.scheduled = False
        self.error: BaseException | None = None
        self.merged = 0
        # The stream's task: the folder ends it at once when its message cannot be read.
        self.task: asyncio.Task[Any] | None = None

    def fail(self, error: BaseException) -> None:
        """End the stream with ``error`` (a message of it could not be read)."""
        self.error = error
        if self.task is not None and self.task is not asyncio.current_task():
            self.task.cancel()

    @property
    def waiting(self) -> bool:
        """Whether a message waits: the next one makes it read and merged."""
        return self._raw is not None

    def swap(self, data: bytes) -> bytes | None:
        """Keep ``data`` as the newest message; return the one that waited
        (to read and :meth:`add`), if any."""
        earlier, self._raw = self._raw, data
        return earlier

    def add(self, flush: Flush) -> bool:
        """Merge ``flush`` (read from a message :meth:`swap` returned) into the
        pending one; return True when there was one."""
        if self._pending is None:
            self._pending = flush
            return False
        self._pending.merge(flush)
        self.merged += 1
        return True

    def put(self, data: bytes) -> bool:
        """:meth:`swap` and :meth:`add` in one, reading here."""
        earlier = self.swap(data)
        return earlier is not None and self.add(read(earlier))

    def take(self) -> tuple[Flush | None, bytes | None]:
        """Return what waits (the pending flush, the newest message) and empty the inbox."""
        pending, raw = self._pending, self._raw
        self._pending = self._raw = None
        return pending, raw

    def fold(self, window: TrafficWindow, flush: Flush) -> None:
        """Fold ``flush`` into ``window`` (the first one names the proxy)."""
        if self.proxy is None:
            self.proxy = Proxy(next(_stream_ids), flush.node_id or "", flush.zone)
            log.info(
                "telemetry.stream_open", extra={"node": self.proxy.node_id, "zone": flush.zone}
            )
        window.ingest_flush(self.proxy, flush)

    def fold_all(self, window: TrafficWindow) -> None:
        """Fold everything that waits into ``window``, reading here."""
        pending, raw = self.take()
        if pending is not None:
            self.fold(window, pending)
        if raw is not None:
            self.fold(window, read(raw))


class Folder:
    """Folds the flushes of every stream's :class:`Inbox` into one window, one
    inbox at a time in the order they became ready, yielding to the event loop
    after each. Messages are read (``wire.read``, a pure function of the
    bytes, more than half of the work) on one thread of its own, so the event
    loop serves the API meanwhile; folding stays on the loop, the only one to
    touch the window. Started by the first stream; :meth:`close` stops it."""

    def __init__(self, window: TrafficWindow) -> None:
        self.window = window
        self._ready: collections.deque[Inbox] = collections.deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._reader = ThreadPoolExecutor(1, thread_name_prefix="turnout-telemetry-read")
        # One read or fold at a time, in turn (asyncio.Lock wakes its waiters first
        # in, first out): the inboxes are never read and folded at once.
        self.turn = asyncio.Lock()

    async def read(self, data: bytes) -> Flush:
        """``wire.read(data)`` on the reading thread."""
        return await asyncio.get_running_loop().run_in_executor(self._reader, read, data)

    def schedule(self, inbox: Inbox) -> None:
        """Fold ``inbox`` in its turn."""
        if inbox.scheduled:
            return
        inbox.scheduled = True
        self._ready.append(inbox)
        self._wake.set()
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="turnout-telemetry-folder")

    async def _run(self) -> None:
        ready = self._ready
        while True:
            if not ready:
                self._wake.clear()
                await self._wake.wait()
                continue
            inbox = ready.popleft()
            inbox.scheduled = False
            async with self.turn:
                if inbox.error is None:
                    try:
                        pending, raw = inbox.take()
                        if pending is not None:
                            inbox.fold(self.window, pending)
                        if raw is not None:
                            inbox.fold(self.window, await self.read(raw))
                    except Exception as error:  # a message the reader cannot read: end its stream
                        inbox.fail(error)
            await asyncio.sleep(0)  # let the API and the other streams run

    async def close(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None
        self._reader.shutdown(wait=False, cancel_futures=True)


async def fold_stream(folder: Folder, messages: AsyncIterator[bytes], peer: str) -> None:
    """Receive one stream's messages into an :class:`Inbox` that ``folder``
    folds in its turn; when the stream ends, fold what is left and forget the
    proxy's gauges. A message that cannot be read ends the call with its error."""
    inbox = Inbox()
    inbox.task = asyncio.current_task()
    window = folder.window
    try:
        try:
            await _receive(folder, inbox, messages)
        except asyncio.CancelledError:
            if inbox.error is None:
                raise
            # The folder could not read a message: end the call with that error.
            if inbox.task is not None:
                inbox.task.uncancel()
            raise inbox.error from None
    finally:
        error = inbox.error
        inbox.error = error or ConnectionAbortedError("stream ended")  # the folder skips it
        inbox.task = None
        with contextlib.suppress(Exception):
            inbox.fold_all(window)  # what the stream sent before it ended still counts
        if inbox.proxy is not None:
            window.forget(inbox.proxy)
            log.info(
                "telemetry.stream_closed",
                extra={"node": inbox.proxy.node_id, "merged": inbox.merged, "peer": peer},
            )


async def _receive(folder: Folder, inbox: Inbox, messages: AsyncIterator[bytes]) -> None:
    window = folder.window
    async for data in messages:
        if inbox.error is not None:
            raise inbox.error
        # Raw bytes: wire.read looks only at what is not zero (see there).
        merged = False
        if inbox.waiting:  # behind: read the waiting message and merge it, in turn
            async with folder.turn:
                earlier = inbox.swap(data)
                if earlier is not None:  # the folder may have taken it meanwhile
                    merged = inbox.add(await folder.read(earlier))
        else:
            inbox.swap(data)
        if merged:
            window.merged_flushes += 1
        folder.schedule(inbox)
    if inbox.error is not None:
        raise inbox.error


def metrics_service_handler(folder: Folder) -> grpc.GenericRpcHandler:
    """Return the gRPC handler of Envoy's metrics service, feeding ``folder``'s window."""

    async def stream_metrics(
        messages: AsyncIterator[bytes], context: grpc.aio.ServicerContext[Any, Any]
    ) -> Any:
        await fold_stream(folder, messages, context.peer())
        return StreamMetricsResponse()

    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            METHOD: grpc.stream_unary_rpc_method_handler(
                stream_metrics,
                request_deserializer=None,
                response_serializer=StreamMetricsResponse.SerializeToString,
            )
        },
    )
