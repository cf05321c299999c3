"""What each proxy was sent: /v1/proxies/{node}/config and `turnout proxy-status`."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import httpx
import pytest

from controlplane.cli.main import format_proxy_status
from tests.support import EnvoyProcess, applied, latest_revision

pytestmark = pytest.mark.envoy


async def test_config_shows_what_the_proxy_holds(
    api: httpx.AsyncClient, envoy: EnvoyProcess
) -> None:
    await api.post("/v1/models", json={"name": "m", "protocol": "http"})
    await api.post(
        "/v1/models/m/versions",
        json={"version": "v1", "endpoints": [{"address": "127.0.0.1", "port": 9001}]},
    )
    proxy = await applied(api, envoy.node_id, timeout=10)
    # The proxy is compared against, and holds, the revision of the last change.
    assert proxy["revision"] == proxy["synced_revision"] == await latest_revision(api)

    response = await api.get(f"/v1/proxies/{envoy.node_id}/config")
    assert response.status_code == 200, response.text
    config = response.json()
    assert [r["name"] for r in config["clusters"]["resources"]] == ["m/v1"]
    assert [r["clusterName"] for r in config["endpoints"]["resources"]] == ["m/v1"]
    assert config["listeners"]["resources"][0]["name"] == "turnout_http"
    assert (await api.get("/v1/proxies/nobody/config")).status_code == 404


async def test_proxy_status_command(api: httpx.AsyncClient, envoy: EnvoyProcess) -> None:
    await api.post("/v1/models", json={"name": "m", "protocol": "http"})
    await api.post(
        "/v1/models/m/versions",
        json={"version": "v1", "endpoints": [{"address": "127.0.0.1", "port": 9001}]},
    )
    await applied(api, envoy.node_id, timeout=10)
    process = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "turnout"),
        "proxy-status",
        "--api",
        str(api.base_url).rstrip("/"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "TURNOUT_API_KEY": api.headers["authorization"].split()[1]},
    )
    out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    lines = out.decode().splitlines()
    assert lines[0].split() == [
        "NODE",
        "XDS",
        "ZONE",
        "CLUSTERS",
        "ENDPOINTS",
        "LISTENERS",
        "ROUTES",
    ]
    mine = next(line.split() for line in lines if line.startswith(envoy.node_id))
    assert mine[3:] == ["SYNCED"] * 4


def test_proxy_status_lists_nacks_and_an_empty_mesh() -> None:
    entry = {"status": "SYNCED", "error": None}
    nacked = {"status": "NACKED", "error": "bad route"}
    table = format_proxy_status(
        [
            {
                "node_id": "edge-1",
                "xds": "delta",
                "zone": "",
                "types": {
                    "clusters": entry,
                    "endpoints": entry,
                    "listeners": entry,
                    "routes": nacked,
                },
            }
        ]
    )
    assert "edge-1  delta  -     SYNCED" in table
    assert "NACK edge-1 routes: bad route" in table
    assert "(no proxies connected)" in format_proxy_status([])


async def test_proxy_status_without_an_api_says_what_to_do() -> None:
    process = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "turnout"),
        "proxy-status",
        "--api",
        "http://127.0.0.1:1",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "TURNOUT_API_KEY": "tk_some-key"},  # without one it says so first
    )
    _out, err = await process.communicate()
    assert process.returncode == 2
    assert "is `turnout serve` running?" in err.decode()


async def test_proxy_status_without_a_key_says_how_to_get_one(
    api: httpx.AsyncClient,
) -> None:
    env = {k: v for k, v in os.environ.items() if k != "TURNOUT_API_KEY"}
    process = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "turnout"),
        "proxy-status",
        "--api",
        str(api.base_url).rstrip("/"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    _out, err = await process.communicate()
    assert process.returncode == 2
    assert "no admin API key is set" in err.decode()
    assert "TURNOUT_API_KEY" in err.decode()
