"""Capture what a real Envoy's stat sink sends, with Turnout's bootstrap.

    .venv/bin/python -m bench.telemetry.capture

Runs an in-process control plane (SQLite), two model versions that answer 200
and one that answers 500, a third version that gets no traffic, and one real
Envoy flushing every second. It records every flush the control plane
receives, sends 60 requests through Envoy, then records idle flushes again,
(Envoy's last flush, as it stops, carries no histograms: it is labelled
"stopping"), and writes ``bench/telemetry/envoy-shape.json``: each family the sink sent
(cluster names replaced by ``{cluster}``, the tenant by ``{tenant}``), its
type, its bucket count, and whether it came in every flush or only once the
statistic was used. The load generator (``bench.telemetry.load``) builds its
messages from that file.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
from aiohttp import web
from google.protobuf import text_format

from controlplane.api.app import create_app
from controlplane.bootstrap import XdsAddress, dump_bootstrap, render_bootstrap
from controlplane.cli.admin import create_key
from controlplane.db.migrate import upgrade
from controlplane.domain.keys import Role
from controlplane.domain.naming import cluster_name, stat_name
from controlplane.processes import ChildProcess, envoy_binary, wait_for_port
from controlplane.runtime import ControlPlane
from controlplane.settings import Settings
from controlplane.telemetry.protocol import StreamMetricsMessage
from controlplane.telemetry.window import Proxy

from ..xds.common import free_port

SHAPE = Path(__file__).with_name("envoy-shape.json")
MODEL = "captured"
TYPES = {0: "counter", 1: "gauge", 4: "histogram"}


async def _server(status: int) -> tuple[web.AppRunner, int]:
    async def handle(request: web.Request) -> web.Response:
        return web.json_response({"ok": status == 200}, status=status)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, port


def _template(name: str, clusters: dict[str, str]) -> str:
    for stat, _label in clusters.items():
        name = name.replace(f".{stat}.", ".{cluster}.").replace(f".{stat}", ".{cluster}")
    return re.sub(
        r"^turnout\.tenant_requests\.tenant\.[^.]*\.",
        "turnout.tenant_requests.tenant.{tenant}.",
        name,
    )


async def capture(workdir: Path, eviction_s: float | None = None) -> dict[str, Any]:
    url = f"sqlite+aiosqlite:///{workdir / 'turnout.db'}"
    await asyncio.to_thread(upgrade, url)
    _row, key = await create_key(url, "capture", Role.ADMIN)
    settings = Settings(
        database_url=url,
        api_port=0,
        xds_port=0,
        listener_port=free_port(),
        envoy_admin_port=free_port(),
        poll_interval_s=0.5,
    )
    plane = ControlPlane(settings)
    await plane.start(api=create_app)
    flushes: list[tuple[str, bytes]] = []
    phase = ["before"]
    ingest = plane.traffic.ingest

    def recording(proxy: Proxy, families: Any) -> None:
        flushes.append((phase[0], StreamMetricsMessage(envoy_metrics=families).SerializeToString()))
        ingest(proxy, families)

    plane.traffic.ingest = recording  # type: ignore[method-assign]
    ok, ok_port = await _server(200)
    failing, failing_port = await _server(500)
    envoy: ChildProcess | None = None
    try:
        api = httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{plane.api_port}",
            headers={"authorization": f"Bearer {key}"},
            timeout=30,
        )
        assert (await api.post("/v1/models", json={"name": MODEL, "protocol": "http"})).is_success
        for version, port in (("v1", ok_port), ("v2", failing_port), ("v3", ok_port)):
            response = await api.post(
                f"/v1/models/{MODEL}/versions",
                json={"version": version, "endpoints": [{"address": "127.0.0.1", "port": port}]},
            )
            assert response.is_success, response.text
        response = await api.put(
            f"/v1/models/{MODEL}/traffic", json={"weights": {"v1": 80, "v2": 20, "v3": 0}}
        )
        assert response.is_success, response.text
        bootstrap = render_bootstrap(
            "capture", [XdsAddress("127.0.0.1", plane.xds_port)], admin_port=free_port()
        )
        if eviction_s is not None:
            # Envoy marks every statistic unused at each eviction and flushes only used ones.
            bootstrap["stats_eviction_interval"] = f"{eviction_s:g}s"
        path = workdir / "envoy.yaml"
        path.write_text(dump_bootstrap(bootstrap))
        envoy = ChildProcess(
            "envoy",
            [envoy_binary(), "-c", str(path), "--disable-hot-restart", "--concurrency", "1"],
            log_path=workdir / "envoy.log",
        )
        await envoy.start()
        await wait_for_port("127.0.0.1", settings.listener_port, timeout=30)
        async with httpx.AsyncClient(timeout=10) as client:
            target = f"http://127.0.0.1:{settings.listener_port}/models/{MODEL}/predict"
            for _ in range(100):  # until the route is there
                if (await client.post(target, json={})).status_code in (200, 500):
                    break
                await asyncio.sleep(0.2)
            await asyncio.sleep(3.5)
            phase[0] = "traffic"
            statuses = Counter[int]()
            for _ in range(60):
                statuses[(await client.post(target, json={})).status_code] += 1
        await asyncio.sleep(2.5)
        phase[0] = "after"
        await asyncio.sleep(5.5)
        await api.aclose()
    finally:
        phase[0] = "stopping"  # Envoy flushes once more as it stops, without histograms
        if envoy is not None:
            await envoy.stop()
        await ok.cleanup()
        await failing.cleanup()
        await plane.stop()
    clusters = {stat_name(cluster_name(MODEL, v)): v for v in ("v1", "v2", "v3")}
    return _shape(flushes, clusters, dict(statuses))


def _shape(
    flushes: list[tuple[str, bytes]], clusters: dict[str, str], statuses: dict[int, int]
) -> dict[str, Any]:
    seen: dict[str, dict[str, Any]] = {}
    per_phase: dict[str, list[int]] = {}
    for phase, raw in flushes:
        families = StreamMetricsMessage.FromString(raw).envoy_metrics
        per_phase.setdefault(phase, []).append(len(families))
        for family in families:
            name = _template(family.name, clusters)
            entry = seen.setdefault(
                name,
                {
                    "type": TYPES.get(family.type, str(family.type)),
                    "buckets": len(family.metric[0].histogram.bucket) if family.type == 4 else 0,
                    "bounds": [b.upper_bound for b in family.metric[0].histogram.bucket],
                    "labels": len(family.metric[0].label),
                    "timestamp": family.metric[0].timestamp_ms != 0,
                    "phases": Counter[str](),
                    "instances": set(),
                },
            )
            entry["phases"][phase] += 1
            entry["instances"].add(family.name)
    families_out = []
    for name, entry in sorted(seen.items()):
        phases = entry.pop("phases")
        entry.pop("instances")
        # "before": sent from the start, used or not; "traffic": once used.
        first = next(p for p in ("before", "traffic", "after", "stopping") if phases.get(p))
        families_out.append(
            {"name": name, **entry, "per_cluster": "{cluster}" in name, "first_sent": first}
        )
    samples = {}
    for label, picked in (
        ("traffic", _last(flushes, "traffic")),
        ("idle", _last(flushes, "after")),
    ):
        phase, raw = picked or ("none", b"")
        families = StreamMetricsMessage.FromString(raw).envoy_metrics
        samples[label] = {
            "phase": phase,
            "families": len(families),
            "per_cluster": [
                text_format.MessageToString(f, as_one_line=True)
                for f in families
                if any(stat in f.name for stat in clusters)
            ],
        }
    idle_zero = sorted(
        _template(f.name, clusters)
        for f in StreamMetricsMessage.FromString(
            (_last(flushes, "after") or ("", b""))[1]
        ).envoy_metrics
        if (f.type == 0 and f.metric[0].counter.value == 0)
        or (f.type == 4 and f.metric[0].histogram.sample_count == 0)
    )
    return {
        "captured_with": "bench.telemetry.capture (one Envoy, flush 1 s, Turnout's bootstrap)",
        "requests_sent": statuses,
        "flushes_by_phase": per_phase,
        "families": families_out,
        "zero_in_idle_flush": idle_zero,
        "samples": samples,
    }


def _last(flushes: list[tuple[str, bytes]], phase: str) -> tuple[str, bytes] | None:
    found = [f for f in flushes if f[0] == phase]
    return found[-1] if found else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--eviction-interval-s",
        type=float,
        help="set the bootstrap's stats_eviction_interval (a multiple of the flush interval) "
        "and write envoy-shape-eviction.json instead",
    )
    args = parser.parse_args()
    path = SHAPE
    if args.eviction_interval_s is not None:
        path = SHAPE.with_name("envoy-shape-eviction.json")
    with tempfile.TemporaryDirectory(prefix="turnout-capture-") as workdir:
        shape = asyncio.run(capture(Path(workdir), args.eviction_interval_s))
    path.write_text(json.dumps(shape, indent=1) + "\n")
    idle = shape["samples"]["idle"]["per_cluster"]
    print(f"per-cluster families in the last idle flush: {len(idle)}")
    families = shape["families"]
    print(f"flushes by phase (families per flush): {shape['flushes_by_phase']}")
    print(f"requests sent: {shape['requests_sent']}")
    for per_cluster in (False, True):
        rows = [f for f in families if f["per_cluster"] == per_cluster]
        kinds = Counter(f["type"] for f in rows)
        print(f"{'per cluster' if per_cluster else 'not per cluster'}: {len(rows)} {dict(kinds)}")
        if per_cluster:
            for f in rows:
                print(
                    f"   {f['name']:<70} {f['type']:<9} "
                    f"from={f['first_sent']} buckets={f['buckets']}"
                )
    print(f"zero-valued in the last idle flush: {len(shape['zero_in_idle_flush'])}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
