"""GET /v1/models/{model}/shadow: bad windows, unknown models, models without a
shadow policy; the summary of what the table holds (SQLite and Postgres)."""

from __future__ import annotations

from datetime import timedelta

import httpx
from sqlalchemy import select

from controlplane.db.models import ShadowComparison
from controlplane.domain.clock import utcnow
from controlplane.runtime import ControlPlane
from controlplane.services.shadow import shadow_agreement


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
    response = await api.get("/v1/models/plain/shadow")
    assert response.status_code == 200
    body = response.json()
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
    async with control_plane.sessionmaker() as session, session.begin():
        session.add_all(rows)

    response = await api.get("/v1/models/m/shadow", params={"window": "5m"})
    assert response.status_code == 200, response.text
    body = response.json()
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

    async with control_plane.sessionmaker() as session:
        assert await shadow_agreement(session, "m", "v2", 300) == (0.5, 4)
        assert await shadow_agreement(session, "m", "v2", 1000) == (0.4, 5)
        assert await shadow_agreement(session, "m", "v3", 300) is None
        assert await shadow_agreement(session, "other", "v2", 300) is None


async def test_pruning_keeps_the_newest_within_retention(control_plane: ControlPlane) -> None:
    recorder = control_plane.shadow
    recorder.max_comparisons = 3
    async with control_plane.sessionmaker() as session, session.begin():
        session.add_all(
            [_row(f"r{i}", ago_s=10 - i) for i in range(6)]
            + [_row("expired", ago_s=recorder.retention_s + 60)]
        )
    assert await recorder.flush() == 0
    async with control_plane.sessionmaker() as session:
        rows = (await session.scalars(select(ShadowComparison.request_id))).all()
    assert sorted(rows) == ["r3", "r4", "r5"]
