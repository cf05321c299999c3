"""Canary rollouts end to end: real Envoy, its stat sink, the driver, real HTTP.

Load of about 100 requests a second goes through Envoy while a rollout runs;
the model servers are doubles that answer after a delay and fail every n-th
call. Envoy flushes its statistics every 0.25 s and the driver ticks as often,
so each test takes seconds, not minutes.
"""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from controlplane.bootstrap import XdsAddress, dump_bootstrap, render_bootstrap
from controlplane.cli.admin import create_key
from controlplane.db.engine import create_engine
from controlplane.domain.keys import Role
from controlplane.processes import ChildProcess, envoy_binary, wait_for_port
from controlplane.runtime import ControlPlane
from controlplane.settings import Settings
from tests.conftest import free_port, plane_settings, sqlite_copy
from tests.e2e.test_traffic_metrics import ScriptedServer
from tests.support import EnvoyProcess, Replica, applied, eventually, start_replica

pytestmark = pytest.mark.envoy

FLUSH_S = 0.25
RATE = 100  # requests per second, about
IN_FLIGHT = 48


@pytest.fixture
async def database_url(tmp_path: Path, sqlite_template: Path) -> str:
    # One replica: the database does not matter here (the replica test runs on Postgres).
    return sqlite_copy(tmp_path, sqlite_template)


@pytest.fixture
def settings(database_url: str) -> Settings:
    return plane_settings(
        database_url,
        stats_flush_interval_s=FLUSH_S,
        rollout_interval_s=FLUSH_S,
        rollout_lease_s=2.0,
        access_log_path="",
    )


@pytest.fixture
async def proxy(
    control_plane: ControlPlane, settings: Settings, tmp_path: Path
) -> AsyncIterator[EnvoyProcess]:
    process = EnvoyProcess(
        node_id=f"rollout-{uuid.uuid4().hex[:6]}",
        xds_port=control_plane.xds_port,
        listener_port=settings.listener_port,
        workdir=tmp_path,
        stats_flush_interval_s=FLUSH_S,
    )
    await process.start()
    try:
        yield process
    finally:
        await process.stop()


