"""Propagation: from the admin API's 2xx to every one of N real Envoys having the new split.

    .venv/bin/python -m bench.xds.propagation [--sizes 1 10 30] [--changes 50] [--quick]

One control plane (``turnout serve`` in its own process, SQLite in a temp dir)
and, per size N, N real Envoys (``--concurrency 1 --disable-hot-restart``, each
with its own admin port). One model with versions v1 and v2, each backed by an
example model server; every change flips the split between 100% v1 and 100% v2,
so a single request shows which split an Envoy serves.

All Envoys receive the same Listener (one port): the control plane runs with
``TURNOUT_LISTENER_REUSE_PORT=true``, so Envoy binds it with SO_REUSEPORT and they share it
and the kernel spreads new connections over them. A request through the
listener therefore cannot pick its Envoy, and per-Envoy timing comes from:

- admin: each Envoy's ``/config_dump?resource=dynamic_route_configs`` polled
  (only Envoys not yet updated, every ``--poll-ms``) until its route
  ``version_info`` is the new version: Envoy applied the new RouteConfiguration;
- ack: the control plane's own record of when each Envoy ACKed the new route
  version (``/v1/proxies`` ``acked_at``); no polling, so no observer load;
- sent: the control plane's record of when it handed each Envoy the new routes
  (``/v1/proxies`` ``sent_at``): 2xx -> first send is the sync pass, first ->
  last send the fan-out over the streams, and send -> ACK each Envoy's own
  time to receive, apply and answer;
- serving: after every change, ``4 x N`` requests on fresh connections through
  the shared listener must all be answered by the new version (counted); with
  N = 1 the listener is also probed from the 2xx on, timing "first request
  served by the new version".

``--observe ack`` drops the admin polling (30 Envoys writing their config dumps
every 5 ms is load on the same 2 cores) and waits for the ACKs instead, reading
``/v1/proxies`` every 50 ms: the times are the control plane's own records, so
the coarse poll changes when the bench learns them, not what they are.

Propagation of one change = the slowest Envoy. Writes bench/results/xds-propagation.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import httpx

from examples.model_server import ModelServer, bound_port, serve

from .common import (
    ControlPlaneProcess,
    EnvoyFleet,
    free_port,
    machine,
    print_setup,
    ratios,
    rss_kb,
    seed_database,
    summarize,
    temp_workdir,
    write_result,
)

MODEL = "bench"


async def _route_version(session: aiohttp.ClientSession, admin_port: int) -> str | None:
    url = f"http://127.0.0.1:{admin_port}/config_dump?resource=dynamic_route_configs"
    async with session.get(url) as response:
        if response.status != 200:
            return None
        body = await response.json(content_type=None)
    for config in body.get("configs", []):
        return str(config.get("version_info"))
    return None


async def _served_version(session: aiohttp.ClientSession, url: str) -> str | None:
    """One request on a fresh connection; the version that answered, or None."""
    with contextlib.suppress(aiohttp.ClientError, TimeoutError):
        async with session.get(url, headers={"connection": "close"}) as response:
            if response.status == 200:
                return response.headers.get("x-turnout-version")
    return None


async def _current_route_version(api: httpx.AsyncClient) -> str:
    body = (await api.get("/readyz")).json()
    return str(body["xds_versions"]["routes"])


async def _wait_all(
    session: aiohttp.ClientSession, ports: list[int], version: str, timeout: float = 60.0
) -> None:
    deadline = time.monotonic() + timeout
    pending = set(ports)
    while pending:
        results = await asyncio.gather(*(_route_version(session, p) for p in pending))
        pending = {p for p, v in zip(pending, results, strict=True) if v != version}
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(pending)} Envoys never reached route version {version}")
        await asyncio.sleep(0.05)


async def _register(api: httpx.AsyncClient, ports: dict[str, int]) -> None:
    (await api.post("/v1/models", json={"name": MODEL, "protocol": "http"})).raise_for_status()
    for version, port in ports.items():
        response = await api.post(
            f"/v1/models/{MODEL}/versions",
            json={"version": version, "endpoints": [{"address": "127.0.0.1", "port": port}]},
        )
        response.raise_for_status()
    body = {"weights": {"v1": 100}}
    (await api.put(f"/v1/models/{MODEL}/traffic", json=body)).raise_for_status()


async def run_size(
    n: int,
    changes: int,
    plane: ControlPlaneProcess,
    api: httpx.AsyncClient,
    workdir: Path,
    poll_s: float,
    observe: str = "admin",
) -> dict[str, Any]:
    """Start N Envoys, make ``changes`` split changes, time each to every Envoy."""
    fleet = EnvoyFleet(n, plane.xds_port, workdir)
    listener_url = f"http://127.0.0.1:{plane.listener_port}/models/{MODEL}/predict"
    connector = aiohttp.TCPConnector(limit=0)
    rows: list[dict[str, Any]] = []
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        try:
            await fleet.start()
            current = await _current_route_version(api)
            await _wait_all(session, fleet.admin_ports, current)
            started_rss = {pid: rss_kb(pid)["VmRSS"] for pid in fleet.pids}
            served = await _served_version(session, listener_url)
            split = served or "v1"
            for i in range(changes + 1):  # change 0 is the warm-up
                split = "v2" if split == "v1" else "v1"
                rows_i = await _one_change(
                    n, split, session, api, fleet, listener_url, current, poll_s, observe
                )
                current = rows_i.pop("new_version")
                if i > 0:
                    rows.append(rows_i)
                await asyncio.sleep(0.1)
            envoy_rss = {pid: rss_kb(pid)["VmRSS"] for pid in fleet.pids}
        finally:
            await fleet.stop()
    keys = [
        "admin_all_ms",
        "admin_first_ms",
        "ack_all_ms",
        "ack_first_ms",
        "sent_first_ms",
        "sent_all_ms",
        "fan_out_ms",
        "send_to_ack_max_ms",
        "api_ms",
    ]
    if observe != "admin":
        keys = [k for k in keys if not k.startswith("admin")]
    if n == 1 and observe == "admin":
        keys.append("serve_first_ms")
    return {
        "envoys": n,
        "changes": len(rows),
        "ms": {k: summarize([r[k] for r in rows]) for k in keys},
        "serving_check": {
            "requests": sum(r["check_requests"] for r in rows),
            "answered_by_old_version": sum(r["check_old"] for r in rows),
            "failed": sum(r["check_failed"] for r in rows),
        },
        "envoy_rss_mib": {
            "at_start_mean": round(sum(started_rss.values()) / len(started_rss) / 1024, 1),
            "at_end_mean": round(sum(envoy_rss.values()) / len(envoy_rss) / 1024, 1),
        },
    }


async def _one_change(
    n: int,
    split: str,
    session: aiohttp.ClientSession,
    api: httpx.AsyncClient,
    fleet: EnvoyFleet,
    listener_url: str,
    old_version: str,
    poll_s: float,
    observe: str = "admin",
) -> dict[str, Any]:
    sent = time.time()
    response = await api.put(f"/v1/models/{MODEL}/traffic", json={"weights": {split: 100}})
    t0 = time.time()
    response.raise_for_status()
    updated: dict[int, float] = {}
    served_at: list[float] = []

    async def poll_admin() -> None:
        pending = list(fleet.admin_ports)
        while pending:
            results = await asyncio.gather(*(_route_version(session, p) for p in pending))
            now = time.time()
            still = []
            for port, version in zip(pending, results, strict=True):
                if version is not None and version != old_version:
                    updated[port] = now
                else:
                    still.append(port)
            pending = still
            if pending:
                await asyncio.sleep(poll_s)

    async def probe_listener() -> None:
        while await _served_version(session, listener_url) != split:  # noqa: ASYNC110
            await asyncio.sleep(poll_s)
        served_at.append(time.time())

    async def wait_acks() -> None:
        while True:
            proxies = (await api.get("/v1/proxies")).json()
            acked = {
                p["types"]["routes"]["acked_version"]
                for p in proxies
                if p["node_id"] in fleet.node_ids
            }
            if len(acked) == 1 and old_version not in acked and None not in acked:
                return
            await asyncio.sleep(0.05)

    if observe == "admin":
        tasks = [poll_admin()] + ([probe_listener()] if n == 1 else [])
    else:
        tasks = [wait_acks()]
    await asyncio.wait_for(asyncio.gather(*tasks), timeout=60)
    new_version = await _current_route_version(api)
    versions = await asyncio.gather(*(_route_version(session, p) for p in fleet.admin_ports))
    if any(v != new_version for v in versions):
        raise RuntimeError(f"Envoys disagree on the route version: {set(versions)}")
    # Every Envoy has it: requests on fresh connections through the shared listener.
    answers = await asyncio.gather(*(_served_version(session, listener_url) for _ in range(4 * n)))
    proxies = (await api.get("/v1/proxies")).json()
    routes = [
        p["types"]["routes"]
        for p in proxies
        if p["node_id"] in fleet.node_ids and p["types"]["routes"]["acked_version"] == new_version
    ]
    if len(routes) != n:
        raise RuntimeError(f"{n - len(routes)} Envoys have not ACKed route version {new_version}")
    acks = [datetime.fromisoformat(r["acked_at"]).timestamp() for r in routes]
    sends = [datetime.fromisoformat(r["sent_at"]).timestamp() for r in routes]
    row = {
        "new_version": new_version,
        "api_ms": (t0 - sent) * 1000,
        "ack_all_ms": (max(acks) - t0) * 1000,
        "ack_first_ms": (min(acks) - t0) * 1000,
        "sent_first_ms": (min(sends) - t0) * 1000,
        "sent_all_ms": (max(sends) - t0) * 1000,
        "fan_out_ms": (max(sends) - min(sends)) * 1000,
        "send_to_ack_max_ms": max(a - s for a, s in zip(acks, sends, strict=True)) * 1000,
        "check_requests": len(answers),
        "check_old": sum(1 for a in answers if a is not None and a != split),
        "check_failed": sum(1 for a in answers if a is None),
    }
    if updated:
        row["admin_all_ms"] = (max(updated.values()) - t0) * 1000
        row["admin_first_ms"] = (min(updated.values()) - t0) * 1000
    if served_at:
        row["serve_first_ms"] = (served_at[0] - t0) * 1000
    return row


async def run(
    sizes: list[int],
    changes: int,
    poll_s: float,
    source: Path | None = None,
    observe: str = "admin",
) -> dict[str, Any]:
    """One control plane, each fleet size in turn."""
    servers = {v: ModelServer(version=v) for v in ("v1", "v2")}
    runners = {v: await serve(s, "127.0.0.1", 0) for v, s in servers.items()}
    results: dict[str, Any] = {}
    with temp_workdir("turnout-bench-propagation-") as tmp:
        workdir = Path(tmp)
        plane = ControlPlaneProcess(workdir, listener_port=free_port(), source=source)
        await seed_database(plane.database_url, 0, 0, 0)
        await plane.start()
        try:
            async with httpx.AsyncClient(
                base_url=plane.api_url, headers=plane.headers, timeout=30
            ) as api:
                await _register(api, {v: bound_port(r) for v, r in runners.items()})
                for n in sizes:
                    print(f"   ... N = {n}: starting {n} Envoys, then {changes} changes")
                    results[str(n)] = await run_size(
                        n, changes, plane, api, workdir, poll_s, observe
                    )
                    _print_row(results[str(n)])
            results["controlplane_rss_kib_at_end"] = rss_kb(plane.pid)
        finally:
            await plane.stop()
            for runner in runners.values():
                await runner.cleanup()
    return results


def _print_row(row: dict[str, Any]) -> None:
    for key, s in row["ms"].items():
        print(
            f"   N={row['envoys']:>3} {key:>15}: p50 {s['p50']:>7.1f}  p99 {s['p99']:>7.1f}  "
            f"max {s['max']:>7.1f}  min {s['min']:>7.1f} ms"
        )
    print(f"   N={row['envoys']:>3} serving check: {row['serving_check']}")


def main(argv: list[str] | None = None) -> None:
    """Run the propagation benchmark and write its JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 10, 30])
    parser.add_argument("--changes", type=int, default=50, help="timed changes per size")
    parser.add_argument("--poll-ms", type=float, default=5.0, help="admin poll interval")
    parser.add_argument("--quick", action="store_true", help="sizes 1 3, 10 changes")
    parser.add_argument("--source", type=Path, default=None, help="run this checkout's code")
    parser.add_argument("--label", default="", help="suffix of the result file")
    parser.add_argument(
        "--observe",
        choices=("admin", "ack"),
        default="admin",
        help="admin: poll every Envoy's config dump; ack: only the control plane's records",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.changes = [1, 3], 10
    host = machine()
    setup = {
        "sizes (Envoys)": args.sizes,
        "changes": f"{args.changes} per size, after 1 warm-up change; split flips v1<->v2 (100%)",
        "control plane": "turnout serve subprocess, SQLite, state-of-the-world ADS",
        "envoy": "--concurrency 1 --disable-hot-restart, shared listener port (SO_REUSEPORT)",
        "t0": "the admin API's 2xx for PUT /v1/models/bench/traffic",
        "admin": (
            f"config_dump route version_info, pending Envoys polled every {args.poll_ms} ms"
            if args.observe == "admin"
            else "not polled (--observe ack)"
        ),
        "sent": "control plane's sent_at for the routes (/v1/proxies)",
        "ack": "control plane's acked_at for the new route version (/v1/proxies)",
        "serving": "4N fresh-connection requests via the listener after each change; "
        "N=1 also timed through the listener",
    }
    print_setup("xDS propagation", setup, host)
    results = asyncio.run(
        run(args.sizes, args.changes, args.poll_ms / 1000, args.source, args.observe)
    )
    measures = ["ack_all_ms"] + (["admin_all_ms"] if args.observe == "admin" else [])
    growth = {
        f"{m[:-3]}_p99": ratios([results[str(n)]["ms"][m]["p99"] for n in args.sizes])
        for m in measures
    }
    print(f"   growth of p99 between sizes {args.sizes}: {growth}")
    largest = max(args.sizes)
    smallest = min(args.sizes)
    worst = max(results[str(largest)]["ms"][m]["p99"] for m in measures)
    one = max(results[str(smallest)]["ms"][m]["p50"] for m in measures)
    target = {
        "p99_all_envoys_le_50ms_at_30": {
            "envoys": largest,
            **{f"{m[:-3]}_p99_ms": results[str(largest)]["ms"][m]["p99"] for m in measures},
            "met": largest >= 30 and worst <= 50,
        },
        "p50_le_10ms_to_one_envoy": {
            "envoys": smallest,
            **{f"{m[:-3]}_p50_ms": results[str(smallest)]["ms"][m]["p50"] for m in measures},
            "met": smallest == 1 and one <= 10,
        },
    }
    print(f"   target: {target}")
    path = write_result(
        "propagation" + (f"-{args.label}" if args.label else ""),
        {
            "benchmark": "xds.propagation",
            "command": ".venv/bin/python -m bench.xds.propagation"
            + (" --quick" if args.quick else "")
            + (f" --observe {args.observe}" if args.observe != "admin" else ""),
            "machine": host,
            "setup": setup,
            "results": results,
            "growth": growth,
            "target": target,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
