"""Alembic migrations apply cleanly on SQLite and Postgres, and the CLI runs them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from sqlalchemy import inspect

from controlplane.db import models as _models  # noqa: F401
from controlplane.db.base import Base
from controlplane.db.engine import create_engine
from controlplane.db.migrate import current_revision, head_revision

EXPECTED_TABLES = {
    "models",
    "model_versions",
    "endpoints",
    "traffic_splits",
    "config_head",
    "config_revisions",
    "audit_events",
    "audit_head",
    "api_keys",
    "idempotency_records",
    "tenants",
    "tenant_credentials",
    "signing_keys",
    "revision_models",
    "state_documents",
    "discovered_endpoints",
    "leases",
}


async def test_database_is_at_head_with_every_table(database_url: str) -> None:
    engine = create_engine(database_url)
    try:
        assert await current_revision(engine) == head_revision(database_url)
        async with engine.connect() as connection:
            tables = await connection.run_sync(lambda c: set(inspect(c).get_table_names()))
    finally:
        await engine.dispose()
    assert tables >= EXPECTED_TABLES
    # The ORM and the migrations describe the same tables.
    assert set(Base.metadata.tables) == EXPECTED_TABLES


def test_cli_upgrade_creates_the_embedded_default(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "TURNOUT_DATABASE_URL"}
    turnout = Path(sys.executable).parent / "turnout"
    result = subprocess.run(
        [str(turnout), "db", "upgrade"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "turnout.db").exists()
    again = subprocess.run(
        [str(turnout), "db", "upgrade"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert again.returncode == 0, again.stderr


def test_cli_upgrade_reports_an_unreachable_database(tmp_path: Path) -> None:
    env = {**os.environ, "TURNOUT_DATABASE_URL": "postgresql+asyncpg://nobody@127.0.0.1:1/x"}
    turnout = Path(sys.executable).parent / "turnout"
    result = subprocess.run(
        [str(turnout), "db", "upgrade"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert result.returncode == 2
    assert "migration failed" in result.stderr