@dataclass
class Load:
    """Requests at a steady rate until stopped; what the client saw, per version."""

    url: str
    seen: Counter[tuple[str, int]] = field(default_factory=Counter)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task[None] | None = None

    def count(self, version: str | None = None, status: int | None = None) -> int:
        return sum(
            n
            for (v, s), n in self.seen.items()
            if (version is None or v == version) and (status is None or s == status)
        )

    def failed(self) -> int:
        return sum(n for (_, s), n in self.seen.items() if s >= 500)

    async def _run(self) -> None:
        limits = httpx.Limits(max_connections=IN_FLIGHT, max_keepalive_connections=IN_FLIGHT)
        async with httpx.AsyncClient(timeout=10, limits=limits) as client:
            pending: set[asyncio.Task[None]] = set()

            async def one() -> None:
                try:
                    response = await client.post(self.url, json={"inputs": [1]})
                except httpx.HTTPError:
                    self.seen[("?", 599)] += 1
                    return
                version = response.headers.get("x-turnout-version", "?")
                self.seen[(version, response.status_code)] += 1

            started = time.monotonic()
            sent = 0
            while not self._stop.is_set():
                # Pace to RATE a second; a starved loop skips what it is late for
                # instead of sending it in a burst, and never has more than IN_FLIGHT.
                due = int((time.monotonic() - started) * RATE) + 1
                sent = max(sent, due - RATE // 10)
                while sent < due and len(pending) < IN_FLIGHT:
                    task = asyncio.create_task(one())
                    pending.add(task)
                    task.add_done_callback(pending.discard)
                    sent += 1
                await asyncio.sleep(1 / RATE)
            if pending:
                # What is still in flight gets a moment to finish; it is not counted.
                _done, late = await asyncio.wait(set(pending), timeout=10)
                for task in late:
                    task.cancel()
                await asyncio.gather(*late, return_exceptions=True)

    def start(self) -> Load:
        self._task = asyncio.create_task(self._run())
        return self

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task


async def _register(
    api: httpx.AsyncClient, servers: dict[str, ScriptedServer], model: str = "canary"
) -> None:
    response = await api.post("/v1/models", json={"name": model, "protocol": "http"})
    assert response.status_code == 201, response.text
    for version, server in servers.items():
        response = await api.post(
            f"/v1/models/{model}/versions",
            json={"version": version, "endpoints": [{"address": "127.0.0.1", "port": server.port}]},
        )
        assert response.status_code == 201, response.text


@pytest.fixture
async def servers(request: pytest.FixtureRequest) -> AsyncIterator[dict[str, ScriptedServer]]:
    candidate: dict[str, Any] = dict(request.param)
    baseline_delay_s = candidate.pop("baseline_delay_s", 0.02)
    started = {
        "v1": await ScriptedServer("v1", delay_s=baseline_delay_s).start(),
        "v2": await ScriptedServer("v2", **candidate).start(),
    }
    try:
        yield started
    finally:
        for server in started.values():
            await server.stop()


async def _state(api: httpx.AsyncClient, rollout: int, model: str = "canary") -> dict[str, Any]:
    # Generous: the load, Envoy and the control plane share this loop and a busy machine.
    response = await api.get(f"/v1/models/{model}/rollouts/{rollout}", timeout=30)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def _ended(api: httpx.AsyncClient, rollout: int, timeout: float) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        body = await _state(api, rollout)
        return body if body["state"] not in ("progressing", "paused") else None

    return await eventually(probe, timeout=timeout, interval=0.25)


async def _steps_in_audit(api: httpx.AsyncClient, rollout: int) -> list[int]:
    page = await api.get(
        "/v1/audit/events",
        params={"actor": f"rollout:{rollout}", "action": "traffic.update", "limit": 100},
    )
    return [e["after"]["weights"]["v2"] for e in page.json()["items"][::-1]]


async def _start(api: httpx.AsyncClient, spec: dict[str, Any]) -> int:
    response = await api.post("/v1/models/canary/rollouts", json=spec)
    assert response.status_code == 201, response.text
    rollout: int = response.json()["id"]
    return rollout


@pytest.mark.parametrize("servers", [{"delay_s": 0.02, "fail_every": 10}], indirect=True)
async def test_a_candidate_failing_10_percent_is_rolled_back(
    api: httpx.AsyncClient, proxy: EnvoyProcess, servers: dict[str, ScriptedServer]
) -> None:
    await _register(api, servers)
    await applied(api, proxy.node_id, timeout=10)
    load = Load(f"{proxy.base_url}/models/canary/predict").start()
    try:
        min_requests = 40
        rollout = await _start(
            api,
            {
                "candidate": "v2",
                "steps": [
                    {"weight": 5, "hold_s": 30},
                    {"weight": 50, "hold_s": 30},
                    {"weight": 100},
                ],
                "gates": [{"metric": "error_rate", "max": 0.01}],
                "min_requests": min_requests,
            },
        )

        async def reached() -> bool:
            # The candidate served min_requests (or the rollout already ended, sooner).
            if servers["v2"].calls >= min_requests:
                return True
            return (await _state(api, rollout))["state"] != "progressing"

        await eventually(reached, timeout=60, interval=0.1)
        # From here the gate has its samples: the rollback comes within 30 s.
        body = await _ended(api, rollout, timeout=30)
    finally:
        await load.stop()
    assert body["state"] == "rolled_back", (body, load.seen)
    assert "error_rate<=0.01" in body["reason"]
    assert (await api.get("/v1/models/canary/traffic")).json()["weights"] == {"v1": 100, "v2": 0}
    assert await _steps_in_audit(api, rollout) == [5, 0]
    total = load.count()
    assert load.failed() < 0.01 * total, (load.seen, total)
    failed_gate = next(g for g in body["gates"] if g["verdict"] == "fail")
    assert failed_gate["samples"] >= min_requests


@pytest.mark.parametrize("servers", [{"delay_s": 0.22}], indirect=True)
async def test_a_candidate_200ms_slower_is_rolled_back_by_the_relative_p99_gate(
    api: httpx.AsyncClient, proxy: EnvoyProcess, servers: dict[str, ScriptedServer]
) -> None:
    await _register(api, servers)
    await applied(api, proxy.node_id, timeout=10)
    load = Load(f"{proxy.base_url}/models/canary/predict").start()
    try:
        rollout = await _start(
            api,
            {
                "candidate": "v2",
                "steps": [{"weight": 10, "hold_s": 30}, {"weight": 100}],
                "gates": [
                    {"metric": "error_rate", "max": 0.01},
                    {"metric": "p99_ms", "max_ratio_to_baseline": 1.25},
                ],
                "min_requests": 30,
            },
        )
        body = await _ended(api, rollout, timeout=30)
    finally:
        await load.stop()
    assert body["state"] == "rolled_back", body
    assert "p99_ms/baseline<=1.25" in body["reason"]
    (ratio,) = [g for g in body["gates"] if g["kind"] == "max_ratio_to_baseline"]
    assert ratio["verdict"] == "fail" and ratio["value"] > 1.25
    assert await _steps_in_audit(api, rollout) == [10, 0]
    assert load.failed() == 0, load.seen


# Both versions answer in 100 ms: a stall of this busy loop then delays about ten
# requests at once, most of them the baseline's, so it moves both p99s and not the
# ratio (at 20 ms one stall could land on the candidate's few requests alone).
@pytest.mark.parametrize("servers", [{"delay_s": 0.1, "baseline_delay_s": 0.1}], indirect=True)
async def test_a_healthy_candidate_is_promoted_step_by_step_without_a_failed_request(
    api: httpx.AsyncClient, proxy: EnvoyProcess, servers: dict[str, ScriptedServer]
) -> None:
    await _register(api, servers)
    await applied(api, proxy.node_id, timeout=10)
    load = Load(f"{proxy.base_url}/models/canary/predict").start()
    try:
        rollout = await _start(
            api,
            {
                "candidate": "v2",
                "steps": [
                    {"weight": 5, "hold_s": 1},
                    {"weight": 25, "hold_s": 1},
                    {"weight": 50, "hold_s": 1},
                    {"weight": 100},
                ],
                "gates": [
                    {"metric": "error_rate", "max": 0.01},
                    {"metric": "p99_ms", "max": 800},
                    {"metric": "p99_ms", "max_ratio_to_baseline": 2.0},
                ],
                "min_requests": 20,
            },
        )
        body = await _ended(api, rollout, timeout=60)
        assert body["state"] == "promoted", body
        # The last step's weights reach Envoy: only v2 answers from here on.
        before = load.count("v2")

        async def only_v2() -> bool:
            return load.count("v2") >= before + 50

        await eventually(only_v2, timeout=10)
    finally:
        await load.stop()
    assert await _steps_in_audit(api, rollout) == [5, 25, 50, 100]
    kinds = [e["kind"] for e in body["timeline"]]
    assert kinds == ["started", "step", "step", "step", "step", "promoted"]
    assert load.failed() == 0, load.seen
    assert set(load.seen) <= {("v1", 200), ("v2", 200)}, load.seen


# -- two replicas on Postgres --------------------------------------------------------


async def _start_replica(database_url: str, listener_port: int, workdir: Path, n: int) -> Replica:
    return await start_replica(
        database_url,
        listener_port,
        workdir,
        n,
        {
            "TURNOUT_ROLLOUT_INTERVAL_S": str(FLUSH_S),
            "TURNOUT_ROLLOUT_LEASE_S": "2",
            "TURNOUT_STATS_FLUSH_INTERVAL_S": str(FLUSH_S),
            "TURNOUT_ACCESS_LOG_PATH": "",
        },
    )


async def _lease_holder(database_url: str) -> str | None:
    engine = create_engine(database_url)
    try:
        async with engine.connect() as connection:
            holder = await connection.scalar(
                text(
                    "SELECT holder FROM leases WHERE name = 'rollout-driver' AND expires_at > now()"
                )
            )
            return str(holder) if holder else None
    finally:
        await engine.dispose()


def _pid_of(holder: str) -> int:
    return int(holder.split(":")[-2])


async def test_the_rollout_survives_a_sigkill_of_the_driving_replica(
    postgres_url: str, tmp_path: Path
) -> None:
    from tests.conftest import _reset_postgres

    await _reset_postgres(postgres_url)
    _row, key = await create_key(postgres_url, "rollout-failover", Role.ADMIN)
    headers = {"authorization": f"Bearer {key}"}
    listener_port = free_port()
    nodes = [await _start_replica(postgres_url, listener_port, tmp_path, n) for n in range(2)]
    servers = {v: await ScriptedServer(v, delay_s=0.01).start() for v in ("v1", "v2")}
    envoy = None
    load = None
    try:
        async with (
            httpx.AsyncClient(base_url=nodes[0].api, timeout=10, headers=headers) as api0,
            httpx.AsyncClient(base_url=nodes[1].api, timeout=10, headers=headers) as api1,
        ):
            apis = [api0, api1]
            await _register(api0, servers)
            bootstrap = render_bootstrap(
                "rollout-failover",
                [XdsAddress("127.0.0.1", r.xds_port) for r in nodes],
                admin_port=free_port(),
                stats_flush_interval_s=FLUSH_S,
            )
            path = tmp_path / "envoy.yaml"
            path.write_text(dump_bootstrap(bootstrap))
            envoy = ChildProcess(
                "envoy",
                [envoy_binary(), "-c", str(path), "--disable-hot-restart", "--concurrency", "1"],
                log_path=tmp_path / "envoy.log",
            )
            await envoy.start()
            await wait_for_port("127.0.0.1", listener_port, timeout=30)
            url = f"http://127.0.0.1:{listener_port}/models/canary/predict"

            async def routed() -> bool:
                async with httpx.AsyncClient(timeout=5) as client:
                    return (await client.post(url, json={})).status_code == 200

            await eventually(routed, timeout=15)
            load = Load(url).start()
            rollout = await _start(
                api0,
                {
                    "candidate": "v2",
                    "steps": [
                        {"weight": 10, "hold_s": 1},
                        {"weight": 30, "hold_s": 1},
                        {"weight": 60, "hold_s": 1},
                        {"weight": 100},
                    ],
                    "gates": [{"metric": "error_rate", "max": 0.01}],
                    "min_requests": 15,
                },
            )

            async def at_second_step() -> bool:
                return (await _state(api0, rollout))["step"] >= 1

            await eventually(at_second_step, timeout=30, interval=0.05)
            holder = await eventually(lambda: _lease_holder(postgres_url), timeout=5)
            pids = [r.process.process.pid if r.process.process else -1 for r in nodes]
            victim = pids.index(_pid_of(holder))
            survivor = 1 - victim
            process = nodes[victim].process.process
            assert process is not None
            process.send_signal(signal.SIGKILL)
            await process.wait()

            # Another replica holds the lease within 5 s of the kill.
            async def taken_over() -> bool:
                now = await _lease_holder(postgres_url)
                return now is not None and _pid_of(now) == pids[survivor]

            await eventually(taken_over, timeout=5, interval=0.05)

            async def promoted() -> dict[str, Any] | None:
                body = await _state(apis[survivor], rollout)
                return body if body["state"] != "progressing" else None

            body = await eventually(promoted, timeout=60, interval=0.1)
            assert body["state"] == "promoted", body
            assert await _steps_in_audit(apis[survivor], rollout) == [10, 30, 60, 100]
            steps = [e["detail"]["step"] for e in body["timeline"] if e["kind"] == "step"]
            assert steps == [0, 1, 2, 3]
    finally:
        if load is not None:
            await load.stop()
        if envoy is not None:
            await envoy.stop()
        for node in nodes:
            await node.process.stop()
        for server in servers.values():
            await server.stop()
