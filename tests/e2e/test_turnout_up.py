"""`turnout up --demo`, as a user runs it: a subprocess, stopped with SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import stat
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest

from tests.support import applied, demo_mesh_ports, eventually

pytestmark = pytest.mark.envoy

TURNOUT = str(Path(sys.executable).parent / "turnout")
READY = "Press Ctrl-C to stop."


def mesh_env() -> dict[str, str]:
    """The environment of a demo mesh on free ports outside the ephemeral range (the
    demo servers take the base port and the next one), with no TURNOUT_* setting
    from outside."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TURNOUT_")}
    env.update((name, str(port)) for name, port in demo_mesh_ports().items())
    return env


@asynccontextmanager
async def turnout_up(cwd: Path, env: dict[str, str], *args: str) -> AsyncIterator[list[str]]:
    """Run `turnout up --demo` until its start block is out; yield its stdout lines so
    far (more arrive while it runs); stop it with SIGTERM and check it exits 0."""
    process = await asyncio.create_subprocess_exec(
        TURNOUT,
        "up",
        "--demo",
        *args,
        cwd=cwd,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    output: list[str] = []

    async def read_until_up() -> None:
        assert process.stdout is not None
        async for line in process.stdout:
            output.append(line.decode())
            if output[-1].strip() == READY:
                return
        assert process.stderr is not None
        errors = (await process.stderr.read()).decode()
        raise AssertionError("turnout up exited early:\n" + "".join(output) + errors)

    try:
        await asyncio.wait_for(read_until_up(), timeout=90)
        yield output
    finally:
        process.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(process.wait(), timeout=30)
    assert code == 0, "".join(output)


def exported_key(output: list[str]) -> str:
    """The key from the start block's `export TURNOUT_API_KEY=...` line."""
    found = [m[1] for line in output if (m := re.search(r"export TURNOUT_API_KEY=(\S+)", line))]
    assert len(found) == 1, "".join(output)
    return found[0]


async def test_up_demo_serves_and_stops_cleanly(tmp_path: Path) -> None:
    env = mesh_env()
    listener = f"http://127.0.0.1:{env['TURNOUT_LISTENER_PORT']}"
    api = f"http://127.0.0.1:{env['TURNOUT_API_PORT']}"
    async with turnout_up(tmp_path, env) as output:
        text = "".join(output)
        # One block, apart from the logs: where things are, the key, a curl to try.
        block = text[text.index("Turnout is up.") :]
        assert f"admin API   {api}" in block
        assert f"Envoy       {listener}" in block
        assert "model       'demo': v1 90%, v2 10%" in block
        assert f"curl -i {listener}/models/demo/predict" in block
        key = exported_key(output)
        assert "TURNOUT_KEY=" not in text
        assert not any(line.lstrip().startswith("{") for line in output)  # no JSON logs
        # With the key it printed, wait until its Envoy holds the demo's last change.
        async with httpx.AsyncClient(
            base_url=api, headers={"authorization": f"Bearer {key}"}, timeout=5
        ) as admin:
            proxies = (await admin.get("/v1/proxies")).json()
            assert len(proxies) == 1, proxies  # the Envoy that `turnout up` started
            await applied(admin, proxies[0]["node_id"], timeout=10)
        async with httpx.AsyncClient(timeout=5) as client:
            answers = Counter(
                [
                    (await client.post(f"{listener}/models/demo/predict", json={"x": 1})).headers[
                        "x-turnout-version"
                    ]
                    for _ in range(100)
                ]
            )
            traffic = await client.get(
                f"{api}/v1/models/demo/traffic", headers={"authorization": f"Bearer {key}"}
            )
            # v3, the faulty version of the canary walkthrough, waits at weight 0.
            assert traffic.json()["weights"] == {"v1": 90, "v2": 10, "v3": 0}
        assert set(answers) <= {"v1", "v2"}
        assert answers["v1"] > answers["v2"]  # 90/10
        assert f"access log  {tmp_path / '.turnout' / 'access.log'}" in block

        # Envoy logged each of those requests as one JSON line naming the model.
        async def logged() -> Counter[str] | None:
            lines = (tmp_path / ".turnout" / "access.log").read_text().splitlines()
            entries = [json.loads(line) for line in lines]
            served = Counter(e["version"] for e in entries if e["model"] == "demo")
            return served if sum(served.values()) >= 100 else None

        assert await eventually(logged, timeout=15) == answers
    # The logs went to .turnout/, as JSON lines.
    log = (tmp_path / ".turnout" / "turnout.log").read_text()
    assert '"logger": "controlplane.runtime"' in log
    assert key not in log
    # Envoy and the model servers are gone: their ports no longer answer.
    for name in ("TURNOUT_LISTENER_PORT", "TURNOUT_DEMO_BASE_PORT"):
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", int(env[name]))


def live_demo_keys(cwd: Path, env: dict[str, str]) -> list[list[str]]:
    listing = subprocess.run(
        [TURNOUT, "keys", "list"], cwd=cwd, env=env, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    rows = [line.split() for line in listing[1:]]
    return [row for row in rows if row[1] == "demo-admin" and row[-1] == "-"]


async def test_restarts_reuse_the_demo_key_and_report_the_split_they_keep(
    tmp_path: Path,
) -> None:
    env = mesh_env()
    api = f"http://127.0.0.1:{env['TURNOUT_API_PORT']}"
    async with turnout_up(tmp_path, env) as output:
        first = exported_key(output)
        async with httpx.AsyncClient(
            base_url=api, timeout=5, headers={"authorization": f"Bearer {first}"}
        ) as client:
            moved = await client.put(
                "/v1/models/demo/traffic", json={"weights": {"v1": 0, "v2": 100}}
            )
            assert moved.status_code == 200, moved.text
    key_file = tmp_path / ".turnout" / "demo-admin.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert key_file.read_text().strip() == first

    async with turnout_up(tmp_path, env) as output:
        text = "".join(output)
        assert exported_key(output) == first
        assert "the same key as last time" in text
        assert "model       'demo': v1 0%, v2 100%" in text
        assert "90%" not in text
    assert len(live_demo_keys(tmp_path, env)) == 1

    # Without the stored key, a new one replaces (revokes) the old one.
    key_file.unlink()
    async with turnout_up(tmp_path, env) as output:
        second = exported_key(output)
    assert second != first
    live = live_demo_keys(tmp_path, env)
    assert len(live) == 1 and second.startswith(live[0][3].rstrip("."))
