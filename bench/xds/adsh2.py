"""The bench's ADS client on raw HTTP/2 (the ``h2`` library on asyncio), holding
almost nothing per stream.

The grpcio client (:class:`bench.xds.adsclient.AdsClient`) holds 8 to 13 MiB per
stream natively and keeps a 64 KiB receive window, so 2,000 of them do not fit
in one machine and each takes an 8.6 MB RouteConfiguration in 64 KiB round
trips. This one speaks gRPC over HTTP/2 itself: one TCP connection per proxy
(as Envoy does), 1 MiB stream and connection windows, received data
acknowledged at once, and responses read as they arrive by
:class:`bench.xds.adsreader.ResponseReader`, which keeps only the top-level
fields, delta resources' names, and the Anys of clusters and listeners (read
once per version per process for their names, as the grpcio client does).
Requests, ACKs and what each response changes are the same code as the grpcio
client's (:class:`bench.xds.adsclient.AdsState`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import random
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import any_pb2

from controlplane.xds.resources import CLUSTER, LISTENER

from .adsclient import _NAMES, AdsState
from .adsreader import ReadResponse, ResponseReader

__all__ = ["H2AdsClient"]

_SERVICE = "/envoy.service.discovery.v3.AggregatedDiscoveryService/"
# Stream and connection receive windows. Not 16 MiB: with those, 2,000 streams taking
# 8.6 MB each in a split had 3 connections reset by the control plane, most likely its
# keepalive (a ping every 30 s, dropped when unacknowledged for 20 s) queued behind up
# to 16 MiB of a connection's data (bench/README.md). Acknowledged at once, 1 MiB still
# keeps the push flowing, and bounds what is in flight per connection.
WINDOW = 1024 * 1024
MAX_FRAME = 256 * 1024  # the largest DATA frame the server may send (fewer frames to parse)
_STREAM = 1  # the one HTTP/2 stream of a connection


class _Connection(asyncio.Protocol):
    """One TCP connection carrying one ADS stream."""

    def __init__(self, client: H2AdsClient) -> None:
        self.client = client
        self.transport: asyncio.Transport | None = None
        self.h2 = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding=None)
        )
        self.outbound = bytearray()  # gRPC-framed requests not yet within the send window
        self.closed = False
        self.received = False  # whether any response bytes arrived

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        conn = self.h2
        # Sent in the first SETTINGS frame and taken as in force at once (h2 would apply
        # them when the server acknowledges them, but gRPC sends larger frames and
        # more data as soon as it has read them, before its acknowledgement).
        conn.local_settings = h2.settings.Settings(
            client=True,
            initial_values={
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: WINDOW,
                h2.settings.SettingCodes.MAX_FRAME_SIZE: MAX_FRAME,
                h2.settings.SettingCodes.ENABLE_PUSH: 0,
            },
        )
        conn.max_inbound_frame_size = MAX_FRAME
        conn.initiate_connection()
        conn.increment_flow_control_window(WINDOW - 65535)
        method = "DeltaAggregatedResources" if self.client.delta else "StreamAggregatedResources"
        conn.send_headers(
            _STREAM,
            [
                (":method", "POST"),
                (":scheme", "http"),
                (":path", _SERVICE + method),
                (":authority", self.client.authority),
                ("content-type", "application/grpc"),
                ("te", "trailers"),
            ],
        )
        self._pump()

    def send(self, message: bytes) -> None:
        """One gRPC message on the stream (held until the connection is made)."""
        if self.closed:
            return
        self.outbound += b"\x00" + len(message).to_bytes(4, "big") + message
        if self.transport is not None:
            self._pump()

    def _pump(self) -> None:
        conn = self.h2
        with contextlib.suppress(h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            while self.outbound:
                window = conn.local_flow_control_window(_STREAM)
                if window <= 0:
                    break
                size = min(window, conn.max_outbound_frame_size, len(self.outbound))
                conn.send_data(_STREAM, bytes(self.outbound[:size]))
                del self.outbound[:size]
        self._flush()

    def _flush(self) -> None:
        data = self.h2.data_to_send()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        conn = self.h2
        try:
            events = conn.receive_data(data)
        except h2.exceptions.ProtocolError as error:
            self._end(f"protocol error: {error!r}")
            return
        for event in events:
            if isinstance(event, h2.events.DataReceived):
                if event.flow_controlled_length:
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                if event.data:
                    self.received = True
                    self.client._on_bytes(event.data)
            elif isinstance(event, h2.events.WindowUpdated | h2.events.RemoteSettingsChanged):
                if self.outbound:
                    self._pump()
            elif isinstance(
                event,
                h2.events.StreamEnded | h2.events.StreamReset | h2.events.ConnectionTerminated,
            ):
                # Trailers (grpc-status, grpc-message) come before the stream's end.
                trailers = {k.decode(): v.decode() for k, v in self.client.trailers.items()}
                self._end(f"{type(event).__name__}: {trailers or event}")
            elif isinstance(event, h2.events.ResponseReceived):
                headers = dict(event.headers)
                if b"grpc-status" in headers:  # a trailers-only response: the call failed
                    self.client.trailers = headers
                if headers.get(b":status") != b"200":
                    self._end(f"status {headers.get(b':status')!r}")
            elif isinstance(event, h2.events.TrailersReceived):
                self.client.trailers = dict(event.headers)
        self._flush()

    def _end(self, why: str) -> None:
        if self.transport is not None:
            self.transport.close()
        if not self.closed:
            self.closed = True
            self.client._stream_ended(self, why)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed:
            self.closed = True
            self.client._stream_ended(self, f"connection lost: {exc!r}")


class H2AdsClient(AdsState):
    """One ADS stream from a pretend Envoy ``node_id``, on its own HTTP/2 connection to
    ``host:port``."""

    def __init__(self, host: str, port: int, node_id: str, *, delta: bool = False) -> None:
        super().__init__(node_id, delta=delta)
        self.host = host
        self.port = port
        self.authority = f"{host}:{port}"
        self.trailers: dict[Any, Any] = {}
        self.end_reason = ""  # why the last stream ended (debugging)
        # Calls that ended before any response (refused by a trailers-only response, or
        # the connection failed or was reset), by grpc-status or error; each was retried
        # after a jittered backoff, as Envoy retries its ADS stream (500 ms base,
        # doubling, at most 30 s).
        self.rejected: collections.Counter[str] = collections.Counter()
        self._attempts = 0
        self._stopping = False
        self._retry: asyncio.TimerHandle | None = None
        self._connection: _Connection | None = None
        self._task: asyncio.Task[None] | None = None
        self._ended = False
        self._reader = self._new_reader()

    def _new_reader(self) -> ResponseReader:
        return ResponseReader(delta=self.delta, keep=self._keep)

    def _keep(self, type_url: str | None, version: str | None) -> bool:
        """Whether to keep a resource's Any as it arrives: sotw clusters and listeners of
        a version this process has not read yet, delta listeners (their route names);
        while the type or version is not read yet, keep."""
        if type_url is None:
            return True
        if self.delta:
            return type_url == LISTENER
        if type_url not in (CLUSTER, LISTENER):
            return False
        return version is None or (type_url, version) not in _NAMES

    def start(self) -> None:
        """Connect, open the stream and ask for clusters and listeners."""
        self._retry = None
        self._ended = False
        self.end_reason = ""
        self._reader = self._new_reader()
        self._connection = _Connection(self)
        for type_url in (CLUSTER, LISTENER):
            self._request(type_url)
        self._task = asyncio.create_task(self._connect(), name=f"ads-h2-{self.node_id}")

    async def _connect(self) -> None:
        connection = self._connection
        assert connection is not None
        loop = asyncio.get_running_loop()
        try:
            await loop.create_connection(lambda: connection, self.host, self.port)
        except OSError as error:
            connection.closed = True
            self._stream_ended(connection, f"connect: {error!r}")

    def restart(self, target: object = None) -> None:
        """A new connection and stream, as a proxy does after losing its control plane:
        from scratch (the old stream must have ended). ``target`` is ignored (the
        grpcio client's channel)."""
        self._attempts = 0
        self._reset()
        self.start()

    def _stream_ended(self, connection: _Connection, why: str) -> None:
        if connection is not self._connection:
            return
        if not connection.received and not self._stopping:
            # Refused or dropped before anything arrived: retry, as Envoy does.
            status = self.trailers.get(b"grpc-status", b"").decode()
            if status:
                message = self.trailers.get(b"grpc-message", b"").decode()
                why = f"grpc-status {status}: {message}"
            self.rejected[why] += 1
            self.trailers = {}
            delay = random.uniform(0, min(30.0, 0.5 * 2**self._attempts))
            self._attempts += 1
            self._retry = asyncio.get_running_loop().call_later(delay, self._again)
            return
        self.end_reason = self.end_reason or why
        self._ended = True

    def _again(self) -> None:
        self._reset()
        self.start()

    @property
    def ended(self) -> bool:
        """Whether the stream has ended (closed, or the control plane went away)."""
        return self._ended

    async def stop(self) -> None:
        """Close the connection."""
        self._stopping = True
        if self._retry is not None:
            self._retry.cancel()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        connection = self._connection
        if connection is not None and connection.transport is not None:
            connection.closed = True
            connection.transport.close()
        self._ended = True

    def _send(
        self, request: discovery_pb2.DeltaDiscoveryRequest | discovery_pb2.DiscoveryRequest
    ) -> None:
        assert self._connection is not None
        self._connection.send(request.SerializeToString())

    def _on_bytes(self, data: bytes) -> None:
        for response in self._reader.feed(data):
            self._on_read(response)

    def _on_read(self, response: ReadResponse) -> None:
        kept = response.kept
        self._handle(
            response.type_url,
            response.version,
            response.nonce,
            size=response.size,
            count=response.resources,
            resources=lambda: [any_pb2.Any.FromString(b) for b in kept],
            names=response.names,
            removed=response.removed,
        )
