"""Batching benchmark: goodput under open-loop Poisson load, in one run.

Phases (``--phases``, comma-separated; default ``overhead,reference,overload``):

- ``overhead``: p50 at low load, interleaved: the model server called
  directly, through Envoy alone (batching off), and through Envoy and
  Turnout's batcher (batching on).
- ``reference``: goodput of Turnout (through Envoy and its batcher) against
  the in-process reference (``bench/batching/inprocess.py``: a batcher written
  by hand inside the model server), interleaved at each rate; the ratio per
  repetition.
- ``overload``: twice Turnout's goodput offered: how fast refusals come back
  and how much goodput is still served within the SLO.
- ``goodput``: (a) no batching, (b) the best fixed-timeout batcher over max
  batch {8, 16, 32} x wait {1, 5, 10} ms, (c) Turnout; then the share of
  innocent requests failed when 1% of inputs are malformed.

Goodput is the highest offered rate whose p99 stays within the SLO with under
0.1% errors.

    python -m bench.batching [--server synthetic|minilm] [--quick] [--max-batch 64]

Writes bench/results/batching.json (one key per server).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from .envoy import bootstrap, envoy_argv
from .loadgen import Check, Window, open_loop, percentile

ROOT = Path(__file__).resolve().parents[2]
ENVOY = shutil.which("envoy", path=str(Path(sys.executable).parent)) or "envoy"
FIXED_GRID = [(b, w) for b in (8, 16, 32) for w in (1.0, 5.0, 10.0)]


@dataclass
class Setup:
    """What one server needs: its flags, SLO, rate ladders and payloads."""

    name: str
    server_args: list[str]
    slo_ms: float
    rates: list[float]
    low_rate: float
    path: str
    cores: dict[str, str] = field(default_factory=dict)
    # Rates for the reference comparison and the overload phase: near capacity only.
    near_rates: list[float] = field(default_factory=list)


SETUPS = {
    "synthetic": Setup(
        name="synthetic",
        server_args=["--mode", "synthetic"],
        slo_ms=100.0,
        rates=[10, 20, 30, 40, 50, 75, 100, 150, 200, 300, 400, 500, 600, 700, 800, 900, 1000],
        low_rate=20.0,
        path="/v2/models/bench/infer",
        cores={"loadgen": "0", "envoy": "0", "batchers": "1", "server": "1"},
        near_rates=[
            200,
            300,
            400,
            500,
            550,
            600,
            650,
            700,
            750,
            800,
            850,
            900,
            950,
            1000,
            1100,
            1200,
        ],
    ),
    "minilm": Setup(
        name="minilm",
        server_args=["--mode", "minilm", "--threads", "1"],
        slo_ms=500.0,
        rates=[10, 20, 30, 40, 50, 60, 80, 100, 120, 140, 160, 180, 200, 240],
        low_rate=5.0,
        path="/v1/embeddings",
        cores={"loadgen": "0", "envoy": "0", "batchers": "0", "server": "1"},
        # The reference passed 200 req/s (the old top rung) in 2 of 5 repetitions on
        # 2026-12-03 (run I): the ladder goes past it, in 20 req/s steps near capacity.
        near_rates=[20, 60, 100, 120, 140, 160, 180, 200, 220, 240, 260, 300],
    ),
}

WORDS = "the quick brown fox jumps over lazy dog near river bank under bright sky".split()  # noqa: SIM905


def make_bodies(setup: Setup, malformed: str | None = None) -> Callable[[int], tuple[bytes, Check]]:
    """Return a function giving request ``i``'s body and the check of its answer.

    Every request carries a unique id (v2) or text (embeddings); the check
    verifies that the answer is this request's own. With ``malformed`` set,
    1% of requests are bad ("structural": the batcher can see it; "poison":
    only the model can) and their check expects failure.
    """

    def bad(i: int) -> bool:
        return malformed is not None and i % 100 == 37

    def v2(i: int) -> tuple[bytes, Check]:
        data = [float(i % 1000) + k / 16 for k in range(16)]
        doc: dict[str, Any] = {
            "id": f"q{i}",
            "inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP32", "data": data}],
        }
        if bad(i):
            if malformed == "poison":
                doc["inputs"][0]["data"][3] = 2e9
            else:
                doc["inputs"][0]["data"] = data[:15]
        expected = [2 * v + 1 for v in data]

        def check(index: int, payload: bytes) -> bool:
            answer = json.loads(payload)
            return bool(answer["id"] == f"q{index}" and answer["outputs"][0]["data"] == expected)

        return json.dumps(doc).encode(), check

    def embeddings(i: int) -> tuple[bytes, Check]:
        text = f"request {i}: " + " ".join(WORDS[(i + k) % len(WORDS)] for k in range(10))
        doc: dict[str, Any] = {"model": "minilm", "input": [text]}
        if bad(i):
            doc["input"] = []

        def check(index: int, payload: bytes) -> bool:
            answer = json.loads(payload)
            return len(answer["data"]) == 1 and answer["data"][0]["index"] == 0

        return json.dumps(doc).encode(), check

    return v2 if setup.name == "synthetic" else embeddings


# --- processes -----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


PIN = True


def pinned(core: str, argv: list[str]) -> list[str]:
    if PIN and shutil.which("taskset") and (os.cpu_count() or 1) >= 2:
        return ["taskset", "-c", core, *argv]
    return argv


@contextlib.contextmanager
def processes() -> Iterator[Callable[..., None]]:
    started: list[subprocess.Popen[bytes]] = []

    def spawn(argv: list[str], cwd: Path = ROOT) -> None:
        started.append(
            subprocess.Popen(argv, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        )

    try:
        yield spawn
    finally:
        for proc in started:
            proc.terminate()
        for proc in started:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


async def wait_port(port: int, timeout: float = 120.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            await asyncio.sleep(0.1)
    raise RuntimeError(f"nothing listens on port {port}")


async def settle(session: aiohttp.ClientSession, urls: dict[str, str]) -> None:
    """Wait until the servers and Turnout's batcher have no work left (at most 30 s)."""
    end = time.monotonic() + 30
    while time.monotonic() < end:
        active = 0
        for name in ("server", "inprocess"):
            async with session.get(urls[name] + "/stats") as resp:
                active += (await resp.json())["active"]
        for name in ("batcher", "before_batcher"):
            if name in urls:
                async with session.get(urls[name] + "/turnout/batcher") as resp:
                    status = await resp.json()
                active += status["queue_depth"] + status["in_flight"]
        if active == 0:
            return
        await asyncio.sleep(0.05)


