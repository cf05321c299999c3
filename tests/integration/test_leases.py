"""The lease that lets one replica at a time do a job: taken when free or expired,
renewed by its holder, refused to anyone else meanwhile, given up on release."""

from __future__ import annotations

from datetime import timedelta

from controlplane.db.engine import create_engine, create_sessionmaker, write_transaction
from controlplane.db.leases import LeaseRepository
from controlplane.domain.clock import utcnow


async def test_one_holder_at_a_time(database_url: str) -> None:
    engine = create_engine(database_url)
    sessions = create_sessionmaker(engine)
    now = utcnow()

    async def acquire(holder: str, at_s: float) -> bool:
        async with sessions() as session, write_transaction(session, timeout_s=5):
            return await LeaseRepository(session).acquire(
                "job", holder, 10.0, now + timedelta(seconds=at_s)
            )

    async def holder(at_s: float) -> str | None:
        async with sessions() as session:
            return await LeaseRepository(session).holder("job", now + timedelta(seconds=at_s))

    try:
        assert await acquire("a", 0)
        assert not await acquire("b", 1)
        assert await acquire("a", 5)  # renewed: now runs to 15 s
        assert not await acquire("b", 12)
        assert await holder(12) == "a"
        assert await acquire("b", 16)  # expired: taken over
        assert not await acquire("a", 17)
        async with sessions() as session, write_transaction(session, timeout_s=5):
            await LeaseRepository(session).release("job", "b", now + timedelta(seconds=18))
            await LeaseRepository(session).release("job", "a", now + timedelta(seconds=18))
        assert await holder(18.5) is None
        assert await acquire("a", 19)
    finally:
        await engine.dispose()
