"""Scale: translation time and snapshot size as the desired state grows, and the cost of
pushing one endpoint change.

    .venv/bin/python -m bench.xds.scale [--sizes 10 100 1000] [--reps 7] [--quick]

Part 1 (pure, in one process): for each size (models x 3 versions x 10 endpoints),
interleaved A, B, C, A, B, C... after one discarded warm-up round, time
``PackedTranslator.translate()`` (the sync loop's translation), ``Snapshot.from_packed()``
and the consistency check that ``SnapshotCache.publish`` runs; count the bytes
of every type (packed resources, and a full state-of-the-world push) and print
the growth between sizes.

Part 2 (pure): change one endpoint's port in one model and count what each ADS
variant re-sends: the resources whose version moved, and their bytes.

Part 3 (end to end, in process): a ControlPlane on SQLite seeded with the largest
size, one delta and one state-of-the-world ADS client over real gRPC; PATCH one
version's endpoints through the admin API and time the API call, ``sync_once``
(load + translate + snapshot + publish) and the 2xx -> client-received push.

Writes bench/results/xds-scale.json.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import dataclasses
import gc
import io
import itertools
import pstats
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import httpx
from envoy.service.discovery.v3 import discovery_pb2

from controlplane.api.app import create_app
from controlplane.cli.admin import create_key_with
from controlplane.domain.keys import Role
from controlplane.domain.state import DesiredState
from controlplane.runtime import ControlPlane
from controlplane.settings import Settings
from controlplane.xds import snapshot as snapshot_module
from controlplane.xds import translate as translate_module
from controlplane.xds.packed import PackedTranslator
from controlplane.xds.resources import ENDPOINT, PUSH_ORDER, SHORT_NAMES
from controlplane.xds.snapshot import Snapshot
from controlplane.xds.translate import translate

from .adsclient import AdsClient
from .common import (
    free_port,
    generate_state,
    machine,
    model_name,
    print_setup,
    ratios,
    seed_database,
    summarize,
    temp_workdir,
    write_result,
)

VERSIONS = 3
ENDPOINTS = 10


def _timed(function: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    result = function()
    return (time.perf_counter() - started) * 1000, result


def measure_translation(sizes: list[int], reps: int) -> dict[int, dict[str, Any]]:
    """Time translate / pack / check per size, interleaved, after one warm-up round."""
    states = {n: generate_state(n, VERSIONS, ENDPOINTS) for n in sizes}
    times: dict[int, dict[str, list[float]]] = {
        n: {
            "translate": [],
            "snapshot": [],
            "check": [],
            "total": [],
            "memoised_total": [],
        }
        for n in sizes
    }
    for round_ in range(reps + 1):
        for n in sizes:
            # The sync loop's path: its translator, then the snapshot and its check.
            # Cold: a new translator, nothing memoised, as in a fresh process.
            translator = PackedTranslator()
            _forget_process_memos()
            gc.collect()
            t_ms, resources = _timed(lambda n=n, t=translator: t.translate(states[n]))  # type: ignore[misc]
            s_ms, snapshot = _timed(lambda r=resources: Snapshot.from_packed(1, r))  # type: ignore[misc]
            c_ms, _ = _timed(snapshot.check_consistent)
            # Memoised: the same state again, as after a change elsewhere in the mesh.
            m_ms, _ = _timed(
                lambda n=n, t=translator: (  # type: ignore[misc]
                    Snapshot.from_packed(1, t.translate(states[n])).check_consistent()
                )
            )
            if round_ == 0:
                continue  # warm-up
            times[n]["translate"].append(t_ms)
            times[n]["snapshot"].append(s_ms)
            times[n]["check"].append(c_ms)
            times[n]["total"].append(t_ms + s_ms + c_ms)
            times[n]["memoised_total"].append(m_ms)
    results: dict[int, dict[str, Any]] = {}
    for n in sizes:
        snapshot = Snapshot.from_resources(1, translate(states[n]))
        results[n] = {
            "models": n,
            "clusters": n * VERSIONS,
            "endpoints": n * VERSIONS * ENDPOINTS,
            "ms": {k: summarize(v) for k, v in times[n].items()},
            "bytes": _snapshot_bytes(snapshot),
        }
    return results


def _snapshot_bytes(snapshot: Snapshot) -> dict[str, Any]:
    packed = {
        SHORT_NAMES[t]: sum(p.ByteSize() for p in snapshot.resources[t].values())
        for t in PUSH_ORDER
    }
    push = {
        SHORT_NAMES[t]: discovery_pb2.DiscoveryResponse(
            version_info=snapshot.version(t), type_url=t, resources=snapshot.select(t, frozenset())
        ).ByteSize()
        for t in PUSH_ORDER
    }
    return {
        "packed_by_type": packed,
        "packed_total": sum(packed.values()),
        "sotw_full_push_by_type": push,
        "sotw_full_push_total": sum(push.values()),
        "resources_by_type": {SHORT_NAMES[t]: len(snapshot.resources[t]) for t in PUSH_ORDER},
    }


def changed_endpoint_state(state: DesiredState, index: int, port: int) -> DesiredState:
    """``state`` with the first endpoint of v1 of model ``index`` moved to ``port``."""
    models = list(state.models)
    model = models[index]
    v1 = model.versions[0]
    endpoints = (dataclasses.replace(v1.endpoints[0], port=port), *v1.endpoints[1:])
    versions = (dataclasses.replace(v1, endpoints=endpoints), *model.versions[1:])
    models[index] = dataclasses.replace(model, versions=versions)
    return dataclasses.replace(state, revision=state.revision + 1, models=tuple(models))


def measure_change_cost(n: int) -> dict[str, Any]:
    """What one endpoint change makes each ADS variant re-send (counts repeat exactly)."""
    before = Snapshot.from_resources(1, translate(generate_state(n, VERSIONS, ENDPOINTS)))
    after_state = changed_endpoint_state(generate_state(n, VERSIONS, ENDPOINTS), n // 2, 9999)
    after = Snapshot.from_resources(2, translate(after_state))
    by_type: dict[str, Any] = {}
    for type_url in PUSH_ORDER:
        old, new = before.resource_versions[type_url], after.resource_versions[type_url]
        changed = sorted(name for name in new if old.get(name) != new[name])
        type_changed = before.version(type_url) != after.version(type_url)
        delta_bytes = (
            discovery_pb2.DeltaDiscoveryResponse(
                system_version_info=after.version(type_url),
                type_url=type_url,
                resources=[
                    discovery_pb2.Resource(
                        name=name, version=new[name], resource=after.resources[type_url][name]
                    )
                    for name in changed
                ],
            ).ByteSize()
            if changed
            else 0
        )
        sotw_bytes = (
            discovery_pb2.DiscoveryResponse(
                version_info=after.version(type_url),
                type_url=type_url,
                resources=after.select(type_url, frozenset()),
            ).ByteSize()
            if type_changed
            else 0
        )
        by_type[SHORT_NAMES[type_url]] = {
            "type_version_changed": type_changed,
            "resources_changed": len(changed),
            "delta_resources_sent": len(changed),
            "delta_bytes": delta_bytes,
            "sotw_resources_sent": len(after.resources[type_url]) if type_changed else 0,
            "sotw_bytes": sotw_bytes,
        }
    return {
        "models": n,
        "by_type": by_type,
        "delta_bytes_total": sum(v["delta_bytes"] for v in by_type.values()),
        "sotw_bytes_total": sum(v["sotw_bytes"] for v in by_type.values()),
    }


async def _until(probe: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        await asyncio.sleep(0.001)


async def measure_push(n: int, reps: int, workdir: Path) -> dict[str, Any]:
    """One endpoint change through the admin API to two ADS clients, in one process."""
    database_url = f"sqlite+aiosqlite:///{workdir / 'scale.db'}"
    await seed_database(database_url, n, VERSIONS, ENDPOINTS)
    plane = ControlPlane(
        Settings(
            database_url=database_url,
            api_port=0,
            xds_port=0,
            listener_port=free_port(),
            poll_interval_s=5.0,
        )
    )
    sync_spans: list[tuple[float, float]] = []
    original = plane.sync.sync_once

    async def timed_sync_once() -> bool:
        started = time.time()
        published = await original()
        if published:
            sync_spans.append((started, time.time()))
        return published

    plane.sync.sync_once = timed_sync_once  # type: ignore[method-assign]
    await plane.start(api=create_app)
    _row, key = await create_key_with(plane.engine, "bench", Role.ADMIN)
    channel = grpc.aio.insecure_channel(
        f"127.0.0.1:{plane.xds_port}",
        options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)],
    )
    clients = {
        "delta": AdsClient(channel, "scale-delta", delta=True),
        "sotw": AdsClient(channel, "scale-sotw", delta=False),
    }
    rows: list[dict[str, Any]] = []
    try:
        for client in clients.values():
            client.start()
        await _until(lambda: all(c.synced() for c in clients.values()), timeout=120)
        await asyncio.sleep(1.0)
        model = model_name(n // 2)
        base = generate_state(n, VERSIONS, ENDPOINTS).models[n // 2].versions[0].endpoints
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{plane.api_port}",
            headers={"authorization": f"Bearer {key}"},
        ) as api:
            for i in range(reps + 1):
                port = 20000 + i
                body = {
                    "endpoints": [
                        {"address": e.address, "port": port if j == 0 else e.port}
                        for j, e in enumerate(base)
                    ]
                }
                seen = {k: c.received[ENDPOINT].responses for k, c in clients.items()}
                spans_before = len(sync_spans)
                sent = time.time()
                response = await api.patch(f"/v1/models/{model}/versions/v1", json=body, timeout=60)
                t0 = time.time()
                response.raise_for_status()
                await _until(
                    lambda s=seen: all(  # type: ignore[misc]
                        c.received[ENDPOINT].responses > s[k] for k, c in clients.items()
                    )
                )
                await _until(lambda b=spans_before: len(sync_spans) > b)  # type: ignore[misc]
                sync_start, sync_end = sync_spans[-1]
                row = {
                    "api_ms": (t0 - sent) * 1000,
                    "sync_once_ms": (sync_end - sync_start) * 1000,
                    "commit_to_publish_ms": (sync_end - min(sync_start, t0)) * 1000,
                    **{
                        f"{k}_push_ms": (c.received[ENDPOINT].last_at - t0) * 1000
                        for k, c in clients.items()
                    },
                    **{
                        f"{k}_change_to_client_ms": (c.received[ENDPOINT].last_at - sent) * 1000
                        for k, c in clients.items()
                    },
                    "delta_eds_bytes": clients["delta"].received[ENDPOINT].last_bytes,
                    "delta_eds_resources": len(clients["delta"].received[ENDPOINT].last_names),
                    "sotw_eds_bytes": clients["sotw"].received[ENDPOINT].last_bytes,
                }
                if i > 0:
                    rows.append(row)  # the first change is the warm-up
                await asyncio.sleep(0.3)
    finally:
        for client in clients.values():
            await client.stop()
        await channel.close()
        await plane.stop()
    keys = [k for k in rows[0] if k.endswith("_ms")]
    return {
        "models": n,
        "changes": len(rows),
        "ms": {k: summarize([r[k] for r in rows]) for k in keys},
        "bytes": {
            "delta_eds_bytes": rows[-1]["delta_eds_bytes"],
            "delta_eds_resources": rows[-1]["delta_eds_resources"],
            "sotw_eds_bytes": rows[-1]["sotw_eds_bytes"],
        },
    }


def _forget_process_memos() -> None:
    """Clear what a process remembers beyond a translator (where this tree has it):
    parsed addresses and resources' references, so that "cold" is a fresh process."""
    host_names = getattr(translate_module, "_is_host_name", None)
    if host_names is not None:
        host_names.cache_clear()
    references = getattr(snapshot_module, "_REFERENCES", None)
    if references is not None:
        references.clear()


