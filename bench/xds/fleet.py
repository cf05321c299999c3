"""Fleet: thousands of ADS streams on one control-plane process; changes; a restart.

    .venv/bin/python -m bench.xds.fleet [--streams 2000] [--variants sotw delta]
                                        [--client h2|grpc] [--models 1000]
                                        [--source DIR] [--quick]

The control plane runs as ``turnout serve`` in its own process (SQLite seeded
with models x 3 versions x 10 endpoints; one process, so at most one core).
The proxies are ADS streams in this process, one connection each, as Envoy
does: clusters and listeners, then the endpoints of every cluster and the route
every listener names, and an ACK for every response. ``--client h2`` (the
default) is ``bench.xds.adsh2``: gRPC on raw HTTP/2, 1 MiB receive windows,
responses read as they arrive and not held (a few tens of KiB per stream);
``--client grpc`` is ``bench.xds.adsclient`` on grpcio (8 to 13 MiB per stream
natively, 64 KiB windows: 2,000 of them do not fit in 24 GiB). Per variant (a
fresh control plane each):

1. connect: every stream opens at once; time until every stream has every
   type at the versions ``/readyz`` reports; then RSS (median of 5 samples
   after a settle) and the peak (VmHWM).
2. changes: a traffic split (routes change) and an endpoint change (one
   ClusterLoadAssignment changes), each from the admin API's 2xx until every
   stream has the new versions (client side), and until ``/v1/proxies``
   reports every proxy SYNCED at the new revision (server side, polled).
3. restart: the control plane is stopped (SIGTERM) and a new one started on
   the same ports; once it is ready every stream reconnects at once (new
   connections): time until every stream is current, then until
   ``/v1/proxies`` reports all SYNCED; the count of proxies left STALE 60 s
   later is the answer to "none left STALE". RSS again.

Also printed: the control plane's CPU (cores, from /proc over each phase)
and this process's (the clients'), which shares the same 2 cores.
``--source DIR`` runs ``turnout serve`` from another checkout (a git worktree
of an earlier revision) for before/after. Writes bench/results/xds-fleet.json
(or xds-fleet-<label>.json with ``--label``).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import resource
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import grpc
import httpx

from controlplane.memory import pin_mmap_threshold
from controlplane.xds.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE, SHORT_NAMES

from .adsclient import AdsClient
from .adsh2 import H2AdsClient
from .common import (
    ControlPlaneProcess,
    free_port,
    generate_state,
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
TYPES = (CLUSTER, ENDPOINT, LISTENER, ROUTE)
_TICKS = os.sysconf("SC_CLK_TCK")
STALE_CHECK_S = 60.0  # after the reconnect, when no proxy may be left STALE


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def _own_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class _Phase:
    """CPU of the control plane and of this process over one phase."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.started = time.monotonic()
        self.cpu = _cpu_s(pid)
        self.own = _own_cpu_s()

    def cores(self) -> dict[str, float]:
        wall = max(time.monotonic() - self.started, 1e-9)
        return {
            "control_plane_cores": round((_cpu_s(self.pid) - self.cpu) / wall, 2),
            "clients_cores": round((_own_cpu_s() - self.own) / wall, 2),
            "clients_rss_mib": round(rss_kb(os.getpid())["VmRSS"] / 1024, 1),
        }


async def _rss(pid: int, samples: int = 5, every_s: float = 0.5) -> dict[str, float]:
    values = []
    peak = 0
    for _ in range(samples):
        fields = rss_kb(pid)
        values.append(fields["VmRSS"])
        peak = fields["VmHWM"]
        await asyncio.sleep(every_s)
    return {
        "rss_mib": round(statistics.median(values) / 1024, 1),
        "peak_mib": round(peak / 1024, 1),
    }


async def _until(probe: Any, timeout: float, every_s: float = 0.01) -> float:
    started = time.monotonic()
    while not probe():
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"not reached in {timeout} s")
        await asyncio.sleep(every_s)
    return time.monotonic() - started