# --- the measurements ------------------------------------------------------------------------


class Bench:
    def __init__(self, setup: Setup, session: aiohttp.ClientSession, urls: dict[str, str]):
        self.setup = setup
        self.session = session
        self.urls = urls
        self.seed = 0
        self.windows: list[dict[str, Any]] = []

    async def window(
        self, target: str, rate: float, duration: float, malformed: str | None = None
    ) -> tuple[Window, list[tuple[int, int, bool, float]]]:
        await settle(self.session, self.urls)
        self.seed += 1
        window, outcomes = await open_loop(
            self.session,
            target,
            self.urls[target] + self.setup.path,
            make_bodies(self.setup, malformed),
            rate,
            duration,
            self.setup.slo_ms,
            self.seed,
        )
        self.windows.append(window.as_dict())
        return window, outcomes

    async def sweep(self, target: str, duration: float) -> float:
        """Climb the rate ladder until a window fails; return the last passing rate."""
        best = 0.0
        for rate in self.setup.rates:
            window, _ = await self.window(target, rate, duration)
            if not window.ok:
                break
            best = rate
        return best


def spread(values: list[float]) -> dict[str, float]:
    """Min, median and max of ``values`` (NaN for each when there are none)."""
    if not values:
        return {"min": math.nan, "median": math.nan, "max": math.nan}
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def fmt(s: dict[str, float], unit: str = "") -> str:
    return f"{s['median']:.1f}{unit} (min {s['min']:.1f}, max {s['max']:.1f})"