def profile_translation(n: int) -> list[dict[str, Any]]:
    """cProfile one full translate + snapshot + check of ``n`` models; top functions."""
    state = generate_state(n, VERSIONS, ENDPOINTS)
    profiler = cProfile.Profile()
    _forget_process_memos()
    profiler.enable()
    translator = PackedTranslator()
    Snapshot.from_packed(1, translator.translate(state)).check_consistent()
    profiler.disable()
    stream = io.StringIO()
    stats = pstats.Stats(profiler, stream=stream)
    top: list[dict[str, Any]] = []
    entries = stats.stats  # type: ignore[attr-defined]
    ranked = sorted(entries.items(), key=lambda item: item[1][2], reverse=True)[:12]
    for (filename, line, function), (_cc, calls, tottime, cumtime, _callers) in ranked:
        top.append(
            {
                "function": f"{Path(filename).name}:{line}({function})",
                "calls": calls,
                "self_ms": round(tottime * 1000, 1),
                "cum_ms": round(cumtime * 1000, 1),
            }
        )
    return top


def _print_translation(results: dict[int, dict[str, Any]]) -> None:
    print(
        "\n-- full translation, cold (a new translator, nothing memoised: a fresh process), and "
        "memoised (the same state again)\n   ms, min / p50 / max over reps"
    )
    print(
        f"{'models':>7} {'clusters':>8} {'translate':>22} {'snapshot':>22} {'check':>18} "
        f"{'cold total':>22} {'memoised total':>22} {'sotw full push':>15}"
    )
    for n, r in results.items():
        cells = [
            f"{r['ms'][k]['min']:.1f}/{r['ms'][k]['p50']:.1f}/{r['ms'][k]['max']:.1f}"
            for k in ("translate", "snapshot", "check", "total", "memoised_total")
        ]
        print(
            f"{n:>7} {r['clusters']:>8} {cells[0]:>22} {cells[1]:>22} {cells[2]:>18} "
            f"{cells[3]:>22} {cells[4]:>22} {r['bytes']['sotw_full_push_total']:>15,}"
        )


