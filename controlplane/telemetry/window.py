"""The traffic window: Envoy's statistics from every proxy, summed per model
version (and zone) and per tenant, over the last few minutes.

Each proxy's stat sink reports, every flush interval, what changed since its
last flush: counters as deltas (``report_counters_as_deltas``), histograms as
the interval's samples, gauges as their current value. Deltas make a proxy
restart harmless (its new stream starts from zero; nothing is subtracted), and
a proxy that goes away leaves its past counts in the window and takes its
gauges with it.

State is bounded by what is measured, not by traffic: one series per
(model, version, zone) and per tenant, each a ring of ``retention_s /
slot_s`` slots, with a slot allocated only when something happened in it,
plus one gauge entry per proxy and series. Reads sum the slots a window
covers.
"""

from __future__ import annotations

import bisect
import itertools
import math
import struct
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from controlplane.domain.naming import stat_names
from controlplane.domain.state import DesiredState
from controlplane.domain.statistics import (
    BATCH_SIZE_BUCKETS,
    LATENCY_BUCKETS_MS,
    QUEUE_WAIT_BUCKETS_US,
    STAT_PREFIX,
    StatKind,
)
from controlplane.telemetry.wire import Flush, from_families

__all__ = [
    "DEFAULT_SLOT_S",
    "Batching",
    "Figures",
    "Proxy",
    "SeriesKey",
    "TrafficWindow",
    "quantile",
]

DEFAULT_SLOT_S: Final = 5.0
# A proxy whose last report is older than this many flush intervals no longer
# counts in the gauges (its stream may be open but stuck).
STALE_FLUSHES: Final = 3

SeriesKey = tuple[str, str, str]  # model, version, zone

# What one statistic name means, parsed once: (target, name, field).
# target: "cluster" (name is a stat name) or "tenant" (name is a subject).
_Meaning = tuple[str, str, str]
_IGNORED: Final[_Meaning] = ("", "", "")

# Fields of a slot, by the statistic that feeds them.
_CLUSTER_COUNTERS: Final = {
    "upstream_rq_retry": "retries",
    "upstream_rq_pending_overflow": "overflows",
    "upstream_rq_retry_overflow": "overflows",
    "upstream_cx_overflow": "overflows",
    "outlier_detection.ejections_enforced_total": "ejections",
}
_CLUSTER_GAUGES: Final = {
    "upstream_rq_active": 0,
    "upstream_rq_pending_active": 1,
    "outlier_detection.ejections_active": 2,
}
# What only a histogram feeds (a counter of that name is not counted).
_NOT_COUNTERS: Final = frozenset({"latency", "batch_size", "queue_wait"})
_HISTOGRAM_BOUNDS: Final = {
    "latency": LATENCY_BUCKETS_MS,
    "batch_size": BATCH_SIZE_BUCKETS,
    "queue_wait": QUEUE_WAIT_BUCKETS_US,
}
_SIZES: Final = {what: len(bounds) + 1 for what, bounds in _HISTOGRAM_BOUNDS.items()}


def _parse(name: str) -> _Meaning:
    """Return what the statistic ``name`` feeds, or ``_IGNORED``."""
    if name.startswith("cluster."):
        stat, _, statistic = name[len("cluster.") :].partition(".")
        if statistic == "upstream_rq_time":
            return ("cluster", stat, "latency")
        if statistic in _CLUSTER_COUNTERS:
            return ("cluster", stat, _CLUSTER_COUNTERS[statistic])
        if statistic in _CLUSTER_GAUGES:
            return ("cluster", stat, "gauge:" + statistic)
        return _IGNORED
    if not name.startswith(STAT_PREFIX + "."):
        return _IGNORED
    kind, _, rest = name[len(STAT_PREFIX) + 1 :].partition(".")
    if kind == StatKind.REQUESTS:
        # cluster.<stat name>.code.<status>
        head, _, code = rest.rpartition(".code.")
        if head.startswith("cluster.") and code.isdigit():
            return ("cluster", head[len("cluster.") :], "code:" + code)
    elif kind == StatKind.TENANT_REQUESTS:
        head, _, code = rest.rpartition(".code.")
        if head.startswith("tenant.") and code.isdigit():
            return ("tenant", head[len("tenant.") :], "code:" + code)
    elif kind in (StatKind.BATCH_SIZE, StatKind.QUEUE_WAIT, StatKind.SHED) and rest.startswith(
        "cluster."
    ):
        what = {
            StatKind.BATCH_SIZE: "batch_size",
            StatKind.QUEUE_WAIT: "queue_wait",
            StatKind.SHED: "shed",
        }[kind]
        return ("cluster", rest[len("cluster.") :], what)
    return _IGNORED


