"""The traffic window's totals as Prometheus series, on the replica's /metrics.

Counters are totals since this replica started, over the proxies that stream
to it; with several replicas, sum them (each proxy streams to one at a time).
Labels are model, version and zone (the reporting proxy's zone), and tenant
and code: never a proxy, a host or a request, so the number of series is
bounded by versions x zones x status codes.

Thousands of versions make megabytes of text (about 90,000 lines for 3,000
versions), so the text is written here directly, line by line, in the text
format (https://prometheus.io/docs/instrumenting/exposition_formats/), and
:class:`DataPlaneExposition` keeps a copy that a background task renews
while someone scrapes: a scrape never waits for it to be written, except the
first.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Final

from controlplane.domain.statistics import (
    BATCH_SIZE_BUCKETS,
    LATENCY_BUCKETS_MS,
    QUEUE_WAIT_BUCKETS_US,
)
from controlplane.tasks import cancel_and_wait
from controlplane.telemetry.window import TrafficWindow

__all__ = ["DataPlaneExposition", "render"]

# Series written between two yields to the event loop while the copy is renewed.
_SERIES_PER_STEP: Final = 250

# name, help, type; in the order they are written.
_FAMILIES: Final = (
    ("turnout_stats_flushes_total", "Stat-sink flushes folded into the traffic window", "counter"),
    (
        "turnout_stats_flushes_merged_total",
        "Stat-sink flushes that arrived before their stream's previous one was folded"
        " and were merged into it (the control plane was behind; counts stay exact)",
        "counter",
    ),
    (
        "turnout_model_requests_total",
        "Requests answered, per model version (each counted once, retries included)",
        "counter",
    ),
    ("turnout_model_responses_total", "Responses by status code", "counter"),
    ("turnout_model_retries_total", "Upstream retries Envoy made", "counter"),
    (
        "turnout_model_overflows_total",
        "Requests or connections a circuit breaker refused",
        "counter",
    ),
    ("turnout_model_ejections_total", "Hosts ejected by outlier detection", "counter"),
    ("turnout_model_active_requests", "Requests in flight upstream", "gauge"),
    ("turnout_model_pending_requests", "Requests waiting for an upstream connection", "gauge"),
    (
        "turnout_model_upstream_latency_seconds",
        "Time of each upstream try, from Envoy's histograms",
        "histogram",
    ),
    (
        "turnout_model_batch_size",
        "Size of the batch each batched request rode in (request-weighted)",
        "histogram",
    ),
    (
        "turnout_model_batch_queue_wait_seconds",
        "Time each batched request waited in its batcher's queue",
        "histogram",
    ),
    (
        "turnout_model_batch_shed_total",
        "Requests a batcher refused to keep its latency target",
        "counter",
    ),
    (
        "turnout_tenant_requests_total",
        'Requests by tenant (named by its verified credential) and status code ("-": none)',
        "counter",
    ),
)
(
    _FLUSHES,
    _MERGED,
    _REQUESTS,
    _RESPONSES,
    _RETRIES,
    _OVERFLOWS,
    _EJECTIONS,
    _ACTIVE,
    _PENDING,
    _LATENCY,
    _BATCH_SIZE,
    _QUEUE_WAIT,
    _SHED,
    _TENANTS,
) = range(len(_FAMILIES))
# Histogram families: window field, bucket bounds, scale to base units.
_HISTOGRAMS: Final = (
    (_LATENCY, "latency", LATENCY_BUCKETS_MS, 0.001),
    (_BATCH_SIZE, "batch_size", BATCH_SIZE_BUCKETS, 1.0),
    (_QUEUE_WAIT, "queue_wait", QUEUE_WAIT_BUCKETS_US, 0.000001),
)


def _escape(value: str) -> str:
    """A label value as the text format quotes it."""
    if "\\" in value or "\n" in value or '"' in value:
        return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
    return value


def _number(value: float) -> str:
    return repr(float(value))


def _les(bounds: Sequence[float], scale: float) -> list[str]:
    """The ``le`` label of each bucket, +Inf last."""
    return [f'le="{float(b) * scale!r}",' for b in bounds] + ['le="+Inf",']


class _Writer:
    """The lines of every family, filled series by series, joined in family order."""

    def __init__(self) -> None:
        self.lines: list[list[str]] = [[] for _ in _FAMILIES]
        self._les = {what: _les(bounds, scale) for _, what, bounds, scale in _HISTOGRAMS}

    def version(self, window: TrafficWindow, key: tuple[str, str, str]) -> None:
        counts, (active, pending, _) = window.series_totals(key)
        model, version, zone = key
        labels = f'model="{_escape(model)}",version="{_escape(version)}",zone="{_escape(zone)}"'
        lines = self.lines
        end = "}"
        codes = counts.codes
        lines[_REQUESTS].append(
            f"turnout_model_requests_total{{{labels}}} {_number(sum(codes.values()))}"
        )
        responses = lines[_RESPONSES]
        for code, n in sorted(codes.items()):
            responses.append(
                f'turnout_model_responses_total{{{labels},code="{code}"}} {_number(n)}'
            )
        lines[_RETRIES].append(
            f"turnout_model_retries_total{{{labels}{end} {_number(counts.retries)}"
        )
        lines[_OVERFLOWS].append(
            f"turnout_model_overflows_total{{{labels}{end} {_number(counts.overflows)}"
        )
        lines[_EJECTIONS].append(
            f"turnout_model_ejections_total{{{labels}{end} {_number(counts.ejections)}"
        )
        lines[_ACTIVE].append(f"turnout_model_active_requests{{{labels}{end} {_number(active)}")
        lines[_PENDING].append(f"turnout_model_pending_requests{{{labels}{end} {_number(pending)}")
        for family, what, _, scale in _HISTOGRAMS:
            cumulative = counts.cumulative(what)
            if cumulative is None:
                continue
            name = _FAMILIES[family][0]
            out = lines[family]
            for le, count in zip(self._les[what], cumulative, strict=True):
                out.append(f"{name}_bucket{{{le}{labels}{end} {_number(count)}")
            out.append(f"{name}_count{{{labels}{end} {_number(cumulative[-1])}")
            out.append(f"{name}_sum{{{labels}{end} {_number(counts.sums.get(what, 0.0) * scale)}")
        if counts.shed:
            lines[_SHED].append(
                f"turnout_model_batch_shed_total{{{labels}{end} {_number(counts.shed)}"
            )

    def rest(self, window: TrafficWindow) -> None:
        lines = self.lines
        lines[_FLUSHES].append(f"turnout_stats_flushes_total {_number(window.reports)}")
        lines[_MERGED].append(
            f"turnout_stats_flushes_merged_total {_number(window.merged_flushes)}"
        )
        tenants = lines[_TENANTS]
        for subject, counts in window.tenant_totals():
            tenant = _escape(subject or "-")
            for code, n in sorted(counts.codes.items()):
                tenants.append(
                    f'turnout_tenant_requests_total{{tenant="{tenant}",code="{code}"}} {_number(n)}'
                )

    def text(self) -> bytes:
        out: list[str] = []
        for (name, help_text, kind), lines in zip(_FAMILIES, self.lines, strict=True):
            out.append(f"# HELP {name} {help_text}\n# TYPE {name} {kind}")
            out.extend(lines)
        out.append("")
        return "\n".join(out).encode()


def _write(window: TrafficWindow, writer: _Writer) -> Iterator[None]:
    """Write every series into ``writer``, pausing (a ``yield``) every few hundred;
    a series gone by the time its turn comes is skipped."""
    for n, key in enumerate(window.series_keys(), 1):
        if window.has_series(key):
            writer.version(window, key)
        if n % _SERIES_PER_STEP == 0:
            yield
    writer.rest(window)


def render(window: TrafficWindow) -> bytes:
    """The window's series in the text format, written at once."""
    writer = _Writer()
    for _ in _write(window, writer):
        pass
    return writer.text()


