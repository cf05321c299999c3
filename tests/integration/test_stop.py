"""A stopped control plane lets go of everything it held.

SQLAlchemy keeps compiled statements for the life of the process, keyed by the
engine's dialect, so whatever the dialect's event listeners refer to would stay
too: here the control plane, its gRPC server and grpc's poller thread (which then
runs until the interpreter exits, and fails there)."""

from __future__ import annotations

import gc
import weakref

from controlplane.api.app import create_app
from controlplane.runtime import ControlPlane
from controlplane.settings import Settings
from tests.conftest import api_client, seed_key


async def _served_then_stopped(settings: Settings) -> weakref.ref[ControlPlane]:
    plane = ControlPlane(settings.model_copy(update={"api_port": 0, "xds_port": 0}))
    await plane.start(api=create_app)
    try:
        key = await seed_key(plane, "admin")
        async with api_client(plane, key) as api:
            created = await api.post("/v1/models", json={"name": "m", "protocol": "http"})
            assert created.status_code == 201, created.text
            missing = await api.get("/v1/models/nope")
            assert missing.status_code == 404, missing.text
    finally:
        await plane.stop()
    return weakref.ref(plane)


async def test_a_stopped_control_plane_is_garbage(settings: Settings) -> None:
    plane = await _served_then_stopped(settings)
    gc.collect()
    assert plane() is None, [type(r).__name__ for r in gc.get_referrers(plane())]
