"""Canary rollouts through the admin API and the driver, on SQLite and Postgres.

The control plane's own driver is slowed to a crawl here (its first tick runs
at start, then it waits an hour) and hands its lease back, so each test
drives rollouts itself, tick by tick, with drivers it owns. Traffic figures
are written as a replica would publish them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest

from controlplane.api.app import create_app
from controlplane.db.leases import LeaseRepository
from controlplane.db.models import RolloutFigure
from controlplane.db.rollout_repository import DRIVER_LEASE, RolloutRepository
from controlplane.domain.audit import ActionContext
from controlplane.domain.clock import utcnow
from controlplane.domain.statistics import LATENCY_BUCKETS_MS
from controlplane.runtime import ControlPlane
from controlplane.services.rollout_driver import RolloutDriver
from controlplane.services.rollouts import RolloutService
from controlplane.settings import Settings
from tests.conftest import api_client, plane_settings, seed_key
from tests.support import writing

LATENCY_BUCKETS = len(LATENCY_BUCKETS_MS) + 1  # the last one is +Inf


@pytest.fixture
def settings(database_url: str) -> Settings:
    return plane_settings(
        database_url,
        rollout_interval_s=3600,
        rollout_lease_s=0.5,
    )


@pytest.fixture
async def quiet(control_plane: ControlPlane) -> ControlPlane:
    """The control plane with its own driver stopped and its lease handed back, so
    that the drivers a test makes are the only ones."""
    task = control_plane._tasks.rollouts
    if task is not None:
        # Its first tick may be taking the lease right now: end it before the release.
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    await control_plane.rollouts.stop()
    # A tick cancelled after its commit holds the lease without knowing it: hand
    # the lease back whatever the driver believes.
    async with writing(control_plane.sessionmaker) as session:
        await LeaseRepository(session).release(
            DRIVER_LEASE, control_plane.rollouts.replica, utcnow()
        )
    return control_plane


def _driver(
    plane: ControlPlane, name: str, clock: Callable[[], datetime] = utcnow
) -> RolloutDriver:
    return RolloutDriver(
        plane.sessionmaker, plane.traffic, replica=name, lease_s=30.0, interval_s=0.1, clock=clock
    )


async def _model(api: httpx.AsyncClient, name: str = "m") -> None:
    assert (
        await api.post("/v1/models", json={"name": name, "protocol": "http"})
    ).status_code == 201
    for i, version in enumerate(("v1", "v2", "v3")):
        body = {"version": version, "endpoints": [{"address": "127.0.0.1", "port": 9001 + i}]}
        assert (await api.post(f"/v1/models/{name}/versions", json=body)).status_code == 201


SPEC: dict[str, Any] = {
    "candidate": "v2",
    "steps": [{"weight": 10, "hold_s": 0}, {"weight": 50, "hold_s": 0}, {"weight": 100}],
    "gates": [{"metric": "error_rate", "max": 0.05}, {"metric": "p99_ms", "max": 500}],
    "min_requests": 20,
}


async def _start(api: httpx.AsyncClient, spec: dict[str, Any] = SPEC) -> dict[str, Any]:
    started = await api.post("/v1/models/m/rollouts", json=spec)
    assert started.status_code == 201, started.text
    body: dict[str, Any] = started.json()
    return body


async def _publish(
    plane: ControlPlane, version: str, requests: int, errors: int = 0, *, ago_s: float = 0
) -> None:
    """Write a replica's running totals of ``version`` as the publisher would."""
    latency = [0] * LATENCY_BUCKETS
    latency[3] = requests  # 5..10 ms
    async with writing(plane.sessionmaker) as session:
        await RolloutRepository(session).add_figures(
            [
                RolloutFigure(
                    replica="elsewhere",
                    model="m",
                    version=version,
                    at=utcnow() - timedelta(seconds=ago_s),
                    requests=requests,
                    errors=errors,
                    latency=latency,
                )
            ]
        )


async def _traffic(api: httpx.AsyncClient) -> dict[str, int]:
    weights: dict[str, int] = (await api.get("/v1/models/m/traffic")).json()["weights"]
    return weights


async def _rollout_audit(api: httpx.AsyncClient, rollout_id: int) -> list[dict[str, Any]]:
    page = await api.get(
        "/v1/audit/events", params={"actor": f"rollout:{rollout_id}", "limit": 100}
    )
    items: list[dict[str, Any]] = page.json()["items"]
    return items[::-1]


