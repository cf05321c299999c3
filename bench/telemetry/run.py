"""The traffic window's cost: 100 proxies' stat sinks against one control plane.

    .venv/bin/python -m bench.telemetry.run [--proxies 100] [--models 1000]
        [--measure-s 20] [--calls 200] [--reps 1] [--quick]

The control plane runs as ``turnout serve`` in its own process, on SQLite seeded
with models x 3 versions x 1 endpoint (3,000 clusters for 1,000 models), so its
CPU is its own: utime + stime from /proc/PID/stat over a measured interval,
cores = CPU seconds / wall seconds, nothing subtracted. The proxies are
``bench.telemetry.load`` in another process: N gRPC ``StreamMetrics`` streams,
one flush a second each, shaped as Envoy 1.40 sends them with Turnout's
bootstrap (``envoy-shape.json``). In one run:

- idle: the control plane with no stream;
- (b) realistic: a tenth of the clusters have traffic in each flush, the rest
  send zero deltas and empty histograms;
- (a) worst case: every cluster has traffic in every flush.

After each load stops, the same calls again: the endpoints' own cost with the
window full and nothing left to ingest.

For each load: a warm-up, then CPU over the measured interval with no API call,
the flushes the load generator achieved over the same interval, RSS; then, with
the load still running, ``GET /v1/models/{m}/metrics?window=60s`` (a random
model each time), ``GET /v1/metrics/summary`` and ``GET /metrics``, ``--calls``
sequential calls each with an admin key, p50 and p95. Nothing is pinned (two
shared cores). Writes bench/results/telemetry.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from ..xds.common import (
    RESULTS,
    ControlPlaneProcess,
    free_port,
    machine,
    model_name,
    percentile,
    print_setup,
    rss_kb,
    seed_database,
    temp_workdir,
)

VERSIONS = 3


def cpu_s(pid: int) -> float:
    """utime + stime of ``pid`` in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measure_cpu(pid: int, seconds: float) -> dict[str, float]:
    """Cores ``pid`` used over ``seconds`` of wall time, with the load average."""
    c0, t0 = cpu_s(pid), time.monotonic()
    await asyncio.sleep(seconds)
    c1, t1 = cpu_s(pid), time.monotonic()
    return {
        "cores": round((c1 - c0) / (t1 - t0), 3),
        "cpu_s": round(c1 - c0, 2),
        "wall_s": round(t1 - t0, 2),
        "loadavg_1m": round(os.getloadavg()[0], 2),
    }


class Load:
    """The load generator's process and its progress lines."""

    def __init__(self, port: int, mode: str, proxies: int, models: int) -> None:
        self.argv = [
            sys.executable,
            "-m",
            "bench.telemetry.load",
            f"--port={port}",
            f"--mode={mode}",
            f"--proxies={proxies}",
            f"--models={models}",
            f"--versions={VERSIONS}",
        ]
        self.process: asyncio.subprocess.Process | None = None
        self.latest: tuple[int, int, float, float, int] = (0, 0, 0.0, 0.0, 0)
        self.built = ""
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            *self.argv, stdout=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL
        )
        assert self.process.stdout is not None
        while True:
            line = (await self.process.stdout.readline()).decode()
            if not line:
                raise RuntimeError("the load generator exited")
            if line.startswith("built"):
                self.built = line.strip()
            if line.startswith("ready"):
                break
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        async for raw in self.process.stdout:
            parts = raw.decode().split()
            if parts and parts[0] == "sent":
                self.latest = (
                    int(parts[1]),
                    int(parts[2]),
                    float(parts[3]),
                    float(parts[4]),
                    int(parts[5]),
                )

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.terminate()
            try:
                await asyncio.wait_for(self.process.wait(), 15)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
        if self._reader is not None:
            self._reader.cancel()


