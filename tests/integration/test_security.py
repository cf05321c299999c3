"""Keys and roles, the audit log (exactly once, tamper-evident, queryable),
ETag/If-Match, Idempotency-Key and body limits, on SQLite and Postgres."""

from __future__ import annotations

import asyncio
import csv
import io
import json
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from controlplane.runtime import ControlPlane
from tests.conftest import api_client, seed_key

EP = {"address": "127.0.0.1", "port": 9001}
# Open like a health check: Prometheus scrapes /metrics without a key.
OPEN = {("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/metrics")}
ROLES = ("viewer", "operator", "auditor", "admin")


def allowed_roles(method: str, path: str) -> set[str]:
    """The access rules, written out independently of the code under test."""
    if path.startswith("/v1/keys"):
        return {"admin"}
    if path.startswith("/v1/audit"):
        return {"auditor", "admin"}
    if method == "GET":
        return set(ROLES)
    return {"operator", "admin"}


async def _events(api: httpx.AsyncClient, **params: Any) -> list[dict[str, Any]]:
    response = await api.get("/v1/audit/events", params={"limit": 500, **params})
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


async def _model(api: httpx.AsyncClient, *versions: str) -> None:
    assert (await api.post("/v1/models", json={"name": "m", "protocol": "http"})).status_code == 201
    for i, version in enumerate(versions):
        body = {"version": version, "endpoints": [{**EP, "port": 9001 + i}]}
        assert (await api.post("/v1/models/m/versions", json=body)).status_code == 201


async def test_role_by_endpoint_matrix_from_the_openapi_spec(
    api: httpx.AsyncClient, control_plane: ControlPlane
) -> None:
    spec = (await api.get("/openapi.json")).json()
    keys = {role: await seed_key(control_plane, role) for role in ROLES}
    await _model(api, "v1")
    operations = [
        (method.upper(), path, op)
        for path, item in spec["paths"].items()
        for method, op in item.items()
    ]
    assert len(operations) >= 18
    for method, path, op in operations:
        url = path.replace("{model}", "m").replace("{version}", "v9").replace("{key_id}", "999")
        if (method, path) in OPEN:
            assert "security" not in op, path
            async with api_client(control_plane, None) as client:
                assert (await client.request(method, url)).status_code in (200, 503)
            continue
        assert op.get("security") == [{"ApiKey": []}], (method, path)
        body = {} if method in ("POST", "PUT", "PATCH") else None
        altered = keys["viewer"][:-1] + ("x" if keys["viewer"][-1] != "x" else "y")
        for key in (None, "tk_not-a-valid-key", altered):
            async with api_client(control_plane, key) as client:
                response = await client.request(method, url, json=body)
            assert response.status_code == 401, (method, path, key, response.text)
            assert response.json()["error"] == "unauthenticated"
            assert response.headers["www-authenticate"] == "Bearer"
        for role in ROLES:
            async with api_client(control_plane, keys[role]) as client:
                response = await client.request(method, url, json=body)
            if role in allowed_roles(method, path):
                assert response.status_code not in (401, 403), (role, method, path, response.text)
            else:
                assert response.status_code == 403, (role, method, path, response.text)
                assert response.json()["error"] == "permission_denied"


async def test_keys_are_shown_once_and_revocable(
    api: httpx.AsyncClient, control_plane: ControlPlane
) -> None:
    created = await api.post("/v1/keys", json={"name": "ci-deployer", "role": "operator"})
    assert created.status_code == 201, created.text
    body = created.json()
    key = body["key"]
    assert key.startswith("tk_") and body["prefix"] == key[:11]
    listed = (await api.get("/v1/keys")).json()
    assert "key" not in listed[-1] and listed[-1]["name"] == "ci-deployer"
    async with control_plane.sessionmaker() as session:
        stored = (await session.execute(text("SELECT key_hash FROM api_keys"))).scalars().all()
    assert key not in stored and all(len(h) == 64 for h in stored)
    async with api_client(control_plane, key) as operator:
        assert (await operator.get("/v1/models")).status_code == 200
        assert (await operator.get("/v1/keys")).status_code == 403
        assert (await api.delete(f"/v1/keys/{body['id']}")).status_code == 204
        assert (await operator.get("/v1/models")).status_code == 401
    assert (await api.delete(f"/v1/keys/{body['id']}")).status_code == 404
    actions = [e["action"] for e in await _events(api, resource_type="key")]
    assert actions[:3] == ["key.revoke", "key.revoke", "key.create"]