async def test_invalid_rollouts_get_422_with_codes_and_change_nothing(
    api: httpx.AsyncClient, quiet: ControlPlane
) -> None:
    await _model(api)
    for spec, code in [
        ({**SPEC, "candidate": "v9"}, "unknown_version"),
        (
            {**SPEC, "steps": [{"weight": 50}, {"weight": 10}, {"weight": 100}]},
            "weights_not_increasing",
        ),
        ({**SPEC, "gates": [{"metric": "latency", "max": 1}]}, "unknown_metric"),
        ({**SPEC, "candidate": "v1"}, "candidate_is_baseline"),
    ]:
        refused = await api.post("/v1/models/m/rollouts", json=spec)
        assert refused.status_code == 422, refused.text
        assert refused.json()["error"] == "invalid_input"
        assert code in [e["code"] for e in refused.json()["detail"]["errors"]]
    assert (await api.get("/v1/models/m/rollouts")).json() == []
    rejected = await api.get(
        "/v1/audit/events", params={"action": "rollout.start", "outcome": "rejected"}
    )
    assert len(rejected.json()["items"]) == 4
    assert (await api.post("/v1/models/nope/rollouts", json=SPEC)).status_code == 404


async def test_one_active_rollout_and_manual_traffic_409_until_paused(
    api: httpx.AsyncClient, quiet: ControlPlane
) -> None:
    await _model(api)
    rollout = await _start(api)
    assert rollout["state"] == "progressing" and rollout["baseline"] == "v1"
    assert [e["kind"] for e in rollout["timeline"]] == ["started"]

    again = await api.post("/v1/models/m/rollouts", json=SPEC)
    assert again.status_code == 409 and again.json()["error"] == "rollout_active"
    manual = await api.put("/v1/models/m/traffic", json={"weights": {"v1": 50, "v2": 50}})
    assert manual.status_code == 409
    assert manual.json()["error"] == "rollout_active"
    assert manual.json()["detail"]["rollout"] == rollout["id"]
    # Nor may the weights move any other way: a manifest apply, a revision rollback.
    manifest = (await api.get("/v1/manifest")).json()
    manifest["models"][0]["traffic"] = {"v1": 50, "v2": 50, "v3": 0}
    applied = await api.post("/v1/manifest", json=manifest | {"revision": None})
    assert applied.status_code == 409 and applied.json()["error"] == "rollout_active"
    pruned = await api.post("/v1/manifest", json={"models": [], "prune": True})
    assert pruned.status_code == 409 and pruned.json()["error"] == "rollout_active"
    first = (await api.get("/v1/revisions")).json()["items"][-1]["revision"]
    rolled_back = await api.post(f"/v1/revisions/{first}/rollback")
    assert rolled_back.status_code == 409 and rolled_back.json()["error"] == "rollout_active"
    assert await _traffic(api) == {"v1": 100, "v2": 0, "v3": 0}

    url = f"/v1/models/m/rollouts/{rollout['id']}"
    paused = await api.post(f"{url}/pause")
    assert paused.status_code == 200 and paused.json()["state"] == "paused"
    assert (await api.post(f"{url}/pause")).status_code == 409  # already paused
    moved = await api.put("/v1/models/m/traffic", json={"weights": {"v1": 90, "v2": 10}})
    assert moved.status_code == 200
    resumed = await api.post(f"{url}/resume")
    assert resumed.json()["state"] == "progressing"
    aborted = await api.post(f"{url}/abort")
    assert aborted.json()["state"] == "aborted"
    assert await _traffic(api) == {"v1": 100, "v2": 0, "v3": 0}
    assert (await api.post(f"{url}/resume")).status_code == 409  # ended
    assert (await api.put("/v1/models/m/traffic", json={"weights": {"v1": 100}})).status_code == 200
    shown = (await api.get(url)).json()
    assert [e["kind"] for e in shown["timeline"]] == ["started", "paused", "resumed", "aborted"]
    actions = [
        e["action"]
        for e in (
            await api.get(
                "/v1/audit/events", params={"resource_type": "rollout", "outcome": "success"}
            )
        ).json()["items"]
    ]
    assert actions[::-1] == ["rollout.start", "rollout.pause", "rollout.resume"]
    abort_events = (await api.get("/v1/audit/events", params={"action": "rollout.abort"})).json()
    (abort_event,) = abort_events["items"]
    assert abort_event["actor"] == "test-admin"
    assert abort_event["after"]["weights"] == {"v1": 100, "v2": 0, "v3": 0}
    # A second rollout may start once the first ended.
    assert (await api.post("/v1/models/m/rollouts", json=SPEC)).status_code == 201