class Fleet:
    """``count`` ADS clients, one connection each (grpcio channels or raw HTTP/2)."""

    def __init__(self, xds_port: int, count: int, variant: str, client: str = "h2") -> None:
        self.xds_port = xds_port
        self.variant = variant
        self.kind = client
        self.channels: list[grpc.aio.Channel] = []
        delta = variant == "delta"
        self.clients: list[AdsClient | H2AdsClient] = [
            AdsClient(self._channel(i), f"fleet-{variant}-{i:04d}", delta=delta)
            if client == "grpc"
            else H2AdsClient("127.0.0.1", xds_port, f"fleet-{variant}-{i:04d}", delta=delta)
            for i in range(count)
        ]

    def _channel(self, i: int) -> grpc.aio.Channel:
        channel = grpc.aio.insecure_channel(
            f"127.0.0.1:{self.xds_port}",
            options=[
                ("grpc.max_receive_message_length", 64 * 1024 * 1024),
                ("grpc.use_local_subchannel_pool", 1),
                # No receive-window growth: 2,000 connections each buffering megabytes
                # that this one process has not read yet took 14 GB (and rising).
                ("grpc.http2.bdp_probe", 0),
            ],
        )
        if i < len(self.channels):
            self.channels[i] = channel
        else:
            self.channels.append(channel)
        return channel

    def start(self) -> None:
        for client in self.clients:
            client.start()

    async def reconnect(self) -> None:
        """Every stream at once on a new connection, from scratch."""
        old = list(self.channels)
        for i, client in enumerate(self.clients):
            if isinstance(client, AdsClient):
                client.restart(self._channel(i))
            else:
                client.restart()
        await asyncio.gather(*(channel.close() for channel in old))

    def rejected(self) -> dict[str, int]:
        """Calls that ended before any response (refused by the control plane, or their
        connection failed or was reset), by status or error; the h2 clients retried them."""
        total: collections.Counter[str] = collections.Counter()
        for client in self.clients:
            total.update(getattr(client, "rejected", {}))
        return dict(total)

    def current(self, versions: dict[str, str]) -> int:
        """How many streams hold ``versions``; raises when a stream has ended (none
        should, between a connect and the control plane's restart)."""
        ended = [client for client in self.clients if client.ended]
        if ended:
            why = getattr(ended[0], "end_reason", "") or "its call ended"
            raise RuntimeError(f"{len(ended)} streams ended; {ended[0].node_id}: {why}")
        return sum(client.current(versions) for client in self.clients)

    async def stop(self) -> None:
        for client in self.clients:
            await client.stop()
        await asyncio.gather(*(channel.close() for channel in self.channels))


async def _versions(api: httpx.AsyncClient) -> tuple[int, dict[str, str]]:
    """The revision and versions served, from /readyz (asked again while it answers
    503, as when a busy control plane's database check times out)."""
    while (response := await api.get("/readyz")).status_code != 200:  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    body = response.json()
    by_short = body["xds_versions"]
    return int(body["revision"]), {t: by_short[SHORT_NAMES[t]] for t in TYPES}


async def _proxies(api: httpx.AsyncClient, revision: int) -> dict[str, int]:
    """Server side: how many proxies are SYNCED at ``revision``, STALE, other."""
    proxies = (await api.get("/v1/proxies", timeout=120)).json()
    synced = sum(1 for p in proxies if p["synced_revision"] == revision)
    stale = sum(1 for p in proxies if any(t["status"] == "STALE" for t in p["types"].values()))
    return {"proxies": len(proxies), "synced": synced, "stale": stale}


async def _server_synced(
    api: httpx.AsyncClient, revision: int, count: int, timeout: float
) -> tuple[float | None, dict[str, int]]:
    """Poll /v1/proxies until every proxy is SYNCED at ``revision``; (seconds, counts)."""
    started = time.monotonic()
    while True:
        counts = await _proxies(api, revision)
        if counts["synced"] == count and counts["proxies"] == count:
            return time.monotonic() - started, counts
        if time.monotonic() - started > timeout:
            return None, counts
        await asyncio.sleep(0.5)


