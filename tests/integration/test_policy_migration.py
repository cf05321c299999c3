"""Migration 0003 adds the policy columns and can be undone (SQLite: a batch table copy)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from alembic import command
from sqlalchemy import inspect

from controlplane.db.engine import create_engine
from controlplane.db.migrate import alembic_config, upgrade


async def _columns(url: str, table: str) -> set[str]:
    engine = create_engine(url)
    try:
        async with engine.connect() as connection:
            return await connection.run_sync(
                lambda c: {col["name"] for col in inspect(c).get_columns(table)}
            )
    finally:
        await engine.dispose()


def test_0003_adds_policy_columns_and_downgrades(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'm.db'}"
    upgrade(url, "0002")
    assert "policy" not in asyncio.run(_columns(url, "models"))
    upgrade(url, "0003")
    assert "policy" in asyncio.run(_columns(url, "models"))
    assert "policy" in asyncio.run(_columns(url, "model_versions"))
    command.downgrade(alembic_config(url), "0002")
    assert "policy" not in asyncio.run(_columns(url, "model_versions"))
    upgrade(url)
    assert "policy" in asyncio.run(_columns(url, "models"))
