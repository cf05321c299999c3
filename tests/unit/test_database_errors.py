"""Database errors name the statement but never its parameters, so a key's hash
(or any other value) cannot reach a log line or the CLI's output through one."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from sqlalchemy.exc import IntegrityError

from controlplane.cli.errors import describe_error
from controlplane.db.engine import create_engine, create_sessionmaker
from controlplane.db.models import ApiKey
from controlplane.domain.clock import utcnow

HASH = "ab" * 32


def _key() -> ApiKey:
    return ApiKey(
        name="a", role="admin", prefix="tk_x", key_hash=HASH, created_at=utcnow(), created_by="t"
    )


async def test_a_failed_insert_does_not_carry_its_parameters(
    sqlite_template: Path, tmp_path: Path
) -> None:
    path = tmp_path / "turnout.db"
    shutil.copyfile(sqlite_template, path)
    engine = create_engine(f"sqlite+aiosqlite:///{path}")
    try:
        async with create_sessionmaker(engine)() as session, session.begin():
            session.add(_key())
        with pytest.raises(IntegrityError) as caught:
            async with create_sessionmaker(engine)() as session, session.begin():
                session.add(_key())
    finally:
        await engine.dispose()
    assert HASH not in str(caught.value)
    assert "UNIQUE" in str(caught.value)
    described = describe_error(caught.value)
    assert HASH not in described and "INSERT" not in described