async def _change(
    api: httpx.AsyncClient, fleet: Fleet, plane: ControlPlaneProcess, kind: str, i: int
) -> dict[str, Any]:
    """One change through the admin API; time to every stream, then to all SYNCED."""
    phase = _Phase(plane.pid)
    revision, before = await _versions(api)
    model = model_name(i)
    if kind == "split":
        weights = {"v1": 40, "v2": 60} if i % 2 else {"v1": 60, "v2": 40}
        response = await api.put(f"/v1/models/{model}/traffic", json={"weights": weights})
    else:
        state = generate_state(i + 1, VERSIONS, ENDPOINTS)
        endpoints = state.models[i].versions[0].endpoints
        body = {
            "endpoints": [
                {"address": e.address, "port": 20000 + i if j == 0 else e.port}
                for j, e in enumerate(endpoints)
            ]
        }
        response = await api.patch(f"/v1/models/{model}/versions/v1", json=body)
    response.raise_for_status()
    t0 = time.monotonic()
    # The new versions, once the control plane has published the change.
    while True:
        new_revision, versions = await _versions(api)
        if new_revision > revision and versions != before:
            break
        await asyncio.sleep(0.005)
    count = len(fleet.clients)
    await _until(lambda: fleet.current(versions) == count, timeout=120)
    clients_s = time.monotonic() - t0
    synced_s, counts = await _server_synced(api, new_revision, count, timeout=60)
    changed = [SHORT_NAMES[t] for t in TYPES if versions[t] != before[t]]
    return {
        "change": kind,
        "types_changed": changed,
        "all_streams_current_s": round(clients_s, 3),
        "all_synced_s_from_2xx": round(time.monotonic() - t0, 3) if synced_s is not None else None,
        "server": counts,
        **phase.cores(),
    }