def _pack(values: Sequence[int]) -> int:
    """``values`` (each below 2**64) as one int, 64 bits each, the first lowest:
    adding two packed histograms adds them bucket by bucket, in one operation."""
    return int.from_bytes(struct.pack(f"<{len(values)}Q", *values), "little")


def _unpack(packed: int, size: int) -> tuple[int, ...]:
    return struct.unpack(f"<{size}Q", packed.to_bytes(8 * size, "little"))


@dataclass(slots=True)
class _Counts:
    """What happened in one slot of one series (or, for totals, ever)."""

    codes: dict[int, float] = field(default_factory=dict)
    retries: float = 0.0
    overflows: float = 0.0
    ejections: float = 0.0
    shed: float = 0.0
    # Cumulative bucket counts, the last one +Inf (the sample count), packed
    # (see _pack); and the sums of the samples.
    packed: dict[str, int] = field(default_factory=dict)
    sums: dict[str, float] = field(default_factory=dict)

    @property
    def histograms(self) -> dict[str, list[float]]:
        """Per-bucket (not cumulative) counts of each histogram; the last bucket is +Inf."""
        out = {}
        for what, packed in self.packed.items():
            cumulative = _unpack(packed, _SIZES[what])
            out[what] = [
                float(c - p) for c, p in zip(cumulative, (0, *cumulative[:-1]), strict=True)
            ]
        return out

    def cumulative(self, what: str) -> tuple[int, ...] | None:
        """The cumulative bucket counts of histogram ``what``, the last one +Inf
        (the sample count); None without samples."""
        packed = self.packed.get(what)
        return _unpack(packed, _SIZES[what]) if packed else None

    def add_packed(self, what: str, packed: int, total: float) -> None:
        self.packed[what] = self.packed.get(what, 0) + packed
        self.sums[what] = self.sums.get(what, 0.0) + total

    def merge(self, other: _Counts) -> None:
        for code, n in other.codes.items():
            self.codes[code] = self.codes.get(code, 0.0) + n
        self.retries += other.retries
        self.overflows += other.overflows
        self.ejections += other.ejections
        self.shed += other.shed
        for what, packed in other.packed.items():
            self.add_packed(what, packed, other.sums.get(what, 0.0))


@dataclass(slots=True)
class _Series:
    """One series: its slots in the window, the sum of every slot before the
    current one since start (a value is added once, to its slot; a slot is
    added to ``closed`` once, when the next one opens), and the latest gauges
    of every proxy that reports it."""

    slots: deque[tuple[int, _Counts]]
    closed: _Counts = field(default_factory=_Counts)
    gauges: dict[int, tuple[float, float, float, float]] = field(default_factory=dict)

    def slot(self, index: int) -> _Counts:
        slots = self.slots
        if slots and slots[-1][0] == index:
            return slots[-1][1]
        if slots:
            self.closed.merge(slots[-1][1])  # the clock only moves on: it is final
        counts = _Counts()
        slots.append((index, counts))
        return counts

    @property
    def totals(self) -> _Counts:
        """Everything since start."""
        totals = _Counts()
        totals.merge(self.closed)
        if self.slots:
            totals.merge(self.slots[-1][1])
        return totals


@dataclass(frozen=True, slots=True)
class Proxy:
    """One stat-sink stream: the Envoy behind it and its zone."""

    stream_id: int
    node_id: str
    zone: str


@dataclass(frozen=True, slots=True)
class Batching:
    """What the batchers in front of a version reported over a window."""

    requests: int
    mean_batch_size: float | None
    queue_wait_p99_ms: float | None
    shed: int


