"""Simulated proxies: N gRPC ``StreamMetrics`` streams, each sending one flush a second.

    .venv/bin/python -m bench.telemetry.load --port XDS_PORT --mode a|b [--proxies 100]

Run by ``bench.telemetry.run`` in its own process. Each message is shaped as a
real Envoy's with Turnout's bootstrap (``envoy-shape.json``, captured by
``bench.telemetry.capture``): every non-cluster family Envoy sends, then per
cluster (model version) the families a cluster that has had traffic sends on
every flush, used counters at delta 0 and histograms with every bucket
included (see ``PER_CLUSTER``). Messages are serialised before the streams
start (``VARIANTS`` per mode, sent in turn) so that this process only writes
bytes. Mode ``a``: every cluster has traffic in every flush. Mode ``b``: a
tenth of the clusters have traffic in a given flush (a different tenth each
second), the rest send zero deltas and empty histograms.

Prints ``ready`` once the streams are open, then ``sent <flushes> <late>
<cpu_s> <t>`` every second (cumulative; ``late``: flushes sent more than half
an interval after their time) until SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import time
from pathlib import Path
from typing import Any

import grpc

from controlplane.domain.naming import cluster_name, stat_name
from controlplane.domain.statistics import LATENCY_BUCKETS_MS
from controlplane.telemetry.protocol import COUNTER, GAUGE, HISTOGRAM, METHOD, SERVICE
from controlplane.telemetry.protocol import StreamMetricsMessage as Message

from ..xds.common import model_name

SHAPE = Path(__file__).with_name("envoy-shape.json")
VARIANTS = 10
TENANTS = 10
# What one cluster that has seen traffic sends in every flush. Captured from
# Envoy 1.40: the two gauges, the latency histogram and the access logger's
# counter per status code seen. Envoy's counters are sent once used; a cluster
# that ever retried or timed out sends those too, so the worst case has them.
PER_CLUSTER: tuple[tuple[str, int], ...] = (
    ("turnout.requests.cluster.{cluster}.code.200", COUNTER),
    ("turnout.requests.cluster.{cluster}.code.500", COUNTER),
    ("cluster.{cluster}.upstream_rq_retry", COUNTER),
    ("cluster.{cluster}.upstream_rq_timeout", COUNTER),
    ("cluster.{cluster}.upstream_rq_active", GAUGE),
    ("cluster.{cluster}.upstream_rq_pending_active", GAUGE),
    ("cluster.{cluster}.upstream_rq_time", HISTOGRAM),
)
_TYPES = {"counter": COUNTER, "gauge": GAUGE, "histogram": HISTOGRAM}
TIMESTAMP_MS = 1_800_000_000_000


def _family(name: str, kind: int, rng: random.Random | None, bounds: list[float]) -> bytes:
    """One family, encoded as a StreamMetricsMessage holding only it: the
    bytes of one ``envoy_metrics`` entry, so entries concatenate into a message.
    ``rng`` None: nothing happened (zero delta, empty histogram)."""
    message = Message()
    family = message.envoy_metrics.add(name=name, type=kind)
    metric = family.metric.add(timestamp_ms=TIMESTAMP_MS)
    if kind == COUNTER:
        metric.counter.value = float(rng.randint(1, 40)) if rng else 0.0
    elif kind == GAUGE:
        metric.gauge.value = float(rng.randint(0, 4)) if rng else 0.0
    else:
        samples = sorted(rng.uniform(0, 300) for _ in range(rng.randint(1, 40))) if rng else []
        histogram = metric.histogram
        histogram.sample_count = len(samples)
        histogram.sample_sum = sum(samples)
        for bound in bounds:
            histogram.bucket.add(
                cumulative_count=sum(1 for s in samples if s <= bound), upper_bound=bound
            )
    return message.SerializeToString()


def _fixed_part(shape: dict[str, Any], rng: random.Random) -> bytes:
    """Every non-cluster family the capture saw (tenant ones for ``TENANTS`` tenants)."""
    parts = []
    for entry in shape["families"]:
        if entry["per_cluster"]:
            continue
        kind = _TYPES[entry["type"]]
        names = (
            [entry["name"].replace("{tenant}", f"tenant-{t:02d}") for t in range(TENANTS)]
            if "{tenant}" in entry["name"]
            else [entry["name"]]
        )
        for name in names:
            parts.append(_family(name, kind, rng, entry["bounds"]))
    return b"".join(parts)


def build(models: int, versions: int, mode: str, seed: int = 1) -> list[bytes]:
    """Return ``VARIANTS`` serialised flushes (without the identifier)."""
    shape = json.loads(SHAPE.read_text())
    rng = random.Random(seed)
    bounds = [float(b) for b in LATENCY_BUCKETS_MS]
    clusters = [
        stat_name(cluster_name(model_name(m), f"v{v + 1}"))
        for m in range(models)
        for v in range(versions)
    ]
    idle = {
        c: b"".join(_family(n.format(cluster=c), k, None, bounds) for n, k in PER_CLUSTER)
        for c in clusters
    }
    # A few active encodings per cluster, reused across variants (values vary cheaply).
    active = {
        c: [
            b"".join(_family(n.format(cluster=c), k, rng, bounds) for n, k in PER_CLUSTER)
            for _ in range(3)
        ]
        for c in clusters
    }
    out = []
    for variant in range(VARIANTS):
        parts = [_fixed_part(shape, rng)]
        for i, c in enumerate(clusters):
            busy = mode == "a" or i % VARIANTS == variant
            parts.append(active[c][(i + variant) % 3] if busy else idle[c])
        out.append(b"".join(parts))
    return out


def _identifier(node_id: str) -> bytes:
    message = Message()
    message.identifier.node.id = node_id
    message.identifier.node.cluster = "turnout"
    return message.SerializeToString()


class Fleet:
    """``proxies`` streams flushing every ``interval_s``, spread over the interval."""

    def __init__(self, port: int, proxies: int, flushes: list[bytes], interval_s: float) -> None:
        self.port = port
        self.proxies = proxies
        self.flushes = flushes
        self.interval_s = interval_s
        self.sent = 0
        self.late = 0
        self.bytes = 0
        self.opened = 0

    async def proxy(self, index: int, stop: asyncio.Event) -> None:
        channel = grpc.aio.insecure_channel(
            f"127.0.0.1:{self.port}", options=[("grpc.use_local_subchannel_pool", 1)]
        )
        call = channel.stream_unary(f"/{SERVICE}/{METHOD}")()
        first = _identifier(f"bench-{index:03d}")
        start = time.monotonic() + self.interval_s * index / self.proxies
        self.opened += 1
        k = 0
        try:
            while not stop.is_set():
                due = start + k * self.interval_s
                delay = due - time.monotonic()
                if delay > 0:
                    try:
                        await asyncio.wait_for(stop.wait(), delay)
                        break
                    except TimeoutError:
                        pass
                elif -delay > self.interval_s / 2:
                    self.late += 1
                body = self.flushes[(k + index) % len(self.flushes)]
                message = first + body if k == 0 else body
                await call.write(message)
                self.sent += 1
                self.bytes += len(message)
                k += 1
            await call.done_writing()
            await call
        finally:
            await channel.close()


def _cpu_s() -> float:
    fields = Path("/proc/self/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def main_async(args: argparse.Namespace) -> None:
    flushes = build(args.models, args.versions, args.mode)
    fleet = Fleet(args.port, args.proxies, flushes, args.interval_s)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    sizes = sorted(len(f) for f in flushes)
    print(f"built {len(flushes)} flushes of {sizes[0]}..{sizes[-1]} bytes", flush=True)
    tasks = [asyncio.create_task(fleet.proxy(i, stop)) for i in range(args.proxies)]
    print("ready", flush=True)
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 1.0)
        print(
            f"sent {fleet.sent} {fleet.late} {_cpu_s():.2f} {time.monotonic():.3f} {fleet.bytes}",
            flush=True,
        )
    await asyncio.gather(*tasks, return_exceptions=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--mode", choices=("a", "b"), required=True)
    parser.add_argument("--proxies", type=int, default=100)
    parser.add_argument("--models", type=int, default=1000)
    parser.add_argument("--versions", type=int, default=3)
    parser.add_argument("--interval-s", type=float, default=1.0)
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