@pytest.mark.parametrize(
    ("who", "method", "path", "body", "status", "outcome"),
    [
        ("admin", "post", "/v1/models", {"name": "n", "protocol": "http"}, 201, "success"),
        ("admin", "patch", "/v1/models/nope", {"description": "x"}, 404, "rejected"),
        ("admin", "post", "/v1/models", {"name": "m", "protocol": "http"}, 409, "rejected"),
        ("admin", "put", "/v1/models/m/traffic", {"weights": {"v1": 5}}, 422, "rejected"),
        ("admin", "post", "/v1/models", {"name": "bad name"}, 422, "rejected"),
        (None, "post", "/v1/models", {"name": "n", "protocol": "http"}, 401, "denied"),
        ("viewer", "delete", "/v1/models/m", None, 403, "denied"),
        ("admin", "delete", "/v1/models/m", None, 204, "success"),
    ],
)
async def test_every_mutating_request_is_audited_exactly_once(
    api: httpx.AsyncClient,
    control_plane: ControlPlane,
    who: str | None,
    method: str,
    path: str,
    body: dict[str, Any] | None,
    status: int,
    outcome: str,
) -> None:
    await _model(api, "v1")
    key = await seed_key(control_plane, who, f"k-{who}") if who else None
    before = await _events(api)
    async with api_client(control_plane, key) as client:
        response = await client.request(
            method, path, json=body, headers={"x-request-id": "req-1", "user-agent": "probe/1"}
        )
    assert response.status_code == status, response.text
    after = await _events(api)
    assert len(after) == len(before) + 1
    event = after[0]
    assert (event["outcome"], event["status_code"]) == (outcome, status)
    assert event["request_id"] == "req-1"
    assert event["user_agent"] == "probe/1"
    assert event["source_ip"] == "127.0.0.1"
    assert event["actor"] == (f"k-{who}" if who else "anonymous")
    assert event["role"] == who
    assert event["hash"] and event["prev_hash"] == before[0]["hash"]
    assert event["action"].split(".")[0] in ("model", "traffic")
    assert (await api.get("/v1/audit/verify")).json()["ok"] is True


async def _tamper(control_plane: ControlPlane, statements: list[str]) -> None:
    sqlite = control_plane.engine.dialect.name == "sqlite"
    async with control_plane.engine.begin() as connection:
        if sqlite:
            await connection.execute(text("DROP TRIGGER audit_events_no_update"))
            await connection.execute(text("DROP TRIGGER audit_events_no_delete"))
        else:
            await connection.execute(text("ALTER TABLE audit_events DISABLE TRIGGER USER"))
        for statement in statements:
            await connection.execute(text(statement))
        if not sqlite:  # the Postgres database outlives this test
            await connection.execute(text("ALTER TABLE audit_events ENABLE TRIGGER USER"))


@pytest.mark.parametrize(
    ("statements", "position"),
    [
        (["UPDATE audit_events SET actor = 'mallory' WHERE id = 3"], 3),
        (["UPDATE audit_events SET after = NULL WHERE id = 2"], 2),
        (["DELETE FROM audit_events WHERE id = 3"], 3),
        (["DELETE FROM audit_events WHERE id = 5"], 5),  # the newest: the head notices
        (  # swap events 2 and 3, hashes and all
            [
                "UPDATE audit_events SET id = 100 WHERE id = 2",
                "UPDATE audit_events SET id = 2 WHERE id = 3",
                "UPDATE audit_events SET id = 3 WHERE id = 100",
            ],
            2,
        ),
    ],
    ids=["edit-actor", "edit-after", "delete", "delete-newest", "reorder"],
)
async def test_tampering_is_detected(
    api: httpx.AsyncClient,
    control_plane: ControlPlane,
    statements: list[str],
    position: int,
) -> None:
    await _model(api, "v1", "v2")
    await api.put("/v1/models/m/traffic", json={"weights": {"v1": 50, "v2": 50}})
    await api.delete("/v1/models/nope")  # a rejected request: event 5
    assert (await api.get("/v1/audit/verify")).json() == {
        "ok": True,
        "checked": 5,
        "head_id": 5,
        "first_broken_position": None,
        "first_broken_id": None,
        "reason": None,
    }
    async with control_plane.engine.begin() as connection:
        with pytest.raises(Exception, match="append-only"):
            await connection.execute(text("UPDATE audit_events SET actor = 'x'"))
    async with control_plane.engine.begin() as connection:
        with pytest.raises(Exception, match="append-only"):
            await connection.execute(text("DELETE FROM audit_events"))
    await _tamper(control_plane, statements)
    report = (await api.get("/v1/audit/verify")).json()
    assert report["ok"] is False
    assert report["first_broken_position"] == position, report