@dataclass(frozen=True, slots=True)
class Figures:
    """One version's (or a model's, or a tenant's) traffic over a window."""

    window_s: float
    requests: int
    responses: dict[str, int]
    retries: int
    overflows: int
    ejections: int
    latency_samples: int
    latency_ms: dict[str, float | None]
    active_requests: int
    pending_requests: int
    ejected_hosts: int
    batching: Batching | None

    @property
    def rps(self) -> float:
        return self.requests / self.window_s if self.window_s > 0 else 0.0

    @property
    def errors(self) -> int:
        """Responses with a 5xx status: the ones the version is to blame for."""
        return sum(n for code, n in self.responses.items() if code.startswith("5"))

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests else None

    def classes(self) -> dict[str, int]:
        """Return the responses by class (``"2xx"``...)."""
        classes: dict[str, int] = {}
        for code, n in self.responses.items():
            name = code[0] + "xx"
            classes[name] = classes.get(name, 0) + n
        return classes


def quantile(q: float, bounds: Sequence[float], counts: Sequence[float]) -> float | None:
    """Return the ``q`` quantile of a histogram by linear interpolation in its
    bucket, as Prometheus's ``histogram_quantile`` does; ``counts`` has one
    more entry than ``bounds`` (the +Inf bucket), whose samples count as the
    last bound. None when the histogram is empty."""
    total = sum(counts)
    if total <= 0:
        return None
    rank = q * total
    seen = 0.0
    for i, n in enumerate(counts):
        if n and seen + n >= rank:
            if i >= len(bounds):
                return float(bounds[-1])
            lower = bounds[i - 1] if i else 0.0
            return float(lower + (bounds[i] - lower) * ((rank - seen) / n))
        seen += n
    return float(bounds[-1])


class _Rebinner:
    """Maps a reported histogram's buckets onto the ones Turnout asks for (the
    same, unless a proxy runs with another bootstrap)."""

    def __init__(self, expected: Sequence[float]) -> None:
        self._expected = tuple(float(b) for b in expected)
        self._maps: dict[tuple[float, ...], list[int]] = {}

    def packed(self, bounds: tuple[float, ...], cumulative: Sequence[int], count: int) -> int:
        """The reported histogram on the expected buckets, cumulative and packed."""
        if bounds == self._expected:
            return _pack([*cumulative, count])
        out = [0] * (len(self._expected) + 1)
        index = self._maps.get(bounds)
        if index is None:
            index = [bisect.bisect_left(self._expected, b) for b in bounds]
            self._maps[bounds] = index
        previous = 0
        for target, c in zip(index, cumulative, strict=True):
            out[target] += max(c - previous, 0)
            previous = max(c, previous)
        out[-1] += max(count - previous, 0)
        return _pack(list(itertools.accumulate(out)))


_Target = tuple[_Series, str, int]  # series, field, status code (-1: not a code)


