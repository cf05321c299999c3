"""The admin API of versions that name a Kubernetes Service: the reference is
desired state (versioned, audited, in the revision document), bad references are
422s that change nothing, and GET shows the endpoints discovered now."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from controlplane.db.discovery import DiscoveryRepository
from controlplane.domain.clock import utcnow
from controlplane.domain.discovery import DiscoveredEndpoint
from controlplane.runtime import ControlPlane
from tests.support import config_state, writing

REF = {"namespace": "ml", "service": "sentiment-v2", "port": "http"}
EP = {"address": "127.0.0.1", "port": 9001}


async def _model(api: httpx.AsyncClient) -> None:
    assert (await api.post("/v1/models", json={"name": "m", "protocol": "http"})).status_code == 201
    body = {"version": "v1", "endpoints": [EP]}
    assert (await api.post("/v1/models/m/versions", json=body)).status_code == 201


def _ref(**changes: Any) -> dict[str, Any]:
    return {**REF, **changes}


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("post", "/v1/models/m/versions", {"version": "v2", "endpoints": [EP], "kubernetes": REF}),
        ("post", "/v1/models/m/versions", {"version": "v2", "kubernetes": _ref(namespace="ML")}),
        ("post", "/v1/models/m/versions", {"version": "v2", "kubernetes": _ref(service="2svc")}),
        ("post", "/v1/models/m/versions", {"version": "v2", "kubernetes": _ref(port="8080")}),
        ("post", "/v1/models/m/versions", {"version": "v2", "kubernetes": _ref(port=0)}),
        ("post", "/v1/models/m/versions", {"version": "v2", "kubernetes": _ref(port=True)}),
        ("post", "/v1/models/m/versions", {"version": "v2", "kubernetes": _ref(port="a" * 16)}),
        ("post", "/v1/models/m/versions", {"version": "v2", "kubernetes": _ref(port="Http")}),
        ("post", "/v1/models/m/versions", {"version": "v2", "kubernetes": _ref(extra=1)}),
        ("post", "/v1/models/m/versions", {"version": "v2", "kubernetes": {"namespace": "ml"}}),
        ("patch", "/v1/models/m/versions/v1", {}),
        ("patch", "/v1/models/m/versions/v1", {"endpoints": [EP], "kubernetes": REF}),
        ("patch", "/v1/models/m/versions/v1", {"kubernetes": None}),
    ],
)
async def test_a_bad_reference_is_422_and_changes_nothing(
    api: httpx.AsyncClient,
    control_plane: ControlPlane,
    method: str,
    path: str,
    body: dict[str, Any],
) -> None:
    await _model(api)
    before = await config_state(api, control_plane)
    response = await api.request(method, path, json=body)
    assert response.status_code == 422, response.text
    assert response.json()["error"] == "validation_error"
    assert response.json()["detail"]
    assert await config_state(api, control_plane) == before
    newest = (await api.get("/v1/audit/events", params={"limit": 1})).json()["items"][0]
    assert (newest["outcome"], newest["status_code"]) == ("rejected", 422)


async def test_the_reference_is_versioned_audited_and_shown_with_what_is_discovered(
    api: httpx.AsyncClient, control_plane: ControlPlane
) -> None:
    await _model(api)
    revision, events = await config_state(api, control_plane)
    response = await api.post(
        "/v1/models/m/versions", json={"version": "v2", "kubernetes": _ref(port=8080)}
    )
    assert response.status_code == 201, response.text
    created = response.json()
    assert created["kubernetes"] == _ref(port=8080)
    assert created["endpoints"] == [] and created["discovered"] == []
    assert await config_state(api, control_plane) == (revision + 1, events + 1)
    newest = (await api.get("/v1/audit/events", params={"limit": 1})).json()["items"][0]
    assert newest["after"]["kubernetes"] == _ref(port=8080)
    # The revision's document holds the reference; its diff shows the change.
    detail = await api.get(f"/v1/revisions/{revision + 1}")
    assert detail.status_code == 200, detail.text
    (model,) = detail.json()["state"]["models"]
    assert model["versions"][1]["kubernetes"] == _ref(port=8080)
    diff = await api.get(f"/v1/revisions/{revision + 1}/diff")
    assert diff.status_code == 200, diff.text
    assert "sentiment-v2" in diff.text

    # What the watcher stored shows, resolved to the version's port (read-only).
    async with writing(control_plane.sessionmaker) as session:
        found = (DiscoveredEndpoint("10.1.0.1", "a", (("http", 80),)),)
        await DiscoveryRepository(session).put(("ml", "sentiment-v2"), found, utcnow())
    version = (await api.get("/v1/models/m/versions/v2")).json()
    assert [(e["address"], e["port"], e["zone"]) for e in version["discovered"]] == [
        ("10.1.0.1", 8080, "a")
    ]
    listed = (await api.get("/v1/models/m/versions")).json()
    assert [v["discovered"] is None for v in listed] == [True, False]  # v1 lists its own

    # PATCH switches a version from listed endpoints to a Service, and back.
    response = await api.patch("/v1/models/m/versions/v1", json={"kubernetes": REF})
    assert response.status_code == 200, response.text
    assert response.json()["endpoints"] == []
    assert response.json()["discovered"] == [
        {
            "address": "10.1.0.1",
            "port": 80,
            "zone": "a",
            "accelerator": None,
            "weight": 1,
            "batcher_port": None,
        }
    ]
    response = await api.patch("/v1/models/m/versions/v1", json={"endpoints": [EP]})
    assert response.status_code == 200, response.text
    assert response.json()["kubernetes"] is None
    assert await config_state(api, control_plane) == (revision + 3, events + 3)
