"""docker-compose.yml's demo-setup step (examples.compose_demo) against a real
control plane: it registers the demo by service name, reuses its keys on a
second run, and keeps a split someone changed."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from controlplane.runtime import ControlPlane
from examples import compose_demo


async def test_setup_registers_the_demo_by_service_name_and_is_repeatable(
    control_plane: ControlPlane,
    api: httpx.AsyncClient,
    database_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("TURNOUT_DATABASE_URL", database_url)
    state = tmp_path / "demo"
    argv = ["--api", f"http://127.0.0.1:{control_plane.api_port}", "--state-dir", str(state)]
    await asyncio.to_thread(compose_demo.main, ["setup", *argv])

    demo = (await api.get("/v1/models/demo/versions")).json()
    assert {v["version"]: v["endpoints"][0]["address"] for v in demo} == {
        "v1": "model-v1",
        "v2": "model-v2",
    }
    assert (await api.get("/v1/models/demo/traffic")).json()["weights"] == {"v1": 90, "v2": 10}
    embed = (await api.get("/v1/models/demo-embed/versions/v1")).json()
    assert embed["endpoints"][0]["batcher_port"] == 9004
    assert embed["batching"]["enabled"] is True

    admin_key = (state / "admin.key").read_text().strip()
    assert (state / "admin.key").stat().st_mode & 0o077 == 0
    listed = await api.get("/v1/models", headers={"authorization": f"Bearer {admin_key}"})
    assert listed.status_code == 200

    changed = await api.put("/v1/models/demo/traffic", json={"weights": {"v1": 50, "v2": 50}})
    assert changed.status_code == 200
    await asyncio.to_thread(compose_demo.main, ["setup", *argv])
    assert (state / "admin.key").read_text().strip() == admin_key, "the key is reused"
    assert (await api.get("/v1/models/demo/traffic")).json()["weights"] == {"v1": 50, "v2": 50}
    keys = (await api.get("/v1/keys")).json()
    assert sorted(k["name"] for k in keys if k["name"].startswith("compose-demo")) == [
        "compose-demo-admin",
        "compose-demo-batcher",
    ]

    verified = (await api.get("/v1/audit/verify")).json()
    assert verified["ok"] is True, verified

    capsys.readouterr()
    compose_demo.main(["key", "--state-dir", str(state)])
    assert capsys.readouterr().out == f"export TURNOUT_API_KEY={admin_key}\n"
