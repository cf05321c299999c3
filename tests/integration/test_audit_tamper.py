"""Tamper evidence of the audit log against someone who can write the database:
a keyed chain, TRUNCATE and head rewinds refused, and signed checkpoints outside
the database that `turnout audit verify --checkpoint FILE` checks the log against.
On SQLite and Postgres."""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import delete, insert, select, text, update
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection

from controlplane.api.app import create_app
from controlplane.db.engine import create_engine
from controlplane.db.migrate import upgrade
from controlplane.db.models import AuditEvent, AuditHead
from controlplane.domain.audit import (
    GENESIS_HASH,
    HashScheme,
    canonical_fields,
    chain_hash,
    keyed_chain_hash,
)
from controlplane.domain.clock import utcnow
from controlplane.runtime import ControlPlane
from controlplane.settings import Settings
from tests.conftest import (
    _postgres_admin_url,
    _run_admin,
    free_port,
    in_thread,
    plane_settings,
    seed_key,
)

AUDIT_KEY = secrets.token_hex(32)
EVENTS = 6
_SQLITE_TRIGGERS = (
    "audit_events_no_update",
    "audit_events_no_delete",
    "audit_head_no_delete",
    "audit_head_forward_only",
)


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    """The shared control-plane settings, with an audit key and a checkpoint file
    of this test's own."""
    return plane_settings(
        database_url,
        audit_key=AUDIT_KEY,
        audit_checkpoint_file=tmp_path / "checkpoints.jsonl",
        audit_checkpoint_interval_s=3600,
    )


async def _make_events(api: httpx.AsyncClient, count: int = EVENTS) -> None:
    for n in range(count):
        response = await api.post("/v1/models", json={"name": f"m{n}", "protocol": "http"})
        assert response.status_code == 201, response.text


def _verify_cli(
    database_url: str, checkpoint: Path | None, key: str = AUDIT_KEY
) -> subprocess.CompletedProcess[str]:
    """Run `turnout audit verify [--checkpoint FILE]` with the audit key ``key``."""
    env = {**os.environ, "TURNOUT_DATABASE_URL": database_url, "TURNOUT_AUDIT_KEY": key}
    command = [str(Path(sys.executable).parent / "turnout"), "audit", "verify"]
    if checkpoint is not None:
        command += ["--checkpoint", str(checkpoint)]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)


async def _as_dba(plane: ControlPlane, work: Callable[[AsyncConnection], Awaitable[None]]) -> None:
    """Run ``work`` as a database administrator would: with the audit triggers off."""
    sqlite = plane.engine.dialect.name == "sqlite"
    async with plane.engine.begin() as connection:
        if sqlite:
            for trigger in _SQLITE_TRIGGERS:
                await connection.execute(text(f"DROP TRIGGER {trigger}"))
        else:
            await connection.execute(text("SET LOCAL session_replication_role = replica"))
        await work(connection)


async def _events(connection: AsyncConnection) -> list[dict[str, Any]]:
    rows = await connection.execute(select(AuditEvent.__table__).order_by(AuditEvent.id))
    return [dict(row) for row in rows.mappings()]


async def _set_head(connection: AsyncConnection, last_id: int, last_hash: str) -> None:
    await connection.execute(
        update(AuditHead).where(AuditHead.id == 1).values(last_id=last_id, last_hash=last_hash)
    )


async def _wipe(connection: AsyncConnection) -> None:
    await connection.execute(delete(AuditEvent))
    await _set_head(connection, 0, GENESIS_HASH)


async def _cut_newest(connection: AsyncConnection, count: int = 2) -> None:
    events = await _events(connection)
    keep = events[:-count]
    await connection.execute(delete(AuditEvent).where(AuditEvent.id > keep[-1]["id"]))
    await _set_head(connection, keep[-1]["id"], keep[-1]["hash"])


def _rewriting(scheme: HashScheme, secret: bytes | None, from_id: int = 3) -> Any:
    """Rewrite history from event ``from_id`` on (the actor becomes mallory) and
    recompute every hash after it, under ``scheme``."""

    async def rewrite(connection: AsyncConnection) -> None:
        events = await _events(connection)
        await connection.execute(delete(AuditEvent).where(AuditEvent.id >= from_id))
        prev = next(e["hash"] for e in events if e["id"] == from_id - 1)
        for event in events:
            if event["id"] < from_id:
                continue
            event["actor"] = "mallory"
            fields = canonical_fields(event)
            if scheme == HashScheme.SHA256:
                digest = chain_hash(fields, prev)
            else:
                assert secret is not None
                digest = keyed_chain_hash(fields, prev, secret)
            event.update(prev_hash=prev, hash=digest, hash_version=int(scheme))
            await connection.execute(insert(AuditEvent.__table__).values(**event))
            prev = digest
        await _set_head(connection, events[-1]["id"], prev)

    return rewrite


