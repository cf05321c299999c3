"""Keeps the snapshot cache in step with the database.

The loop reads the config revision; when it moved, it loads the desired state
in one transaction (the models the revisions in between changed, or all of
it), translates it and publishes the snapshot. It runs on a wake-up (a commit
in this process, or Postgres NOTIFY from another replica) and on a timer, so a
lost wake-up delays a push but never loses it.

A commit in this process hands the loop what it changed (:meth:`StateSync.offer`,
``controlplane.domain.state.CommittedChange``: the specs its writer read inside
the committed transaction), so the loop need not read back what was just
written: when the changes handed over follow on from the revision it holds,
it applies them and publishes without a database read. Anything else (a
revision from another replica, a gap, the first load, a full read that is
due) goes through the database as above. With ``verify_handoff`` (the test
suite's setting) every state built from a handoff is compared with a read of
the tables at that revision; a difference is logged (``sync.handoff_mismatch``),
counted, and the read wins.

What it publishes is the desired state with every model that Envoy rejected
held at its last accepted config (``controlplane.xds.containment``): the loop
listens to the proxies' ACKs and NACKs through the cache, and publishes again
when the holds change, at the same revision.

Versions that name a Kubernetes Service get that Service's discovered
endpoints (``controlplane.domain.discovery``), read on every pass while some
version names one: a change to them publishes again at the same revision.

It also measures the path from commit to proxy: each pass and its translation,
and, for each revision it learns while running, the time from the revision's
``created_at`` (the writer's clock) to the first push of it to a proxy that
already held an earlier snapshot. A proxy's first config on a new stream is not
a change reaching it, so it is not counted.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime

from opentelemetry import trace
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from controlplane.db.discovery import DiscoveryRepository
from controlplane.db.revisions import RevisionRepository
from controlplane.db.state import load_access, load_models, load_state
from controlplane.domain.clock import utcnow
from controlplane.domain.discovery import Discovery, referenced_services, with_discovered
from controlplane.domain.state import CommittedChange, DesiredState
from controlplane.metrics import ControlPlaneMetrics
from controlplane.notify import Notifier
from controlplane.tracing import Tracing
from controlplane.xds.cache import SnapshotCache
from controlplane.xds.containment import Containment, Hold
from controlplane.xds.packed import PackedTranslator
from controlplane.xds.resources import TYPE_LABELS
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
        metrics: ControlPlaneMetrics | None = None,
        tracing: Tracing | None = None,
        verify_handoff: bool = False,
    ) -> None:
        self._sessionmaker = sessionmaker
        self._metrics = metrics if metrics is not None else ControlPlaneMetrics()
        self._tracing = tracing if tracing is not None else Tracing()
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
        self._discovery: Discovery = {}
        self._containment = Containment()
        self._published_generation = 0
        self._degraded: set[str] = set()  # the models it reports as degraded
        # The newest revision learnt while running and its commit time, until its
        # first push: what turnout_xds_commit_to_push_seconds measures.
        self._awaiting_push: tuple[int, datetime] | None = None
        # Committed changes handed over by this process's writers, by revision.
        self._offered: dict[int, CommittedChange] = {}
        self._verify_handoff = verify_handoff
        self.handoff_mismatches = 0
        cache.observe(self)

    def offer(self, changes: Sequence[CommittedChange]) -> None:
        """Take what a transaction of this process committed, and wake the loop;
        call it only after the commit."""
        for change in changes:
            self._offered[change.revision] = change
        self._notifier.notify()

    def holds(self) -> list[Hold]:
        """Return the models held at their last accepted config, and why."""
        return self._containment.holds()

    async def sync_once(self) -> bool:
        """Publish the latest revision if it is new, or again when the holds changed;
        return whether it published."""
        started = time.perf_counter()
        try:
            published = await self._sync()
        except Exception:
            self._metrics.sync.labels(result="failed").observe(time.perf_counter() - started)
            raise
        result = "published" if published else "unchanged"
        self._metrics.sync.labels(result=result).observe(time.perf_counter() - started)
        return published

    async def _sync(self) -> bool:
        began = time.time_ns()
        started = time.perf_counter()
        if await self._publish_handed_over(began, started, at_least=0):
            return True
        async with self._sessionmaker() as session:
            current, committed_at = await RevisionRepository(session).head()
        started = time.perf_counter()
        if current != self.revision:
            began = time.time_ns()
            # A commit of this process may have been handed over during that read (on
            # Postgres its own NOTIFY can wake the loop before its writer hands it over).
            if await self._publish_handed_over(began, started, at_least=current):
                return True
            state = await self._load()
            await self._publish_new(state, began, started, current, committed_at, read="database")
            return True
        if self.state is None:
            return False
        discovery = await self._discovered(self.state)
        if (
            discovery != self._discovery
            or self._containment.generation != self._published_generation
        ):
            if discovery != self._discovery:
                log.info(
                    "discovery.endpoints_changed",
                    extra={
                        "revision": self.state.revision,
                        "services": sorted(
                            f"{ns}/{name}"
                            for ns, name in set(discovery) | set(self._discovery)
                            if discovery.get((ns, name)) != self._discovery.get((ns, name))
                        ),
                    },
                )
            self._discovery = discovery
            await self._publish(self.state, started, current, committed_at)
            return True
        return False

    async def _publish_new(
        self,
        state: DesiredState,
        began: int,
        started: float,
        current: int,
        committed_at: datetime | None,
        *,
        read: str,
    ) -> None:
        """Publish ``state``, a revision this loop has not published yet, which it
        ``read`` from the database or took from a handoff."""
        self._discovery = await self._discovered(state)
        push = self._tracing.start_push(self.revision, state.revision, began)
        with trace.use_span(push, end_on_exit=True):
            await self._publish(state, started, current, committed_at, read=read)
            push.set_attribute("turnout.models", len(state.models))

    async def _publish_handed_over(self, began: int, started: float, *, at_least: int) -> bool:
        """Publish the state the changes handed over reach, when they follow on from
        the one published and reach revision ``at_least``; return whether it did."""
        handed = self._handed_over()
        if handed is None or handed[0].revision < at_least:
            return False
        state, committed_at = handed
        await self._publish_new(state, began, started, state.revision, committed_at, read="handoff")
        if self._verify_handoff:
            await self._verify(state)
        return True

    def _handed_over(self) -> tuple[DesiredState, datetime] | None:
        """The state at the newest revision that the changes handed over reach from
        the one published, and when that revision committed; None when they do not
        follow on from it, or a full read is due."""
        state = self.state
        if state is None:
            return None
        for revision in [r for r in self._offered if r <= state.revision]:
            del self._offered[revision]
        loop = asyncio.get_running_loop()
        if loop.time() - self._full_read_at >= FULL_READ_INTERVAL_S:
            return None
        change = self._offered.pop(state.revision + 1, None)
        if change is None:
            return None
        while change is not None:
            state = change.apply(state)
            committed_at = change.committed_at
            change = self._offered.pop(state.revision + 1, None)
        return state, committed_at

    async def _verify(self, handed: DesiredState) -> None:
        """Compare ``handed`` with the tables at its revision; on a difference,
        log it and publish what the tables say."""
        async with self._sessionmaker() as session:
            await _one_snapshot(session)
            current, committed_at = await RevisionRepository(session).head()
            if current != handed.revision:
                return  # moved on since: the next handoff is compared instead
            stored = await load_state(session)
        if stored == handed:
            return
        self.handoff_mismatches += 1
        theirs = {model.name: model for model in stored.models}
        ours = {model.name: model for model in handed.models}
        log.error(
            "sync.handoff_mismatch",
            extra={
                "revision": handed.revision,
                "models": sorted(
                    n for n in theirs.keys() | ours.keys() if theirs.get(n) != ours.get(n)
                ),
                "access": (stored.tenants, stored.jwks) != (handed.tenants, handed.jwks),
            },
        )
        self._full_read_at = asyncio.get_running_loop().time()
        await self._publish(stored, time.perf_counter(), current, committed_at, read="database")

    async def _discovered(self, state: DesiredState) -> Discovery:
        """Read the discovered endpoints of the Services ``state`` names (no read
        when it names none)."""
        services = referenced_services(state)
        if not services:
            return {}
        async with self._sessionmaker() as session:
            return await DiscoveryRepository(session).of(services)

    async def _publish(
        self,
        state: DesiredState,
        started: float,
        current: int,
        committed_at: datetime | None,
        *,
        read: str = "held",
    ) -> None:
        """Translate ``state`` with the holds applied and publish it; ``current`` is
        the database's revision, committed at ``committed_at``; ``read`` says where
        the state came from (``held``: the state this loop already had)."""
        translating = time.perf_counter()
        # Discovered endpoints (observed state) join the desired state first: what
        # Envoy holds and rejects is the state with them.
        effective = self._containment.apply(with_discovered(state, self._discovery))
        generation = self._containment.generation
        # Resources unused by this translation and the one before are forgotten.
        self._translator.rotate()
        resources = self._translator.translate(effective, self._listener)
        snapshot = Snapshot.from_packed(state.revision, resources)
        by_zone = {
            zone: Snapshot.from_packed(
                state.revision,
                self._translator.for_zone(effective, self._listener, zone, resources),
            )
            for zone in endpoint_zones(effective)
        }
        self._metrics.translation.observe(time.perf_counter() - translating)
        if state.revision != self.revision:
            # Only a revision learnt while running: the first load's may be old.
            known = self.revision is not None and state.revision == current
            self._awaiting_push = (
                (state.revision, committed_at) if known and committed_at is not None else None
            )
        for published in (snapshot, *by_zone.values()):
            self._containment.published(published, effective)
        await self._cache.publish(snapshot, by_zone)
        self._published_generation = generation
        self._report_degraded()
        self.state = state
        self.revision = state.revision
        self.loaded.set()
        log.info(
            "xds.snapshot_published",
            extra={
                "revision": state.revision,
                "models": len(state.models),
                "held": len(self._containment.holds()),
                "read": read,
                "ms": round((time.perf_counter() - started) * 1000, 2),
            },
        )

    def accepted(self, snapshot: Snapshot) -> None:
        """Feedback from a stream: a proxy holds all of ``snapshot``."""
        if self._containment.accepted(snapshot):
            self._notifier.notify()

    def sent(
        self, snapshot: Snapshot, type_urls: Sequence[str], variant: str, *, update: bool
    ) -> None:
        """Feedback from a stream: count the pushes, and time the first one of a
        revision learnt while running to a proxy that held an earlier snapshot."""
        for type_url in type_urls:
            self._metrics.pushes.labels(
                type=TYPE_LABELS.get(type_url, type_url), variant=variant
            ).inc()
        awaiting = self._awaiting_push
        if update and awaiting is not None and snapshot.revision == awaiting[0]:
            self._awaiting_push = None
            # Clamped: the writer may be another replica whose clock runs ahead.
            seconds = max(0.0, (utcnow() - awaiting[1]).total_seconds())
            self._metrics.commit_to_push.observe(seconds)

    def rejected(self, snapshot: Snapshot | None, type_url: str, error: str, node: str) -> None:
        """Feedback from a stream: a proxy NACKed ``type_url``; hold back its culprits."""
        self._metrics.rejections.labels(type=TYPE_LABELS.get(type_url, type_url)).inc()
        holds = self._containment.rejected(snapshot, type_url, error, node)
        for hold in holds:
            log.warning(
                "xds.model_held_back",
                extra={
                    "model": hold.model,
                    "type_url": type_url,
                    "resources": list(hold.resources),
                    "confirmed": hold.confirmed,
                    "node": node,
                    "error": hold.reason,
                },
            )
        if holds:
            self._notifier.notify()

    def _report_degraded(self) -> None:
        held = {hold.model for hold in self._containment.holds()}
        for model in self._degraded - held:
            self._metrics.model_degraded.remove(model)
        for model in held:
            self._metrics.model_degraded.labels(model=model).set(1)
        self._degraded = held

    async def _load(self) -> DesiredState:
        """Read the state: only the models changed since the last read when every
        revision in between says which, else (and now and then regardless) all."""
        loop = asyncio.get_running_loop()
        async with self._sessionmaker() as session:
            await _one_snapshot(session)
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


async def _one_snapshot(session: AsyncSession) -> None:
    """Make the session's transaction read one snapshot of the database
    (REPEATABLE READ on Postgres; a SQLite transaction already does)."""
    connection = await session.connection()
    if connection.dialect.name == "postgresql":
        await connection.exec_driver_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
