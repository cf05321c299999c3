"""The rollout driver: one task per replica that publishes this replica's
traffic figures and, while it holds the driver lease, drives every
progressing rollout.

Every ``interval_s``:

1. **Publish.** For each model with an active rollout, this replica writes
   its running totals of the candidate and the baseline (requests, 5xx
   answers, latency histogram; summed over what its Envoys' stat sinks sent
   it since the replica started) to ``rollout_figures``, when they changed.
   Rows older than the retention are pruned.
2. **Lease.** It takes or renews the ``rollout-driver`` lease with a
   conditional UPDATE (free, expired, or already its own); only the holder
   goes on. A holder that dies stops renewing and the lease expires after
   ``lease_s``: another replica takes it on its next interval.
3. **Drive.** For each progressing rollout, in a write transaction under the
   audit chain lock: sum every replica's figures over the step's window (the
   newest row of each replica minus its row at the step's start), judge the
   gates, then wait, advance or roll back. Each move is compare-and-set on
   (state, step), so a step is never repeated or skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from controlplane.db.audit_repository import AuditRepository
from controlplane.db.engine import write_transaction
from controlplane.db.leases import LeaseRepository
from controlplane.db.models import Rollout, RolloutFigure
from controlplane.db.rollout_repository import (
    DRIVER_LEASE,
    FigureRow,
    RolloutRepository,
)
from controlplane.domain.audit import ActionContext
from controlplane.domain.clock import utcnow
from controlplane.domain.errors import TurnoutError
from controlplane.domain.rollouts import (
    SHADOW_METRIC,
    RolloutState,
    VersionFigures,
    decide,
    elapsed,
    evaluate_gates,
    gate_results_document,
)
from controlplane.domain.statistics import LATENCY_BUCKETS_MS
from controlplane.services.rollouts import RolloutService, rollout_actor, rollout_spec
from controlplane.services.shadow import shadow_agreement
from controlplane.telemetry.window import TrafficWindow, quantile

__all__ = ["RolloutDriver", "window_figures"]

log = logging.getLogger(__name__)

# Write a version's totals at least this often even when they did not change.
_REFRESH_S = 30.0
_PRUNE_EVERY = 10
_RELEASE_TIMEOUT_S = 2.0
_BUCKETS = len(LATENCY_BUCKETS_MS) + 1
Totals = tuple[int, int, tuple[int, ...]]  # requests, errors, latency buckets


def replica_name() -> str:
    """A name for this process that no other replica, nor its own restart, shares."""
    return f"{socket.gethostname()[:40]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def version_totals(
    traffic: TrafficWindow, wanted: dict[str, set[str]]
) -> dict[tuple[str, str], Totals]:
    """This replica's totals since start of the ``wanted`` versions, all zones together."""
    sums: dict[tuple[str, str], tuple[int, int, list[int]]] = {}
    for (model, version, _zone), counts, _gauges in traffic.totals():
        if version not in wanted.get(model, ()):
            continue
        requests = sum(round(n) for n in counts.codes.values())
        errors = sum(round(n) for code, n in counts.codes.items() if 500 <= code <= 599)
        latency = [round(n) for n in counts.histograms.get("latency", [0.0] * _BUCKETS)]
        r, e, buckets = sums.get((model, version), (0, 0, [0] * _BUCKETS))
        sums[(model, version)] = (
            r + requests,
            e + errors,
            [a + b for a, b in zip(buckets, latency, strict=True)],
        )
    result: dict[tuple[str, str], Totals] = {}
    for model, versions in wanted.items():
        for version in versions:
            r, e, buckets = sums.get((model, version), (0, 0, [0] * _BUCKETS))
            result[(model, version)] = (r, e, tuple(buckets))
    return result


def window_figures(rows: Iterable[FigureRow], since: datetime) -> dict[str, VersionFigures]:
    """Every replica's traffic since ``since``, summed per version.

    Per replica: its newest row minus its base, the last row at or before
    ``since`` (or, when it wrote none by then, its first row after: it began
    publishing during the window)."""
    series: dict[tuple[str, str], list[FigureRow]] = {}
    for row in rows:
        series.setdefault((row[0], row[1]), []).append(row)
    sums: dict[str, tuple[int, int, list[int]]] = {}
    for (_replica, version), found in series.items():
        found.sort(key=lambda r: r[2])
        before = [r for r in found if r[2] <= since]
        base = before[-1] if before else found[0]
        last = found[-1]
        requests = max(last[3] - base[3], 0)
        errors = max(last[4] - base[4], 0)
        latency = [max(a - b, 0) for a, b in zip(_buckets(last[5]), _buckets(base[5]), strict=True)]
        r, e, buckets = sums.get(version, (0, 0, [0] * _BUCKETS))
        sums[version] = (
            r + requests,
            e + errors,
            [a + b for a, b in zip(buckets, latency, strict=True)],
        )
    out: dict[str, VersionFigures] = {}
    for version, (requests, errors, buckets) in sums.items():
        counts = [float(n) for n in buckets]
        out[version] = VersionFigures(
            requests=requests,
            errors=errors,
            latency_samples=sum(buckets),
            latency_ms={
                name: quantile(q, LATENCY_BUCKETS_MS, counts)
                for name, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99))
            },
        )
    return out


def _buckets(values: Sequence[int]) -> list[int]:
    padded = [int(v) for v in values][:_BUCKETS]
    return padded + [0] * (_BUCKETS - len(padded))


