"""`turnout up --demo`, as a user runs it: a subprocess, stopped with SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections import Counter
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port
from tests.support import applied

pytestmark = pytest.mark.envoy


async def test_up_demo_serves_and_stops_cleanly(tmp_path: Path) -> None:
    ports = {
        "TURNOUT_API_PORT": free_port(),
        "TURNOUT_XDS_PORT": free_port(),
        "TURNOUT_LISTENER_PORT": free_port(),
        "TURNOUT_ENVOY_ADMIN_PORT": free_port(),
        "TURNOUT_DEMO_BASE_PORT": free_port(),
    }
    env = {k: v for k, v in os.environ.items() if k != "TURNOUT_DATABASE_URL"}
    env.update({k: str(v) for k, v in ports.items()})
    # Two demo servers take the base port and the next one.
    process = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "turnout"),
        "up",
        "--demo",
        cwd=tmp_path,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output: list[str] = []

    async def read_until_up() -> None:
        assert process.stdout is not None
        async for line in process.stdout:
            output.append(line.decode())
            if "The demo mesh is up" in output[-1]:
                return
        raise AssertionError("turnout up exited early:\n" + "".join(output))

    try:
        await asyncio.wait_for(read_until_up(), timeout=60)
        # The demo prints the admin key it made; with it, wait for the demo's last change.
        key = next(line.split("=", 1)[1].strip() for line in output if "TURNOUT_KEY=" in line)
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{ports['TURNOUT_API_PORT']}",
            headers={"authorization": f"Bearer {key}"},
            timeout=5,
        ) as api:
            proxies = (await api.get("/v1/proxies")).json()
            assert len(proxies) == 1, proxies  # the Envoy that `turnout up` started
            await applied(api, proxies[0]["node_id"], timeout=10)
        base = f"http://127.0.0.1:{ports['TURNOUT_LISTENER_PORT']}"
        async with httpx.AsyncClient(timeout=5) as client:
            answers = Counter(
                [
                    (await client.post(f"{base}/models/demo/predict", json={"x": 1})).headers[
                        "x-turnout-version"
                    ]
                    for _ in range(100)
                ]
            )
        assert set(answers) <= {"v1", "v2"}
        assert answers["v1"] > answers["v2"]  # 90/10
    finally:
        process.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(process.wait(), timeout=20)
    assert code == 0, "".join(output)
    # Envoy and the model servers are gone: their ports no longer answer.
    for key in ("TURNOUT_LISTENER_PORT", "TURNOUT_DEMO_BASE_PORT"):
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", ports[key])
