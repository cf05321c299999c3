"""The admin API over real HTTP, on SQLite and on Postgres."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from controlplane.runtime import ControlPlane
from tests.support import config_state

EP = {"address": "127.0.0.1", "port": 9001}


async def _model_with_versions(api: httpx.AsyncClient, *versions: str) -> None:
    assert (await api.post("/v1/models", json={"name": "m", "protocol": "http"})).status_code == 201
    for i, version in enumerate(versions):
        body = {"version": version, "endpoints": [{**EP, "port": 9001 + i}]}
        assert (await api.post("/v1/models/m/versions", json=body)).status_code == 201


async def test_model_lifecycle(api: httpx.AsyncClient) -> None:
    created = await api.post(
        "/v1/models", json={"name": "llama-3.1-8b", "protocol": "openai", "description": "chat"}
    )
    assert created.status_code == 201
    assert created.json()["name"] == "llama-3.1-8b"
    assert [m["name"] for m in (await api.get("/v1/models")).json()] == ["llama-3.1-8b"]

    patched = await api.patch("/v1/models/llama-3.1-8b", json={"description": "chat v2"})
    assert patched.status_code == 200
    assert patched.json()["description"] == "chat v2"
    assert patched.json()["protocol"] == "openai"

    assert (await api.delete("/v1/models/llama-3.1-8b")).status_code == 204
    missing = await api.get("/v1/models/llama-3.1-8b")
    assert missing.status_code == 404
    assert missing.json()["error"] == "not_found"


async def test_versions_and_first_version_takes_all_traffic(api: httpx.AsyncClient) -> None:
    await _model_with_versions(api, "v1", "v2")
    assert (await api.get("/v1/models/m/traffic")).json() == {
        "model": "m",
        "weights": {"v1": 100, "v2": 0},
    }
    listed = (await api.get("/v1/models/m/versions")).json()
    assert [v["version"] for v in listed] == ["v1", "v2"]
    assert listed[0]["endpoints"] == [
        {
            "address": "127.0.0.1",
            "port": 9001,
            "zone": None,
            "accelerator": None,
            "weight": 1,
            "batcher_port": None,
        }
    ]

    patched = await api.patch(
        "/v1/models/m/versions/v2",
        json={
            "endpoints": [
                {"address": "10.0.0.7", "port": 8000, "zone": "eu-west-1a", "accelerator": "h100"}
            ]
        },
    )
    assert patched.status_code == 200
    assert patched.json()["endpoints"][0]["zone"] == "eu-west-1a"
    got = (await api.get("/v1/models/m/versions/v2")).json()
    assert got["endpoints"][0]["accelerator"] == "h100"


async def test_traffic_split_replaces_weights(api: httpx.AsyncClient) -> None:
    await _model_with_versions(api, "v1", "v2", "v3")
    response = await api.put("/v1/models/m/traffic", json={"weights": {"v1": 90, "v2": 10}})
    assert response.status_code == 200
    assert response.json()["weights"] == {"v1": 90, "v2": 10, "v3": 0}
    response = await api.put("/v1/models/m/traffic", json={"weights": {"v3": 100}})
    assert (await api.get("/v1/models/m/traffic")).json()["weights"] == {
        "v1": 0,
        "v2": 0,
        "v3": 100,
    }


async def test_version_with_traffic_cannot_be_deleted(api: httpx.AsyncClient) -> None:
    await _model_with_versions(api, "v1", "v2")
    refused = await api.delete("/v1/models/m/versions/v1")
    assert refused.status_code == 409
    assert refused.json()["error"] == "conflict"
    assert (await api.delete("/v1/models/m/versions/v2")).status_code == 204
    assert [v["version"] for v in (await api.get("/v1/models/m/versions")).json()] == ["v1"]


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "error"),
    [
        ("get", "/v1/models/nope", None, 404, "not_found"),
        ("get", "/v1/models/m/versions/nope", None, 404, "not_found"),
        ("patch", "/v1/models/nope", {"description": "x"}, 404, "not_found"),
        ("delete", "/v1/models/nope", None, 404, "not_found"),
        ("delete", "/v1/models/m/versions/nope", None, 404, "not_found"),
        ("put", "/v1/models/nope/traffic", {"weights": {"v1": 100}}, 404, "not_found"),
        ("post", "/v1/models", {"name": "m", "protocol": "http"}, 409, "conflict"),
        ("post", "/v1/models/m/versions", {"version": "v1", "endpoints": []}, 409, "conflict"),
        ("post", "/v1/models", {"name": "bad name", "protocol": "http"}, 422, "validation_error"),
        ("post", "/v1/models", {"name": "x", "protocol": "grpc"}, 422, "validation_error"),
        (
            "post",
            "/v1/models",
            {"name": "x", "protocol": "http", "extra": 1},
            422,
            "validation_error",
        ),
        (
            "post",
            "/v1/models/m/versions",
            {"version": "v9", "endpoints": [{"address": "model_1.local", "port": 80}]},
            422,
            "validation_error",
        ),
        (
            "post",
            "/v1/models/m/versions",
            {"version": "v9", "endpoints": [{"address": "127.0.0.1", "port": 70000}]},
            422,
            "validation_error",
        ),
        (
            "post",
            "/v1/models/m/versions",
            {"version": "v9", "endpoints": [EP, EP]},
            422,
            "invalid_input",
        ),
        ("put", "/v1/models/m/traffic", {"weights": {"v1": 50, "v7": 50}}, 422, "invalid_input"),
        ("put", "/v1/models/m/traffic", {"weights": {"v1": 110, "v2": -10}}, 422, "invalid_input"),
        ("put", "/v1/models/m/traffic", {"weights": {"v1": 0, "v2": 0}}, 422, "invalid_input"),
        ("put", "/v1/models/m/traffic", {"weights": {"v1": 60, "v2": 30}}, 422, "invalid_input"),
        ("put", "/v1/models/m/traffic", {"weights": {}}, 422, "validation_error"),
        ("put", "/v1/models/m/traffic", {"weights": {"v1": "lots"}}, 422, "validation_error"),
    ],
)
async def test_bad_input_gets_an_error_and_changes_nothing(
    api: httpx.AsyncClient,
    control_plane: ControlPlane,
    method: str,
    path: str,
    body: dict[str, Any] | None,
    status: int,
    error: str,
) -> None:
    await _model_with_versions(api, "v1", "v2")
    before = await config_state(api, control_plane)
    traffic_before = (await api.get("/v1/models/m/traffic")).json()
    response = await api.request(method, path, json=body)
    assert response.status_code == status, response.text
    assert response.json()["error"] == error
    assert response.json()["detail"]
    assert await config_state(api, control_plane) == before
    assert (await api.get("/v1/models/m/traffic")).json() == traffic_before
    if method != "get":  # a refused change is still audited, once, as rejected
        newest = (await api.get("/v1/audit/events", params={"limit": 1})).json()["items"][0]
        assert (newest["outcome"], newest["status_code"]) == ("rejected", status)


async def test_malformed_json_is_422(api: httpx.AsyncClient, control_plane: ControlPlane) -> None:
    before = await config_state(api, control_plane)
    response = await api.post(
        "/v1/models", content=b'{"name": "m",', headers={"content-type": "application/json"}
    )
    assert response.status_code == 422
    assert response.json()["error"] == "validation_error"
    assert await config_state(api, control_plane) == before


async def test_each_mutation_is_one_audit_event_and_one_revision(
    api: httpx.AsyncClient, control_plane: ControlPlane
) -> None:
    start_revision, start_events = await config_state(api, control_plane)
    await _model_with_versions(api, "v1", "v2")  # 3 mutations
    await api.put(
        "/v1/models/m/traffic",
        json={"weights": {"v1": 50, "v2": 50}},
        headers={"x-request-id": "r-42"},
    )
    revision, events = await config_state(api, control_plane)
    assert (revision - start_revision, events - start_events) == (4, 4)

    newest = (await api.get("/v1/audit/events", params={"limit": 1})).json()["items"][0]
    assert newest["action"] == "traffic.update"
    assert newest["actor"] == "test-admin"
    assert newest["role"] == "admin"
    assert newest["outcome"] == "success"
    assert newest["status_code"] == 200
    assert newest["model"] == "m"
    assert newest["resource_id"] == "m"
    assert newest["request_id"] == "r-42"
    assert newest["revision"] == revision
    assert newest["before"] == {"model": "m", "weights": {"v1": 100, "v2": 0}}
    assert newest["after"] == {"model": "m", "weights": {"v1": 50, "v2": 50}}


async def test_audit_events_paginate_newest_first(api: httpx.AsyncClient) -> None:
    for i in range(5):
        await api.post("/v1/models", json={"name": f"m{i}", "protocol": "http"})
    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = (await api.get("/v1/audit/events", params=params)).json()
        seen += [e["resource_id"] for e in page["items"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ["m4", "m3", "m2", "m1", "m0"]
    assert pages == 3
    bad = await api.get("/v1/audit/events", params={"cursor": "abc"})
    assert bad.status_code == 422


async def test_request_id_is_echoed(api: httpx.AsyncClient) -> None:
    response = await api.get("/healthz", headers={"x-request-id": "abc-123"})
    assert response.headers["x-request-id"] == "abc-123"
    generated = await api.get("/healthz", headers={"x-request-id": "no spaces allowed"})
    assert len(generated.headers["x-request-id"]) == 32


async def test_health_readiness_and_openapi(api: httpx.AsyncClient) -> None:
    assert (await api.get("/healthz")).json() == {"status": "ok"}
    ready = await api.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["status"] == "ready"
    spec = (await api.get("/openapi.json")).json()
    assert "/v1/models/{model}/traffic" in spec["paths"]
    assert "/v1/keys" in spec["paths"]
    assert (await api.get("/docs")).status_code == 200


async def test_concurrent_creates_of_one_name_yield_one_model(api: httpx.AsyncClient) -> None:
    import asyncio

    responses = await asyncio.gather(
        *(api.post("/v1/models", json={"name": "race", "protocol": "http"}) for _ in range(8))
    )
    codes = sorted(r.status_code for r in responses)
    assert codes.count(201) == 1
    assert set(codes) <= {201, 409}
    params = {"limit": 500, "outcome": "success"}
    events = (await api.get("/v1/audit/events", params=params)).json()["items"]
    assert [e["action"] for e in events].count("model.create") == 1


async def test_each_revision_keeps_its_desired_state(
    api: httpx.AsyncClient, control_plane: ControlPlane
) -> None:
    from controlplane.db.revisions import RevisionRepository

    await _model_with_versions(api, "v1", "v2")
    await api.put("/v1/models/m/traffic", json={"weights": {"v1": 30, "v2": 70}})
    await api.patch("/v1/models/m/versions/v2", json={"endpoints": [{**EP, "port": 9100}]})
    async with control_plane.sessionmaker() as session:
        revisions = RevisionRepository(session)
        found = [await revisions.state_at(n) for n in range(1, await revisions.current() + 1)]
    states = [state for state in found if state is not None]
    assert [s.revision for s in states] == [1, 2, 3, 4, 5]
    assert [len(s.models[0].versions) for s in states] == [0, 1, 2, 2, 2]
    assert dict(states[2].models[0].weights) == {"v1": 100}
    assert dict(states[3].models[0].weights) == {"v1": 30, "v2": 70}
    assert states[3].models[0].versions[1].endpoints[0].port == 9002
    assert states[4].models[0].versions[1].endpoints[0].port == 9100