async def test_truncate_delete_and_head_rewinds_are_refused(
    api: httpx.AsyncClient, control_plane: ControlPlane
) -> None:
    await _make_events(api, 2)
    statements = [
        "DELETE FROM audit_head",
        "UPDATE audit_head SET last_id = 1",
        "UPDATE audit_head SET keyed_from = 100",
        "DELETE FROM audit_events",
    ]
    if control_plane.engine.dialect.name == "postgresql":
        # SQLite has no TRUNCATE: its DELETE without WHERE meets the row trigger.
        statements += [
            "TRUNCATE audit_events",
            "TRUNCATE audit_head",
            "TRUNCATE audit_events CASCADE",
        ]
    for statement in statements:
        async with control_plane.engine.begin() as connection:
            with pytest.raises(Exception, match=r"append-only|cannot be deleted|moves forward"):
                await connection.execute(text(statement))
    assert (await api.get("/v1/audit/verify")).json()["checked"] == 2


async def test_new_events_are_keyed_and_verify_only_under_the_key(
    api: httpx.AsyncClient, control_plane: ControlPlane, settings: Settings
) -> None:
    await _make_events(api, 3)
    async with control_plane.engine.connect() as connection:
        events = await _events(connection)
    assert [e["hash_version"] for e in events] == [2, 2, 2]
    assert (await api.get("/v1/audit/verify")).json()["ok"] is True
    ok = await asyncio.to_thread(_verify_cli, settings.database_url, None)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    # Under another key (not the one that wrote them) the events do not verify.
    result = await asyncio.to_thread(
        _verify_cli, settings.database_url, None, secrets.token_hex(32)
    )
    assert result.returncode == 1, result.stdout
    assert "BROKEN at position 1" in result.stdout


