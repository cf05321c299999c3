"""Write cost: one traffic change through the admin API with 1,000 models stored.

    .venv/bin/python -m bench.state.write [--database sqlite|postgres|both]
                                          [--models 1000] [--changes 50] [--warmup 5]
                                          [--postgres-url URL] [--quick]

Setup, per database: a fresh database (SQLite: a file in a temporary
directory; Postgres: a database created on the server that ``--postgres-url``
names, dropped afterwards), migrated, then seeded straight through the ORM with
models x 3 versions x 10 endpoints (``bench.xds.common.seed_database``: one
transaction, one revision). Then a ``ControlPlane`` runs in this process as the
tests run it (admin API over HTTP on 127.0.0.1, xDS server, sync loop; no
proxy connected) and an admin key is made for it.

A change is one ``PUT /v1/models/{m}/traffic`` over real HTTP (httpx), each on
a different model (its split from v1/v2 90/10 to 40/60). Timed: from the
client's send to its 2xx. Before the next change the bench waits until the
sync loop has published the revision the change created (that lag, 2xx ->
snapshot published, is printed beside), so no change overlaps the previous
one's push. The first ``--warmup`` changes are discarded. With ``--database
both`` the two control planes run side by side in this process and the
changes alternate between them (A, B, B, A, ...), so both see the same machine
load, and the Postgres / SQLite ratio is reported per run.

Counted, exact (these repeat from run to run): the SQL statements the request
ran (the API's tasks, not the sync loop's), and per table the write statements
and the bytes of the values bound to them (what a change stores, whatever the
schema: the revision's stored state shows up under its table); the statements
the sync loop ran to publish the change; and the database's growth over the
timed changes (SQLite: pages in use; Postgres: ``pg_total_relation_size`` of
every table, indexes and TOAST included, as stored).

Writes bench/results/state-write.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import resource
import sqlite3
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import event, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from bench.xds.common import (
    RESULTS,
    free_port,
    machine,
    model_name,
    percentile,
    print_setup,
    seed_database,
    temp_workdir,
)
from controlplane.api.app import create_app
from controlplane.cli.admin import create_key_with
from controlplane.db.engine import create_engine
from controlplane.domain.keys import Role
from controlplane.runtime import ControlPlane
from controlplane.settings import Settings

VERSIONS = 3
ENDPOINTS = 10
TARGET_P50_MS = 20.0
DEFAULT_POSTGRES = "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
# The sync loop's task, as ControlPlane.start names it: its statements are the
# push's, not the write's.
SYNC_TASK_NAME = "turnout-sync"
# Every change moves a fresh model: a stride coprime with the model count.
STRIDE = 7919

_WRITE = re.compile(r'^\s*(INSERT\s+INTO|UPDATE|DELETE\s+FROM)\s+"?(\w+)"?', re.IGNORECASE)


def _bound_bytes(value: Any) -> int:
    """The size of the values bound to one statement (UTF-8 for text)."""
    if value is None:
        return 0
    if isinstance(value, str):
        return len(value.encode())
    if isinstance(value, bytes | bytearray | memoryview):
        return len(value)
    if isinstance(value, dict):
        return sum(_bound_bytes(v) for v in value.values())
    if isinstance(value, list | tuple):
        return sum(_bound_bytes(v) for v in value)
    return len(str(value))


@dataclass
class Tally:
    """SQL one change ran: statements, and per table the writes and their bytes."""

    statements: int = 0
    sync_statements: int = 0
    writes: Counter[str] = field(default_factory=Counter)
    write_bytes: Counter[str] = field(default_factory=Counter)


class SqlCounter:
    """Counts the statements an engine runs while ``tally`` is set."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.tally: Tally | None = None
        event.listen(engine.sync_engine, "before_cursor_execute", self._on_execute)

    def _on_execute(
        self,
        _conn: Any,
        _cursor: Any,
        statement: str,
        parameters: Any,
        _context: Any,
        _executemany: bool,
    ) -> None:
        tally = self.tally
        if tally is None:
            return
        with contextlib.suppress(RuntimeError):
            task = asyncio.current_task()
            if task is not None and task.get_name() == SYNC_TASK_NAME:
                tally.sync_statements += 1
                return
        tally.statements += 1
        match = _WRITE.match(statement)
        if match:
            table = match.group(2).lower()
            tally.writes[table] += 1
            tally.write_bytes[table] += _bound_bytes(parameters)