async def test_a_rollout_is_refused_while_a_third_version_has_traffic(
    api: httpx.AsyncClient, quiet: ControlPlane
) -> None:
    await _model(api)
    await api.put("/v1/models/m/traffic", json={"weights": {"v1": 90, "v3": 10}})
    refused = await api.post("/v1/models/m/rollouts", json=SPEC)
    assert refused.status_code == 422
    assert refused.json()["detail"]["errors"][0]["code"] == "other_versions_have_traffic"


async def test_viewers_read_but_cannot_start(api: httpx.AsyncClient, quiet: ControlPlane) -> None:
    await _model(api)
    viewer = await seed_key(quiet, "viewer")
    headers = {"authorization": f"Bearer {viewer}"}
    assert (await api.post("/v1/models/m/rollouts", json=SPEC, headers=headers)).status_code == 403
    assert (await api.get("/v1/models/m/rollouts", headers=headers)).status_code == 200


async def test_the_driver_steps_through_and_promotes_as_the_rollout(
    api: httpx.AsyncClient, quiet: ControlPlane
) -> None:
    await _model(api)
    rollout = await _start(api)
    driver = _driver(quiet, "a")
    await _publish(quiet, "v2", 0, ago_s=30)
    await _publish(quiet, "v1", 0, ago_s=30)
    assert await driver.tick() == 1  # the first step's weights
    assert await _traffic(api) == {"v1": 90, "v2": 10, "v3": 0}
    assert await driver.tick() == 0  # no traffic yet: gates pending
    shown = (await api.get(f"/v1/models/m/rollouts/{rollout['id']}")).json()
    assert {g["verdict"] for g in shown["gates"]} == {"pending"}
    await _publish(quiet, "v2", 25)
    await _publish(quiet, "v1", 200)
    assert await driver.tick() == 1
    assert await _traffic(api) == {"v1": 50, "v2": 50, "v3": 0}
    await _publish(quiet, "v2", 60, errors=1)
    assert await driver.tick() == 1
    assert await _traffic(api) == {"v1": 0, "v2": 100, "v3": 0}
    shown = (await api.get(f"/v1/models/m/rollouts/{rollout['id']}")).json()
    assert shown["state"] == "promoted" and shown["weight"] == 100
    assert [e["kind"] for e in shown["timeline"]] == ["started", "step", "step", "step", "promoted"]
    assert {g["verdict"] for g in shown["gates"]} == {"pass"}
    audit = await _rollout_audit(api, rollout["id"])
    assert [e["after"]["weights"]["v2"] for e in audit] == [10, 50, 100]
    assert {e["action"] for e in audit} == {"traffic.update"}
    assert len({e["revision"] for e in audit}) == 3


async def test_a_failing_gate_rolls_back_at_once_with_the_reason(
    api: httpx.AsyncClient, quiet: ControlPlane
) -> None:
    await _model(api)
    rollout = await _start(api, {**SPEC, "steps": [{"weight": 10, "hold_s": 600}, {"weight": 100}]})
    driver = _driver(quiet, "a")
    await _publish(quiet, "v2", 0, ago_s=30)
    await driver.tick()
    await _publish(quiet, "v2", 19, errors=19)  # below min_requests: pending
    assert await driver.tick() == 0
    await _publish(quiet, "v2", 40, errors=20)
    assert await driver.tick() == 1  # long before the hold time is over
    assert await _traffic(api) == {"v1": 100, "v2": 0, "v3": 0}
    shown = (await api.get(f"/v1/models/m/rollouts/{rollout['id']}")).json()
    assert shown["state"] == "rolled_back"
    assert "error_rate<=0.05" in shown["reason"]
    assert [e["kind"] for e in shown["timeline"]][-2:] == ["gate_failed", "rolled_back"]
    failed = [g for g in shown["gates"] if g["verdict"] == "fail"]
    assert failed[0]["value"] == 0.5 and failed[0]["samples"] == 40
    audit = await _rollout_audit(api, rollout["id"])
    assert [e["after"]["weights"]["v2"] for e in audit] == [10, 0]


