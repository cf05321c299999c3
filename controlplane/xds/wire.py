"""Responses serialized once and shared: what the streams hand to gRPC.

A discovery response is a few small fields (version, type, nonce) and the
resources, which are the same bytes for every proxy of a snapshot. Protocol
Buffers allows fields in any order and concatenates repeated fields, so a
response on the wire is its own small header followed by the snapshot's
resource bytes: a response is built per stream as a list of parts, where the
resource parts are bytes objects owned by the snapshot (one per resource
version, or one for all of a type) and shared by every stream. Nothing is
copied until gRPC asks for the bytes, and what it asks for is freed once sent.
https://protobuf.dev/programming-guides/encoding/#last-one-wins

Sending is bounded too (:class:`SendBudget`): when 2,000 proxies reconnect at
once, each wants megabytes; only so many bytes are handed to gRPC at a time.
"""

from __future__ import annotations

import asyncio
import collections
import math
import time
from collections.abc import Sequence
from typing import Generic, TypeVar

from google.protobuf.message import Message

__all__ = ["EncodedResponse", "SendBudget", "serialize"]

MessageT = TypeVar("MessageT", bound=Message)


class EncodedResponse(Generic[MessageT]):
    """One response as parts of its serialized form; the resource parts are shared."""

    __slots__ = ("_message_class", "nonce", "parts", "type_url", "version")

    def __init__(
        self,
        message_class: type[MessageT],
        type_url: str,
        version: str,
        nonce: str,
        parts: Sequence[bytes],
    ) -> None:
        self._message_class = message_class
        self.type_url = type_url
        self.version = version
        self.nonce = nonce
        self.parts = tuple(parts)

    def __len__(self) -> int:
        """The size on the wire, in bytes."""
        return sum(len(part) for part in self.parts)

    def SerializeToString(self) -> bytes:
        """The response's bytes: its parts joined (the one copy, made as it is sent)."""
        return b"".join(self.parts)

    def decode(self) -> MessageT:
        """The response as a protobuf message (tests, debugging)."""
        message = self._message_class()
        message.ParseFromString(self.SerializeToString())
        return message


def serialize(response: EncodedResponse[Message] | Message) -> bytes:
    """gRPC's response serializer for both encoded responses and plain messages."""
    return response.SerializeToString()


class SendBudget:
    """Bytes handed to gRPC and not yet sent, shared by every stream of a server.

    A stream acquires a response's size before handing it over and releases it
    once gRPC asks for the next one (the previous one is written). A response
    larger than the budget still goes out, alone. Waiters are served in order.
    """

    def __init__(self, limit_bytes: int) -> None:
        self.limit_bytes = limit_bytes
        self.in_flight = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._progress_at = time.monotonic()  # when bytes last left

    def _fits(self, size: int) -> bool:
        return self.in_flight == 0 or self.in_flight + size <= self.limit_bytes

    async def acquire(self, size: int) -> None:
        """Wait until ``size`` more bytes fit (or nothing is in flight), and take them."""
        await self.take(size, math.inf)

    async def take(self, size: int, patience_s: float) -> None:
        """:meth:`acquire`, but go ahead anyway once the budget has made no progress
        (nothing released) for ``patience_s``: a proxy that stops reading holds its
        bytes until its stream ends, and a few of them must not stall every other
        stream (memory is bounded again once they go). While bytes keep leaving, as
        when every proxy reconnects at once, a response waits its turn however long
        that is: going ahead on a timer there would put every waiting response in
        gRPC's buffers at once."""
        if not self._waiters and self._fits(size):
            self.in_flight += size
            return
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        self._waiters.append(waiter)
        waiting_since = time.monotonic()
        try:
            while True:
                # Stalled: nothing released since this response began to wait, or since
                # patience_s ago, whichever is later.
                progress = max(self._progress_at, waiting_since)
                remaining = patience_s - (time.monotonic() - progress)
                if remaining <= 0:  # stalled: go ahead, and let the next one try
                    if waiter in self._waiters:
                        self._waiters.remove(waiter)
                    elif waiter.done():
                        self._wake()
                    break
                timeout = None if math.isinf(remaining) else remaining
                done, _ = await asyncio.wait({waiter}, timeout=timeout)
                if not done:
                    continue  # look again: something may have been released meanwhile
                if self._fits(size):
                    self._wake()  # there may be room for the next one too
                    break
                waiter = loop.create_future()
                self._waiters.appendleft(waiter)  # keep its place at the head
        except BaseException:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
            else:
                self._wake()  # it was woken: pass the turn on
            raise
        self.in_flight += size

    def release(self, size: int) -> None:
        """``size`` bytes are sent (or will not be)."""
        self.in_flight -= size
        self._progress_at = time.monotonic()
        self._wake()

    def _wake(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