class TrafficWindow:
    """Sums what every proxy's stat sink reports; see the module docs.

    ``state`` returns the desired state the stat names are read against (the
    sync loop's current one); ``clock`` is a monotonic clock in seconds.
    """

    def __init__(
        self,
        state: Callable[[], DesiredState | None],
        *,
        retention_s: float = 300.0,
        slot_s: float = DEFAULT_SLOT_S,
        flush_interval_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if slot_s <= 0 or retention_s < slot_s:
            raise ValueError("need 0 < slot_s <= retention_s")
        self._state = state
        self._slot_s = slot_s
        self._retention_s = retention_s
        self._slots = math.ceil(retention_s / slot_s)
        self._stale_after_s = STALE_FLUSHES * flush_interval_s
        self._clock = clock
        self._started = clock()
        self._versions: dict[SeriesKey, _Series] = {}
        self._tenants: dict[str, _Series] = {}
        self._meanings: dict[str, _Meaning] = {}
        self._names: dict[str, tuple[str, str]] = {}
        self._names_of: DesiredState | None = None
        self._seen: dict[int, float] = {}  # stream id -> time of its last report
        self._gauged: dict[int, set[SeriesKey]] = {}  # stream id -> series it has gauges in
        # Per zone, what each counter or histogram name feeds, resolved once (None:
        # nothing); cleared when the desired state changes or a series is dropped.
        self._targets: dict[str, dict[str, _Target | None]] = {}
        # The same for gauges: the series key and the gauge's place.
        self._gauge_targets: dict[str, dict[str, tuple[SeriesKey, int] | None]] = {}
        self._rebinners = {what: _Rebinner(b) for what, b in _HISTOGRAM_BOUNDS.items()}
        self.reports = 0
        # Flushes merged into the one before because the window had not taken it yet
        # (controlplane.telemetry.sink.Inbox).
        self.merged_flushes = 0

    @property
    def retention_s(self) -> float:
        return self._retention_s

    def slot_index(self) -> int:
        """The index of the slot the clock is in now."""
        return int(self._clock() // self._slot_s)

    def now(self) -> float:
        return self._clock()

    def _stat_names(self) -> dict[str, tuple[str, str]]:
        state = self._state()
        if state is not self._names_of:
            self._names_of = state
            self._names = stat_names(state) if state is not None else {}
            self._targets.clear()
            self._gauge_targets.clear()
        return self._names

    def ingest(self, proxy: Proxy, families: Iterable[Any]) -> None:
        """Add one flush of ``proxy`` (a sequence of ``MetricFamily`` messages)."""
        self.ingest_flush(proxy, from_families(families))

    def ingest_flush(self, proxy: Proxy, flush: Flush) -> None:
        """Add one flush of ``proxy``: what it reported other than zero
        (``controlplane.telemetry.wire``). A gauge the flush does not carry is
        zero, so a proxy's gauges are replaced by the flush's."""
        now = self._clock()
        index = int(now // self._slot_s)
        names = self._stat_names()
        self._seen[proxy.stream_id] = now
        targets = self._targets.get(proxy.zone)
        if targets is None:
            targets = self._targets[proxy.zone] = {}
        for name, value in flush.counters.items():
            found = targets.get(name)
            if found is None:
                if name in targets:
                    continue  # feeds nothing
                found = targets[name] = self._target(name, names, proxy.zone)
                if found is None:
                    continue
            series, what, code = found
            slots = series.slots
            slot = slots[-1][1] if slots and slots[-1][0] == index else series.slot(index)
            if code >= 0:
                codes = slot.codes
                codes[code] = codes.get(code, 0.0) + value
            elif what not in _NOT_COUNTERS:
                setattr(slot, what, getattr(slot, what) + value)
        for name, (bounds, cumulative, count, total) in flush.histograms.items():
            found = targets.get(name)
            if found is None:
                if name in targets:
                    continue  # feeds nothing
                found = targets[name] = self._target(name, names, proxy.zone)
                if found is None:
                    continue
            series, what, _ = found
            rebinner = self._rebinners.get(what)
            if rebinner is None:
                continue
            series.slot(index).add_packed(what, rebinner.packed(bounds, cumulative, count), total)
        gauges: dict[SeriesKey, list[float]] = {}
        gauge_targets = self._gauge_targets.get(proxy.zone)
        if gauge_targets is None:
            gauge_targets = self._gauge_targets[proxy.zone] = {}
        for name, value in flush.gauges.items():
            gauge = gauge_targets.get(name)
            if gauge is None:
                if name in gauge_targets:
                    continue  # feeds nothing
                gauge = gauge_targets[name] = self._gauge_target(name, names, proxy.zone)
                if gauge is None:
                    continue
            series_key, position = gauge
            values = gauges.get(series_key)
            if values is None:
                values = gauges[series_key] = [0.0, 0.0, 0.0]
            values[position] = value
        stream = proxy.stream_id
        for series_key in self._gauged.get(stream, set()).difference(gauges):
            gone = self._versions.get(series_key)
            if gone is not None:
                gone.gauges.pop(stream, None)
        for series_key, (active, pending, ejected) in gauges.items():
            gauged = self._versions.get(series_key)
            if gauged is None:
                gauged = self._versions[series_key] = _Series(deque(maxlen=self._slots))
            gauged.gauges[stream] = (now, active, pending, ejected)
        self._gauged[stream] = set(gauges)
        self.reports += 1

    def _gauge_target(
        self, name: str, names: dict[str, tuple[str, str]], zone: str
    ) -> tuple[SeriesKey, int] | None:
        """The series a gauge named ``name`` is of, and its place in the gauges."""
        meaning = self._meanings.get(name)
        if meaning is None:
            meaning = self._meanings[name] = _parse(name)
        _, subject, what = meaning
        model_version = names.get(subject)
        if model_version is None or not what.startswith("gauge:"):
            return None
        key = (model_version[0], model_version[1], zone)
        return key, _CLUSTER_GAUGES[what[len("gauge:") :]]

    def _target(self, name: str, names: dict[str, tuple[str, str]], zone: str) -> _Target | None:
        """The series a counter or histogram named ``name`` feeds, and what in it."""
        meaning = self._meanings.get(name)
        if meaning is None:
            meaning = self._meanings[name] = _parse(name)
        target, subject, what = meaning
        if not target or what.startswith("gauge:"):
            return None
        series = (
            self._tenant_series(subject)
            if target == "tenant"
            else self._version_series(names, subject, zone)
        )
        if series is None:
            return None
        return series, what, int(what[5:]) if what.startswith("code:") else -1

    def _version_series(
        self, names: dict[str, tuple[str, str]], stat: str, zone: str
    ) -> _Series | None:
        model_version = names.get(stat)
        if model_version is None:
            return None
        key = (model_version[0], model_version[1], zone)
        series = self._versions.get(key)
        if series is None:
            series = self._versions[key] = _Series(deque(maxlen=self._slots))
        return series

    def _tenant_series(self, subject: str) -> _Series:
        series = self._tenants.get(subject)
        if series is None:
            series = self._tenants[subject] = _Series(deque(maxlen=self._slots))
        return series

    def forget(self, proxy: Proxy) -> None:
        """Drop the gauges of a proxy whose stream ended; its counts stay."""
        self._seen.pop(proxy.stream_id, None)
        for series_key in self._gauged.pop(proxy.stream_id, set()):
            series = self._versions.get(series_key)
            if series is not None:
                series.gauges.pop(proxy.stream_id, None)

    def prune(self, state: DesiredState | None = None) -> None:
        """Drop the series of versions that are gone from the desired state
        and have nothing left in the window."""
        names = set(stat_names(state).values()) if state is not None else None
        horizon = int(self._clock() // self._slot_s) - self._slots
        for key in list(self._versions):
            series = self._versions[key]
            idle = not series.slots or series.slots[-1][0] <= horizon
            if idle and not series.gauges and (names is None or key[:2] not in names):
                del self._versions[key]
                self._targets.clear()

    # -- reads ---------------------------------------------------------------

    def _window(self, window_s: float) -> tuple[int, float]:
        """Return the first slot a window of ``window_s`` covers, and the
        seconds it really covers (less while the window is still filling)."""
        window_s = min(max(window_s, self._slot_s), self._retention_s)
        now = self._clock()
        current = int(now // self._slot_s)
        first = current - math.ceil(window_s / self._slot_s) + 1
        covered = now - max(first * self._slot_s, self._started)
        return first, max(covered, 1e-9)

    @staticmethod
    def _sum(series: Iterable[_Series], first: int) -> _Counts:
        counts = _Counts()
        for s in series:
            for index, slot in reversed(s.slots):
                if index < first:
                    break
                counts.merge(slot)
        return counts

    def _gauges(self, series: Iterable[_Series]) -> tuple[int, int, int]:
        fresh = self._clock() - self._stale_after_s
        active = pending = ejected = 0.0
        for s in series:
            for at, a, p, e in s.gauges.values():
                if at >= fresh:
                    active, pending, ejected = active + a, pending + p, ejected + e
        return round(active), round(pending), round(ejected)

    def _figures(self, series: list[_Series], first: int, covered: float) -> Figures:
        counts = self._sum(series, first)
        active, pending, ejected = self._gauges(series)
        return _figures_of(counts, covered, active, pending, ejected)

    def versions(self, model: str) -> list[tuple[str, str]]:
        """Return the (version, zone) pairs of ``model`` that have a series."""
        return sorted((v, z) for m, v, z in self._versions if m == model)

    def version_figures(
        self, model: str, window_s: float
    ) -> dict[str, tuple[Figures, dict[str, Figures]]]:
        """Return ``{version: (figures, {zone: figures})}`` for ``model`` over the
        last ``window_s`` seconds (zones only where proxies report one)."""
        first, covered = self._window(window_s)
        by_version: dict[str, dict[str, _Series]] = {}
        for (m, v, z), series in self._versions.items():
            if m == model:
                by_version.setdefault(v, {})[z] = series
        out: dict[str, tuple[Figures, dict[str, Figures]]] = {}
        for version, zones in by_version.items():
            total = self._figures(list(zones.values()), first, covered)
            named = {zone: self._figures([s], first, covered) for zone, s in zones.items() if zone}
            out[version] = (total, named)
        return out

    def every_model_figures(
        self, window_s: float
    ) -> dict[str, tuple[Figures, dict[str, tuple[Figures, dict[str, Figures]]]]]:
        """Return, for every model with a series, what :meth:`model_figures` and
        :meth:`version_figures` return, in one pass over the series."""
        first, covered = self._window(window_s)
        by_model: dict[str, dict[str, dict[str, _Series]]] = {}
        for (m, v, z), series in self._versions.items():
            by_model.setdefault(m, {}).setdefault(v, {})[z] = series
        out: dict[str, tuple[Figures, dict[str, tuple[Figures, dict[str, Figures]]]]] = {}
        for model, versions in by_model.items():
            figures: dict[str, tuple[Figures, dict[str, Figures]]] = {}
            for version, zones in versions.items():
                total = self._figures(list(zones.values()), first, covered)
                named = {
                    zone: self._figures([s], first, covered) for zone, s in zones.items() if zone
                }
                figures[version] = (total, named)
            every = [s for zones in versions.values() for s in zones.values()]
            out[model] = (self._figures(every, first, covered), figures)
        return out

    def model_figures(self, model: str, window_s: float) -> Figures:
        """Return ``model``'s figures over the window, all versions together."""
        first, covered = self._window(window_s)
        series = [s for (m, _, _), s in self._versions.items() if m == model]
        return self._figures(series, first, covered)

    def nothing(self, window_s: float) -> Figures:
        """Return the figures of a series that reported nothing over the window."""
        _, covered = self._window(window_s)
        return _figures_of(_Counts(), covered, 0, 0, 0)

    def models(self) -> list[str]:
        """Return every model with a series, sorted."""
        return sorted({m for m, _, _ in self._versions})

    def tenant_figures(self, window_s: float) -> dict[str, Figures]:
        """Return every tenant's figures over the window ("" is no verified tenant)."""
        first, covered = self._window(window_s)
        return {
            subject: self._figures([series], first, covered)
            for subject, series in sorted(self._tenants.items())
        }

    def series_keys(self) -> list[SeriesKey]:
        """Every version series, sorted."""
        return sorted(self._versions)

    def has_series(self, key: SeriesKey) -> bool:
        return key in self._versions

    def series_totals(self, key: SeriesKey) -> tuple[_Counts, tuple[int, int, int]]:
        """One version series' counts since start, and its gauges (active,
        pending, ejected)."""
        series = self._versions[key]
        return series.totals, self._gauges([series])

    def totals(self) -> Iterable[tuple[SeriesKey, _Counts, tuple[int, int, int]]]:
        """Yield every version series' counts since start, with its gauges."""
        for key in self.series_keys():
            yield key, *self.series_totals(key)

    def tenant_totals(self) -> Iterable[tuple[str, _Counts]]:
        """Yield every tenant's counts since start."""
        for subject, series in sorted(self._tenants.items()):
            yield subject, series.totals


def _figures_of(
    counts: _Counts, covered: float, active: int, pending: int, ejected: int
) -> Figures:
    latency = counts.histograms.get("latency")
    latency_ms: dict[str, float | None] = {
        name: (quantile(q, LATENCY_BUCKETS_MS, latency) if latency else None)
        for name, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99))
    }
    sizes = counts.histograms.get("batch_size")
    waits = counts.histograms.get("queue_wait")
    batching = None
    if sizes or waits or counts.shed:
        sized = sum(sizes) if sizes else 0.0
        wait_p99 = quantile(0.99, QUEUE_WAIT_BUCKETS_US, waits) if waits else None
        batching = Batching(
            requests=round(sized),
            mean_batch_size=(counts.sums.get("batch_size", 0.0) / sized) if sized else None,
            queue_wait_p99_ms=wait_p99 / 1000 if wait_p99 is not None else None,
            shed=round(counts.shed),
        )
    responses = {str(code): round(n) for code, n in sorted(counts.codes.items())}
    return Figures(
        window_s=covered,
        requests=sum(responses.values()),
        responses=responses,
        retries=round(counts.retries),
        overflows=round(counts.overflows),
        ejections=round(counts.ejections),
        latency_samples=round(sum(latency)) if latency else 0,
        latency_ms=latency_ms,
        active_requests=active,
        pending_requests=pending,
        ejected_hosts=ejected,
        batching=batching,
    )