def main(argv: list[str] | None = None) -> None:
    """Run the scale benchmark and write its JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--reps", type=int, default=7, help="timed repetitions per size")
    parser.add_argument("--push-reps", type=int, default=10, help="endpoint changes to time")
    parser.add_argument("--quick", action="store_true", help="sizes 10 100, 3 reps, 3 changes")
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.reps, args.push_reps = [10, 100], 3, 3
    host = machine()
    largest = max(args.sizes)
    setup = {
        "sizes (models)": args.sizes,
        "shape": f"models x {VERSIONS} versions x {ENDPOINTS} endpoints",
        "reps": f"{args.reps} timed after 1 warm-up round, sizes interleaved",
        "push": f"{args.push_reps} endpoint PATCHes (after 1 warm-up) at {largest} models, "
        "in-process ControlPlane on SQLite, 1 delta + 1 sotw ADS client over gRPC",
    }
    print_setup("xDS scale", setup, host)

    translation = measure_translation(args.sizes, args.reps)
    _print_translation(translation)
    p50 = [translation[n]["ms"]["total"]["p50"] for n in args.sizes]
    size_bytes = [translation[n]["bytes"]["sotw_full_push_total"] for n in args.sizes]
    growth = {"time_p50": ratios(p50), "sotw_bytes": ratios(size_bytes)}
    print(
        f"   growth between sizes (x{[b / a for a, b in itertools.pairwise(args.sizes)]}):"
        f" time {growth['time_p50']}, bytes {growth['sotw_bytes']}"
    )

    change = measure_change_cost(largest)
    print(f"\n-- one endpoint change at {largest} models: what each variant re-sends")
    for name, row in change["by_type"].items():
        print(
            f"   {name:>9}: delta {row['delta_resources_sent']:>5} res {row['delta_bytes']:>9,} B"
            f" | sotw {row['sotw_resources_sent']:>5} res {row['sotw_bytes']:>9,} B"
        )
    print(
        f"   total: delta {change['delta_bytes_total']:,} B, sotw {change['sotw_bytes_total']:,} B"
        f" (ratio {change['sotw_bytes_total'] / max(change['delta_bytes_total'], 1):.0f}x)"
    )

    with temp_workdir("turnout-bench-scale-") as tmp:
        push = asyncio.run(measure_push(largest, args.push_reps, Path(tmp)))
    print(f"\n-- one endpoint change pushed, {largest} models, {push['changes']} changes (ms)")
    for key, row in push["ms"].items():
        print(
            f"   {key:>28}: min {row['min']:>8.1f}  p50 {row['p50']:>8.1f}  "
            f"p99 {row['p99']:>8.1f}  max {row['max']:>8.1f}"
        )
    print(f"   bytes on the wire for EDS: {push['bytes']}")

    profile = profile_translation(largest)
    print(f"\n-- cProfile of one full translation at {largest} models (top by self time)")
    for row in profile[:8]:
        print(
            f"   {row['self_ms']:>7.1f} ms self {row['cum_ms']:>8.1f} cum "
            f"{row['calls']:>8} calls  {row['function']}"
        )

    total_largest = translation[largest]["ms"]["total"]
    targets = {
        "full_translation_1000_lt_500ms": {
            "measured_p50_ms": total_largest["p50"],
            "measured_max_ms": total_largest["max"],
            "met": largest >= 1000 and total_largest["max"] < 500,
        },
        "endpoint_change_pushed_lt_50ms": {
            "measured_p50_ms": push["ms"]["delta_push_ms"]["p50"],
            "measured_p99_ms": push["ms"]["delta_push_ms"]["p99"],
            "commit_to_publish_p50_ms": push["ms"]["commit_to_publish_ms"]["p50"],
            "met": largest >= 1000 and push["ms"]["delta_push_ms"]["p99"] < 50,
        },
    }
    print(f"\n-- targets: {targets}")
    path = write_result(
        "scale",
        {
            "benchmark": "xds.scale",
            "command": ".venv/bin/python -m bench.xds.scale" + (" --quick" if args.quick else ""),
            "machine": host,
            "setup": setup,
            "translation": {str(n): r for n, r in translation.items()},
            "growth": growth,
            "change_cost": change,
            "push": push,
            "profile_top": profile,
            "targets": targets,
        },
    )
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
