"""The admin API's connections: each write leaves at once (TCP_NODELAY: without
it, a response written as headers then body waits for the client's delayed
ACK, about 40 ms on every call), and a client that never finishes its request
does not keep the control plane from stopping."""

from __future__ import annotations

import asyncio
import logging
import socket

import pytest

from controlplane.api.app import create_app
from controlplane.runtime import ControlPlane
from controlplane.settings import Settings
from tests.conftest import api_client
from tests.support import until


async def test_api_connections_have_nodelay(control_plane: ControlPlane) -> None:
    server = control_plane._api_server
    assert server is not None
    async with api_client(control_plane) as client:
        response = await client.get("/readyz")
        assert response.status_code == 200
        # The client keeps its connection open: look at the server's end of it.
        [connection] = list(server.server_state.connections)
        sock = connection.transport.get_extra_info("socket")  # type: ignore[attr-defined]
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0


async def test_a_request_that_never_ends_is_dropped_after_the_grace(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    # A client sends a change's headers and one byte of its 100-byte body, then
    # nothing: its request can never end. Stopping waits for it the grace
    # (1 s here), then drops it and says so, instead of waiting for ever.
    plane = ControlPlane(
        settings.model_copy(update={"api_port": 0, "xds_port": 0, "api_shutdown_grace_s": 1})
    )
    await plane.start(api=create_app)
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", plane.api_port)
        writer.write(
            b"POST /v1/models HTTP/1.1\r\nHost: turnout\r\n"
            b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"
        )
        await writer.drain()
        server = plane._api_server
        assert server is not None
        await until(lambda: len(server.server_state.tasks) == 1)
        with caplog.at_level(logging.WARNING, logger="controlplane.runtime"):
            await asyncio.wait_for(plane.stop(), 30)
        [forced] = [r for r in caplog.records if r.getMessage() == "api.shutdown_forced"]
        assert (forced.connections, forced.grace_s) == (1, 1)  # type: ignore[attr-defined]
        writer.close()
    finally:
        await plane.stop()