async def measure_overhead(bench: Bench, reps: int) -> dict[str, Any]:
    """p50 at low load, interleaved: direct, Envoy alone, Envoy and the batcher, the reference."""
    setup = bench.setup
    targets = ["direct", "envoy", "turnout", "inprocess"]
    targets += ["before"] if "before" in bench.urls else []
    print(f"\n[1] low-load p50: {setup.low_rate:g} req/s, {reps} x 4 s, interleaved {targets}")
    p50: dict[str, list[float]] = {t: [] for t in targets}
    for rep in range(reps):
        turn = rep % len(targets)
        for target in targets[turn:] + targets[:turn]:
            window, _ = await bench.window(target, setup.low_rate, 4.0)
            p50[target].append(window.p50_ms)
    envoy_added = [e - d for e, d in zip(p50["envoy"], p50["direct"], strict=True)]
    batcher_added = [t - e for t, e in zip(p50["turnout"], p50["envoy"], strict=True)]
    overhead = {f"{t}_p50_ms": spread(v) for t, v in p50.items()}
    overhead["envoy_added_p50_ms"] = spread(envoy_added)
    overhead["batcher_added_p50_ms"] = spread(batcher_added)
    overhead["turnout_added_p50_ms"] = spread(
        [t - d for t, d in zip(p50["turnout"], p50["direct"], strict=True)]
    )
    for target in targets:
        print(f"    {target:<10} p50 {fmt(overhead[f'{target}_p50_ms'], ' ms')}")
    print(f"    added by Envoy alone       {fmt(overhead['envoy_added_p50_ms'], ' ms')}  <= 0.5")
    print(f"    added by the batcher       {fmt(overhead['batcher_added_p50_ms'], ' ms')}  <= 1")
    print(f"    Envoy and batcher - direct {fmt(overhead['turnout_added_p50_ms'], ' ms')}")
    if "before" in p50:
        before = [b - e for b, e in zip(p50["before"], p50["envoy"], strict=True)]
        overhead["before_batcher_added_p50_ms"] = spread(before)
        print(
            f"    added by the batcher before {fmt(overhead['before_batcher_added_p50_ms'], ' ms')}"
        )
    return overhead


async def reference_sweeps(bench: Bench, reps: int, window_s: float) -> dict[str, Any]:
    """Goodput of Turnout against the in-process reference, interleaved; ratio per repetition."""
    targets = ["inprocess", "turnout"] + (["before"] if "before" in bench.urls else [])
    rates = bench.setup.near_rates
    print(f"\n[2] goodput against the in-process reference: {reps} reps, {window_s:g} s windows")
    print(f"    rates {rates}")
    goodput, per_rate = await interleaved_sweeps(bench, targets, rates, reps, window_s)
    ratios = [t / r for t, r in zip(goodput["turnout"], goodput["inprocess"], strict=True) if r > 0]
    for target in targets:
        print(f"    goodput {target:<10} {fmt(spread(goodput[target]))} req/s")
    print(f"    ratio turnout / in-process {fmt(spread(ratios), 'x')} (per repetition)")
    print(f"    per repetition: {[round(r, 2) for r in ratios]}")
    extra = {}
    if "before" in goodput:
        before = [
            b / r for b, r in zip(goodput["before"], goodput["inprocess"], strict=True) if r > 0
        ]
        extra["ratio_before_over_inprocess"] = spread(before)
        print(f"    ratio before / in-process  {fmt(spread(before), 'x')} (per repetition)")
    return extra | {
        "rates": rates,
        "goodput": {t: spread(v) for t, v in goodput.items()},
        "goodput_runs": goodput,
        "ratio_turnout_over_inprocess": spread(ratios),
        "ratio_runs": ratios,
        "p99_by_rate": {str(r): v for r, v in per_rate.items()},
    }