async def test_governance_queries_export_history_and_traffic_at_a_time(
    api: httpx.AsyncClient, control_plane: ControlPlane
) -> None:
    await _model(api, "v1", "v2")
    await asyncio.sleep(0.05)
    middle = datetime.now(UTC)
    await asyncio.sleep(0.05)
    await api.put("/v1/models/m/traffic", json={"weights": {"v1": 20, "v2": 80}})
    await api.post("/v1/models", json={"name": "other", "protocol": "http"})
    await api.delete("/v1/models/m/versions/v2")  # refused: it has traffic

    traffic = await _events(api, model="m", action="traffic.update")
    assert [e["after"]["weights"] for e in traffic] == [{"v1": 20, "v2": 80}]
    assert len(await _events(api, outcome="rejected")) == 1
    assert len(await _events(api, actor="test-admin")) == 6
    assert len(await _events(api, actor="nobody")) == 0
    assert len(await _events(api, since=middle.isoformat())) == 3
    assert len(await _events(api, until=middle.isoformat())) == 3
    assert len(await _events(api, model="m", since=middle.isoformat(), outcome="success")) == 1
    assert [e["resource_id"] for e in await _events(api, resource_type="version")] == [
        "m/v2",
        "m/v2",
        "m/v1",
    ]
    page = (await api.get("/v1/audit/events", params={"limit": 2, "model": "m"})).json()
    rest = await api.get(
        "/v1/audit/events", params={"limit": 10, "model": "m", "cursor": page["next_cursor"]}
    )
    assert len(page["items"]) + len(rest.json()["items"]) == 5

    jsonl = await api.get("/v1/audit/export", params={"format": "jsonl", "model": "m"})
    assert jsonl.headers["content-type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in jsonl.text.splitlines()]
    assert [e["action"] for e in lines] == [
        "model.create",
        "version.create",
        "version.create",
        "traffic.update",
        "version.delete",
    ]
    exported = await api.get("/v1/audit/export", params={"format": "csv"})
    rows = list(csv.DictReader(io.StringIO(exported.text)))
    assert len(rows) == 6 and rows[0]["action"] == "model.create"

    history = (await api.get("/v1/models/m/history")).json()["items"]
    assert [h["action"] for h in history] == [
        "traffic.update",
        "version.create",
        "version.create",
        "model.create",
    ]
    assert history[0]["actor"] == "test-admin"
    assert "source_ip" not in history[0]

    then = await api.get("/v1/models/m/traffic", params={"at": middle.isoformat()})
    assert then.json()["weights"] == {"v1": 100, "v2": 0}
    now = await api.get("/v1/models/m/traffic", params={"at": datetime.now(UTC).isoformat()})
    assert now.json()["weights"] == {"v1": 20, "v2": 80}
    before = await api.get("/v1/models/m/traffic", params={"at": "2000-01-01T00:00:00Z"})
    assert before.status_code == 404


async def test_stale_if_match_gets_412_and_changes_nothing(api: httpx.AsyncClient) -> None:
    await _model(api, "v1", "v2")
    for path, change in [
        ("/v1/models/m", {"method": "patch", "json": {"description": "x"}}),
        ("/v1/models/m/versions/v2", {"method": "patch", "json": {"endpoints": [EP]}}),
        ("/v1/models/m/traffic", {"method": "put", "json": {"weights": {"v2": 100}}}),
    ]:
        got = await api.get(path)
        etag = got.headers["etag"]
        assert etag.startswith('"') and (await api.get(path)).headers["etag"] == etag
        stale = await api.request(url=path, headers={"if-match": '"stale"'}, **change)
        assert stale.status_code == 412, stale.text
        assert stale.json()["error"] == "precondition_failed"
        assert (await api.get(path)).json() == got.json()
        fresh = await api.request(url=path, headers={"if-match": etag}, **change)
        assert fresh.status_code == 200, fresh.text
        assert fresh.headers["etag"] != etag
        assert (
            await api.request(url=path, headers={"if-match": etag}, **change)
        ).status_code == 412
    etag = (await api.get("/v1/models/m")).headers["etag"]
    assert (await api.delete("/v1/models/m", headers={"if-match": '"x"'})).status_code == 412
    assert (await api.delete("/v1/models/m", headers={"if-match": etag})).status_code == 204


async def test_twenty_concurrent_writers_never_lose_an_update(api: httpx.AsyncClient) -> None:
    await _model(api, "v1", "v2")  # v1 100, v2 0
    outcomes: list[int] = []

    async def move_one_percent() -> None:
        while True:
            got = await api.get("/v1/models/m/traffic")
            weights = got.json()["weights"]
            weights = {"v1": weights["v1"] - 1, "v2": weights["v2"] + 1}
            response = await api.put(
                "/v1/models/m/traffic",
                json={"weights": weights},
                headers={"if-match": got.headers["etag"]},
            )
            outcomes.append(response.status_code)
            assert response.status_code in (200, 412), response.text
            if response.status_code == 200:
                return

    await asyncio.gather(*(move_one_percent() for _ in range(20)))
    assert (await api.get("/v1/models/m/traffic")).json()["weights"] == {"v1": 80, "v2": 20}
    assert outcomes.count(200) == 20
    assert len(await _events(api, action="traffic.update", outcome="success")) == 20
    assert len(await _events(api, action="traffic.update", outcome="rejected")) == outcomes.count(
        412
    )
    assert (await api.get("/v1/audit/verify")).json()["ok"] is True


async def test_idempotency_key_replays_the_first_response(api: httpx.AsyncClient) -> None:
    headers = {"idempotency-key": "create-m-1"}
    body = {"name": "m", "protocol": "http"}
    first = await api.post("/v1/models", json=body, headers=headers)
    again = await api.post("/v1/models", json=body, headers=headers)
    assert (first.status_code, again.status_code) == (201, 201)
    assert again.json() == first.json()
    assert again.headers["idempotent-replayed"] == "true"
    different = await api.post("/v1/models", json={**body, "description": "other"}, headers=headers)
    assert different.status_code == 422
    assert different.json()["error"] == "idempotency_key_reused"
    assert len(await _events(api, action="model.create", outcome="success")) == 1
    assert len(await _events(api, action="model.create", outcome="replayed")) == 1
    key_headers = {"idempotency-key": "key-1"}
    key_body = {"name": "bot", "role": "viewer"}
    made = await api.post("/v1/keys", json=key_body, headers=key_headers)
    replayed = await api.post("/v1/keys", json=key_body, headers=key_headers)
    assert made.json()["key"].startswith("tk_")
    assert replayed.json()["key"] is None  # shown once: the secret is never stored
    assert replayed.json()["id"] == made.json()["id"]


async def test_oversized_bodies_get_413_and_are_audited(
    api: httpx.AsyncClient, control_plane: ControlPlane
) -> None:
    limit = control_plane.settings.max_request_bytes
    big = {"name": "m", "protocol": "http", "description": "x" * (limit + 1)}
    response = await api.post("/v1/models", json=big)
    assert response.status_code == 413
    assert response.json()["error"] == "payload_too_large"

    async def chunks() -> Any:
        for _ in range(3):
            yield b" " * (limit // 2)

    chunked = await api.post(
        "/v1/models", content=chunks(), headers={"content-type": "application/json"}
    )
    assert chunked.status_code == 413
    events = await _events(api)
    assert [(e["outcome"], e["status_code"]) for e in events] == [("rejected", 413)] * 2
    assert (await api.get("/v1/models")).json() == []
