"""Database trouble: a database that refuses, hangs, stops or restarts.

Every database error or timeout is ``503 database_unavailable`` with
``Retry-After`` within the configured timeouts; ``/readyz`` answers within its
own second; the proxies' routes keep answering for a key verified within the
last minute; and after a Postgres restart the replicas wake each other again
without waiting for the poll interval. Postgres here is a throwaway server of
this module's own (stopped and restarted at will), reached directly or through
a TCP proxy the test controls.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import sqlite3
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from controlplane.api.app import create_app
from controlplane.db.migrate import upgrade
from controlplane.runtime import ControlPlane
from controlplane.settings import Settings
from tests.conftest import free_port, in_thread, seed_key
from tests.faults import TcpProxy, ThrowawayPostgres
from tests.support import eventually

pytestmark = pytest.mark.postgres

TEMPLATE = "turnout_template"
StartPlane = Callable[..., Awaitable[ControlPlane]]


async def _admin(server: ThrowawayPostgres, statement: str) -> None:
    connection = await asyncpg.connect(
        host="127.0.0.1", port=server.port, user="postgres", database="postgres"
    )
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


@pytest.fixture(scope="module")
def throwaway_postgres() -> Iterator[ThrowawayPostgres]:
    """A Postgres of this module's own, with a migrated template database."""
    reason = ThrowawayPostgres.missing()
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"cannot run a throwaway Postgres: {reason}")
        pytest.skip(f"cannot run a throwaway Postgres: {reason}")
    server = ThrowawayPostgres(free_port())
    try:
        server.init()
        server.start()
        in_thread(lambda: asyncio.run(_admin(server, f'CREATE DATABASE "{TEMPLATE}"')))
        in_thread(lambda: upgrade(server.url(TEMPLATE)))
        yield server
    finally:
        server.remove()


@pytest.fixture
async def database(throwaway_postgres: ThrowawayPostgres) -> str:
    """A fresh migrated database on the throwaway server; returns its name."""
    name = f"t_{uuid.uuid4().hex[:10]}"
    await _admin(throwaway_postgres, f'CREATE DATABASE "{name}" TEMPLATE "{TEMPLATE}"')
    return name


@pytest.fixture
async def proxy(throwaway_postgres: ThrowawayPostgres) -> AsyncIterator[TcpProxy]:
    """A TCP proxy in front of the throwaway server, forwarding."""
    tcp = TcpProxy(throwaway_postgres.port)
    await tcp.start()
    try:
        yield tcp
    finally:
        await tcp.close()


@pytest.fixture
async def start_plane(tmp_path: Path) -> AsyncIterator[StartPlane]:
    """Start control planes with the given settings; stop them all at the end."""
    planes: list[ControlPlane] = []
    audit_key = secrets.token_hex(32)

    async def start(database_url: str, **overrides: Any) -> ControlPlane:
        values: dict[str, Any] = {
            "database_url": database_url,
            "api_port": 0,
            "xds_port": 0,
            "listener_port": free_port(),
            "poll_interval_s": 0.5,
            "database_connect_timeout_s": 1.0,
            "database_statement_timeout_s": 1.0,
            "audit_key": audit_key,
            "audit_checkpoint_file": tmp_path / "checkpoints.jsonl",
        }
        plane = ControlPlane(Settings(**{**values, **overrides}))
        await plane.start(api=create_app)
        planes.append(plane)
        return plane

    try:
        yield start
    finally:
        for plane in planes:
            await plane.stop()


def _client(plane: ControlPlane, key: str | None, timeout: float = 20.0) -> httpx.AsyncClient:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    return httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{plane.api_port}", headers=headers, timeout=timeout
    )


