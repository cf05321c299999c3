"""CPU to write the data-plane series of /metrics: a git revision against this tree.

    .venv/bin/python -m bench.telemetry.exposition [--before 6490346] [--reps 5] [--zones 1]

Fills one traffic window from 4 proxies' flushes of 1,000 models x 3 versions
(``bench.telemetry.load``, mode a: every cluster has traffic), then writes its
text with the revision's ``controlplane/telemetry/exposition.py`` (through its
own classes) and with this tree's ``render``, interleaved ``--reps`` times.
Checks that both parse (prometheus_client's parser) to the same samples and
prints CPU ms per text (min / median / max) and the ratio.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from controlplane.telemetry import wire
from controlplane.telemetry.exposition import render
from controlplane.telemetry.window import Proxy, TrafficWindow

from ..xds.common import generate_state
from .flush import _module_at
from .load import build


def _samples(text: bytes) -> list[tuple[str, tuple[tuple[str, str], ...], float]]:
    return sorted(
        (s.name, tuple(sorted(s.labels.items())), s.value)
        for family in text_string_to_metric_families(text.decode())
        for s in family.samples
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--before", default="6490346")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--zones", type=int, default=1)
    args = parser.parse_args()
    state = generate_state(1000, 3, 1)
    window = TrafficWindow(lambda: state)
    flushes = build(1000, 3, "a")
    for i in range(4):
        zone = f"zone-{i % args.zones}" if args.zones > 1 else ""
        window.ingest_flush(Proxy(i, f"p{i}", zone), wire.read(flushes[i % len(flushes)]))
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        cache = _module_at(args.before, "controlplane/telemetry/cache.py", workdir, "cache_before")
        before = _module_at(
            args.before, "controlplane/telemetry/exposition.py", workdir, "exposition_before"
        )
    old: Any = before.DataPlaneExposition(window, cache.WindowCache(window, 0))
    runs = {"before": old.text, "after": lambda: render(window)}
    texts = {name: run() for name, run in runs.items()}  # warm-up
    same = _samples(texts["before"]) == _samples(texts["after"])
    times: dict[str, list[float]] = {"before": [], "after": []}
    for _ in range(args.reps):
        for name, run in runs.items():
            started = time.process_time()
            run()
            times[name].append((time.process_time() - started) * 1000)
    series = len(window.series_keys())
    print(
        f"== /metrics data-plane text, {series} series ({args.zones} zone(s)), "
        f"{len(texts['after']):,} bytes, {args.reps} reps, before = {args.before}"
    )
    print(f"   same samples: {same}")
    for name, values in times.items():
        print(
            f"   {name:>6}: {min(values):8.1f} / {statistics.median(values):8.1f}"
            f" / {max(values):8.1f} ms CPU per text (min / median / max)"
        )
    ratios = [b / a for b, a in zip(times["before"], times["after"], strict=True)]
    print(f"   before / after: {statistics.median(ratios):.1f}x (min {min(ratios):.1f})")


if __name__ == "__main__":
    main()