async def run_variant(
    variant: str,
    streams: int,
    models: int,
    seeded: Path,
    workdir: Path,
    source: Path | None,
    client: str = "h2",
) -> dict[str, Any]:
    database = workdir / "turnout.db"
    shutil.copyfile(seeded, database)
    plane = ControlPlaneProcess(workdir, listener_port=free_port(), source=source)
    await plane.start(timeout=300)
    fleet = Fleet(plane.xds_port, streams, variant, client)
    result: dict[str, Any] = {"variant": variant, "streams": streams, "client": client}
    try:
        async with httpx.AsyncClient(
            base_url=plane.api_url, headers=plane.headers, timeout=60
        ) as api:
            await asyncio.sleep(2.0)
            result["idle"] = {
                **await _rss(plane.pid),
                "clients_rss_mib": round(rss_kb(os.getpid())["VmRSS"] / 1024, 1),
            }
            revision, versions = await _versions(api)
            phase = _Phase(plane.pid)
            fleet.start()
            connect_s = await _until(lambda: fleet.current(versions) == streams, timeout=600)
            cores = phase.cores()
            synced_s, counts = await _server_synced(api, revision, streams, timeout=120)
            await asyncio.sleep(3.0)
            result["connect"] = {
                "all_streams_current_s": round(connect_s, 2),
                "calls_refused_and_retried": fleet.rejected(),
                "server": counts,
                **cores,
                **await _rss(plane.pid),
            }
            print(f"   {variant} {streams} streams connect: {result['connect']}", flush=True)
            result["changes"] = []
            for i, kind in enumerate(("split", "endpoint", "split", "endpoint")):
                row = await _change(api, fleet, plane, kind, models // 2 + i)
                result["changes"].append(row)
                print(f"   {variant} change: {row}", flush=True)
                await asyncio.sleep(1.0)
            result["after_changes"] = await _rss(plane.pid)
        # The restart: the same ports, every proxy reconnecting at once.
        ports = (plane.api_port, plane.xds_port)
        await plane.stop()
        await _until(lambda: all(c.ended for c in fleet.clients), timeout=60, every_s=0.05)
        plane = ControlPlaneProcess(
            workdir, listener_port=plane.listener_port, source=source, ports=ports
        )
        started = time.monotonic()
        await plane.start(timeout=300)
        ready_s = time.monotonic() - started
        async with httpx.AsyncClient(
            base_url=plane.api_url, headers=plane.headers, timeout=60
        ) as api:
            revision, versions = await _versions(api)
            phase = _Phase(plane.pid)
            t0 = time.monotonic()
            await fleet.reconnect()
            storm_s = await _until(lambda: fleet.current(versions) == streams, timeout=600)
            cores = phase.cores()
            synced_s, counts = await _server_synced(api, revision, streams, timeout=120)
            all_synced = time.monotonic() - t0 if synced_s is not None else None
            await asyncio.sleep(3.0)
            rss = await _rss(plane.pid)
            await asyncio.sleep(max(0.0, STALE_CHECK_S - (time.monotonic() - t0)))
            later = await _proxies(api, revision)
        result["restart"] = {
            "control_plane_ready_s": round(ready_s, 2),
            "calls_refused_and_retried_in_all": fleet.rejected(),
            "all_streams_current_s": round(storm_s, 2),
            "all_synced_s": round(all_synced, 2) if all_synced is not None else None,
            "server": counts,
            "server_60s_after_reconnect": later,
            **cores,
            **rss,
        }
        print(f"   {variant} restart: {result['restart']}", flush=True)
    finally:
        await fleet.stop()
        await plane.stop()
    return result


async def run(
    models: int, streams: int, variants: list[str], source: Path | None, client: str = "h2"
) -> dict[str, Any]:
    with temp_workdir("turnout-bench-fleet-") as tmp:
        root = Path(tmp)
        seeded = root / "seeded.db"
        started = time.monotonic()
        await seed_database(f"sqlite+aiosqlite:///{seeded}", models, VERSIONS, ENDPOINTS)
        print(f"   seeded {models} models in {time.monotonic() - started:.1f}s", flush=True)
        results = {}
        for variant in variants:
            workdir = root / variant
            workdir.mkdir()
            results[variant] = await run_variant(
                variant, streams, models, seeded, workdir, source, client
            )
    return results


def _target(r: dict[str, Any], models: int) -> dict[str, Any]:
    rss = max(r["connect"]["rss_mib"], r["after_changes"]["rss_mib"], r["restart"]["rss_mib"])
    change_s = max((c["all_synced_s_from_2xx"] or float("inf")) for c in r["changes"])
    restart_s = r["restart"]["all_synced_s"] or float("inf")
    left_stale = r["restart"]["server_60s_after_reconnect"]["stale"]
    full = models >= 1000 and r["streams"] >= 2000
    return {
        "rss_mib_max": rss,
        "rss_le_1gib": rss <= 1024,
        "change_all_synced_s_max": change_s,
        "change_le_10s": change_s <= 10,
        "restart_all_synced_s": restart_s,
        "restart_le_30s": restart_s <= 30,
        "left_stale": left_stale,
        "met": full and rss <= 1024 and change_s <= 10 and restart_s <= 30 and not left_stale,
    }


def main(argv: list[str] | None = None) -> None:
    """Run the fleet benchmark and write its JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=int, default=1000)
    parser.add_argument("--streams", type=int, default=2000)
    parser.add_argument("--variants", nargs="+", default=["sotw", "delta"])
    parser.add_argument("--client", choices=["h2", "grpc"], default="h2", help="ADS client")
    parser.add_argument("--source", type=Path, default=None, help="run this checkout's code")
    parser.add_argument("--label", default="", help="suffix of the result file")
    parser.add_argument("--quick", action="store_true", help="100 models, 50 streams")
    args = parser.parse_args(argv)
    if args.quick:
        args.models, args.streams = 100, 50
    # As the control plane does: large freed buffers go back to the system, instead of
    # 2,000 streams' megabyte responses fragmenting this process's heap.
    pin_mmap_threshold()
    host = machine()
    setup = {
        "models": f"{args.models} x {VERSIONS} versions x {ENDPOINTS} endpoints",
        "streams": args.streams,
        "variants": args.variants,
        "control plane": "turnout serve subprocess, SQLite"
        + (f", code from {args.source}" if args.source else ", this tree"),
        "proxies": (
            "ADS client streams (bench.xds.adsh2: raw HTTP/2, 1 MiB windows, responses "
            "read as they arrive)"
            if args.client == "h2"
            else "ADS client streams (bench.xds.adsclient: grpcio)"
        )
        + " in this process, one connection each, ACK every response",
        "phases": "connect all at once; 4 changes (split, endpoint, x2); restart on the same "
        "ports and every stream reconnects at once",
    }
    print_setup("xDS fleet", setup, host)
    results = asyncio.run(run(args.models, args.streams, args.variants, args.source, args.client))
    targets = {variant: _target(r, args.models) for variant, r in results.items()}
    for variant, target in targets.items():
        print(f"   {variant}: target {target}")
    host["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    print(f"   load average at the end: {host['loadavg_at_end']}")
    given = sys.argv[1:] if argv is None else argv
    command = " ".join([".venv/bin/python -m bench.xds.fleet", *given])
    path = write_result(
        "fleet" + (f"-{args.label}" if args.label else ""),
        {
            "benchmark": "xds.fleet",
            "command": command,
            "argv": argv,
            "machine": host,
            "setup": setup,
            "results": results,
            "target": targets,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