@pytest.mark.parametrize(
    ("tamper", "chain_alone_notices"),
    [
        (_wipe, False),
        (_cut_newest, False),
        (_rewriting(HashScheme.SHA256, None), True),  # the project's public hash function
        (_rewriting(HashScheme.HMAC_SHA256, secrets.token_bytes(32)), True),  # a guessed key
        (_rewriting(HashScheme.HMAC_SHA256, AUDIT_KEY.encode()), False),  # the key leaked
    ],
    ids=["wipe", "cut-newest-2", "rewrite-public-hash", "rewrite-other-key", "rewrite-real-key"],
)
async def test_tampering_is_detected_against_the_checkpoints(
    api: httpx.AsyncClient,
    control_plane: ControlPlane,
    settings: Settings,
    tamper: Callable[[AsyncConnection], Awaitable[None]],
    chain_alone_notices: bool,
) -> None:
    await _make_events(api)
    checkpoint = await control_plane.audit_checkpoints.checkpoint()
    assert checkpoint is not None and checkpoint.id == EVENTS
    assert settings.audit_checkpoint_file is not None
    good = await asyncio.to_thread(
        _verify_cli, settings.database_url, settings.audit_checkpoint_file
    )
    assert good.returncode == 0, good.stdout + good.stderr
    assert "consistent with" in good.stdout

    await _as_dba(control_plane, tamper)

    chain_only = (await api.get("/v1/audit/verify")).json()
    assert chain_only["ok"] is not chain_alone_notices, chain_only
    result = await asyncio.to_thread(
        _verify_cli, settings.database_url, settings.audit_checkpoint_file
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "BROKEN" in result.stdout or "CHECKPOINT line" in result.stdout, result.stdout


async def test_a_moved_keyed_boundary_is_detected_against_the_checkpoints(
    api: httpx.AsyncClient, control_plane: ControlPlane, settings: Settings
) -> None:
    """Rewriting everything with the public hash verifies only if the boundary moves
    past the end; a checkpoint recorded where it was."""
    await _make_events(api)
    await control_plane.audit_checkpoints.checkpoint()

    async def rewrite_all(connection: AsyncConnection) -> None:
        events = await _events(connection)
        await connection.execute(delete(AuditEvent))
        await connection.execute(
            update(AuditHead).where(AuditHead.id == 1).values(keyed_from=EVENTS + 1)
        )
        prev = GENESIS_HASH
        for event in events:
            event["actor"] = "mallory"
            digest = chain_hash(canonical_fields(event), prev)
            event.update(prev_hash=prev, hash=digest, hash_version=1)
            await connection.execute(insert(AuditEvent.__table__).values(**event))
            prev = digest
        await _set_head(connection, events[-1]["id"], prev)

    await _as_dba(control_plane, rewrite_all)
    assert (await api.get("/v1/audit/verify")).json()["ok"] is True  # the chain alone is fooled
    result = await asyncio.to_thread(
        _verify_cli, settings.database_url, settings.audit_checkpoint_file
    )
    assert result.returncode == 1
    assert "boundary was moved" in result.stdout


async def test_a_forged_checkpoint_line_is_reported(
    api: httpx.AsyncClient, control_plane: ControlPlane, settings: Settings
) -> None:
    await _make_events(api, 2)
    await control_plane.audit_checkpoints.checkpoint()
    path = settings.audit_checkpoint_file
    assert path is not None
    line = path.read_text().splitlines()[-1]
    path.write_text(path.read_text() + line.replace('"id":2', '"id":1') + "\n")
    result = await asyncio.to_thread(_verify_cli, settings.database_url, path)
    assert result.returncode == 1
    assert "HMAC does not verify" in result.stdout


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
async def test_events_written_before_keying_still_verify(backend: str, tmp_path: Path) -> None:
    """A log from before migration 0009 (plain SHA-256) keeps verifying, and new
    events chain onto it keyed."""
    if backend == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'old.db'}"
        admin, name = None, None
    else:
        admin = _postgres_admin_url()
        if admin is None:
            pytest.skip("no Postgres")
        name = f"turnout_old_{uuid.uuid4().hex[:8]}"
        await _run_admin(admin, f'CREATE DATABASE "{name}"')
        url = make_url(admin).set(database=name).render_as_string(hide_password=False)
    try:
        in_thread(lambda: upgrade(url, "0008"))
        engine = create_engine(url)
        try:
            async with engine.begin() as connection:
                prev = GENESIS_HASH
                for event_id in (1, 2):
                    values: dict[str, Any] = {
                        "id": event_id,
                        "created_at": utcnow(),
                        "actor": "old",
                        "action": "model.create",
                        "resource_type": "model",
                        "resource_id": f"old{event_id}",
                        "outcome": "success",
                    }
                    digest = chain_hash(canonical_fields(values), prev)
                    await connection.execute(
                        text(
                            "INSERT INTO audit_events (id, created_at, actor, action, "
                            "resource_type, resource_id, outcome, prev_hash, hash) VALUES "
                            "(:id, :created_at, :actor, :action, :resource_type, :resource_id, "
                            ":outcome, :prev_hash, :hash)"
                        ),
                        {**values, "prev_hash": prev, "hash": digest},
                    )
                    prev = digest
                await connection.execute(
                    text("UPDATE audit_head SET last_id = 2, last_hash = :hash"), {"hash": prev}
                )
        finally:
            await engine.dispose()
        in_thread(lambda: upgrade(url))
        plane = ControlPlane(
            Settings(
                database_url=url,
                api_port=0,
                xds_port=0,
                listener_port=free_port(),
                audit_key=AUDIT_KEY,
                audit_checkpoint_file=tmp_path / "checkpoints.jsonl",
            )
        )
        await plane.start(api=create_app)
        try:
            key = await seed_key(plane, "admin")
            async with httpx.AsyncClient(
                base_url=f"http://127.0.0.1:{plane.api_port}",
                headers={"authorization": f"Bearer {key}"},
                timeout=10,
            ) as api:
                await _make_events(api, 1)
                report = (await api.get("/v1/audit/verify")).json()
                assert report["ok"] is True, report
                assert report["checked"] == 3
            async with plane.engine.connect() as connection:
                events = await _events(connection)
                head = (await connection.execute(select(AuditHead.keyed_from))).scalar_one()
            assert [e["hash_version"] for e in events] == [1, 1, 2]
            assert head == 3
        finally:
            await plane.stop()
    finally:
        if admin is not None and name is not None:
            await _run_admin(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
