"""The tenants API over real HTTP, on SQLite and on Postgres: shapes, errors, roles,
audit events, revisions, and what reaches the desired state."""

from __future__ import annotations

import httpx
import jwt

from controlplane.db.state import load_state
from controlplane.domain.credentials import ALGORITHM, AUDIENCE, ISSUER
from controlplane.domain.documents import decode_state, encode_state
from controlplane.runtime import ControlPlane
from tests.conftest import seed_key
from tests.support import config_state

RATE = {"requests_per_second": 5, "burst": 10}


async def _model(api: httpx.AsyncClient, name: str) -> None:
    response = await api.post("/v1/models", json={"name": name, "protocol": "http"})
    assert response.status_code == 201, response.text


async def test_tenant_lifecycle(api: httpx.AsyncClient, control_plane: ControlPlane) -> None:
    await _model(api, "m1")
    await _model(api, "m2")
    created = await api.post(
        "/v1/tenants", json={"name": "acme", "models": ["m1"], "rate_limit": RATE}
    )
    assert created.status_code == 201, created.text
    assert created.json()["models"] == ["m1"]
    assert created.json()["rate_limit"] == RATE
    assert [t["name"] for t in (await api.get("/v1/tenants")).json()] == ["acme"]

    patched = await api.patch(
        "/v1/tenants/acme",
        json={"models": ["m2", "m1"], "rate_limit": {"requests_per_second": 1, "burst": 2}},
    )
    assert patched.status_code == 200, patched.text
    assert patched.json()["models"] == ["m1", "m2"]
    assert (await api.get("/v1/tenants/acme")).json()["rate_limit"]["burst"] == 2

    async with control_plane.sessionmaker() as session:
        state = await load_state(session)
    assert [t.name for t in state.tenants] == ["acme"]
    assert state.protected_models() == {"m1", "m2"}
    assert state.jwks is not None and '"d"' not in state.jwks  # public key only
    assert decode_state(encode_state(state)) == state

    assert (await api.delete("/v1/tenants/acme")).status_code == 204
    missing = await api.get("/v1/tenants/acme")
    assert missing.status_code == 404
    assert missing.json()["error"] == "not_found"


async def test_credentials_issue_list_revoke(
    api: httpx.AsyncClient, control_plane: ControlPlane
) -> None:
    await _model(api, "m1")
    assert (
        await api.post("/v1/tenants", json={"name": "acme", "models": ["m1"], "rate_limit": RATE})
    ).status_code == 201
    issued = await api.post("/v1/tenants/acme/credentials")
    assert issued.status_code == 201, issued.text
    body = issued.json()
    token = body["token"]
    header = jwt.get_unverified_header(token)
    assert header["alg"] == ALGORITHM
    async with control_plane.sessionmaker() as session:
        state = await load_state(session)
    assert state.jwks is not None
    key = jwt.PyJWKSet.from_json(state.jwks)[header["kid"]]
    claims = jwt.decode(token, key.key, algorithms=[ALGORITHM], audience=AUDIENCE, issuer=ISSUER)
    assert claims["jti"] == body["jti"]
    assert claims["sub"] == state.tenants[0].subject
    assert claims["tenant"] == "acme"

    listed = (await api.get("/v1/tenants/acme/credentials")).json()
    assert [c["id"] for c in listed] == [body["id"]]
    assert "token" not in listed[0]
    assert token not in (await api.get("/v1/audit/events", params={"limit": 500})).text

    path = f"/v1/tenants/acme/credentials/{body['id']}"
    assert (await api.delete(path)).status_code == 204
    again = await api.delete(path)
    assert again.status_code == 404
    assert again.json()["error"] == "not_found"
    async with control_plane.sessionmaker() as session:
        state = await load_state(session)
    assert state.tenants[0].revoked == (body["jti"],)


async def test_errors_change_nothing(api: httpx.AsyncClient, control_plane: ControlPlane) -> None:
    await _model(api, "m1")
    assert (
        await api.post("/v1/tenants", json={"name": "acme", "rate_limit": RATE})
    ).status_code == 201
    before = await config_state(api, control_plane)
    duplicate = await api.post("/v1/tenants", json={"name": "acme", "rate_limit": RATE})
    assert duplicate.status_code == 409
    assert duplicate.json()["error"] == "conflict"
    unknown = await api.post(
        "/v1/tenants", json={"name": "b", "models": ["nope"], "rate_limit": RATE}
    )
    assert unknown.status_code == 422
    assert unknown.json()["error"] == "invalid_input"
    assert unknown.json()["detail"]["unknown_models"] == ["nope"]
    bad_rate = await api.post(
        "/v1/tenants", json={"name": "c", "rate_limit": {"requests_per_second": 0, "burst": 1}}
    )
    assert bad_rate.status_code == 422
    assert bad_rate.json()["error"] == "validation_error"
    assert (await api.patch("/v1/tenants/nope", json={"models": []})).status_code == 404
    assert (await api.post("/v1/tenants/nope/credentials")).status_code == 404
    assert (await api.delete("/v1/tenants/acme/credentials/99")).status_code == 404
    assert await config_state(api, control_plane) == before


async def test_roles_and_audit(
    api: httpx.AsyncClient, anonymous_api: httpx.AsyncClient, control_plane: ControlPlane
) -> None:
    viewer = await seed_key(control_plane, "viewer")
    operator = await seed_key(control_plane, "operator")
    assert (await anonymous_api.get("/v1/tenants")).status_code == 401
    as_viewer = {"authorization": f"Bearer {viewer}"}
    assert (await anonymous_api.get("/v1/tenants", headers=as_viewer)).status_code == 200
    denied = await anonymous_api.post(
        "/v1/tenants", json={"name": "acme", "rate_limit": RATE}, headers=as_viewer
    )
    assert denied.status_code == 403
    as_operator = {"authorization": f"Bearer {operator}"}
    created = await anonymous_api.post(
        "/v1/tenants", json={"name": "acme", "rate_limit": RATE}, headers=as_operator
    )
    assert created.status_code == 201
    issued = await anonymous_api.post("/v1/tenants/acme/credentials", headers=as_operator)
    assert issued.status_code == 201
    events = (await api.get("/v1/audit/events", params={"limit": 10})).json()["items"]
    actions = [(e["action"], e["resource_id"], e["outcome"]) for e in events[:3]]
    assert actions == [
        ("tenant.credential.create", f"acme/{issued.json()['id']}", "success"),
        ("tenant.create", "acme", "success"),
        ("tenant.create", "acme", "denied"),
    ]
    assert events[0]["revision"] is not None
