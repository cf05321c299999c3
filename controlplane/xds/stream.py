"""The event loop shared by both ADS variants, without gRPC.

A stream reacts to two things: a request from the proxy, and a new snapshot
in the cache. Both become events on one queue, handled one at a time, so the
per-stream protocol state needs no locks. After each event the variant plans
what to send against the current snapshot for the proxy's zone.

What the proxy makes of it goes back to the cache's feedback: a NACK as it
arrives, and, once per snapshot, the moment the proxy holds all of it (which
is what lets the publisher hold back only the resources a proxy rejects).
Each round of responses is reported too, as it is handed to the transport:
the one place where both variants send, so pushes are counted once.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from envoy.config.core.v3 import base_pb2

from controlplane.tasks import cancel_and_wait
from controlplane.xds.cache import SnapshotCache
from controlplane.xds.snapshot import Snapshot
from controlplane.xds.status import ProxyConnection

__all__ = ["StreamLoop", "XdsResponse"]


class XdsResponse(Protocol):
    """What both variants' responses have: the type they carry, and their size."""

    @property
    def type_url(self) -> str: ...

    def __len__(self) -> int: ...


RequestT = TypeVar("RequestT")
ResponseT = TypeVar("ResponseT", bound=XdsResponse)


@dataclass(frozen=True, slots=True)
class _Request(Generic[RequestT]):
    request: RequestT


class _Wake:
    """A new snapshot was published."""


class _Closed:
    """The proxy closed its side of the stream."""


class StreamLoop(ABC, Generic[RequestT, ResponseT]):
    """Serves one ADS stream: subclasses say how to take a request and what to send."""

    def __init__(self, cache: SnapshotCache, connection: ProxyConnection) -> None:
        self._cache = cache
        self._connection = connection
        self._nonces = 0
        self._events: asyncio.Queue[_Request[RequestT] | _Wake | _Closed] = asyncio.Queue()
        self._reported: Snapshot | None = None

    async def responses(self, requests: AsyncIterator[RequestT]) -> AsyncIterator[ResponseT]:
        """Consume ``requests`` and yield the responses the protocol calls for."""
        reader = asyncio.create_task(self._read(requests))
        watcher = asyncio.create_task(self._watch())
        try:
            while True:
                event = await self._events.get()
                if isinstance(event, _Closed):
                    return
                if isinstance(event, _Request):
                    self._on_request(event.request)
                # Always the current snapshot for this proxy's zone: a wake-up may
                # be older than the latest publish, and the zone arrives with the node.
                snapshot = self._cache.snapshot_for(self._connection.zone)
                if snapshot is None:
                    continue  # state not loaded yet: answer nothing (no empty push)
                # Planned again after each round: sending clusters can make endpoints due.
                while batch := self._respond(snapshot):
                    self._cache.report_sent(
                        snapshot,
                        [response.type_url for response in batch],
                        self._connection.variant,
                        update=self._reported is not None,
                    )
                    # Handed over one by one and not kept: an idle stream must not
                    # pin its last (possibly megabytes-large) responses.
                    batch.reverse()
                    while batch:
                        yield batch.pop()
                if snapshot is not self._reported and self._holds_all(snapshot):
                    self._reported = snapshot
                    self._connection.held_revision = snapshot.revision
                    self._cache.report_accepted(snapshot)
        finally:
            await cancel_and_wait(reader, watcher)

    def _identify(self, node: base_pb2.Node) -> None:
        """Record the proxy's identity from the first request that carries it."""
        if node.id:
            self._connection.node_id = node.id
            self._connection.cluster = node.cluster
            self._connection.zone = node.locality.zone

    def _next_nonce(self) -> str:
        self._nonces += 1
        return str(self._nonces)

    @abstractmethod
    def _on_request(self, request: RequestT) -> None:
        """Fold one request from the proxy into the stream's protocol state."""

    def _rejected(self, snapshot: Snapshot | None, type_url: str, error: str) -> None:
        """Report a NACK of ``type_url`` (sent from ``snapshot``) to the cache's feedback."""
        self._cache.report_rejected(snapshot, type_url, error, self._connection.node_id)

    @abstractmethod
    def _holds_all(self, snapshot: Snapshot) -> bool:
        """Whether the proxy has accepted every resource of ``snapshot``, at its versions."""

    @abstractmethod
    def _respond(self, snapshot: Snapshot) -> list[ResponseT]:
        """Return what to send now, in push order, updating the protocol state."""

    async def _read(self, requests: AsyncIterator[RequestT]) -> None:
        try:
            async for request in requests:
                await self._events.put(_Request(request))
        finally:
            await self._events.put(_Closed())

    async def _watch(self) -> None:
        seen: Snapshot | None = None
        while True:
            seen = await self._cache.next_snapshot(seen, self._connection.zone)
            await self._events.put(_Wake())
