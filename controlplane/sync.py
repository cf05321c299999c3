"""Keeps the snapshot cache in step with the database.

The loop reads the config revision; when it moved, it loads the whole desired
state in one transaction, translates it and publishes the snapshot. It runs
on a wake-up (a commit in this process, or Postgres NOTIFY from another
replica) and on a timer, so a lost wake-up delays a push but never loses it.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import replace

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from controlplane.db.revisions import RevisionRepository
from controlplane.db.state import load_access, load_models, load_state
from controlplane.domain.state import DesiredState
from controlplane.notify import Notifier
from controlplane.xds.cache import SnapshotCache
from controlplane.xds.packed import PackedTranslator
from controlplane.xds.resources import ENDPOINT
from controlplane.xds.snapshot import Snapshot
from controlplane.xds.translate import ListenerOptions, endpoint_zones

__all__ = ["FULL_READ_INTERVAL_S", "StateSync"]

# Partial reads are exact; a full read now and then bounds the damage of a bug.
FULL_READ_INTERVAL_S = 300.0


log = logging.getLogger(__name__)


class StateSync:
    """Loads desired state by revision and publishes it as snapshots."""

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        cache: SnapshotCache,
        notifier: Notifier,
        *,
        listener: ListenerOptions,
        poll_interval_s: float,
    ) -> None:
        self._sessionmaker = sessionmaker
        self._cache = cache
        self._notifier = notifier
        self._listener = listener
        self._poll_interval_s = poll_interval_s
        # Its memo lives as long as this loop, and follows the revisions it publishes.
        self._translator = PackedTranslator()
        self.loaded = asyncio.Event()
        self.revision: int | None = None
        self.state: DesiredState | None = None
        self._full_read_at = -math.inf

    async def sync_once(self) -> bool:
        """Publish the latest revision if it is new; return whether it published."""
        async with self._sessionmaker() as session:
            current = await RevisionRepository(session).current()
        if current == self.revision:
            return False
        started = time.perf_counter()
        state = await self._load()
        # Resources unused by this revision and the one before are forgotten.
        self._translator.rotate()
        resources = self._translator.translate(state, self._listener)
        snapshot = Snapshot.from_packed(state.revision, resources)
        by_zone = {
            zone: Snapshot.from_packed(
                state.revision, {**resources, ENDPOINT: self._translator.endpoints(state, zone)}
            )
            for zone in endpoint_zones(state)
        }
        await self._cache.publish(snapshot, by_zone)
        self.state = state
        self.revision = state.revision
        self.loaded.set()
        log.info(
            "xds.snapshot_published",
            extra={
                "revision": state.revision,
                "models": len(state.models),
                "ms": round((time.perf_counter() - started) * 1000, 2),
            },
        )
        return True

    async def _load(self) -> DesiredState:
        """Read the state: only the models changed since the last read when every
        revision in between says which, else (and now and then regardless) all."""
        loop = asyncio.get_running_loop()
        async with self._sessionmaker() as session:
            connection = await session.connection()
            if connection.dialect.name == "postgresql":
                await connection.exec_driver_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            previous = self.state
            fresh_enough = loop.time() - self._full_read_at < FULL_READ_INTERVAL_S
            if previous is not None and fresh_enough:
                revisions = RevisionRepository(session)
                current, changed, access_changed = await revisions.changed_since(previous.revision)
                if changed is not None:
                    specs = {spec.name: spec for spec in await load_models(session, changed)}
                    state = previous.with_models(
                        current, {name: specs.get(name) for name in changed}
                    )
                    if access_changed:
                        tenants, jwks = await load_access(session)
                        state = replace(state, tenants=tenants, jwks=jwks)
                    return state
            self._full_read_at = loop.time()
            return await load_state(session)

    async def run(self) -> None:
        """Sync forever: on every wake-up and at least every poll interval."""
        while True:
            try:
                await self.sync_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                # The database may be down: keep serving the last snapshot.
                log.exception("xds.sync_failed")
            await self._notifier.wait(self._poll_interval_s)
