"""Shadow comparisons: recorded from the pairs Envoy reports, summarised per model.

:class:`ShadowRecorder` turns each pair of halves (controlplane.telemetry.shadow)
into a comparison under the model's current shadow policy (bodies kept only
when it allows, each at most its ``max_body_bytes``) and writes them in batches,
pruning by age and count, so that every replica answers from the same table.
:func:`shadow_summary` is what ``GET /v1/models/{model}/shadow`` shows, and
:func:`shadow_agreement` what a rollout's gate reads.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from controlplane.db.engine import write_transaction
from controlplane.db.models import ShadowComparison, ShadowHalf
from controlplane.db.shadow_repository import ShadowRepository
from controlplane.domain.clock import utcnow
from controlplane.domain.shadow import Comparison, Half, body_digest, compare
from controlplane.domain.state import DesiredState
from controlplane.telemetry.shadow import ShadowPairs

__all__ = [
    "Disagreement",
    "ShadowRecorder",
    "ShadowSummary",
    "shadow_agreement",
    "shadow_summary",
]

log = logging.getLogger(__name__)

# How often queued comparisons are written, how long a half waits in memory
# before it goes to the database, and the most a summary reads.
FLUSH_INTERVAL_S = 0.5
HANDOFF_S = 1.0
PAIRS_PER_FLUSH = 1000
# SQLite has one writer: a flush waits this long for its turn (then retries later).
WRITE_TIMEOUT_S = 5.0
MAX_QUEUED = 10_000
SUMMARY_ROWS = 50_000
DISAGREEMENTS_SHOWN = 10


class ShadowRecorder:
    """Compares each pair under the model's policy and writes the comparisons.

    Halves that stay alone in ``pairs`` (this replica's memory) for ``handoff_s``
    go to the shadow_halves table at the next flush; every flush pairs what that
    table holds, whichever replica wrote each half, and drops halves older than
    ``expiry_s``. Two replicas flushing at once cannot both pair one request:
    each deletes its halves first and only the one whose delete took them
    compares.
    """

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        state: Callable[[], DesiredState | None],
        *,
        retention_s: float,
        max_comparisons: int,
        pairs: ShadowPairs | None = None,
        flush_interval_s: float = FLUSH_INTERVAL_S,
        handoff_s: float = HANDOFF_S,
        write_timeout_s: float = WRITE_TIMEOUT_S,
    ) -> None:
        self._sessionmaker = sessionmaker
        self._state = state
        self.retention_s = retention_s
        self.max_comparisons = max_comparisons
        self.pairs = pairs
        self.flush_interval_s = flush_interval_s
        self.handoff_s = handoff_s
        self.write_timeout_s = write_timeout_s
        self._queue: deque[Comparison] = deque(maxlen=MAX_QUEUED)
        self.dropped = 0

    def offer(self, primary: Half, shadow: Half) -> Comparison | None:
        """Compare a pair and queue the comparison (see :meth:`compare`)."""
        comparison = self.compare(primary, shadow)
        if comparison is not None:
            self._queue.append(comparison)
        return comparison

    def compare(self, primary: Half, shadow: Half) -> Comparison | None:
        """Compare a pair under the model's policy now; None when the model has no
        shadow policy now, the shadow half is not its version's, or the shadow
        version answered as the primary too (its share of the split)."""
        state = self._state()
        model = state.model(primary.model) if state is not None else None
        policy = model.policy.shadow if model is not None else None
        if policy is None or shadow.version != policy.version or primary.version == shadow.version:
            self.dropped += 1
            return None
        cap = policy.max_body_bytes
        primary, shadow = _capped(primary, cap), _capped(shadow, cap)
        return compare(primary, shadow, keep_bodies=policy.keep_bodies)

    async def run(self) -> None:
        """Write what is queued every ``flush_interval_s``, until cancelled."""
        while True:
            await asyncio.sleep(self.flush_interval_s)
            try:
                await self.flush()
            except Exception:
                log.exception("shadow.flush_failed", extra={"queued": len(self._queue)})

    async def flush(self) -> int:
        """Hand lone halves to the database, pair what it holds, write every
        comparison and prune; return how many comparisons were written."""
        batch = list(self._queue)
        self._queue.clear()
        alone = self.pairs.take_older_than(self.handoff_s) if self.pairs is not None else []
        now = utcnow()
        async with (
            self._sessionmaker() as session,
            write_transaction(session, timeout_s=self.write_timeout_s),
        ):
            repository = ShadowRepository(session)
            if alone:
                await repository.add_halves([self._half_row(h, now) for h in alone])
            for primary, shadow in await repository.pairable(PAIRS_PER_FLUSH):
                if await repository.take_halves(primary.model, primary.request_id) < 2:
                    continue  # another replica took them
                comparison = self.compare(_half(primary), _half(shadow))
                if comparison is not None:
                    batch.append(comparison)
            if self.pairs is not None:
                await repository.expire_halves(now - timedelta(seconds=self.pairs.expiry_s))
            if batch:
                await repository.add_all([_row(c, now) for c in batch])
            await repository.prune(now - timedelta(seconds=self.retention_s), self.max_comparisons)
        if batch:
            log.info("shadow.recorded", extra={"comparisons": len(batch)})
        return len(batch)

    def _half_row(self, half: Half, at: datetime) -> ShadowHalf:
        """The row of a half that waits in the database: with its body only when the
        model's policy keeps bodies, else with the body's digest."""
        state = self._state()
        model = state.model(half.model) if state is not None else None
        policy = model.policy.shadow if model is not None else None
        body = half.body
        if policy is not None and body is not None and len(body) > policy.max_body_bytes:
            body = None
        keep = policy is not None and policy.keep_bodies
        return _half_row(
            half,
            at,
            body=body if keep else None,
            digest=None if keep or body is None else body_digest(body),
        )


def _capped(half: Half, cap: int) -> Half:
    # The scripts read no body over the cap; a report that carries one anyway
    # is compared without it.
    if half.body is not None and len(half.body) > cap:
        return replace(half, body=None)
    return half


def _half_row(half: Half, at: datetime, *, body: bytes | None, digest: str | None) -> ShadowHalf:
    return ShadowHalf(
        at=at,
        model=half.model[:63],
        request_id=half.request_id[:128],
        side=half.side,
        version=half.version[:63],
        status=half.status,
        duration_ms=half.duration_ms,
        body=body,
        digest=digest,
    )


def _half(row: ShadowHalf) -> Half:
    return Half(
        request_id=row.request_id,
        model=row.model,
        side="primary" if row.side == "primary" else "shadow",
        version=row.version,
        status=row.status,
        duration_ms=row.duration_ms,
        body=row.body,
        digest=row.digest,
    )


def _row(c: Comparison, at: datetime) -> ShadowComparison:
    return ShadowComparison(
        at=at,
        model=c.model,
        primary_version=c.primary_version[:63],
        shadow_version=c.shadow_version[:63],
        request_id=c.request_id[:128],
        primary_status=c.primary_status,
        shadow_status=c.shadow_status,
        primary_ms=c.primary_ms,
        shadow_ms=c.shadow_ms,
        status_agree=c.status_agree,
        body_agree=c.body_agree,
        max_abs_diff=c.max_abs_diff,
        cosine=c.cosine,
        diff=c.diff,
        primary_body=c.primary_body,
        shadow_body=c.shadow_body,
    )


@dataclass(frozen=True, slots=True)
class Disagreement:
    """One request whose two answers differ."""

    request_id: str
    at: str
    primary_version: str
    shadow_version: str
    primary_status: int
    shadow_status: int
    diff: str | None
    primary_body: str | None
    shadow_body: str | None


@dataclass(frozen=True, slots=True)
class ShadowSummary:
    """A model's comparisons over a window (rates None without samples)."""

    compared: int
    agreed: int
    status_agreement: float | None
    body_compared: int
    body_agreement: float | None
    latency_diff_p50_ms: float | None
    latency_diff_p99_ms: float | None
    numeric_compared: int
    max_abs_diff: float | None
    min_cosine: float | None
    mean_cosine: float | None
    disagreements: tuple[Disagreement, ...]


async def shadow_summary(
    session: AsyncSession, model: str, window_s: float, shadow_version: str | None = None
) -> ShadowSummary:
    """Return ``model``'s comparisons over the last ``window_s`` seconds."""
    repository = ShadowRepository(session)
    rows = await repository.since(
        model, utcnow() - timedelta(seconds=window_s), shadow_version, SUMMARY_ROWS
    )
    shown = [r for r in rows if not (r.status_agree and r.body_agree is not False)]
    shown = shown[:DISAGREEMENTS_SHOWN]
    bodies = await repository.bodies([r.id for r in shown])
    return summarise(rows, bodies)


def summarise(
    rows: Sequence[ShadowComparison], bodies: dict[int, tuple[bytes | None, bytes | None]]
) -> ShadowSummary:
    """Return the summary of ``rows`` (newest first, without their bodies), with
    the kept ``bodies`` of the disagreements shown, by row id."""
    compared = len(rows)
    status_agreed = sum(1 for r in rows if r.status_agree)
    body_agreed = [r.body_agree for r in rows if r.body_agree is not None]
    diffs = sorted(r.shadow_ms - r.primary_ms for r in rows)
    numeric = [r for r in rows if r.max_abs_diff is not None]
    cosines = [r.cosine for r in numeric if r.cosine is not None]
    agreed = sum(1 for r in rows if r.status_agree and r.body_agree is not False)
    return ShadowSummary(
        compared=compared,
        agreed=agreed,
        status_agreement=status_agreed / compared if compared else None,
        body_compared=len(body_agreed),
        body_agreement=sum(body_agreed) / len(body_agreed) if body_agreed else None,
        latency_diff_p50_ms=_quantile(diffs, 0.5),
        latency_diff_p99_ms=_quantile(diffs, 0.99),
        numeric_compared=len(numeric),
        max_abs_diff=max((r.max_abs_diff or 0.0 for r in numeric), default=None),
        min_cosine=min(cosines, default=None),
        mean_cosine=math.fsum(cosines) / len(cosines) if cosines else None,
        disagreements=tuple(
            _disagreement(r, *bodies.get(r.id, (None, None)))
            for r in [r for r in rows if not (r.status_agree and r.body_agree is not False)][
                :DISAGREEMENTS_SHOWN
            ]
        ),
    )


def _quantile(ordered: Sequence[float], q: float) -> float | None:
    """The nearest-rank quantile of sorted values."""
    if not ordered:
        return None
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[rank - 1]


def _text(body: bytes | None) -> str | None:
    return None if body is None else body.decode("utf-8", errors="replace")


def _disagreement(
    row: ShadowComparison, primary_body: bytes | None, shadow_body: bytes | None
) -> Disagreement:
    return Disagreement(
        request_id=row.request_id,
        at=row.at.isoformat(),
        primary_version=row.primary_version,
        shadow_version=row.shadow_version,
        primary_status=row.primary_status,
        shadow_status=row.shadow_status,
        diff=row.diff,
        primary_body=_text(primary_body),
        shadow_body=_text(shadow_body),
    )


async def shadow_agreement(
    session: AsyncSession, model: str, candidate: str, window_s: float
) -> tuple[float, int] | None:
    """Return (share of requests where ``candidate``, as ``model``'s shadow, agreed
    with the primary on status and body, number compared) over the last
    ``window_s`` seconds; None when nothing was compared. For a rollout's gate."""
    summary = await shadow_summary(session, model, window_s, shadow_version=candidate)
    if summary.compared == 0:
        return None
    return summary.agreed / summary.compared, summary.compared
