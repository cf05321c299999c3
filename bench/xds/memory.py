"""Memory: control-plane RSS with 1,000 models and 100 connected proxies.

    .venv/bin/python -m bench.xds.memory [--models 1000] [--streams 0 10 50 100]
                                         [--variants sotw delta] [--quick]

The control plane runs as ``turnout serve`` in its own process (SQLite seeded
with models x 3 versions x 10 endpoints), so its RSS is its own. The proxies
are ADS streams from ``bench.xds.adsclient`` in this process, one gRPC
connection each: they ask for clusters and listeners, then endpoints for every
cluster and the route every listener names, and ACK every response, as Envoy
does. At each step the streams are opened, every stream must have received all
four types, then after a settle period VmRSS is read from /proc/PID/status
(median of 5 samples). Per-proxy cost = (RSS at the largest step - RSS at 0) /
streams. Last, one change (a traffic split) is pushed to every stream and RSS is
read again. Each ADS variant gets a fresh control-plane process.

Writes bench/results/xds-memory.json.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

import grpc
import httpx

from controlplane.xds.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE

from .adsclient import AdsClient
from .common import (
    ControlPlaneProcess,
    free_port,
    machine,
    model_name,
    print_setup,
    rss_kb,
    seed_database,
    temp_workdir,
    write_result,
)

VERSIONS = 3
ENDPOINTS = 10


async def _rss_mib(pid: int, samples: int = 5, every_s: float = 0.5) -> dict[str, float]:
    values = []
    peak = 0
    for _ in range(samples):
        fields = rss_kb(pid)
        values.append(fields["VmRSS"])
        peak = fields["VmHWM"]
        await asyncio.sleep(every_s)
    return {
        "rss_mib": round(statistics.median(values) / 1024, 1),
        "rss_spread_mib": round((max(values) - min(values)) / 1024, 1),
        "peak_mib": round(peak / 1024, 1),
    }


async def _until(probe: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() > deadline:
            raise TimeoutError("streams did not sync in time")
        await asyncio.sleep(0.05)


async def run_variant(
    variant: str, models: int, steps: list[int], seeded: Path, workdir: Path, settle_s: float
) -> dict[str, Any]:
    """Fresh control plane on a copy of the seeded database; open streams step by step."""
    database = workdir / "turnout.db"
    shutil.copyfile(seeded, database)
    plane = ControlPlaneProcess(workdir, listener_port=free_port(), poll_interval_s=2.0)
    await plane.start(timeout=300)
    channels: list[grpc.aio.Channel] = []
    clients: list[AdsClient] = []
    rows: list[dict[str, Any]] = []
    try:
        await asyncio.sleep(settle_s)  # warm-up: first sync, API and xDS imported
        for step in steps:
            started = time.monotonic()
            while len(clients) < step:
                channel = grpc.aio.insecure_channel(
                    f"127.0.0.1:{plane.xds_port}",
                    options=[
                        ("grpc.max_receive_message_length", 64 * 1024 * 1024),
                        ("grpc.use_local_subchannel_pool", 1),
                    ],
                )
                channels.append(channel)
                client = AdsClient(
                    channel, f"mem-{variant}-{len(clients):03d}", delta=variant == "delta"
                )
                client.start()
                clients.append(client)
            await _until(lambda: all(c.synced() for c in clients), timeout=600)
            sync_s = time.monotonic() - started
            await asyncio.sleep(settle_s)
            row = {"streams": step, "sync_s": round(sync_s, 1), **await _rss_mib(plane.pid)}
            rows.append(row)
            print(
                f"   {variant:>5} streams={step:>4}: RSS {row['rss_mib']:>7.1f} MiB "
                f"(spread {row['rss_spread_mib']}, peak {row['peak_mib']}), synced in {sync_s:.1f}s"
            )
        # One change pushed to every stream, then RSS again.
        seen = [c.received[ROUTE].responses for c in clients]
        async with httpx.AsyncClient(
            base_url=plane.api_url, headers=plane.headers, timeout=120
        ) as api:
            response = await api.put(
                f"/v1/models/{model_name(0)}/traffic", json={"weights": {"v1": 50, "v2": 50}}
            )
            response.raise_for_status()
        await _until(
            lambda: all(
                c.received[ROUTE].responses > s for c, s in zip(clients, seen, strict=True)
            ),
            timeout=600,
        )
        await asyncio.sleep(settle_s)
        after_change = {"streams": len(clients), **await _rss_mib(plane.pid)}
        print(f"   {variant:>5} after one change pushed to all: RSS {after_change['rss_mib']} MiB")
        received = (
            {
                t.rsplit(".", 1)[-1]: clients[0].received[t].bytes
                for t in (CLUSTER, ENDPOINT, LISTENER, ROUTE)
            }
            if clients
            else {}
        )
    finally:
        for client in clients:
            await client.stop()
        for channel in channels:
            await channel.close()
        await plane.stop()
    base, top = rows[0], rows[-1]
    per_proxy_kib = (
        (top["rss_mib"] - base["rss_mib"]) * 1024 / (top["streams"] - base["streams"])
        if top["streams"] != base["streams"]
        else None
    )
    return {
        "variant": variant,
        "models": models,
        "steps": rows,
        "after_one_change": after_change,
        "per_proxy_kib": round(per_proxy_kib, 1) if per_proxy_kib is not None else None,
        "bytes_received_by_one_stream": received,
    }


async def run(
    models: int, steps: list[int], variants: list[str], settle_s: float
) -> dict[str, Any]:
    """Seed once, then measure each variant on a fresh control plane."""
    with temp_workdir("turnout-bench-memory-") as tmp:
        root = Path(tmp)
        seeded = root / "seeded.db"
        started = time.monotonic()
        await seed_database(f"sqlite+aiosqlite:///{seeded}", models, VERSIONS, ENDPOINTS)
        print(f"   seeded {models} models in {time.monotonic() - started:.1f}s")
        results = {}
        for variant in variants:
            workdir = root / variant
            workdir.mkdir()
            results[variant] = await run_variant(variant, models, steps, seeded, workdir, settle_s)
    return results


def main(argv: list[str] | None = None) -> None:
    """Run the memory benchmark and write its JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=int, default=1000)
    parser.add_argument("--streams", type=int, nargs="+", default=[0, 10, 50, 100])
    parser.add_argument("--variants", nargs="+", default=["sotw", "delta"])
    parser.add_argument("--settle-s", type=float, default=3.0)
    parser.add_argument("--quick", action="store_true", help="100 models, 0/10 streams, sotw")
    args = parser.parse_args(argv)
    if args.quick:
        args.models, args.streams, args.variants, args.settle_s = 100, [0, 10], ["sotw"], 1.0
    steps = sorted(set(args.streams))
    host = machine()
    setup = {
        "models": f"{args.models} x {VERSIONS} versions x {ENDPOINTS} endpoints",
        "streams": steps,
        "variants": args.variants,
        "control plane": "turnout serve subprocess, SQLite; RSS from /proc/PID/status",
        "proxies": "ADS client streams (bench.xds.adsclient), one gRPC connection each, "
        "ACK every response",
        "sampling": f"settle {args.settle_s}s after sync, median of 5 VmRSS samples 0.5s apart",
    }
    print_setup("xDS memory", setup, host)
    results = asyncio.run(run(args.models, steps, args.variants, args.settle_s))
    largest = max(steps)
    target = {
        variant: {
            "models": args.models,
            "streams": largest,
            "rss_mib": r["steps"][-1]["rss_mib"],
            "rss_after_change_mib": r["after_one_change"]["rss_mib"],
            "peak_mib": r["after_one_change"]["peak_mib"],
            "met": args.models >= 1000
            and largest >= 100
            and max(r["steps"][-1]["rss_mib"], r["after_one_change"]["rss_mib"]) < 400,
        }
        for variant, r in results.items()
    }
    for variant, r in results.items():
        print(
            f"   {variant}: per proxy {r['per_proxy_kib']} KiB; target (<400 MB) {target[variant]}"
        )
    path = write_result(
        "memory",
        {
            "benchmark": "xds.memory",
            "command": ".venv/bin/python -m bench.xds.memory" + (" --quick" if args.quick else ""),
            "machine": host,
            "setup": setup,
            "results": results,
            "target_rss_lt_400mb": target,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
