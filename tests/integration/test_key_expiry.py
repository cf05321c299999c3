"""API keys may expire: the expiry is set at creation, listed, and enforced by
authentication, on SQLite and Postgres."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
from sqlalchemy import update

from controlplane.db.models import ApiKey
from controlplane.runtime import ControlPlane
from tests.support import writing


async def test_a_key_with_an_expiry_works_until_then(
    control_plane: ControlPlane, api: httpx.AsyncClient
) -> None:
    created = await api.post("/v1/keys", json={"name": "ci", "role": "viewer", "expires_in": "30d"})
    assert created.status_code == 201, created.text
    body = created.json()
    expires_at = datetime.fromisoformat(body["expires_at"])
    assert timedelta(days=29) < expires_at - datetime.now(UTC) <= timedelta(days=30)
    listed = {k["id"]: k for k in (await api.get("/v1/keys")).json()}
    assert listed[body["id"]]["expires_at"] == body["expires_at"]
    never = (await api.post("/v1/keys", json={"name": "forever", "role": "viewer"})).json()
    assert never["expires_at"] is None

    headers = {"authorization": f"Bearer {body['key']}"}
    assert (await api.get("/v1/models", headers=headers)).status_code == 200
    async with writing(control_plane.sessionmaker) as session:
        await session.execute(
            update(ApiKey)
            .where(ApiKey.id == body["id"])
            .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
    refused = await api.get("/v1/models", headers=headers)
    assert refused.status_code == 401
    assert refused.json()["error"] == "unauthenticated"
    forever = {"authorization": f"Bearer {never['key']}"}
    assert (await api.get("/v1/models", headers=forever)).status_code == 200


async def test_a_bad_lifetime_is_refused_and_creates_nothing(api: httpx.AsyncClient) -> None:
    before = len((await api.get("/v1/keys")).json())
    for bad in ("30", "3x", "0d", "-1d", "99999999d", ""):
        response = await api.post(
            "/v1/keys", json={"name": "ci", "role": "viewer", "expires_in": bad}
        )
        assert response.status_code == 422, (bad, response.text)
        assert response.json()["error"] == "validation_error"
    assert len((await api.get("/v1/keys")).json()) == before
