"""The local Envoy's listener does not share its port: where another process
holds it (even one that allows SO_REUSEPORT, as Envoy does by default), Envoy
refuses the listener (a NACK) instead of taking part of that process's traffic."""

from __future__ import annotations

import socket
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from controlplane.bootstrap import XdsAddress, dump_bootstrap, render_bootstrap
from controlplane.processes import ChildProcess, envoy_binary
from controlplane.runtime import ControlPlane
from controlplane.settings import Settings
from tests.conftest import free_port
from tests.support import eventually

pytestmark = pytest.mark.envoy


async def test_envoy_refuses_a_listener_port_that_another_process_holds(
    api: httpx.AsyncClient, control_plane: ControlPlane, settings: Settings, tmp_path: Path
) -> None:
    with socket.socket() as other_mesh:
        other_mesh.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        other_mesh.bind(("127.0.0.1", settings.listener_port))
        other_mesh.listen()
        node_id = f"test-{uuid.uuid4().hex[:6]}"
        bootstrap = render_bootstrap(
            node_id, [XdsAddress("127.0.0.1", control_plane.xds_port)], admin_port=free_port()
        )
        path = tmp_path / "envoy.yaml"
        path.write_text(dump_bootstrap(bootstrap))
        envoy = ChildProcess(
            "envoy",
            [envoy_binary(), "-c", str(path), "--disable-hot-restart", "--concurrency", "1"],
            log_path=tmp_path / "envoy.log",
        )
        await envoy.start()
        try:

            async def listener_status() -> dict[str, Any] | None:
                for proxy in (await api.get("/v1/proxies")).json():
                    entry = proxy["types"]["listeners"]
                    if proxy["node_id"] == node_id and entry["status"] in ("NACKED", "SYNCED"):
                        return dict(entry)
                return None

            entry = await eventually(listener_status, timeout=20)
        finally:
            await envoy.stop()
    assert entry["status"] == "NACKED", entry
    assert str(settings.listener_port) in entry["error"]