async def test_one_lease_holder_drives(api: httpx.AsyncClient, quiet: ControlPlane) -> None:
    await _model(api)
    rollout = await _start(api)
    # Both replicas read one clock that the test moves on: the lease's expiry is
    # decided by the clock, never by how long a loaded machine takes between calls.
    ahead = timedelta()

    def clock() -> datetime:
        return utcnow() + ahead

    a, b = _driver(quiet, "a", clock=clock), _driver(quiet, "b", clock=clock)
    await _publish(quiet, "v2", 0, ago_s=30)
    await _publish(quiet, "v1", 0, ago_s=30)
    assert await a.take_lease()
    assert not await b.take_lease()
    moved = await asyncio.gather(a.tick(), b.tick())
    assert moved == [1, 0]
    for total in (30, 60):
        await _publish(quiet, "v2", total)
        await _publish(quiet, "v1", total * 4)
        assert await asyncio.gather(a.tick(), b.tick()) == [1, 0]
    # a stops renewing: b takes over once the lease expired, never before.
    ahead = timedelta(seconds=a.lease_s / 2)
    assert not await b.take_lease()
    ahead = timedelta(seconds=a.lease_s + 1)
    assert await b.take_lease()
    assert not await a.take_lease()
    audit = await _rollout_audit(api, rollout["id"])
    assert [e["after"]["weights"]["v2"] for e in audit] == [10, 50, 100]


async def test_a_stale_move_does_not_repeat_or_skip_a_step(
    api: httpx.AsyncClient, quiet: ControlPlane
) -> None:
    await _model(api)
    rollout = await _start(api)
    await _driver(quiet, "a").tick()

    async def advance() -> bool:
        async with writing(quiet.sessionmaker) as session:
            row = await RolloutRepository(session).get(rollout["id"])
            assert row is not None
            rows.append(row)
            service = RolloutService(session, ActionContext(actor=f"rollout:{rollout['id']}"))
            return await service.advance(rows[0], [], utcnow())

    rows: list[Any] = []
    assert await advance()
    assert not await advance()  # the same (state, step) read before: no second move
    shown = (await api.get(f"/v1/models/m/rollouts/{rollout['id']}")).json()
    assert shown["step"] == 1
    assert [e["after"]["weights"]["v2"] for e in await _rollout_audit(api, rollout["id"])] == [
        10,
        50,
    ]


async def test_events_stream_resumes_from_last_event_id(
    api: httpx.AsyncClient, quiet: ControlPlane
) -> None:
    await _model(api)
    rollout = await _start(api)
    url = f"/v1/models/m/rollouts/{rollout['id']}"
    await api.post(f"{url}/pause")
    await api.post(f"{url}/abort")

    async def read(headers: dict[str, str], count: int) -> list[tuple[str, str]]:
        seen: list[tuple[str, str]] = []
        event_id = ""
        async with api.stream("GET", "/v1/events", headers=headers) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            async for line in _lines(response):
                if line.startswith("id: "):
                    event_id = line[4:]
                elif line.startswith("event: "):
                    seen.append((event_id, line[7:]))
                    if len(seen) == count:
                        break
        return seen

    everything = await asyncio.wait_for(read({"last-event-id": "0"}, 3), 10)
    assert [kind for _, kind in everything] == [
        "rollout.started",
        "rollout.paused",
        "rollout.aborted",
    ]
    rest = await asyncio.wait_for(read({"last-event-id": everything[0][0]}, 2), 10)
    assert rest == everything[1:]
    bad = await api.get("/v1/events", headers={"last-event-id": "x"})
    assert bad.status_code == 422


async def _lines(response: httpx.Response) -> AsyncIterator[str]:
    async for line in response.aiter_lines():
        yield line


async def test_an_open_events_stream_does_not_hold_the_control_plane_stopping(
    settings: Settings,
) -> None:
    # A console watching /v1/events while its control plane stops: the stream
    # ends with the server, it does not keep stop() waiting for the reader to
    # leave. The grace for requests that do not end is set far beyond the wait.
    plane = ControlPlane(
        settings.model_copy(update={"api_port": 0, "xds_port": 0, "api_shutdown_grace_s": 3600})
    )
    await plane.start(api=create_app)
    key = await seed_key(plane, "viewer")
    try:
        async with api_client(plane, key) as api, api.stream("GET", "/v1/events") as response:
            assert response.status_code == 200
            lines = _lines(response)
            assert await asyncio.wait_for(anext(lines), 10) == ": turnout rollout events"
            await asyncio.wait_for(plane.stop(), 30)
            rest = [line async for line in lines]
        assert all(line == "" or line.startswith(":") for line in rest)
    finally:
        await plane.stop()