async def _render_stepwise(window: TrafficWindow) -> bytes:
    """What :func:`render` returns, yielding to the event loop at each pause
    (each series' figures are its own at the time it is written)."""
    writer = _Writer()
    for _ in _write(window, writer):
        await asyncio.sleep(0)
    return writer.text()


class DataPlaneExposition:
    """The data-plane series in the text format; the route appends them to the
    control plane's own series.

    The first scrape writes the text; it also starts a task that writes it
    again every ``max_age_s`` for as long as scrapes keep coming (until none
    came for ``idle_s``), stepwise, so that a scrape is served the last copy
    at once and the API is never held up by a whole rewrite. ``max_age_s`` 0
    writes the text on every scrape.
    """

    def __init__(
        self,
        window: TrafficWindow,
        max_age_s: float,
        *,
        idle_s: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._window = window
        self._max_age_s = max_age_s
        self._idle_s = max(idle_s, max_age_s)
        self._clock = clock
        self._copy: bytes | None = None
        self._scraped = 0.0
        self._task: asyncio.Task[None] | None = None
        self.renders = 0

    async def text(self) -> bytes:
        """The data-plane series, at most ``max_age_s`` old (plus one rewrite)."""
        self._scraped = self._clock()
        if self._max_age_s <= 0:
            self.renders += 1
            return await _render_stepwise(self._window)
        if self._task is None or self._task.done():
            # Nobody renews the copy (first scrape, or none for idle_s): write it now.
            await self._renew()
            self._task = asyncio.create_task(self._renewing(), name="turnout-metrics-text")
        assert self._copy is not None
        return self._copy

    async def _renew(self) -> None:
        self._copy = await _render_stepwise(self._window)
        self.renders += 1

    async def _renewing(self) -> None:
        while self._clock() - self._scraped < self._idle_s:
            await asyncio.sleep(self._max_age_s)
            await self._renew()

    async def close(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None