async def latencies(
    plane: ControlPlaneProcess, models: int, calls: int, seed: int, budget_s: float
) -> dict[str, dict[str, float]]:
    """p50/p95 of each metrics endpoint over ``calls`` sequential calls, or as
    many as fit in ``budget_s`` (a saturated control plane answers in seconds)."""
    rng = random.Random(seed)
    out: dict[str, dict[str, float]] = {}
    async with httpx.AsyncClient(
        base_url=plane.api_url, headers=plane.headers, timeout=60
    ) as client:
        targets = {
            "model ?window=60s": lambda: (
                f"/v1/models/{model_name(rng.randrange(models))}/metrics?window=60s"
            ),
            "summary": lambda: "/v1/metrics/summary",
            "/metrics": lambda: "/metrics",
        }
        for name, path in targets.items():
            samples = []
            size = 0
            deadline = time.monotonic() + budget_s
            for _ in range(calls + 3):
                if time.monotonic() > deadline and len(samples) > 3:
                    break
                started = time.perf_counter()
                url = path()
                try:
                    response = await client.get(url)
                except httpx.TransportError:
                    # A saturated server runs its keep-alive timer before it reads the
                    # next request on that connection and closes it: once more, on a
                    # new connection, the time of both tries counted.
                    response = await client.get(url)
                elapsed = (time.perf_counter() - started) * 1000
                if response.status_code != 200:
                    raise RuntimeError(f"{name}: {response.status_code} {response.text[:300]}")
                size = len(response.content)
                samples.append(elapsed)
            samples = samples[3:]  # warm-up calls
            out[name] = {
                "calls": len(samples),
                "p50_ms": round(percentile(samples, 50), 2),
                "p95_ms": round(percentile(samples, 95), 2),
                "max_ms": round(max(samples), 2),
                "bytes": size,
            }
    return out


async def run_load(
    plane: ControlPlaneProcess, mode: str, args: argparse.Namespace, rep: int
) -> dict[str, Any]:
    load = Load(plane.xds_port, mode, args.proxies, args.models)
    await load.start()
    try:
        await asyncio.sleep(args.warmup_s)
        s0 = load.latest
        cpu = await measure_cpu(plane.pid, args.measure_s)
        s1 = load.latest
        wall = s1[3] - s0[3]
        row: dict[str, Any] = {
            "mode": mode,
            "rep": rep,
            **cpu,
            "flushes_per_s": round((s1[0] - s0[0]) / wall, 1) if wall else 0.0,
            "late_flushes": s1[1] - s0[1],
            "mb_per_s": round((s1[4] - s0[4]) / wall / 1e6, 1) if wall else 0.0,
            "loadgen_cores": round((s1[2] - s0[2]) / wall, 3) if wall else 0.0,
            "rss_mib": round(rss_kb(plane.pid)["VmRSS"] / 1024, 1),
            "messages": load.built,
        }
        row["latency"] = await latencies(
            plane, args.models, args.calls, seed=rep, budget_s=args.latency_budget_s
        )
        row["rss_after_calls_mib"] = round(rss_kb(plane.pid)["VmRSS"] / 1024, 1)
    finally:
        await load.stop()
    # The endpoints' own cost: the window still full, no stream left to ingest
    # (a saturated control plane first works through what it had queued).
    drained = time.monotonic()
    while (await measure_cpu(plane.pid, 1.0))["cores"] > 0.1 and time.monotonic() - drained < 120:
        pass
    row["drain_s"] = round(time.monotonic() - drained, 1)
    row["latency_after_load"] = await latencies(
        plane, args.models, args.calls, seed=rep + 100, budget_s=args.latency_budget_s
    )
    return row


def _print_row(row: dict[str, Any]) -> None:
    print(
        f"   ({row['mode']}) rep {row['rep']}: control plane {row['cores']:.3f} cores "
        f"({row['cpu_s']} s CPU / {row['wall_s']} s), RSS {row['rss_mib']} MiB, "
        f"{row['flushes_per_s']} flushes/s achieved ({row['late_flushes']} late, "
        f"{row['mb_per_s']} MB/s), load generator {row['loadgen_cores']} cores, "
        f"load average {row['loadavg_1m']}"
    )
    print(f"       RSS after the calls: {row['rss_after_calls_mib']} MiB")
    for name, figures in row["latency"].items():
        _print_latency(name, figures)
    print(
        f"       after the load stopped and the control plane went idle ({row['drain_s']} s), "
        "window full:"
    )
    for name, figures in row["latency_after_load"].items():
        _print_latency(name, figures)