async def overload(bench: Bench, peak: float, reps: int) -> dict[str, Any]:
    """Offer twice ``peak``; report refusal latency and the goodput still served."""
    slo = bench.setup.slo_ms
    rate = 2 * peak
    duration = 3.0
    print(f"\n[3] overload: {rate:g} req/s offered (2 x {peak:g}), {reps} x {duration:g} s")
    served, refused_p99, refused_fast, refused_share = [], [], [], []
    statuses: dict[str, int] = {}
    where: dict[str, float] = {}
    for _ in range(reps):
        before = await path_counters(bench)
        _, outcomes = await bench.window("turnout", rate, duration)
        after = await path_counters(bench)
        for name, value in after.items():
            where[name] = where.get(name, 0.0) + value - before.get(name, 0.0)
        for o in outcomes:
            # 0: no answer within the load generator's timeout; 200 late: past the SLO.
            key = "200 late" if o[1] == 200 and o[3] > slo else str(o[1])
            statuses[key] = statuses.get(key, 0) + 1
        good = [o for o in outcomes if o[2] and o[3] <= slo]
        refused = sorted(o[3] for o in outcomes if o[1] in (429, 503))
        served.append(len(good) / duration)
        refused_share.append(100 * len(refused) / max(1, len(outcomes)))
        refused_p99.append(percentile(refused, 99) if refused else 0.0)
        refused_fast.append(100 * sum(1 for v in refused if v <= 5.0) / max(1, len(refused)))
    result: dict[str, Any] = {
        "offered_rps": rate,
        "peak_goodput_rps": peak,
        "served_within_slo_rps": spread(served),
        "served_over_peak": spread([v / peak for v in served]),
        "refused_percent": spread(refused_share),
        "refusal_p99_ms": spread(refused_p99),
        "refused_within_5ms_percent": spread(refused_fast),
        "statuses": statuses,
        "path_counters": where,
    }
    print(f"    served within SLO {fmt(result['served_within_slo_rps'], ' req/s')}")
    print(f"    served / peak     {fmt(result['served_over_peak'], 'x')}  target >= 0.9")
    print(f"    refused           {fmt(result['refused_percent'], '%')} of requests")
    print(f"    refusal p99       {fmt(result['refusal_p99_ms'], ' ms')}  target <= 5 ms")
    print(f"    refused in 5 ms   {fmt(result['refused_within_5ms_percent'], '%')}")
    print(f"    answers, all reps {dict(sorted(statuses.items()))}")
    print("    where they went, all reps (the batcher's and Envoy's own counters):")
    for name, value in sorted(where.items()):
        print(f"      {name:<58} {value:g}")
    return result


# Envoy's counters for the turnout route's upstream that tell a refusal from a
# timeout and a connection's churn from its reuse.
_ENVOY_COUNTERS = (
    "upstream_rq_total",
    "upstream_rq_timeout",
    "upstream_rq_503",
    "upstream_rq_504",
    "upstream_rq_200",
    "upstream_cx_total",
    "upstream_cx_destroy_local_with_active_rq",
    "upstream_rq_pending_overflow",
)


# The batcher's samples that count requests, batches and refusals.
_BATCHER_COUNTERS = (
    "turnout_batcher_requests_total",
    "turnout_batcher_rejections_total",
    "turnout_batcher_batch_size_count",
)


async def path_counters(bench: Bench) -> dict[str, float]:
    """Return the batcher's request, batch and rejection counters and Envoy's
    counters for the turnout route's upstream (``envoy.NAME``)."""
    counters: dict[str, float] = {}
    async with bench.session.get(bench.urls["batcher"] + "/metrics") as resp:
        for family in text_string_to_metric_families(await resp.text()):
            for sample in family.samples:
                if sample.name in _BATCHER_COUNTERS:
                    labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
                    name = sample.name.replace("turnout_batcher_", "batcher.")
                    counters[f"{name}{{{labels}}}" if labels else name] = sample.value
    if "envoy_admin" in bench.urls:
        async with bench.session.get(bench.urls["envoy_admin"] + "/stats") as resp:
            for line in (await resp.text()).splitlines():
                name, _, value = line.partition(": ")
                prefix = "cluster.turnout_upstream."
                if name.startswith(prefix) and name[len(prefix) :] in _ENVOY_COUNTERS:
                    counters["envoy." + name[len(prefix) :]] = float(value)
    return counters


async def screen_fixed(bench: Bench, window_s: float) -> tuple[dict[str, float], str]:
    """Sweep every fixed-timeout batcher once; return goodputs and the best one's name."""
    print(f"\n[4] screening fixed-timeout batchers ({window_s:.1f} s windows, 1 sweep each)")
    screening = {}
    for batch, wait in FIXED_GRID:
        name = f"fixed_{batch}_{wait:g}"
        screening[name] = await bench.sweep(name, window_s)
        print(f"    max batch {batch:>2}, wait {wait:>4g} ms: goodput {screening[name]:g} req/s")
    best = max(screening, key=lambda n: (screening[n], -FIXED_GRID.index(_bw(n))))
    print(f"    best: {best}")
    return screening, best


async def goodput_sweeps(
    bench: Bench, targets: list[str], reps: int, window_s: float
) -> tuple[dict[str, list[float]], dict[float, dict[str, list[float]]]]:
    """Sweep the setup's whole rate ladder with ``targets`` interleaved."""
    print(f"\n[5] goodput sweeps: {reps} repetitions, {window_s:.1f} s windows, interleaved")
    return await interleaved_sweeps(bench, targets, bench.setup.rates, reps, window_s)


