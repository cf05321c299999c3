"""Several control-plane replicas on one Postgres: identical config, and failover
under load with no failed request."""

from __future__ import annotations

import asyncio
import signal
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from controlplane.bootstrap import XdsAddress, dump_bootstrap, render_bootstrap
from controlplane.cli.admin import create_key
from controlplane.domain.keys import Role
from controlplane.processes import ChildProcess, envoy_binary, wait_for_port
from tests.conftest import free_port
from tests.support import (
    Replica,
    RunningModelServer,
    eventually,
    latest_revision,
    start_replica,
    synced_at,
)

pytestmark = pytest.mark.envoy


@pytest.fixture
async def replicas(
    postgres_url: str, tmp_path: Path
) -> AsyncIterator[tuple[list[Replica], int, dict[str, str]]]:
    from tests.conftest import _reset_postgres

    await _reset_postgres(postgres_url)
    _row, key = await create_key(postgres_url, "failover-test", Role.ADMIN)
    listener_port = free_port()
    started = [await start_replica(postgres_url, listener_port, tmp_path, n) for n in range(2)]
    try:
        yield started, listener_port, {"authorization": f"Bearer {key}"}
    finally:
        for replica in started:
            await replica.process.stop()


async def test_replicas_converge_and_fail_over_without_a_failed_request(
    replicas: tuple[list[Replica], int, dict[str, str]], tmp_path: Path
) -> None:
    nodes, listener_port, headers = replicas
    servers = {v: await RunningModelServer(v).start() for v in ("v1", "v2")}
    envoy = None
    try:
        async with (
            httpx.AsyncClient(timeout=10, headers=headers) as client,
            httpx.AsyncClient(base_url=nodes[0].api, timeout=10, headers=headers) as api0,
            httpx.AsyncClient(base_url=nodes[1].api, timeout=10, headers=headers) as api1,
        ):
            apis = [api0, api1]
            first = nodes[0].api
            assert (
                await client.post(f"{first}/v1/models", json={"name": "m", "protocol": "http"})
            ).status_code == 201
            for version, server in servers.items():
                response = await client.post(
                    f"{first}/v1/models/m/versions",
                    json={
                        "version": version,
                        "endpoints": [{"address": "127.0.0.1", "port": server.port}],
                    },
                )
                assert response.status_code == 201

            created = await latest_revision(api0)

            # The other replica hears of the change (NOTIFY) and renders the same bytes.
            async def same_versions() -> dict[str, str] | None:
                ready = [(await client.get(f"{r.api}/readyz")).json() for r in nodes]
                if ready[0]["revision"] == ready[1]["revision"] == created:
                    assert ready[0]["xds_versions"] == ready[1]["xds_versions"]
                    return dict(ready[0]["xds_versions"])
                return None

            await eventually(same_versions, timeout=5)

            bootstrap = render_bootstrap(
                "failover",
                [XdsAddress("127.0.0.1", r.xds_port) for r in nodes],
                admin_port=free_port(),
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
            url = f"http://127.0.0.1:{listener_port}/models/m/predict"

            async def connected_replica() -> int | None:
                for i, replica in enumerate(nodes):
                    proxies = (await client.get(f"{replica.api}/v1/proxies")).json()
                    if any(p["node_id"] == "failover" for p in proxies):
                        return i + 1  # 1-based so that a match is truthy
                return None

            victim = await eventually(connected_replica, timeout=10) - 1
            survivor = nodes[1 - victim]
            await synced_at(apis[victim], "failover", created, timeout=10)
            assert (await client.get(url)).status_code == 200

            # Steady load while the connected replica is killed without warning.
            statuses: Counter[int] = Counter()
            stop = asyncio.Event()

            async def load() -> None:
                while not stop.is_set():
                    statuses[(await client.get(url)).status_code] += 1

            workers = [asyncio.create_task(load()) for _ in range(4)]
            await eventually(lambda: _at_least(statuses, 50), timeout=10)
            assert nodes[victim].process.process is not None
            nodes[victim].process.process.send_signal(signal.SIGKILL)
            await nodes[victim].process.process.wait()

            async def reconnected() -> bool:
                proxies = (await client.get(f"{survivor.api}/v1/proxies")).json()
                return any(p["node_id"] == "failover" for p in proxies)

            await eventually(reconnected, timeout=15)
            response = await client.put(
                f"{survivor.api}/v1/models/m/traffic", json={"weights": {"v2": 100}}
            )
            assert response.status_code == 200
            revision = await latest_revision(apis[1 - victim])
            await synced_at(apis[1 - victim], "failover", revision, timeout=5)
            assert (await client.get(url)).headers.get("x-turnout-version") == "v2"
            # The load goes on past the reconnection: 50 more requests, all to be answered.
            wanted = sum(statuses.values()) + 50
            await eventually(lambda: _at_least(statuses, wanted), timeout=10)
            stop.set()
            await asyncio.gather(*workers)
        assert set(statuses) == {200}, statuses
    finally:
        if envoy is not None:
            await envoy.stop()
        for server in servers.values():
            await server.stop()


async def _at_least(counter: Counter[int], total: int) -> bool:
    return sum(counter.values()) >= total
