"""CPU per flush, in process: the traffic window of a git revision against this tree's.

    .venv/bin/python -m bench.telemetry.flush [--before f8d68d4] [--reps 5] [--flushes 20]

Both read the same serialised flushes of 1,000 models x 3 versions
(``bench.telemetry.load``) into a window over the same desired state, one
proxy after another, interleaved (before, after, before...) ``--reps`` times
per activity level. "before" is what that revision's gRPC handler did: its
``wire.read`` then its ``TrafficWindow.ingest_flush`` where it has them, else
decoding each message with protobuf and calling its ``TrafficWindow.ingest``;
"after" is this tree's ``wire.read`` then ``TrafficWindow.ingest_flush``. Prints ms
per flush (min / median / max) and the ratio; the gRPC receive is not part of
it (``bench.telemetry.run`` measures the whole process).
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

from controlplane.telemetry import wire
from controlplane.telemetry.protocol import StreamMetricsMessage
from controlplane.telemetry.window import Proxy, TrafficWindow

from ..xds.common import ROOT, generate_state
from .load import build


def _module_at(revision: str, path: str, workdir: Path, name: str = "window_before") -> ModuleType:
    source = subprocess.run(
        ["git", "-C", str(ROOT), "show", f"{revision}:{path}"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    file = workdir / f"{name}.py"
    file.write_text(source)
    spec = importlib.util.spec_from_file_location(name, file)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _compare(
    mode: str,
    before: ModuleType,
    before_wire: ModuleType | None,
    state: Any,
    args: argparse.Namespace,
) -> None:
    flushes = build(1000, 3, mode)
    old_window: Any = before.TrafficWindow(lambda: state)
    new_window = TrafficWindow(lambda: state)
    proxies = [Proxy(i, f"p{i}", "") for i in range(args.flushes)]
    old_proxies = [before.Proxy(i, f"p{i}", "") for i in range(args.flushes)]

    def run_before() -> None:
        for i in range(args.flushes):
            data = flushes[i % len(flushes)]
            if before_wire is not None:
                old_window.ingest_flush(old_proxies[i], before_wire.read(data))
                continue
            message: Any = StreamMetricsMessage.FromString(data)
            old_window.ingest(old_proxies[i], message.envoy_metrics)

    def run_after() -> None:
        for i in range(args.flushes):
            new_window.ingest_flush(proxies[i], wire.read(flushes[i % len(flushes)]))

    run_before()  # warm-up: names parsed, series made
    run_after()
    times: dict[str, list[float]] = {"before": [], "after": []}
    for _ in range(args.reps):
        for name, run in (("before", run_before), ("after", run_after)):
            started = time.process_time()
            run()
            times[name].append((time.process_time() - started) / args.flushes * 1000)
    ratios = [b / a for b, a in zip(times["before"], times["after"], strict=True)]
    label = "(a) every cluster active" if mode == "a" else "(b) a tenth active"
    for name, values in times.items():
        print(
            f"   {label}, {name:>6}: {min(values):7.2f} / {statistics.median(values):7.2f}"
            f" / {max(values):7.2f} ms per flush (min / median / max)"
        )
    print(
        f"   {label}, before / after: {statistics.median(ratios):.1f}x "
        f"(min {min(ratios):.1f}, max {max(ratios):.1f}); at 100 flushes/s the after "
        f"figure is {statistics.median(times['after']) / 10:.2f} cores"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--before", default="f8d68d4")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--flushes", type=int, default=20)
    args = parser.parse_args()
    state = generate_state(1000, 3, 1)
    with tempfile.TemporaryDirectory() as tmp:
        before = _module_at(args.before, "controlplane/telemetry/window.py", Path(tmp))
        before_wire = (
            _module_at(args.before, "controlplane/telemetry/wire.py", Path(tmp), "wire_before")
            if hasattr(before.TrafficWindow, "ingest_flush")
            else None
        )
    print(
        f"== CPU per flush, 1,000 models x 3 versions, {args.flushes} flushes x "
        f"{args.reps} reps, before = {args.before}, after = this tree"
    )
    for mode in ("b", "a"):
        _compare(mode, before, before_wire, state, args)


if __name__ == "__main__":
    main()