async def interleaved_sweeps(
    bench: Bench, targets: list[str], rates: list[float], reps: int, window_s: float
) -> tuple[dict[str, list[float]], dict[float, dict[str, list[float]]]]:
    """Climb ``rates`` with all targets interleaved at each rate, ``reps`` times.

    A target drops out of a repetition after two failing windows; its goodput
    is the last rate it passed before its first failure.
    """
    goodput: dict[str, list[float]] = {t: [] for t in targets}
    per_rate: dict[float, dict[str, list[float]]] = {}
    for rep in range(reps):
        failed = dict.fromkeys(targets, 0)
        best = dict.fromkeys(targets, 0.0)
        for step, rate in enumerate(rates):
            turn = step % len(targets)
            order = targets[turn:] + targets[:turn]
            live = [t for t in order if failed[t] < 2]
            if not live:
                break
            for target in live:
                window, _ = await bench.window(target, rate, window_s)
                per_rate.setdefault(rate, {}).setdefault(target, []).append(window.p99_ms)
                if window.ok and failed[target] == 0:
                    best[target] = rate
                elif not window.ok:
                    failed[target] += 1
        for target in targets:
            goodput[target].append(best[target])
        print(f"    rep {rep + 1}: " + ", ".join(f"{t} {best[t]:g}" for t in targets))
    return goodput, per_rate


def report_goodput(
    setup: Setup,
    targets: list[str],
    goodput: dict[str, list[float]],
    per_rate: dict[float, dict[str, list[float]]],
) -> dict[str, Any]:
    """Print goodput, ratios and p99 by rate; return them for the JSON result."""
    direct, fixed, turnout = targets
    ratios = {
        "turnout_over_direct": spread(
            [c / max(a, 1e-9) for c, a in zip(goodput[turnout], goodput[direct], strict=True)]
        ),
        "turnout_over_best_fixed": spread(
            [c / max(b, 1e-9) for c, b in zip(goodput[turnout], goodput[fixed], strict=True)]
        ),
    }
    print("\n    goodput (req/s, p99 <= SLO, errors < 0.1%):")
    for target in targets:
        print(f"      {target:<14} {fmt(spread(goodput[target]))}")
    print(f"    ratio turnout / direct     {fmt(ratios['turnout_over_direct'], 'x')}")
    print(f"    ratio turnout / best fixed {fmt(ratios['turnout_over_best_fixed'], 'x')}")
    print("\n    median p99 (ms) by offered rate ('-' = not run after two failures):")
    print(f"      {'rate':>6} " + " ".join(f"{t:>14}" for t in targets))
    compared = not_worse = 0
    for rate in setup.rates:
        row = per_rate.get(rate, {})
        if turnout not in row:
            continue
        cells = [
            f"{statistics.median(row[t]):>14.1f}" if t in row else f"{'-':>14}" for t in targets
        ]
        print(f"      {rate:>6g} " + " ".join(cells))
        if fixed in row:
            compared += 1
            not_worse += statistics.median(row[turnout]) <= statistics.median(row[fixed])
    print(f"    turnout p99 <= best fixed p99 at {not_worse} of {compared} rates run by both")
    return {
        "goodput": {t: spread(v) for t, v in goodput.items()},
        "goodput_runs": goodput,
        "ratios": ratios,
        "p99_by_rate": {str(r): v for r, v in per_rate.items()},
        "turnout_p99_not_worse_than_best_fixed": {"rates": compared, "not_worse": not_worse},
    }


async def malformed_share(bench: Bench, rate: float, reps: int) -> dict[str, Any]:
    """Share of innocent requests failed with 1% malformed inputs, per kind of malformation."""
    kinds = ["structural", "poison"] if bench.setup.name == "synthetic" else ["structural"]
    print(f"\n[6] 1% malformed inputs through turnout at {rate:g} req/s, {reps} x 4 s")
    result: dict[str, Any] = {}
    for kind in kinds:
        shares = []
        for _ in range(reps):
            _, outcomes = await bench.window("turnout", rate, 4.0, malformed=kind)
            innocent = [o for o in outcomes if o[0] % 100 != 37]
            if any(o[1] == 200 for o in outcomes if o[0] % 100 == 37):
                raise RuntimeError("a malformed request succeeded")
            shares.append(100 * sum(1 for o in innocent if not o[2]) / max(1, len(innocent)))
        result[kind] = spread(shares)
        print(f"    {kind:<10} innocent requests failed: {fmt(result[kind], '%')}  target 0")
    return result


