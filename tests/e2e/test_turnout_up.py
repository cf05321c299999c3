"""`turnout up --demo`, as a user runs it: a subprocess, stopped with SIGTERM."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import socket
import sys
from collections import Counter
from pathlib import Path

import httpx
import pytest

from tests.support import applied

pytestmark = pytest.mark.envoy

# Linux hands out local ports of outgoing connections from 32768 up; a port there
# that is free now may be some connection's own port before `turnout up` binds it.
_QUIET_PORTS = range(20000, 32768)


def _is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _quiet_free_block(count: int) -> int:
    """Return the first of ``count`` consecutive ports that are free now and outside
    the ephemeral range."""
    while True:
        start = random.randrange(_QUIET_PORTS.start, _QUIET_PORTS.stop - count)
        if all(_is_free(port) for port in range(start, start + count)):
            return start


async def test_up_demo_serves_and_stops_cleanly(tmp_path: Path) -> None:
    first = _quiet_free_block(6)
    ports = {
        "TURNOUT_DEMO_BASE_PORT": first,  # two demo servers: this port and the next
        "TURNOUT_API_PORT": first + 2,
        "TURNOUT_XDS_PORT": first + 3,
        "TURNOUT_LISTENER_PORT": first + 4,
        "TURNOUT_ENVOY_ADMIN_PORT": first + 5,
    }
    env = {k: v for k, v in os.environ.items() if k != "TURNOUT_DATABASE_URL"}
    env.update({k: str(v) for k, v in ports.items()})
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
