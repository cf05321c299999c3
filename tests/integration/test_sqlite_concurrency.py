"""SQLite under concurrency: readers never wait for a writer, writers wait their
turn and never see "database is locked", and a lock held too long gets 503."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.engine import make_url
from starlette.types import ASGIApp, Receive, Scope, Send

from controlplane.api.app import create_app
from controlplane.runtime import ControlPlane
from controlplane.settings import Settings
from tests.conftest import seed_key
from tests.support import eventually, latest_revision

WRITERS = 40
READERS = 20

# Every test here runs on SQLite only: Postgres has row locks and no such limit.
pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


class _InFlight:
    """ASGI wrapper that counts the requests the server has received and not answered."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.count: dict[str, int] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        method = scope.get("method", "")
        self.count[method] = self.count.get(method, 0) + 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.count[method] -= 1


@pytest.fixture
def in_flight() -> list[_InFlight]:
    return []


@pytest.fixture
def write_lock_timeout_s() -> float:
    return Settings().write_lock_timeout_s


@pytest.fixture
async def plane(
    settings: Settings, in_flight: list[_InFlight], write_lock_timeout_s: float
) -> AsyncIterator[ControlPlane]:
    """A running control plane whose admin API counts its requests in flight."""

    def app(runtime: ControlPlane) -> ASGIApp:
        in_flight.append(_InFlight(create_app(runtime)))
        return in_flight[-1]

    control_plane = ControlPlane(
        settings.model_copy(update={"write_lock_timeout_s": write_lock_timeout_s})
    )
    await control_plane.start(api=app)
    try:
        yield control_plane
    finally:
        await control_plane.stop()


@pytest.fixture
async def client(plane: ControlPlane) -> AsyncIterator[httpx.AsyncClient]:
    key = await seed_key(plane, "admin")
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{plane.api_port}",
        timeout=60,
        headers={"authorization": f"Bearer {key}"},
        limits=httpx.Limits(max_connections=WRITERS + READERS),
    ) as api:
        yield api


@asynccontextmanager
async def outside_writer(settings: Settings) -> AsyncIterator[None]:
    """Hold SQLite's write lock from another connection, as another process would.

    The lock is taken in a thread: the control plane's own background writers (the
    rollout driver's lease, say) run on this event loop, and one that holds the
    lock must be able to finish while this waits for it."""
    path = make_url(settings.database_url).database
    assert path is not None
    connection = sqlite3.connect(
        Path(path), isolation_level=None, timeout=30, check_same_thread=False
    )
    try:
        await asyncio.to_thread(connection.execute, "BEGIN IMMEDIATE")
        yield
        connection.execute("ROLLBACK")
    finally:
        connection.close()


async def _model(api: httpx.AsyncClient) -> None:
    assert (await api.post("/v1/models", json={"name": "m", "protocol": "http"})).status_code == 201
    for i, version in enumerate(("v1", "v2")):
        body = {"version": version, "endpoints": [{"address": "127.0.0.1", "port": 9001 + i}]}
        assert (await api.post("/v1/models/m/versions", json=body)).status_code == 201


async def _events(api: httpx.AsyncClient) -> list[dict[str, Any]]:
    response = await api.get("/v1/audit/events", params={"limit": 500})
    assert response.status_code == 200, response.text
    return list(response.json()["items"])


async def test_reads_do_not_wait_for_a_writer(
    plane: ControlPlane, client: httpx.AsyncClient, settings: Settings
) -> None:
    await _model(client)
    async with outside_writer(settings):
        for path in ("/v1/models", "/v1/models/m/traffic", "/v1/revisions", "/v1/proxies"):
            response = await client.get(path)
            assert response.status_code == 200, (path, response.text)
        assert await plane.sync.sync_once() is False  # it read the revision: nothing new


async def test_concurrent_conditional_writers_get_2xx_or_412(
    plane: ControlPlane,
    client: httpx.AsyncClient,
    settings: Settings,
    in_flight: list[_InFlight],
) -> None:
    await _model(client)
    # The database's revision: the sync loop may not have loaded the last one yet.
    revision_before = await latest_revision(client)
    events_before = len(await _events(client))

    async def write(weight: int) -> httpx.Response:
        """Read the split's ETag, then change the split if nobody else did meanwhile."""
        current = await client.get("/v1/models/m/traffic")
        assert current.status_code == 200, current.text
        return await client.put(
            "/v1/models/m/traffic",
            json={"weights": {"v1": weight, "v2": 100 - weight}},
            headers={"if-match": current.headers["etag"]},
        )

    async def read() -> httpx.Response:
        return await client.get("/v1/models/m/traffic")

    weights = list(range(1, WRITERS + 1))
    # Another writer holds the lock until every change has reached the server and
    # waits for it, so that all forty queue up at once.
    async with outside_writer(settings):
        writes = [asyncio.create_task(write(w)) for w in weights]
        reads = await asyncio.gather(*(read() for _ in range(READERS)))
        assert all(r.status_code == 200 for r in reads), [r.text for r in reads if r.is_error]

        async def all_waiting() -> bool:
            return in_flight[0].count.get("PUT", 0) == WRITERS

        await eventually(all_waiting, timeout=30)
    responses = await asyncio.gather(*writes)

    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 412}, [(r.status_code, r.text) for r in responses]
    # All forty read the same ETag before any of them wrote: exactly one wins.
    assert statuses.count(200) == 1, statuses
    assert all(r.json()["error"] == "precondition_failed" for r in responses if r.is_error)
    (winner,) = [(r, w) for r, w in zip(responses, weights, strict=True) if r.is_success]
    assert revision_before is not None
    assert int(winner[0].headers["x-turnout-revision"]) == revision_before + 1
    final = await client.get("/v1/models/m/traffic")
    assert final.json()["weights"] == {"v1": winner[1], "v2": 100 - winner[1]}
    revisions = (await client.get("/v1/revisions")).json()
    assert max(r["revision"] for r in revisions["items"]) == revision_before + 1

    # One audit event per request, and the chain is intact.
    assert len(await _events(client)) == events_before + WRITERS
    verified = await client.get("/v1/audit/verify")
    assert verified.json()["ok"] is True, verified.text


@pytest.mark.parametrize("write_lock_timeout_s", [0.5])
async def test_a_write_that_cannot_have_the_lock_gets_503(
    plane: ControlPlane, client: httpx.AsyncClient, settings: Settings
) -> None:
    await _model(client)
    before = (await client.get("/v1/models/m/traffic")).json()
    events_before = len(await _events(client))
    async with outside_writer(settings):
        response = await client.put("/v1/models/m/traffic", json={"weights": {"v2": 100}})
    assert response.status_code == 503, response.text
    assert response.json()["error"] == "database_unavailable"
    assert int(response.headers["retry-after"]) >= 1
    assert (await client.get("/v1/models/m/traffic")).json() == before
    assert len(await _events(client)) == events_before
    # The lock is free again: the same request goes through.
    retried = await client.put("/v1/models/m/traffic", json={"weights": {"v2": 100}})
    assert retried.status_code == 200, retried.text