async def measure(setup: Setup, args: argparse.Namespace, urls: dict[str, str]) -> dict[str, Any]:
    """Run the phases ``args.phases`` asks for and return the JSON result."""
    reps = args.reps
    window_s = 1.5 if args.quick else 2.5
    connector = aiohttp.TCPConnector(limit=2000)
    async with aiohttp.ClientSession(connector=connector) as session:
        bench = Bench(setup, session, urls)
        print("warm-up (discarded) ...", flush=True)
        for target in ("direct", "envoy", "batcher", "turnout", "inprocess", "before"):
            if target in urls:
                await bench.window(target, setup.low_rate, 1.0)
        if "goodput" in args.phases:
            await bench.window("fixed_16_5", setup.low_rate, 1.0)
        bench.windows.clear()
        result: dict[str, Any] = {"server": setup.name, "slo_ms": setup.slo_ms}
        result |= {"repetitions": reps, "window_s": window_s, "max_batch": args.max_batch}
        result["envoy_max_requests"] = args.max_requests or None
        if "overhead" in args.phases:
            result["overhead"] = await measure_overhead(bench, reps)
            result["load_after_overhead"] = os.getloadavg()
        peak = args.peak
        if "reference" in args.phases:
            result["reference"] = await reference_sweeps(bench, reps, window_s)
            result["load_after_reference"] = os.getloadavg()
            peak = statistics.median(result["reference"]["goodput_runs"]["turnout"])
        if "overload" in args.phases and peak:
            result["overload"] = await overload(bench, peak, reps)
            result["load_after_overload"] = os.getloadavg()
        if "goodput" in args.phases:
            screening, best_fixed = await screen_fixed(bench, window_s * 0.6)
            result |= {"fixed_screening": screening, "best_fixed": best_fixed}
            targets = ["direct", best_fixed, "turnout"]
            goodput, per_rate = await goodput_sweeps(bench, targets, reps, window_s)
            result |= report_goodput(setup, targets, goodput, per_rate)
            rate = max(setup.low_rate, statistics.median(goodput["turnout"]) * 0.5)
            result["malformed_rate"] = rate
            result["innocent_failed_percent"] = await malformed_share(bench, rate, reps)
        result["windows"] = bench.windows
    return result