def _assert_unavailable(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert response.json()["error"] == "database_unavailable", response.text
    assert int(response.headers["retry-after"]) > 0


async def _model_names(api: httpx.AsyncClient) -> list[str]:
    response = await api.get("/v1/models")
    assert response.status_code == 200, response.text
    return sorted(model["name"] for model in response.json())


async def test_a_refused_database_gets_503_and_proxy_status_keeps_working(
    proxy: TcpProxy, database: str, throwaway_postgres: ThrowawayPostgres, start_plane: StartPlane
) -> None:
    plane = await start_plane(
        throwaway_postgres.url(database).replace(f":{throwaway_postgres.port}/", f":{proxy.port}/")
    )
    key = await seed_key(plane, "admin")
    never_verified = await seed_key(plane, "viewer")
    async with _client(plane, key) as api, _client(plane, never_verified) as stranger:
        assert (await api.get("/v1/proxies")).status_code == 200  # the database vouches
        await proxy.set_mode("refuse")

        _assert_unavailable(await api.get("/v1/models"))
        _assert_unavailable(await api.post("/v1/models", json={"name": "m", "protocol": "http"}))
        _assert_unavailable(await api.get("/readyz"))
        proxies = await api.get("/v1/proxies")
        assert proxies.status_code == 200, proxies.text
        assert (await api.get(f"/v1/proxies/{uuid.uuid4().hex}/config")).status_code == 404
        _assert_unavailable(await stranger.get("/v1/proxies"))  # nobody vouched for it
        metrics = await api.get("/metrics")
        assert "turnout_database_unavailable_responses_total 3.0" in metrics.text

        await proxy.set_mode("forward")
        created = await api.post("/v1/models", json={"name": "n", "protocol": "http"})
        assert created.status_code == 201, created.text
        assert await _model_names(api) == ["n"]  # the refused write left nothing
        assert (await api.get("/v1/audit/verify")).json()["ok"] is True


async def test_a_database_that_never_answers_gets_503_within_the_timeouts(
    proxy: TcpProxy, database: str, throwaway_postgres: ThrowawayPostgres, start_plane: StartPlane
) -> None:
    plane = await start_plane(
        throwaway_postgres.url(database).replace(f":{throwaway_postgres.port}/", f":{proxy.port}/")
    )
    key = await seed_key(plane, "admin")
    # The client gives up long before the 30 to 120 s a hung request used to take.
    async with _client(plane, key, timeout=20.0) as api:
        assert (await api.post("/v1/models", json={"name": "m", "protocol": "http"})).is_success
        assert (await api.get("/v1/proxies")).status_code == 200
        await proxy.set_mode("blackhole")

        _assert_unavailable(await api.get("/v1/models"))
        _assert_unavailable(await api.post("/v1/models", json={"name": "n", "protocol": "http"}))
        _assert_unavailable(await api.delete("/v1/models/m"))
        assert (await api.get("/v1/proxies")).status_code == 200

        await proxy.set_mode("forward")

        async def models_answer() -> list[str] | None:
            response = await api.get("/v1/models")
            return await _model_names(api) if response.status_code == 200 else None

        assert await eventually(models_answer, timeout=20) == ["m"]
        assert (await api.get("/v1/audit/verify")).json()["ok"] is True


async def test_readyz_answers_before_its_own_second_when_the_database_hangs(
    proxy: TcpProxy, database: str, throwaway_postgres: ThrowawayPostgres, start_plane: StartPlane
) -> None:
    # Database timeouts far above a second: only readyz's own bound can answer it.
    plane = await start_plane(
        throwaway_postgres.url(database).replace(f":{throwaway_postgres.port}/", f":{proxy.port}/"),
        database_connect_timeout_s=30.0,
        database_statement_timeout_s=30.0,
    )
    async with _client(plane, None, timeout=5.0) as client:
        assert (await client.get("/readyz")).status_code == 200
        await proxy.set_mode("blackhole")
        for _ in range(3):  # each probe is bounded, not only the first
            _assert_unavailable(await client.get("/readyz"))
        await proxy.set_mode("forward")

        async def ready() -> bool:
            return (await client.get("/readyz")).status_code == 200

        await eventually(ready, timeout=20)


async def test_a_stopped_postgres_gets_503_and_a_write_is_all_or_nothing(
    database: str, throwaway_postgres: ThrowawayPostgres, start_plane: StartPlane
) -> None:
    plane = await start_plane(throwaway_postgres.url(database))
    key = await seed_key(plane, "admin")
    async with _client(plane, key) as api:
        assert (await api.get("/v1/proxies")).status_code == 200
        throwaway_postgres.stop()
        try:
            _assert_unavailable(
                await api.post("/v1/models", json={"name": "m", "protocol": "http"})
            )
            _assert_unavailable(await api.get("/v1/audit/events"))
            assert (await api.get("/v1/proxies")).status_code == 200
        finally:
            throwaway_postgres.start()
        created = await api.post("/v1/models", json={"name": "n", "protocol": "http"})
        assert created.status_code == 201, created.text
        assert await _model_names(api) == ["n"]
        events = (await api.get("/v1/audit/events")).json()["items"]
        assert [e["resource_id"] for e in events] == ["n"]
        assert (await api.get("/v1/audit/verify")).json()["ok"] is True


def _listener_metrics(text: str) -> tuple[float, float]:
    values = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        values[name] = value
    return (
        float(values["turnout_notify_listener_up"]),
        float(values["turnout_notify_listener_reconnects_total"]),
    )


async def test_replicas_wake_each_other_again_after_a_postgres_restart(
    database: str, throwaway_postgres: ThrowawayPostgres, start_plane: StartPlane
) -> None:
    url = throwaway_postgres.url(database)
    # A poll interval far longer than the test: only a notification wakes B in time.
    writer = await start_plane(url, poll_interval_s=600.0)
    reader = await start_plane(url, poll_interval_s=600.0)
    key = await seed_key(writer, "admin")

    async def reader_at(revision: int) -> bool:
        return reader.sync.revision == revision

    async with _client(writer, key) as api, _client(reader, key) as reader_api:
        created = await api.post("/v1/models", json={"name": "a", "protocol": "http"})
        assert created.status_code == 201, created.text
        await eventually(lambda: reader_at(int(created.headers["x-turnout-revision"])))

        throwaway_postgres.restart()

        async def listening_again() -> bool:
            response = await reader_api.get("/metrics")
            return response.status_code == 200 and _listener_metrics(response.text) == (1.0, 1.0)

        await eventually(listening_again, timeout=30)

        async def write() -> httpx.Response | None:
            response = await api.post("/v1/models", json={"name": "b", "protocol": "http"})
            return response if response.status_code == 201 else None

        second = await eventually(write, timeout=20)
        await eventually(lambda: reader_at(int(second.headers["x-turnout-revision"])))


async def test_a_locked_sqlite_database_gets_503_not_500(
    tmp_path: Path, sqlite_template: Path, start_plane: StartPlane
) -> None:
    path = tmp_path / "turnout.db"
    shutil.copyfile(sqlite_template, path)
    plane = await start_plane(f"sqlite+aiosqlite:///{path}", database_statement_timeout_s=0.3)
    key = await seed_key(plane, "admin")
    # Another process holding the write lock. Its calls run on a thread of their own:
    # waiting on this thread would stop the control plane's event loop, and with it
    # any write of the plane's that holds the lock just then (a deadlock until the
    # busy timeout, a flaky failure).
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        await asyncio.to_thread(holder.execute, "BEGIN EXCLUSIVE")
        async with _client(plane, key) as api:
            _assert_unavailable(
                await api.post("/v1/models", json={"name": "m", "protocol": "http"})
            )
            await asyncio.to_thread(holder.execute, "ROLLBACK")
            created = await api.post("/v1/models", json={"name": "n", "protocol": "http"})
            assert created.status_code == 201, created.text
            assert await _model_names(api) == ["n"]
    finally:
        holder.close()


async def test_a_revoked_key_is_refused_at_once_while_the_database_answers(
    tmp_path: Path, sqlite_template: Path, start_plane: StartPlane
) -> None:
    path = tmp_path / "turnout.db"
    shutil.copyfile(sqlite_template, path)
    plane = await start_plane(f"sqlite+aiosqlite:///{path}")
    admin = await seed_key(plane, "admin")
    viewer = await seed_key(plane, "viewer", "to-revoke")
    async with _client(plane, admin) as api, _client(plane, viewer) as reader:
        assert (await reader.get("/v1/proxies")).status_code == 200  # now in the cache
        keys = (await api.get("/v1/keys")).json()
        key_id = next(k["id"] for k in keys if k["name"] == "to-revoke")
        assert (await api.delete(f"/v1/keys/{key_id}")).status_code == 204
        assert (await reader.get("/v1/proxies")).status_code == 401
