"""The admin API's connections send each write at once (TCP_NODELAY): without
it, a response written as headers then body waits for the client's delayed
ACK, about 40 ms on every call."""

from __future__ import annotations

import socket

from controlplane.runtime import ControlPlane
from tests.conftest import api_client


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