def _bw(name: str) -> tuple[int, float]:
    _, batch, wait = name.split("_")
    return int(batch), float(wait)


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for package in ("aiohttp", "torch", "sentence-transformers"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            found[package] = metadata.version(package)
    return found


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    setup = SETUPS[args.server]
    if args.quick:
        setup.rates = setup.rates[::2]
        setup.near_rates = setup.near_rates[:3] + setup.near_rates[4::2]
    py = sys.executable
    names = ["server", "batcher", "inprocess", "envoy", "turnout"]
    ports = {name: free_port() for name in names}
    urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    urls["direct"] = urls["server"]
    cores = setup.cores
    print("setup:")
    print(f"  server {setup.name}: {' '.join(setup.server_args)}; SLO {setup.slo_ms:g} ms")
    print(f"  max batch {args.max_batch} (Turnout and the in-process reference)")
    print(f"  offered rates (req/s): {setup.rates}; near capacity: {setup.near_rates}")
    print(
        f"  repetitions: {args.reps}; cpus: {os.cpu_count()}; "
        f"taskset: {bool(shutil.which('taskset'))}; load average {os.getloadavg()}"
    )
    print(
        f"  pinning ({'on' if PIN else 'off: --no-pin'}): loadgen core {cores['loadgen']}, "
        f"envoy core {cores['envoy']}, batchers core {cores['batchers']}, "
        f"server and in-process reference core {cores['server']}"
    )
    print(f"  versions: {versions()}")
    if PIN:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, {int(cores["loadgen"])})
    with processes() as spawn, tempfile.TemporaryDirectory() as workdir:
        server_cmd = [py, "-m", "examples.model_server", "--version", "bench", *setup.server_args]
        spawn(pinned(cores["server"], [*server_cmd, "--port", str(ports["server"])]))
        reference = [py, "-m", "bench.batching.inprocess", "--mode", setup.name]
        reference += ["--max-batch", str(args.max_batch), "--wait-ms", "10"]
        if setup.name == "minilm":
            reference += ["--threads", "1"]
        spawn(pinned(cores["server"], [*reference, "--port", str(ports["inprocess"])]))
        batcher_cmd = [py, "-m", "filters.batcher", "--upstream", urls["server"]]
        batcher_cmd += ["--slo-ms", f"{setup.slo_ms:g}", "--max-batch-size", str(args.max_batch)]
        spawn(
            pinned(cores["batchers"], [*batcher_cmd, "--listen", f"127.0.0.1:{ports['batcher']}"])
        )
        routes = {
            "turnout": (ports["turnout"], ports["batcher"]),
            "envoy": (ports["envoy"], ports["server"]),
        }
        if args.before:
            # The same batcher command run from another checkout (e.g. main before a change).
            for name in ("before_batcher", "before"):
                ports[name] = free_port()
                urls[name] = f"http://127.0.0.1:{ports[name]}"
            listen = ["--listen", f"127.0.0.1:{ports['before_batcher']}"]
            spawn(pinned(cores["batchers"], [*batcher_cmd, *listen]), cwd=Path(args.before))
            routes["before"] = (ports["before"], ports["before_batcher"])
        caps = {"turnout": args.max_requests} if args.max_requests else None
        ports["envoy_admin"] = free_port()
        urls["envoy_admin"] = f"http://127.0.0.1:{ports['envoy_admin']}"
        config = bootstrap(routes, setup.slo_ms, caps, admin_port=ports["envoy_admin"])
        spawn(pinned(cores["envoy"], envoy_argv(ENVOY, Path(workdir) / "envoy.json", config)))
        if "goodput" in args.phases:
            for batch, wait in FIXED_GRID:
                port = free_port()
                name = f"fixed_{batch}_{wait:g}"
                ports[name] = port
                urls[name] = f"http://127.0.0.1:{port}"
                fixed = [py, "-m", "bench.batching.fixed", "--upstream", urls["server"]]
                extra = ["--max-batch", str(batch), "--wait-ms", str(wait)]
                spawn(pinned(cores["batchers"], [*fixed, "--listen", f"127.0.0.1:{port}", *extra]))
        for port in ports.values():
            await wait_port(port)
        started = time.monotonic()
        result = await measure(setup, args, urls)
        result["elapsed_s"] = time.monotonic() - started
    result["versions"] = versions()
    result["pinning"] = cores if PIN else "none"
    result["cpus"] = os.cpu_count()
    result["quick"] = args.quick
    result["load_average_end"] = os.getloadavg()
    result["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", choices=sorted(SETUPS), default="synthetic")
    parser.add_argument("--quick", action="store_true", help="short run (fewer rates, 2 reps)")
    parser.add_argument("--reps", type=int, default=None)
    parser.add_argument("--no-pin", action="store_true", help="let the OS place processes")
    parser.add_argument(
        "--phases",
        default="overhead,reference,overload",
        help="comma list: overhead, reference, overload, goodput (fixed batchers, malformed)",
    )
    parser.add_argument(
        "--before", help="a checkout whose batcher also runs, as target 'before' (reference phase)"
    )
    parser.add_argument("--max-batch", type=int, default=32, help="Turnout's and the reference's")
    parser.add_argument(
        "--peak", type=float, default=0.0, help="overload without reference: the goodput to double"
    )
    parser.add_argument(
        "--max-requests",
        type=int,
        default=0,
        help="cap Turnout's requests in flight in Envoy (circuit_breakers.max_requests), "
        "e.g. goodput x SLO; 0: no cap",
    )
    parser.add_argument("--output", default=str(ROOT / "bench" / "results" / "batching.json"))
    args = parser.parse_args(argv)
    if args.reps is None:
        args.reps = 2 if args.quick else 5
    args.phases = set(args.phases.split(","))
    global PIN
    PIN = not args.no_pin
    result = asyncio.run(main_async(args))
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    existing = json.loads(output.read_text()) if output.exists() else {}
    key = args.server if args.max_batch == 32 else f"{args.server}_batch{args.max_batch}"
    existing[key] = result
    output.write_text(json.dumps(existing, indent=1))
    print(f"\nwrote {output} (key {key!r}) after {result['elapsed_s']:.0f} s")


if __name__ == "__main__":
    main()
