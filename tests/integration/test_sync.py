"""The sync loop's partial reads give the same state as a full read."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import httpx

from controlplane.db.state import load_state
from controlplane.domain.documents import encode_state
from controlplane.domain.state import DesiredState, ModelSpec
from controlplane.runtime import ControlPlane

EP = {"address": "127.0.0.1", "port": 9001}


async def _full_read(control_plane: ControlPlane) -> DesiredState:
    async with control_plane.sessionmaker() as session:
        return await load_state(session)


async def test_partial_reads_follow_every_kind_of_change(
    api: httpx.AsyncClient, control_plane: ControlPlane
) -> None:
    async def ok(call: Awaitable[httpx.Response]) -> None:
        response = await call
        assert response.is_success, response.text

    steps: list[Callable[[], Awaitable[None]]] = [
        lambda: ok(api.post("/v1/models", json={"name": "b-model", "protocol": "http"})),
        lambda: ok(api.post("/v1/models", json={"name": "a.model", "protocol": "http"})),
        lambda: ok(
            api.post("/v1/models/b-model/versions", json={"version": "v1", "endpoints": [EP]})
        ),
        lambda: ok(
            api.post(
                "/v1/models/b-model/versions",
                json={"version": "v2", "endpoints": [{**EP, "port": 9002, "zone": "z"}]},
            )
        ),
        lambda: ok(api.put("/v1/models/b-model/traffic", json={"weights": {"v1": 60, "v2": 40}})),
        lambda: ok(
            api.put(
                "/v1/models/b-model/versions/v2/policy",
                json={"circuit_breakers": {"max_requests": 5}},
            )
        ),
        lambda: ok(api.put("/v1/models/b-model/policy", json={"sticky": {"header": "x-user"}})),
        lambda: ok(
            api.post(
                "/v1/tenants",
                json={
                    "name": "acme",
                    "models": ["b-model"],
                    "rate_limit": {"requests_per_second": 5, "burst": 10},
                },
            )
        ),
        lambda: ok(api.delete("/v1/models/a.model")),
        lambda: ok(api.post("/v1/revisions/3/rollback")),
    ]
    await control_plane.sync.sync_once()
    for step in steps:
        await step()
        await control_plane.sync.sync_once()
        synced = control_plane.sync.state
        assert synced is not None
        assert encode_state(synced) == encode_state(await _full_read(control_plane))


def test_with_models_replaces_adds_and_removes() -> None:
    state = DesiredState(1, (ModelSpec("a", "http"), ModelSpec("c", "http")))
    changed = state.with_models(2, {"a": None, "b": ModelSpec("b", "openai")})
    assert [m.name for m in changed.models] == ["b", "c"]
    assert changed.revision == 2
    assert changed.models[0].protocol == "openai"
