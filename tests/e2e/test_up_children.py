"""`turnout up` owns its children: they die with it, even on `kill -9`, and the next
run stops what a run that died left behind instead of failing to bind."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from controlplane.bootstrap import XdsAddress, dump_bootstrap, render_bootstrap
from controlplane.processes import ChildProcess, RunningProcess, envoy_binary, wait_for_port
from tests.conftest import free_port
from tests.support import demo_mesh_ports, eventually

pytestmark = [
    pytest.mark.envoy,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc"),
]


@dataclass
class Up:
    """A `turnout up --demo` subprocess in its own directory, on free ports."""

    cwd: Path
    ports: dict[str, int]
    process: asyncio.subprocess.Process | None = None
    output: list[str] = field(default_factory=list)

    async def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if k != "TURNOUT_DATABASE_URL"}
        env.update({k: str(v) for k, v in self.ports.items()})
        self.process = await asyncio.create_subprocess_exec(
            str(Path(sys.executable).parent / "turnout"),
            "up",
            "--demo",
            cwd=self.cwd,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )

        async def read_until_up() -> None:
            assert self.process is not None and self.process.stdout is not None
            async for line in self.process.stdout:
                self.output.append(line.decode())
                if "Press Ctrl-C to stop." in line.decode():
                    return
            raise AssertionError("turnout up exited early:\n" + "".join(self.output))

        await asyncio.wait_for(read_until_up(), timeout=90)

    async def routes_demo(self) -> None:
        base = f"http://127.0.0.1:{self.ports['TURNOUT_LISTENER_PORT']}"
        async with httpx.AsyncClient(timeout=5) as client:

            async def routed() -> bool:
                return (await client.post(f"{base}/models/demo/predict", json={"x": 1})).is_success

            await eventually(routed, timeout=15)


@pytest.fixture
async def up(tmp_path: Path) -> AsyncIterator[Up]:
    run = Up(cwd=tmp_path, ports=demo_mesh_ports())
    try:
        yield run
    finally:
        if run.process is not None and run.process.returncode is None:
            run.process.send_signal(signal.SIGTERM)
            await asyncio.wait_for(run.process.wait(), timeout=30)


def _children_of(pid: int) -> list[RunningProcess]:
    """Return the processes whose parent is ``pid`` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            stat = (entry / "stat").read_text()
            name = stat[stat.index("(") + 1 : stat.rindex(")")]
            if int(stat[stat.rindex(")") + 2 :].split()[1]) == pid:
                found.append(RunningProcess.of(name, int(entry.name)))
    return found


async def test_kill_9_of_up_takes_its_children_with_it(up: Up) -> None:
    await up.start()
    await up.routes_demo()
    assert up.process is not None
    children = _children_of(up.process.pid)
    assert len(children) == 4, children  # Envoy and three model servers (v3: the faulty one)
    assert "envoy" in {c.name for c in children}
    try:
        up.process.kill()
        await up.process.wait()

        async def all_gone() -> bool:
            return not any(child.alive() for child in children)

        await eventually(all_gone, timeout=15)
    finally:
        for child in children:  # whatever survived must not outlive the test
            if child.alive():
                os.kill(child.pid, signal.SIGKILL)
    # The run that died left its pid file, naming exactly those children.
    ledger = json.loads((up.cwd / ".turnout" / "children.json").read_text())
    assert ledger["owner"]["pid"] == up.process.pid
    assert {c["pid"] for c in ledger["children"]} == {c.pid for c in children}


async def test_a_start_stops_what_a_dead_run_left_running(up: Up, tmp_path: Path) -> None:
    # An Envoy that a previous run started and did not take with it (no parent-death
    # signal: another OS, an older Turnout), still holding the admin port.
    admin_port = up.ports["TURNOUT_ENVOY_ADMIN_PORT"]
    bootstrap = render_bootstrap(
        "leftover", [XdsAddress("127.0.0.1", free_port())], admin_port=admin_port
    )
    (tmp_path / "leftover.yaml").write_text(dump_bootstrap(bootstrap))
    leftover = ChildProcess(
        "envoy",
        [envoy_binary(), "-c", str(tmp_path / "leftover.yaml"), "--disable-hot-restart"],
        log_path=tmp_path / "leftover.log",
    )
    await leftover.start()
    try:
        await wait_for_port("127.0.0.1", admin_port, timeout=30)
        assert leftover.process is not None
        # Its run died: the owner named in the pid file is a process that has exited.
        gone = await asyncio.create_subprocess_exec(sys.executable, "-c", "")
        await gone.wait()
        (tmp_path / ".turnout").mkdir()
        (tmp_path / ".turnout" / "children.json").write_text(
            json.dumps(
                {
                    "owner": {"name": "turnout", "pid": gone.pid, "started": 0},
                    "children": [
                        {
                            "name": "envoy",
                            "pid": leftover.process.pid,
                            "started": RunningProcess.of("envoy", leftover.process.pid).started,
                        }
                    ],
                }
            )
        )

        await up.start()
        await up.routes_demo()
        said = [line for line in up.output if "previous `turnout up` left running" in line]
        assert said == [
            f"stopping what a previous `turnout up` left running: "
            f"envoy (pid {leftover.process.pid})\n"
        ]
        assert await asyncio.wait_for(leftover.process.wait(), timeout=10) is not None
    finally:
        await leftover.stop()
    assert up.process is not None
    up.process.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(up.process.wait(), timeout=30) == 0, "".join(up.output)
    assert not (tmp_path / ".turnout" / "children.json").exists()
