"""Model-server fixtures shared by the end-to-end tests: the two example
versions behind a traffic split, and a batch-aware synthetic model behind a
batcher that the control plane configures."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from controlplane.runtime import ControlPlane
from examples.synthetic import SyntheticServer
from filters.batcher import (
    BatcherConfig,
    BatchingPolicy,
    HttpPolicySource,
    RunningBatcher,
    start_batcher,
)
from tests.conftest import seed_key
from tests.support import RunningModelServer, serving


@pytest.fixture
async def model_servers() -> AsyncIterator[dict[str, RunningModelServer]]:
    """Example model servers for versions v1 and v2, by version."""
    servers = {v: await RunningModelServer(v).start() for v in ("v1", "v2")}
    try:
        yield servers
    finally:
        for server in servers.values():
            await server.stop()


@pytest.fixture
async def synthetic() -> AsyncIterator[tuple[SyntheticServer, int]]:
    """A batch-aware model server and its port: 20 ms per call plus 0.5 ms per
    row, one call at a time (shaped like one GPU)."""
    model = SyntheticServer("v1", a_ms=20.0, b_ms=0.5)
    async with serving(model) as port:
        try:
            yield model, port
        finally:
            model.gate.set()


@pytest.fixture
async def batcher(
    control_plane: ControlPlane, synthetic: tuple[SyntheticServer, int]
) -> AsyncIterator[RunningBatcher]:
    """A batcher in front of ``synthetic`` that reads the policy of version v1 of
    model "embedder" from the control plane (a viewer key)."""
    viewer = await seed_key(control_plane, "viewer", "batcher")
    source = HttpPolicySource(
        f"http://127.0.0.1:{control_plane.api_port}", "embedder", "v1", api_key=viewer
    )
    running = await start_batcher(
        BatcherConfig(
            upstream=f"http://127.0.0.1:{synthetic[1]}",
            host="127.0.0.1",
            port=0,
            # Until the control plane says otherwise: pass requests through one by one.
            policy=BatchingPolicy(enabled=False),
            policy_source=source,
        )
    )
    try:
        yield running
    finally:
        await running.close()
        await source.close()
