"""Filtered audit queries over 1,000,000 events on Postgres: p50/p95/p99.

    .venv/bin/python -m bench.audit.run [--events 1000000] [--url postgresql+asyncpg://...]

Creates a scratch database, migrates it, fills ``audit_events`` with
``INSERT ... SELECT generate_series`` (50 actors, 11 actions, 1,000 models,
90% success / 8% rejected / 2% denied, one event every 50 ms), then times the
governance queries exactly as ``GET /v1/audit/events`` runs them
(``AuditRepository.page``, limit 50, newest first). The synthetic rows carry
placeholder hashes: the chain is not valid and is not what is measured. Writes
bench/results/audit.json; drops the database at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import make_url

from controlplane.db.audit_repository import AuditQuery, AuditRepository
from controlplane.db.engine import create_engine, create_sessionmaker
from controlplane.db.migrate import upgrade

START = datetime(2026, 1, 1, tzinfo=UTC)
STEP_MS = 50
ACTIONS = [
    "model.create", "model.update", "model.delete", "version.create", "version.update",
    "version.delete", "traffic.update", "key.create", "key.revoke", "policy.update",
    "policy.delete",
]  # fmt: skip

FILL = """
INSERT INTO audit_events (id, created_at, actor, actor_id, role, action, resource_type,
    resource_id, model, version, before, after, request_id, revision, source_ip,
    user_agent, outcome, status_code, prev_hash, hash)
SELECT g,
       CAST(:start AS timestamptz) + (g * interval '50 milliseconds'),
       'key-' || (g % 50), g % 50, 'operator',
       (ARRAY[{actions}])[1 + g % 11],
       'model', 'model-' || (g % 1000), 'model-' || (g % 1000), 'v' || (g % 7),
       NULL, '{{"weights": {{"v1": 50, "v2": 50}}}}'::json,
       md5(g::text), g, '10.0.' || (g % 256) || '.1', 'bench/1',
       CASE WHEN g % 50 = 0 THEN 'denied' WHEN g % 100 < 8 THEN 'rejected' ELSE 'success' END,
       200, md5((g - 1)::text) || md5((g - 1)::text), md5(g::text) || md5(g::text)
FROM generate_series(1, CAST(:n AS bigint)) AS g
"""


def _queries(n: int, rng: random.Random) -> list[tuple[str, AuditQuery]]:
    span = timedelta(milliseconds=STEP_MS * n)

    def window(hours: float) -> tuple[datetime, datetime]:
        start = START + span * rng.random() * 0.9
        return start, start + timedelta(hours=hours)

    model = f"model-{rng.randrange(1000)}"
    since, until = window(6)
    return [
        ("actor", AuditQuery(actor=f"key-{rng.randrange(50)}")),
        ("actor_id", AuditQuery(actor_id=rng.randrange(50))),
        ("action", AuditQuery(action=rng.choice(ACTIONS))),
        ("resource", AuditQuery(resource_type="model", resource_id=model)),
        ("model", AuditQuery(model=model)),
        ("outcome=denied", AuditQuery(outcome="denied")),
        ("time range (6 h)", AuditQuery(since=since, until=until)),
        ("model + time range", AuditQuery(model=model, since=since, until=until)),
        (
            "actor + action + outcome",
            AuditQuery(
                actor=f"key-{rng.randrange(50)}", action="traffic.update", outcome="rejected"
            ),
        ),
    ]


async def _run(admin_url: str, events: int, rounds: int) -> dict[str, Any]:
    name = f"turnout_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    async with admin.connect() as connection:
        await connection.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    try:
        await asyncio.to_thread(upgrade, url)
        engine = create_engine(url)
        started = time.perf_counter()
        actions = ", ".join(f"'{a}'" for a in ACTIONS)
        async with engine.begin() as connection:
            await connection.execute(
                text(FILL.format(actions=actions)), {"start": START, "n": events}
            )
        async with engine.connect() as connection:
            await connection.execution_options(isolation_level="AUTOCOMMIT")
            await connection.execute(text("VACUUM ANALYZE audit_events"))
        fill_s = time.perf_counter() - started
        sessions = create_sessionmaker(engine)
        rng = random.Random(7)
        timings: dict[str, list[float]] = {}
        async with sessions() as session:
            for _ in range(3):  # warm the cache and the plans
                for _, query in _queries(events, rng):
                    await AuditRepository(session).page(query, before_id=None, limit=51)
            for _ in range(rounds):
                for label, query in _queries(events, rng):
                    t0 = time.perf_counter()
                    await AuditRepository(session).page(query, before_id=None, limit=51)
                    timings.setdefault(label, []).append((time.perf_counter() - t0) * 1000)
        await engine.dispose()
    finally:
        async with admin.connect() as connection:
            await connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        await admin.dispose()
    every = sorted(t for ts in timings.values() for t in ts)
    return {
        "events": events,
        "queries": len(every),
        "fill_seconds": round(fill_s, 1),
        "all": _percentiles(every),
        "by_filter": {label: _percentiles(sorted(ts)) for label, ts in timings.items()},
    }


def _percentiles(values: list[float]) -> dict[str, float]:
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return {
        "p50_ms": round(cuts[49], 2),
        "p95_ms": round(cuts[94], 2),
        "p99_ms": round(cuts[98], 2),
    }


def main() -> None:
    """Parse the arguments, run the benchmark, print and save the figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=40, help="queries per filter")
    parser.add_argument("--url", default="postgresql+asyncpg://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args()
    result = asyncio.run(_run(args.url, args.events, args.rounds))
    result["measured_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    out = Path(__file__).resolve().parents[1] / "results" / "audit.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{result['events']:,} events (filled in {result['fill_seconds']} s), "
          f"{result['queries']} filtered queries, limit 50, newest first")  # fmt: skip
    print(f"{'filter':28} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8}")
    for label, p in [*result["by_filter"].items(), ("ALL", result["all"])]:
        print(f"{label:28} {p['p50_ms']:8.2f} {p['p95_ms']:8.2f} {p['p99_ms']:8.2f}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
