"""Migration 0011 adds the rollout tables and the driver's lease row, and can be undone."""

from __future__ import annotations

import asyncio
from pathlib import Path

from alembic import command
from sqlalchemy import inspect, text

from controlplane.db.engine import create_engine
from controlplane.db.migrate import alembic_config, upgrade

ROLLOUT_TABLES = {"rollouts", "rollout_events", "rollout_figures", "leases"}


async def _tables(url: str) -> tuple[set[str], list[str]]:
    engine = create_engine(url)
    try:
        async with engine.connect() as connection:
            tables = await connection.run_sync(lambda c: set(inspect(c).get_table_names()))
            leases = []
            if "leases" in tables:
                leases = list((await connection.execute(text("SELECT name FROM leases"))).scalars())
            return tables, leases
    finally:
        await engine.dispose()


def test_0011_adds_rollout_tables_and_downgrades(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'm.db'}"
    upgrade(url, "0010")
    assert not ROLLOUT_TABLES & asyncio.run(_tables(url))[0]
    upgrade(url, "0011")
    tables, leases = asyncio.run(_tables(url))
    assert tables >= ROLLOUT_TABLES
    assert leases == []  # a lease's row is made by the first replica that takes it
    command.downgrade(alembic_config(url), "0010")
    assert not ROLLOUT_TABLES & asyncio.run(_tables(url))[0]
    upgrade(url)
    assert asyncio.run(_tables(url))[0] >= ROLLOUT_TABLES
