"""GET /v1/models/{model}/shadow: bad windows, unknown models, models without a
shadow policy; the summary of what the table holds; pairing across replicas
through the database (SQLite and Postgres)."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from typing import Any

import httpx
from sqlalchemy import select

from controlplane.db.models import ShadowComparison, ShadowHalf
from controlplane.domain.clock import utcnow
from controlplane.domain.policy import ModelPolicy, Shadow
from controlplane.domain.shadow import Half
from controlplane.domain.state import DesiredState, ModelSpec, VersionSpec
from controlplane.runtime import ControlPlane
from controlplane.services.shadow import ShadowRecorder, shadow_agreement
from controlplane.telemetry.shadow import ShadowPairs
from tests.conftest import seed_key
from tests.support import eventually, writing


async def test_the_endpoint_refuses_bad_windows_and_unknown_models(
    api: httpx.AsyncClient, control_plane: ControlPlane
) -> None:
    for window in ("soon", "0s", "-5", f"{control_plane.settings.shadow_retention_s + 1:g}s"):
        response = await api.get("/v1/models/none/shadow", params={"window": window})
        assert response.status_code == 422, (window, response.text)
        assert response.json()["error"] == "invalid_input"
    response = await api.get("/v1/models/none/shadow")
    assert response.status_code == 404
    assert response.json()["error"] == "not_found"
    await api.post("/v1/models", json={"name": "plain", "protocol": "http"})

    async def known() -> httpx.Response | None:
        # The answer reads the replica's state, which follows the commit.
        response = await api.get("/v1/models/plain/shadow")
        return response if response.status_code == 200 else None

    body = (await eventually(known)).json()
    assert body["shadow"] is None and body["compared"] == 0
    assert "no shadow policy" in body["note"]


def _row(
    request_id: str, *, ago_s: float, status: int = 200, body: bool | None = True
) -> ShadowComparison:
    return ShadowComparison(
        at=utcnow() - timedelta(seconds=ago_s),
        model="m",
        primary_version="v1",
        shadow_version="v2",
        request_id=request_id,
        primary_status=200,
        shadow_status=status,
        primary_ms=10.0,
        shadow_ms=10.0 + ago_s,
        status_agree=status == 200,
        body_agree=body,
        max_abs_diff=0.25 if body is not None else None,
        cosine=0.5 if body is False else (1.0 if body else None),
        diff=None if body and status == 200 else "$.outputs[0].data[1] differs",
        primary_body=None,
        shadow_body=None,
    )


async def test_the_summary_covers_the_window_only(
    api: httpx.AsyncClient, control_plane: ControlPlane
) -> None:
    await api.post("/v1/models", json={"name": "m", "protocol": "http"})
    for version in ("v1", "v2"):
        body = {"version": version, "endpoints": [{"address": "127.0.0.1", "port": 9}]}
        assert (await api.post("/v1/models/m/versions", json=body)).status_code == 201
    policy = {"shadow": {"version": "v2", "percent": 5}}
    assert (await api.put("/v1/models/m/policy", json=policy)).status_code == 200
    rows = [
        _row("a", ago_s=1),
        _row("b", ago_s=2, body=False),
        _row("c", ago_s=3, status=503, body=False),
        _row("d", ago_s=4, body=None),
        _row("old", ago_s=500, status=503),  # outside a 300 s window
    ]
    rows[1].primary_body, rows[1].shadow_body = b'{"a": 1}', b'{"a": 2}'  # kept bodies
    async with writing(control_plane.sessionmaker) as session:
        session.add_all(rows)

    async def with_policy() -> dict[str, Any] | None:
        # The answer reads the replica's state, which follows the commit.
        response = await api.get("/v1/models/m/shadow", params={"window": "5m"})
        body: dict[str, Any] = response.json()
        return body if response.status_code == 200 and body["shadow"] is not None else None

    body = await eventually(with_policy)
    assert body["shadow"]["compare_percent"] == 10.0  # the default
    assert body["shadow"]["keep_bodies"] is False
    assert body["compared"] == 4
    assert body["agreement_rate"] == 0.5  # a and d (its body was not compared)
    assert body["status_agreement_rate"] == 0.75
    assert body["body_compared"] == 3
    assert body["body_agreement_rate"] == round(1 / 3, 4)
    assert body["latency_diff_ms"] == {"p50": 2.0, "p99": 4.0}
    assert body["numeric_compared"] == 3
    assert body["max_abs_diff"] == 0.25
    assert body["min_cosine"] == 0.5
    assert body["mean_cosine"] == round(2 / 3, 6)
    listed = [
        (d["request_id"], d["primary_status"], d["shadow_status"]) for d in body["disagreements"]
    ]
    assert listed == [("c", 200, 503), ("b", 200, 200)]
    bodies = [(d["primary_body"], d["shadow_body"]) for d in body["disagreements"]]
    assert bodies == [(None, None), ('{"a": 1}', '{"a": 2}')]

    async with control_plane.sessionmaker() as session:
        assert await shadow_agreement(session, "m", "v2", 300) == (0.5, 4)
        assert await shadow_agreement(session, "m", "v2", 1000) == (0.4, 5)
        assert await shadow_agreement(session, "m", "v3", 300) is None
        assert await shadow_agreement(session, "other", "v2", 300) is None


async def test_pruning_keeps_the_newest_within_retention(control_plane: ControlPlane) -> None:
    recorder = control_plane.shadow
    recorder.max_comparisons = 3
    async with writing(control_plane.sessionmaker) as session:
        session.add_all(
            [_row(f"r{i}", ago_s=10 - i) for i in range(6)]
            + [_row("expired", ago_s=recorder.retention_s + 60)]
        )
    assert await recorder.flush() == 0
    async with control_plane.sessionmaker() as session:
        rows = (await session.scalars(select(ShadowComparison.request_id))).all()
    assert sorted(rows) == ["r3", "r4", "r5"]


def _replica(control_plane: ControlPlane) -> ShadowRecorder:
    """A recorder with memory of its own on the shared database: one replica."""
    policy = ModelPolicy(shadow=Shadow(version="v2", percent=5))
    state = DesiredState(
        revision=1,
        models=(
            ModelSpec(
                "m", "http", (VersionSpec("v1", ()), VersionSpec("v2", ())), (("v1", 100),), policy
            ),
        ),
    )
    return ShadowRecorder(
        control_plane.sessionmaker,
        lambda: state,
        retention_s=3600,
        max_comparisons=1000,
        pairs=ShadowPairs(max_pending=100, expiry_s=60, clock=time.monotonic),
        handoff_s=0,
    )


def _half(side: str, request_id: str) -> Half:
    return Half(
        request_id=request_id,
        model="m",
        side="primary" if side == "primary" else "shadow",
        version="v1" if side == "primary" else "v2",
        status=200,
        duration_ms=5.0,
        body=b'{"outputs": [{"data": [1, 2]}]}',
    )


async def _table(control_plane: ControlPlane, kind: type[Any]) -> list[Any]:
    async with control_plane.sessionmaker() as session:
        return list((await session.scalars(select(kind))).all())


async def test_halves_that_reach_different_replicas_pair_once(
    control_plane: ControlPlane,
) -> None:
    a, b = _replica(control_plane), _replica(control_plane)
    assert a.pairs is not None and b.pairs is not None
    assert a.pairs.add(_half("primary", "r1")) is None
    assert b.pairs.add(_half("shadow", "r1")) is None
    assert await a.flush() == 0  # its half waits in the database
    (waiting,) = await _table(control_plane, ShadowHalf)
    # The policy keeps no bodies: the half waits with its body's digest only.
    assert waiting.body is None and waiting.digest is not None
    assert await b.flush() == 1  # the other replica pairs it
    assert await a.flush() == 0 and await b.flush() == 0
    (row,) = await _table(control_plane, ShadowComparison)
    assert (row.request_id, row.status_agree, row.body_agree) == ("r1", True, True)
    assert await _table(control_plane, ShadowHalf) == []

    # Both replicas flush at once with both halves of r2 waiting: one pairs them.
    a.pairs.add(_half("primary", "r2"))
    b.pairs.add(_half("shadow", "r2"))
    written = await asyncio.gather(a.flush(), b.flush())
    written += await asyncio.gather(a.flush(), b.flush())
    assert sum(written) == 1
    rows = await _table(control_plane, ShadowComparison)
    assert sorted(r.request_id for r in rows) == ["r1", "r2"]


async def test_a_half_that_waits_too_long_is_dropped(control_plane: ControlPlane) -> None:
    replica = _replica(control_plane)
    async with writing(control_plane.sessionmaker) as session:
        session.add(
            ShadowHalf(
                at=utcnow() - timedelta(seconds=61),
                model="m",
                request_id="late",
                side="primary",
                version="v1",
                status=200,
                duration_ms=1.0,
                body=None,
            )
        )
    assert await replica.flush() == 0
    assert await _table(control_plane, ShadowHalf) == []


async def test_a_viewer_may_read_and_no_key_may_not(
    control_plane: ControlPlane, anonymous_api: httpx.AsyncClient
) -> None:
    viewer = await seed_key(control_plane, "viewer")
    response = await anonymous_api.get(
        "/v1/models/none/shadow", headers={"authorization": f"Bearer {viewer}"}
    )
    assert response.status_code == 404  # past the role check: the model is unknown
    response = await anonymous_api.get("/v1/models/none/shadow")
    assert response.status_code == 401
    assert response.json()["error"] == "unauthenticated"
