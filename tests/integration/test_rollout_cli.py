"""``turnout rollout`` against a running admin API: start, status, pause,
resume, abort, and ``status --watch``'s exit code for a pipeline."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import httpx
import pytest

from controlplane.runtime import ControlPlane
from controlplane.settings import Settings
from tests.conftest import free_port

TURNOUT = str(Path(sys.executable).parent / "turnout")


@pytest.fixture
def settings(database_url: str) -> Settings:
    # The driver stays still: the commands are what this test watches.
    return Settings(
        database_url=database_url,
        api_port=0,
        xds_port=0,
        listener_port=free_port(),
        envoy_admin_port=free_port(),
        rollout_interval_s=3600,
    )


async def _turnout(plane: ControlPlane, key: str, *args: str) -> tuple[int, str, str]:
    env = {**os.environ, "TURNOUT_API_KEY": key}
    process = await asyncio.create_subprocess_exec(
        TURNOUT,
        "rollout",
        *args,
        "--api",
        f"http://127.0.0.1:{plane.api_port}",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_rollout_commands(
    api: httpx.AsyncClient, control_plane: ControlPlane, admin_key: str, tmp_path: Path
) -> None:
    assert (await api.post("/v1/models", json={"name": "m", "protocol": "http"})).status_code == 201
    for i, version in enumerate(("v1", "v2")):
        body = {"version": version, "endpoints": [{"address": "127.0.0.1", "port": 9001 + i}]}
        assert (await api.post("/v1/models/m/versions", json=body)).status_code == 201

    code, _, err = await _turnout(control_plane, admin_key, "status", "m")
    assert code == 2 and "no rollout" in err
    code, _, err = await _turnout(
        control_plane, admin_key, "start", "m", "--candidate", "v2", "--steps", "50,20,100"
    )
    assert code == 2 and "weights_not_increasing" not in err and "not above" in err
    code, out, err = await _turnout(
        control_plane,
        admin_key,
        "start",
        "m",
        "--candidate",
        "v2",
        "--steps",
        "5:60,25:2m,100",
        "--gate",
        "error_rate<=0.01",
        "--gate",
        "p99_ms/baseline<=1.25",
        "--min-requests",
        "50",
    )
    assert code == 0, err
    assert "v1 -> v2  progressing" in out
    code, out, _ = await _turnout(control_plane, admin_key, "pause", "m")
    assert code == 0 and "paused" in out
    code, out, _ = await _turnout(control_plane, admin_key, "resume", "m")
    assert code == 0 and "progressing" in out
    code, out, _ = await _turnout(control_plane, admin_key, "abort", "m")
    assert code == 0 and "aborted" in out
    code, out, _ = await _turnout(control_plane, admin_key, "status", "m", "--watch")
    assert code == 1 and "aborted" in out
    code, _, err = await _turnout(control_plane, admin_key, "pause", "m")
    assert code == 2 and "no active rollout" in err

    spec = tmp_path / "spec.json"
    spec.write_text('{"candidate": "v2", "steps": [{"weight": 10}, {"weight": 100}]}')
    code, _, err = await _turnout(control_plane, admin_key, "start", "m", "--file", str(spec))
    assert code == 0, err
    code, out, _ = await _turnout(control_plane, admin_key, "promote", "m")
    assert code == 0 and "promoted" in out
    code, out, _ = await _turnout(control_plane, admin_key, "status", "m", "--watch")
    assert code == 0 and "promoted" in out
    assert (await api.get("/v1/models/m/traffic")).json()["weights"] == {"v1": 0, "v2": 100}
