"""Shared fixtures: databases (SQLite and Postgres), a running control plane, Envoy.

Postgres: TURNOUT_TEST_DATABASE_URL if set, else the server on 127.0.0.1:5432 if
it answers (a database is created for the run and dropped after). Without
one the Postgres tests are skipped with the reason, except under CI=true,
where that is a failure.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from controlplane.api.app import create_app
from controlplane.db.engine import create_engine
from controlplane.db.key_repository import ApiKeyRepository
from controlplane.db.migrate import upgrade
from controlplane.db.models import ApiKey
from controlplane.domain.audit import GENESIS_HASH
from controlplane.domain.clock import utcnow
from controlplane.domain.keys import Role, generate_key, hash_key, key_display_prefix
from controlplane.runtime import ControlPlane
from controlplane.settings import Settings
from tests.kube_api import FakeKubernetes
from tests.support import EnvoyProcess, free_port, writing

DATA_TABLES = (
    "discovered_endpoints",
    "leases",
    "rollout_figures",
    "rollout_events",
    "rollouts",
    "tenant_credentials",
    "tenants",
    "signing_keys",
    "idempotency_records",
    "api_keys",
    "audit_events",
    "config_revisions",
    "revision_models",
    "state_documents",
    "traffic_splits",
    "endpoints",
    "model_versions",
    "models",
    "shadow_comparisons",
    "shadow_halves",
)


def _postgres_admin_url() -> str | None:
    configured = os.environ.get("TURNOUT_TEST_DATABASE_URL")
    if configured:
        return configured
    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=1):
            return "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
    except OSError:
        return None


async def _run_admin(url: str, statement: str) -> None:
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as connection:
            await connection.execute(text(statement))
    finally:
        await engine.dispose()


def in_thread(function: Callable[[], object]) -> None:
    """Run ``function`` in a fresh thread (it may call asyncio.run) and wait for it."""
    errors: list[BaseException] = []

    def target() -> None:
        try:
            function()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if errors:
        raise errors[0]


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A migrated Postgres database for this test run."""
    admin_url = _postgres_admin_url()
    if admin_url is None:
        reason = "no Postgres: set TURNOUT_TEST_DATABASE_URL or run one on 127.0.0.1:5432"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason} (skipping Postgres tests is not allowed under CI=true)")
        pytest.skip(reason)
    name = f"turnout_test_{uuid.uuid4().hex[:10]}"
    in_thread(lambda: asyncio.run(_run_admin(admin_url, f'CREATE DATABASE "{name}"')))
    url = make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    in_thread(lambda: upgrade(url))
    yield url
    drop = f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'
    in_thread(lambda: asyncio.run(_run_admin(admin_url, drop)))


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite file that each test copies."""
    path = tmp_path_factory.mktemp("sqlite") / "template.db"
    in_thread(lambda: upgrade(f"sqlite+aiosqlite:///{path}"))
    return path


async def _reset_postgres(url: str) -> None:
    engine = create_engine(url)
    try:
        async with engine.begin() as connection:
            # The audit tables refuse TRUNCATE and moving their head back (triggers);
            # a test reset is the one place that may, with triggers off (superuser).
            await connection.execute(text("SET LOCAL session_replication_role = replica"))
            await connection.execute(
                text(f"TRUNCATE {', '.join(DATA_TABLES)} RESTART IDENTITY CASCADE")
            )
            await connection.execute(
                text("UPDATE config_head SET revision = 0, access_digest = NULL")
            )
            await connection.execute(
                text("UPDATE audit_head SET last_id = 0, last_hash = :genesis, keyed_from = 1"),
                {"genesis": GENESIS_HASH},
            )
    finally:
        await engine.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
async def database_url(
    request: pytest.FixtureRequest, tmp_path: Path, sqlite_template: Path
) -> str:
    """A migrated, empty database: SQLite, then Postgres."""
    if request.param == "sqlite":
        return sqlite_copy(tmp_path, sqlite_template)
    url: str = request.getfixturevalue("postgres_url")
    await _reset_postgres(url)
    return url


def sqlite_copy(tmp_path: Path, sqlite_template: Path) -> str:
    """Return the URL of a fresh copy of the migrated SQLite template in ``tmp_path``:
    what a module whose checks do not depend on the database returns as its
    ``database_url``."""
    path = tmp_path / "turnout.db"
    shutil.copyfile(sqlite_template, path)
    return f"sqlite+aiosqlite:///{path}"


def plane_settings(database_url: str, **overrides: Any) -> Settings:
    """Settings for a control plane on free ports and ``database_url``, with
    ``overrides``: what a module that needs other settings returns as its
    ``settings``."""
    base: dict[str, Any] = {
        "api_port": 0,
        "xds_port": 0,
        "listener_port": free_port(),
        "envoy_admin_port": free_port(),
        "poll_interval_s": 0.5,
        # Every state the sync loop builds from a commit is checked against the tables.
        "sync_verify_handoff": True,
    }
    if database_url.startswith("postgresql"):
        # The shared test server's disk stalls for seconds while a checkpoint syncs
        # the files of every test database (Postgres logged 10 s for 11,048 files
        # when a control plane's first read hit the 5 s default): tests that time
        # statements out say so.
        base["database_statement_timeout_s"] = 30.0
    return Settings(database_url=database_url, **(base | overrides))


def discovery_settings(database_url: str, fake: FakeKubernetes, tmp_path: Path) -> Settings:
    """Settings for a control plane that discovers endpoints from ``fake``, with a
    short backoff. The lease (renewed every third of it) is long enough that a
    loaded machine never lets it lapse while its holder lives: a takeover in these
    tests follows a release, never an expiry."""
    return plane_settings(
        database_url,
        kubernetes=str(fake.kubeconfig(tmp_path / "kubeconfig")),
        kubernetes_lease_s=6.0,
        kubernetes_max_backoff_s=0.2,
    )


@pytest.fixture
async def fake() -> AsyncIterator[FakeKubernetes]:
    """A fake Kubernetes API server (EndpointSlices, list and watch) on a free port."""
    server = await FakeKubernetes().start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
def settings(database_url: str) -> Settings:
    """Settings for a control plane on free ports and a fresh database."""
    return plane_settings(database_url)


@pytest.fixture
async def control_plane(settings: Settings) -> AsyncIterator[ControlPlane]:
    """A running control plane (admin API and xDS)."""
    plane = ControlPlane(settings)
    await plane.start(api=create_app)
    try:
        yield plane
    finally:
        await plane.stop()
    # What the API's commits handed the sync loop was what the tables said.
    assert plane.sync.handoff_mismatches == 0


async def seed_key(control_plane: ControlPlane, role: str, name: str | None = None) -> str:
    """Insert an API key straight into the database (test setup, not audited); return it."""
    key = generate_key()
    async with writing(control_plane.sessionmaker) as session:
        await ApiKeyRepository(session).add(
            ApiKey(
                name=name or f"test-{role}",
                role=Role(role).value,
                prefix=key_display_prefix(key),
                key_hash=hash_key(key),
                created_at=utcnow(),
                created_by="tests",
            )
        )
    return key


# A whole run shares two cores with Postgres, whose checkpoints can stall a read for
# seconds; a test's client waits longer than httpx's 5 s default before it gives up.
API_TIMEOUT_S = 10.0


def api_client(control_plane: ControlPlane, key: str | None = None) -> httpx.AsyncClient:
    """An HTTP client for a running control plane's admin API, with ``key`` if given."""
    headers = {"authorization": f"Bearer {key}"} if key else {}
    return httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{control_plane.api_port}",
        timeout=API_TIMEOUT_S,
        headers=headers,
    )


@pytest.fixture
async def admin_key(control_plane: ControlPlane) -> str:
    """An admin API key, named ``test-admin``."""
    return await seed_key(control_plane, "admin")


@pytest.fixture
async def api(control_plane: ControlPlane, admin_key: str) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client for the running admin API, authenticated as an admin."""
    async with api_client(control_plane, admin_key) as client:
        yield client


@pytest.fixture
async def anonymous_api(control_plane: ControlPlane) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client for the running admin API, without a key."""
    async with api_client(control_plane) as client:
        yield client


@pytest.fixture(params=["sotw", "delta"])
async def envoy(
    request: pytest.FixtureRequest, control_plane: ControlPlane, settings: Settings, tmp_path: Path
) -> AsyncIterator[EnvoyProcess]:
    """A real Envoy connected to the control plane, with its listener ready; once over
    state-of-the-world ADS and once over incremental (delta) ADS."""
    process = EnvoyProcess(
        node_id=f"test-{uuid.uuid4().hex[:6]}",
        xds_port=control_plane.xds_port,
        listener_port=settings.listener_port,
        workdir=tmp_path,
        delta=request.param == "delta",
    )
    await process.start()
    try:
        yield process
    finally:
        await process.stop()