@dataclass
class Arm:
    """One database under test: its control plane, client and measurements."""

    name: str
    url: str
    plane: ControlPlane
    api: httpx.AsyncClient
    counter: SqlCounter
    seed_s: float
    server: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    size_before: int = 0
    size_after: int = 0


async def _database_bytes(engine: AsyncEngine) -> int:
    """Bytes the database uses now (SQLite: pages in use; Postgres: every table)."""
    async with engine.connect() as connection:
        if engine.dialect.name == "sqlite":
            pages = (await connection.exec_driver_sql("PRAGMA page_count")).scalar_one()
            free = (await connection.exec_driver_sql("PRAGMA freelist_count")).scalar_one()
            size = (await connection.exec_driver_sql("PRAGMA page_size")).scalar_one()
            return int((pages - free) * size)
        total = await connection.scalar(
            text(
                "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
                "JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = current_schema() AND c.relkind = 'r'"
            )
        )
        return int(total or 0)


async def _admin(url: str, statement: str) -> None:
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as connection:
            await connection.execute(text(statement))
    finally:
        await engine.dispose()


@contextlib.asynccontextmanager
async def fresh_database(kind: str, workdir: Path, admin_url: str) -> AsyncIterator[str]:
    """A new, empty database URL for ``kind``; a Postgres one is dropped on exit."""
    if kind == "sqlite":
        yield f"sqlite+aiosqlite:///{workdir / 'write.db'}"
        return
    name = f"turnout_bench_write_{uuid.uuid4().hex[:10]}"
    await _admin(admin_url, f'CREATE DATABASE "{name}"')
    try:
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        await _admin(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def _server_version(engine: AsyncEngine) -> str:
    if engine.dialect.name == "sqlite":
        return f"SQLite {sqlite3.sqlite_version}"
    async with engine.connect() as connection:
        return f"Postgres {await connection.scalar(text('SHOW server_version'))}"


async def _until(probe: Any, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        await asyncio.sleep(0.001)


async def start_arm(name: str, url: str, models: int) -> Arm:
    """Seed ``url``, start a control plane on it and return the arm, ready to write."""
    started = time.monotonic()
    await seed_database(url, models, VERSIONS, ENDPOINTS)
    seed_s = time.monotonic() - started
    plane = ControlPlane(
        Settings(
            database_url=url,
            api_port=0,
            xds_port=0,
            listener_port=free_port(),
            poll_interval_s=5.0,
        )
    )
    await plane.start(api=create_app)
    _row, key = await create_key_with(plane.engine, "bench", Role.ADMIN)
    api = httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{plane.api_port}",
        headers={"authorization": f"Bearer {key}"},
        timeout=60,
    )
    return Arm(
        name=name,
        url=url,
        plane=plane,
        api=api,
        counter=SqlCounter(plane.engine),
        seed_s=seed_s,
        server=await _server_version(plane.engine),
    )


async def stop_arm(arm: Arm) -> None:
    """Close the client and stop the control plane."""
    await arm.api.aclose()
    await arm.plane.stop()


async def _newest_revision(api: httpx.AsyncClient) -> int:
    response = await api.get("/v1/revisions", params={"limit": 1})
    response.raise_for_status()
    return int(response.json()["items"][0]["revision"])


async def one_change(arm: Arm, index: int, models: int) -> dict[str, Any]:
    """PUT one model's traffic split; wait until the sync loop has published it."""
    model = model_name(index * STRIDE % models)
    body = {"weights": {"v1": 40, "v2": 60}}
    tally = Tally()
    arm.counter.tally = tally
    sent = time.perf_counter()
    response = await arm.api.put(f"/v1/models/{model}/traffic", json=body)
    answered = time.perf_counter()
    arm.counter.tally = None
    if response.status_code != 200:
        raise RuntimeError(f"PUT traffic of {model}: {response.status_code} {response.text}")
    # The sync loop's statements count until it has published the change (it may
    # have started before the 2xx).
    push = Tally(sync_statements=tally.sync_statements)
    arm.counter.tally = push
    revision = await _newest_revision(arm.api)
    await _until(lambda: (arm.plane.sync.revision or 0) >= revision)
    published = time.perf_counter()
    arm.counter.tally = None
    return {
        "model": model,
        "revision": revision,
        "api_ms": (answered - sent) * 1000,
        "published_after_2xx_ms": (published - answered) * 1000,
        "api_statements": tally.statements,
        "sync_statements": push.sync_statements,
        "writes": dict(tally.writes),
        "write_bytes": dict(tally.write_bytes),
    }


def summary(values: Sequence[float]) -> dict[str, float | int]:
    """n, min, p50, p90, p99, max and mean (nearest rank), rounded to 0.01."""
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "min": round(min(values), 2),
        "p50": round(percentile(values, 50), 2),
        "p90": round(percentile(values, 90), 2),
        "p99": round(percentile(values, 99), 2),
        "max": round(max(values), 2),
        "mean": round(sum(values) / len(values), 2),
    }