def _print_latency(name: str, figures: dict[str, float]) -> None:
    print(
        f"       {name:<18} p50 {figures['p50_ms']:>8.2f} ms  p95 {figures['p95_ms']:>8.2f} ms"
        f"  max {figures['max_ms']:>8.2f} ms  ({figures['calls']} calls, "
        f"{figures['bytes']:,} bytes)"
    )


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    host = machine()
    setup = {
        "state": f"{args.models} models x {VERSIONS} versions x 1 endpoint "
        f"({args.models * VERSIONS} clusters), SQLite, turnout serve in its own process",
        "proxies": f"{args.proxies} simulated stat sinks (bench.telemetry.load), 1 flush/s each",
        "measure": f"warm-up {args.warmup_s} s, CPU over {args.measure_s} s, "
        f"{args.calls} sequential calls per endpoint (at most {args.latency_budget_s:g} s each), "
        f"{args.reps} repetition(s) of " + ", ".join(f"({m})" for m in args.modes),
    }
    print_setup("Traffic window cost", setup, host)
    with temp_workdir("turnout-bench-telemetry-") as tmp:
        workdir = Path(tmp)
        plane = ControlPlaneProcess(workdir, listener_port=free_port(), poll_interval_s=2.0)
        started = time.monotonic()
        await seed_database(plane.database_url, args.models, VERSIONS, 1)
        print(f"   seeded in {time.monotonic() - started:.1f} s")
        await plane.start(timeout=300)
        try:
            await asyncio.sleep(args.warmup_s)
            idle = {**await measure_cpu(plane.pid, args.measure_s)}
            idle["rss_mib"] = round(rss_kb(plane.pid)["VmRSS"] / 1024, 1)
            print(
                f"   idle (no proxy): {idle['cores']:.3f} cores, RSS {idle['rss_mib']} MiB, "
                f"load average {idle['loadavg_1m']}"
            )
            rows = []
            for rep in range(args.reps):
                for mode in args.modes:
                    row = await run_load(plane, mode, args, rep)
                    _print_row(row)
                    rows.append(row)
        finally:
            await plane.stop()
    summary: dict[str, Any] = {}
    for mode in args.modes:
        mine = [r for r in rows if r["mode"] == mode]
        cores = [r["cores"] for r in mine]
        summary[mode] = {
            "cores_median": round(statistics.median(cores), 3),
            "cores_min": min(cores),
            "cores_max": max(cores),
            "cores_over_idle": round(statistics.median(cores) / idle["cores"], 1)
            if idle["cores"]
            else None,
            "flushes_per_s_median": statistics.median(r["flushes_per_s"] for r in mine),
            "p95_ms_worst": {
                name: max(r["latency"][name]["p95_ms"] for r in mine) for name in mine[0]["latency"]
            },
            "p95_ms_worst_after_load": {
                name: max(r["latency_after_load"][name]["p95_ms"] for r in mine)
                for name in mine[0]["latency"]
            },
        }
        print(
            f"   ({mode}) median {summary[mode]['cores_median']} cores "
            f"(min {min(cores)}, max {max(cores)}; target <= 0.2), worst p95 "
            + ", ".join(f"{k} {v} ms" for k, v in summary[mode]["p95_ms_worst"].items())
            + " (target <= 20); with the load stopped: "
            + ", ".join(f"{k} {v} ms" for k, v in summary[mode]["p95_ms_worst_after_load"].items())
        )
    return {"machine": host, "setup": setup, "idle": idle, "rows": rows, "summary": summary}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--proxies", type=int, default=100)
    parser.add_argument("--models", type=int, default=1000)
    parser.add_argument("--warmup-s", type=float, default=8.0)
    parser.add_argument("--measure-s", type=float, default=20.0)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--reps", type=int, default=1)
    parser.add_argument(
        "--latency-budget-s", type=float, default=40.0, help="most seconds per endpoint"
    )
    parser.add_argument("--modes", nargs="+", default=["b", "a"], choices=("a", "b"))
    parser.add_argument("--out", default=str(RESULTS / "telemetry.json"))
    parser.add_argument("--quick", action="store_true", help="10 proxies, 100 models, 50 calls")
    args = parser.parse_args()
    if args.quick:
        args.proxies, args.models, args.calls, args.measure_s = 10, 100, 50, 10.0
    result = asyncio.run(main_async(args))
    result["command"] = " ".join(["python -m bench.telemetry.run", *sys.argv[1:]])
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"   wrote {path}")


if __name__ == "__main__":
    main()
