"""Batching benchmark: goodput under open-loop Poisson load, three ways, in one run.

(a) no batching (the model server called directly), (b) the best fixed-timeout
batcher over max batch {8, 16, 32} x wait {1, 5, 10} ms, (c) Turnout's batcher
with its default policy. Goodput is the highest offered rate whose p99 stays
within the SLO with under 0.1% errors. Also: p50 overhead of the batcher at
low load against calling the server directly, and the share of innocent
requests failed when 1% of inputs are malformed.

    python -m bench.batching [--server synthetic|minilm] [--quick]

Writes bench/results/batching.json (one key per server).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import aiohttp

from .loadgen import Check, Window, open_loop

ROOT = Path(__file__).resolve().parents[2]
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


SETUPS = {
    "synthetic": Setup(
        name="synthetic",
        server_args=["--mode", "synthetic"],
        slo_ms=100.0,
        rates=[10, 20, 30, 40, 50, 75, 100, 150, 200, 300, 400, 500, 600, 700, 800, 900, 1000],
        low_rate=20.0,
        path="/v2/models/bench/infer",
        cores={"loadgen": "0", "batchers": "1", "server": "1"},
    ),
    "minilm": Setup(
        name="minilm",
        server_args=["--mode", "minilm", "--threads", "1"],
        slo_ms=500.0,
        rates=[10, 20, 30, 40, 50, 60, 80, 100, 120, 140, 160, 180, 200, 240],
        low_rate=5.0,
        path="/v1/embeddings",
        cores={"loadgen": "0", "batchers": "0", "server": "1"},
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
def processes() -> Iterator[Callable[[list[str]], None]]:
    started: list[subprocess.Popen[bytes]] = []

    def spawn(argv: list[str]) -> None:
        started.append(
            subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
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


async def settle(session: aiohttp.ClientSession, server: str, batcher: str) -> None:
    """Wait until the server and Turnout's batcher have no work left (at most 30 s)."""
    end = time.monotonic() + 30
    while time.monotonic() < end:
        async with session.get(server + "/stats") as resp:
            active = (await resp.json())["active"]
        async with session.get(batcher + "/turnout/batcher") as resp:
            status = await resp.json()
        if active == 0 and status["queue_depth"] == 0 and status["in_flight"] == 0:
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
    ) -> tuple[Window, list[tuple[int, int, bool]]]:
        await settle(self.session, self.urls["server"], self.urls["turnout"])
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
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def fmt(s: dict[str, float], unit: str = "") -> str:
    return f"{s['median']:.1f}{unit} (min {s['min']:.1f}, max {s['max']:.1f})"


async def measure_overhead(bench: Bench, reps: int) -> dict[str, Any]:
    """p50 latency direct vs through Turnout's batcher at low load, interleaved."""
    setup = bench.setup
    print(f"\n[1] low-load overhead: {setup.low_rate:g} req/s, {reps} x 4 s, interleaved")
    direct_p50, turnout_p50, diffs = [], [], []
    for _ in range(reps):
        d, _ = await bench.window("direct", setup.low_rate, 4.0)
        t, _ = await bench.window("turnout", setup.low_rate, 4.0)
        direct_p50.append(d.p50_ms)
        turnout_p50.append(t.p50_ms)
        diffs.append(t.p50_ms - d.p50_ms)
    overhead = {
        "direct_p50_ms": spread(direct_p50),
        "turnout_p50_ms": spread(turnout_p50),
        "overhead_p50_ms": spread(diffs),
    }
    print(f"    direct p50  {fmt(overhead['direct_p50_ms'], ' ms')}")
    print(f"    turnout p50 {fmt(overhead['turnout_p50_ms'], ' ms')}")
    print(f"    overhead    {fmt(overhead['overhead_p50_ms'], ' ms')}  target <= 1 ms")

    return overhead


async def screen_fixed(bench: Bench, window_s: float) -> tuple[dict[str, float], str]:
    """Sweep every fixed-timeout batcher once; return goodputs and the best one's name."""
    print(f"\n[2] screening fixed-timeout batchers ({window_s:.1f} s windows, 1 sweep each)")
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
    """Climb the ladder with all targets interleaved at each rate, ``reps`` times.

    A target drops out of a repetition after two failing windows; its goodput
    is the last rate it passed before its first failure.
    """
    print(f"\n[3] goodput sweeps: {reps} repetitions, {window_s:.1f} s windows, interleaved")
    goodput: dict[str, list[float]] = {t: [] for t in targets}
    per_rate: dict[float, dict[str, list[float]]] = {}
    for rep in range(reps):
        failed = dict.fromkeys(targets, 0)
        best = dict.fromkeys(targets, 0.0)
        for step, rate in enumerate(bench.setup.rates):
            order = targets[step % 3 :] + targets[: step % 3]
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
    print(f"\n[4] 1% malformed inputs through turnout at {rate:g} req/s, {reps} x 4 s")
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
        for target in ("direct", "turnout", "fixed_16_5"):
            await bench.window(target, setup.low_rate, 1.0)
        bench.windows.clear()
        result: dict[str, Any] = {"server": setup.name, "slo_ms": setup.slo_ms}
        result |= {"repetitions": reps, "window_s": window_s}
        if "overhead" in args.phases:
            result["overhead"] = await measure_overhead(bench, reps)
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
    py = sys.executable
    ports = {"server": free_port(), "turnout": free_port()}
    urls = {"direct": f"http://127.0.0.1:{ports['server']}"}
    urls["server"] = urls["direct"]
    cores = setup.cores
    print("setup:")
    print(f"  server {setup.name}: {' '.join(setup.server_args)}; SLO {setup.slo_ms:g} ms")
    print(f"  offered rates (req/s): {setup.rates}")
    print(
        f"  repetitions: {args.reps}; cpus: {os.cpu_count()}; "
        f"taskset: {bool(shutil.which('taskset'))}"
    )
    print(
        f"  pinning ({'on' if PIN else 'off: --no-pin'}): loadgen core {cores['loadgen']}, "
        f"batchers core {cores['batchers']}, server core {cores['server']}"
    )
    print(f"  versions: {versions()}")
    if PIN:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, {int(cores["loadgen"])})
    with processes() as spawn:
        server_cmd = [py, "-m", "examples.model_server", "--version", "bench", *setup.server_args]
        spawn(pinned(cores["server"], [*server_cmd, "--port", str(ports["server"])]))
        batcher_cmd = [py, "-m", "filters.batcher", "--upstream", urls["server"]]
        spawn(
            pinned(cores["batchers"], [*batcher_cmd, "--listen", f"127.0.0.1:{ports['turnout']}"])
        )
        urls["turnout"] = f"http://127.0.0.1:{ports['turnout']}"
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
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", choices=sorted(SETUPS), default="synthetic")
    parser.add_argument("--quick", action="store_true", help="short run (fewer rates, 2 reps)")
    parser.add_argument("--reps", type=int, default=None)
    parser.add_argument("--no-pin", action="store_true", help="let the OS place processes")
    parser.add_argument(
        "--phases", default="overhead,goodput", help="comma list: overhead, goodput (and the rest)"
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
    existing[args.server] = result
    output.write_text(json.dumps(existing, indent=1))
    print(f"\nwrote {output} (key {args.server!r}) after {result['elapsed_s']:.0f} s")


if __name__ == "__main__":
    main()