class RolloutDriver:
    """See the module docs. :meth:`run` is the replica's task; :meth:`tick` one
    interval of it (tests call it directly)."""

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        traffic: TrafficWindow,
        *,
        interval_s: float = 1.0,
        lease_s: float = 3.0,
        retention_s: float = 300.0,
        write_timeout_s: float = 10.0,
        on_change: Callable[[], None] = lambda: None,
        replica: str | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._sessionmaker = sessionmaker
        self._traffic = traffic
        self.interval_s = interval_s
        self.lease_s = lease_s
        self.retention_s = retention_s
        self._write_timeout_s = write_timeout_s
        self._on_change = on_change
        self.replica = replica or replica_name()
        self._clock = clock
        self._published: dict[tuple[str, str], tuple[Totals, datetime]] = {}
        self._ticks = 0
        self.holds_lease = False

    async def run(self) -> None:
        """Tick every ``interval_s`` until cancelled; a failed tick is logged and retried."""
        while True:
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning(
                    "rollout.driver_failed",
                    extra={"error_type": type(exc).__name__, "error": str(exc)[:200]},
                )
            await asyncio.sleep(self.interval_s)

    async def stop(self) -> None:
        """Hand the lease back (another replica takes over on its next interval)."""
        if not self.holds_lease:
            return
        # Best effort, and brief: when the database is down the lease just expires.
        with contextlib.suppress(Exception):
            async with asyncio.timeout(_RELEASE_TIMEOUT_S), self._write() as session:
                await LeaseRepository(session).release(DRIVER_LEASE, self.replica, self._clock())
        self.holds_lease = False

    @contextlib.asynccontextmanager
    async def _write(self) -> AsyncIterator[AsyncSession]:
        """A session in a write transaction (committed when the block returns)."""
        async with (
            self._sessionmaker() as session,
            write_transaction(session, timeout_s=self._write_timeout_s),
        ):
            yield session

    async def tick(self) -> int:
        """Publish, take the lease, drive; return how many rollouts moved."""
        await self.publish()
        if not await self.take_lease():
            return 0
        moved = 0
        async with self._sessionmaker() as session:
            ids = await RolloutRepository(session).progressing_ids()
        for rollout_id in ids:
            if await self.drive(rollout_id):
                moved += 1
        if moved:
            self._on_change()
        return moved

    async def publish(self) -> None:
        """Write this replica's totals of the versions in active rollouts."""
        self._ticks += 1
        async with self._sessionmaker() as session:
            wanted = await RolloutRepository(session).active_pairs()
        now = self._clock()
        rows: list[RolloutFigure] = []
        for (model, version), totals in version_totals(self._traffic, wanted).items():
            last = self._published.get((model, version))
            fresh = last is not None and (now - last[1]).total_seconds() < _REFRESH_S
            if fresh and last is not None and last[0] == totals:
                continue
            self._published[(model, version)] = (totals, now)
            rows.append(
                RolloutFigure(
                    replica=self.replica,
                    model=model,
                    version=version,
                    at=now,
                    requests=totals[0],
                    errors=totals[1],
                    latency=list(totals[2]),
                )
            )
        for key in set(self._published) - {(m, v) for m, vs in wanted.items() for v in vs}:
            del self._published[key]
        prune = self._ticks % _PRUNE_EVERY == 0
        if not rows and not prune:
            return
        async with self._write() as session:
            repository = RolloutRepository(session)
            if rows:
                await repository.add_figures(rows)
            if prune:
                await repository.prune_figures(now - timedelta(seconds=self.retention_s))

    async def take_lease(self) -> bool:
        """Take or renew the driver lease; return whether this replica holds it."""
        async with self._write() as session:
            held = await LeaseRepository(session).acquire(
                DRIVER_LEASE, self.replica, self.lease_s, self._clock()
            )
        if held != self.holds_lease:
            log.info("rollout.lease", extra={"replica": self.replica, "held": held})
        self.holds_lease = held
        return held

    async def drive(self, rollout_id: int) -> bool:
        """One evaluation of one rollout; return whether it moved (a step, a rollback)."""
        async with self._write() as session:
            await AuditRepository(session).lock()
            repository = RolloutRepository(session)
            row = await repository.get(rollout_id)
            if row is None or row.state != RolloutState.PROGRESSING.value:
                return False
            service = RolloutService(session, ActionContext(actor=rollout_actor(row.id)))
            now = self._clock()
            try:
                if row.step_started_at is None:
                    return await service.begin(row, now)
                return await self._evaluate(session, service, repository, row, now)
            except TurnoutError as exc:  # the model or a version is gone
                reason = f"cannot go on: {exc.detail}"
                log.warning("rollout.ended", extra={"rollout": row.id, "reason": reason})
                return await service.end(row, reason[:500], now)

    async def _evaluate(
        self,
        session: AsyncSession,
        service: RolloutService,
        repository: RolloutRepository,
        row: Rollout,
        now: datetime,
    ) -> bool:
        assert row.step_started_at is not None
        spec = rollout_spec(row)
        since = max(row.step_started_at, now - timedelta(seconds=self.retention_s))
        rows = await repository.figures(row.model, [spec.candidate, spec.baseline], since)
        figures = window_figures(rows, since)
        candidate = figures.get(spec.candidate, VersionFigures())
        baseline = figures.get(spec.baseline, VersionFigures())
        window_s = (now - since).total_seconds()
        shadow = None
        if row.step == 0 and any(g.metric == SHADOW_METRIC for g in spec.gates):
            # The candidate as the model's shadow, compared over the same window.
            shadow = await shadow_agreement(session, row.model, spec.candidate, window_s)
        results = evaluate_gates(spec, row.step, candidate, baseline, shadow)
        decision = decide(spec, row.step, elapsed(row.step_started_at, now), candidate, results)
        gates = gate_results_document(results)
        if decision.action == "rollback":
            return await service.roll_back(row, decision.reason or "a gate failed", gates, now)
        if decision.action == "advance":
            return await service.advance(row, gates, now)
        await repository.set_gates(row.id, (row.state, row.step), gates)
        return False