def _counted(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-change counts: the median of each (they repeat exactly when nothing else runs)."""

    def median(values: list[int]) -> int:
        return int(percentile(values, 50)) if values else 0

    tables = sorted({t for r in rows for t in r["writes"]})
    return {
        "api_statements": median([r["api_statements"] for r in rows]),
        "sync_statements": median([r["sync_statements"] for r in rows]),
        "writes_by_table": {t: median([r["writes"].get(t, 0) for r in rows]) for t in tables},
        "write_bytes_by_table": {
            t: median([r["write_bytes"].get(t, 0) for r in rows]) for t in tables
        },
        "write_bytes_total": median([sum(r["write_bytes"].values()) for r in rows]),
    }


async def run(kinds: list[str], models: int, changes: int, warmup: int, admin_url: str) -> Any:
    """Seed, start, write ``warmup + changes`` times per database (interleaved), stop."""
    results: dict[str, Any] = {}
    async with contextlib.AsyncExitStack() as stack:
        workdir = Path(stack.enter_context(temp_workdir("turnout-bench-write-")))
        arms: list[Arm] = []
        for kind in kinds:
            url = await stack.enter_async_context(fresh_database(kind, workdir, admin_url))
            print(f"   {kind}: seeding {models} models ...", flush=True)
            arm = await start_arm(kind, url, models)
            stack.push_async_callback(stop_arm, arm)
            print(f"   {kind}: seeded in {arm.seed_s:.1f} s; {arm.server}", flush=True)
            arms.append(arm)
        load: dict[str, list[float]] = {"before": list(os.getloadavg())}
        cpu_before = resource.getrusage(resource.RUSAGE_SELF)
        wall_before = time.monotonic()
        for i in range(warmup + changes):
            if i == warmup:
                for arm in arms:
                    arm.size_before = await _database_bytes(arm.plane.engine)
            order = arms if i % 2 == 0 else arms[::-1]
            for arm in order:
                row = await one_change(arm, i, models)
                if i >= warmup:
                    arm.rows.append(row)
            if (i + 1) % 10 == 0:
                print(f"   {i + 1} / {warmup + changes} changes", flush=True)
        for arm in arms:
            arm.size_after = await _database_bytes(arm.plane.engine)
        load["after"] = list(os.getloadavg())
        cpu_after = resource.getrusage(resource.RUSAGE_SELF)
        wall = time.monotonic() - wall_before
        cpu = (cpu_after.ru_utime + cpu_after.ru_stime) - (
            cpu_before.ru_utime + cpu_before.ru_stime
        )
        for arm in arms:
            results[arm.name] = {
                "server": arm.server,
                "seed_s": round(arm.seed_s, 1),
                "changes": len(arm.rows),
                "ms": {
                    "api": summary([r["api_ms"] for r in arm.rows]),
                    "published_after_2xx": summary([r["published_after_2xx_ms"] for r in arm.rows]),
                },
                "counted_per_change": _counted(arm.rows),
                "database_bytes": {
                    "before": arm.size_before,
                    "after": arm.size_after,
                    "growth_per_change": round((arm.size_after - arm.size_before) / len(arm.rows)),
                },
                "target_p50_le_20ms": {
                    "measured_p50_ms": summary([r["api_ms"] for r in arm.rows])["p50"],
                    "met": summary([r["api_ms"] for r in arm.rows])["p50"] <= TARGET_P50_MS,
                },
                "rows": arm.rows,
            }
    ratio = None
    if "sqlite" in results and "postgres" in results:
        p50 = {k: results[k]["ms"]["api"]["p50"] for k in ("sqlite", "postgres")}
        ratio = round(p50["postgres"] / p50["sqlite"], 2)
    return {
        "by_database": results,
        "p50_postgres_over_sqlite": ratio,
        "loadavg": {k: [round(x, 2) for x in v] for k, v in load.items()},
        "this_process_cpu_share_of_wall": round(cpu / wall, 2) if wall else None,
        "timed_wall_s": round(wall, 1),
    }


def _print(result: dict[str, Any]) -> None:
    by_database = result["by_database"]
    print("\n-- one traffic change: PUT /v1/models/{m}/traffic, client send -> 2xx (ms)")
    print(f"   {'database':>9} {'n':>4} {'min':>8} {'p50':>8} {'p90':>8} {'p99':>8} {'max':>8}")
    for name, r in by_database.items():
        s = r["ms"]["api"]
        print(
            f"   {name:>9} {s['n']:>4} {s['min']:>8.1f} {s['p50']:>8.1f} {s['p90']:>8.1f} "
            f"{s['p99']:>8.1f} {s['max']:>8.1f}"
        )
    print("   2xx -> the sync loop has published the change (ms, beside, not the target):")
    for name, r in by_database.items():
        s = r["ms"]["published_after_2xx"]
        print(f"   {name:>9} p50 {s['p50']:>8.1f}  p90 {s['p90']:>8.1f}  max {s['max']:>8.1f}")
    print("\n-- counted per change (median over the timed changes)")
    for name, r in by_database.items():
        c = r["counted_per_change"]
        print(
            f"   {name}: {c['api_statements']} SQL statements in the request, "
            f"{c['sync_statements']} in the sync loop to publish it"
        )
        for table, count in c["writes_by_table"].items():
            print(
                f"      writes {table:>20}: {count:>3} statements, "
                f"{c['write_bytes_by_table'][table]:>12,} bytes bound"
            )
        print(f"      bytes bound to writes, total: {c['write_bytes_total']:,}")
        d = r["database_bytes"]
        print(
            f"      database size {d['before']:,} -> {d['after']:,} bytes: "
            f"{d['growth_per_change']:,} bytes per change"
        )
    if result.get("p50_postgres_over_sqlite") is not None:
        ratio = result["p50_postgres_over_sqlite"]
        print(f"\n   p50 postgres / sqlite, same run, interleaved: {ratio:.2f}x")
    print(
        f"\n   load average {result['loadavg']['before']} -> {result['loadavg']['after']}; "
        f"this process used {result['this_process_cpu_share_of_wall']:.0%} of one core "
        f"over {result['timed_wall_s']} s"
    )
    for name, r in by_database.items():
        t = r["target_p50_le_20ms"]
        verdict = "met" if t["met"] else "not met"
        print(
            f"   target p50 <= {TARGET_P50_MS:.0f} ms, {name}: {t['measured_p50_ms']} ms: {verdict}"
        )


def main(argv: list[str] | None = None) -> None:
    """Run the write-cost benchmark and write its JSON."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--database", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--models", type=int, default=1000)
    parser.add_argument("--changes", type=int, default=50, help="timed changes per database")
    parser.add_argument("--warmup", type=int, default=5, help="discarded changes per database")
    parser.add_argument(
        "--postgres-url",
        default=DEFAULT_POSTGRES,
        help="a Postgres server's URL; a fresh database is created on it and dropped after",
    )
    parser.add_argument("--quick", action="store_true", help="100 models, 10 changes, 2 warm-up")
    args = parser.parse_args(argv)
    if args.quick:
        args.models, args.changes, args.warmup = 100, 10, 2
    kinds = ["sqlite", "postgres"] if args.database == "both" else [args.database]
    host = machine()
    setup = {
        "databases": kinds,
        "shape": f"{args.models} models x {VERSIONS} versions x {ENDPOINTS} endpoints, "
        "seeded through the ORM in one transaction",
        "change": "PUT /v1/models/{m}/traffic over HTTP to an in-process ControlPlane "
        "(as the tests run it), a different model each time, 90/10 -> 40/60",
        "timed": f"{args.changes} changes per database after {args.warmup} warm-up, "
        "each after the previous one was published"
        + (", databases alternating A B B A" if len(kinds) > 1 else ""),
    }
    print_setup("State writes", setup, host)
    result = asyncio.run(run(kinds, args.models, args.changes, args.warmup, args.postgres_url))
    _print(result)
    command = ".venv/bin/python -m bench.state.write" + (
        f" --database {args.database}" if args.database != "both" else ""
    )
    if args.quick:
        command += " --quick"
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "state-write.json"
    payload = {
        "benchmark": "state.write",
        "command": command,
        "machine": host,
        "setup": setup,
        **result,
    }
    path.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
