"""Child processes die with their parent, and a run's pid file names only what
still runs from it."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from controlplane.processes import ChildProcess, RunLedger, RunningProcess, stop_processes
from tests.support import eventually

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG")

# A parent that starts one child (a sleeper), prints its pid, and waits.
PARENT = """
import asyncio, os, sys
from pathlib import Path
from controlplane.processes import ChildProcess

async def main():
    argv = [sys.executable, "-c", "import time; time.sleep(600)"]
    # Its output goes elsewhere: the pipe to the test must close with the parent.
    child = ChildProcess("sleeper", argv, log_path=Path(os.devnull))
    await child.start()
    print(child.process.pid, flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


@pytest.fixture
async def sleeper() -> AsyncIterator[ChildProcess]:
    child = ChildProcess("sleeper", [sys.executable, "-c", "import time; time.sleep(600)"])
    await child.start()
    try:
        yield child
    finally:
        await child.stop(grace=1)


async def test_a_child_dies_with_its_parent_even_on_kill_9() -> None:
    parent = await asyncio.create_subprocess_exec(
        sys.executable, "-c", PARENT, stdout=asyncio.subprocess.PIPE
    )
    assert parent.stdout is not None
    line = await asyncio.wait_for(parent.stdout.readline(), timeout=30)
    child = RunningProcess.of("sleeper", int(line))
    assert child.alive()
    parent.send_signal(signal.SIGKILL)
    await parent.wait()

    async def gone() -> bool:
        return not child.alive()

    try:
        await eventually(gone, timeout=10)
    finally:
        if child.alive():
            await stop_processes([child], grace=1)


def _write(path: Path, owner: RunningProcess, *children: RunningProcess) -> None:
    document = {"owner": owner.__dict__, "children": [c.__dict__ for c in children]}
    path.write_text(json.dumps(document))


async def test_the_ledger_names_the_children_of_a_run_that_died(
    tmp_path: Path, sleeper: ChildProcess
) -> None:
    path = tmp_path / "children.json"
    assert RunLedger(path).previous().children == ()
    assert sleeper.process is not None
    running = RunningProcess.of("sleeper", sleeper.process.pid)
    exited = await asyncio.create_subprocess_exec(sys.executable, "-c", "")
    await exited.wait()
    dead = RunningProcess("turnout", exited.pid, 1)
    # The pid of the sleeper, reused by another process: not what the file names.
    reused = RunningProcess("envoy", running.pid, (running.started or 0) + 1)
    _write(path, dead, running, reused)

    previous = RunLedger(path).previous()
    assert previous.owner is None
    assert previous.children == (running,)

    await stop_processes(previous.children, grace=1)
    assert not running.alive()
    assert await asyncio.wait_for(sleeper.process.wait(), timeout=10) == -signal.SIGTERM


async def test_a_live_owner_keeps_its_children(tmp_path: Path, sleeper: ChildProcess) -> None:
    assert sleeper.process is not None
    owner = RunningProcess.of("turnout", sleeper.process.pid)
    path = tmp_path / "children.json"
    _write(path, owner, owner)
    previous = RunLedger(path).previous()
    assert previous.owner == owner
    assert previous.children == ()


async def test_a_run_records_its_children_and_forgets_them_on_a_clean_stop(
    tmp_path: Path, sleeper: ChildProcess
) -> None:
    ledger = RunLedger(tmp_path / "children.json")
    ledger.record([sleeper])
    document = json.loads(ledger.path.read_text())
    assert sleeper.process is not None
    assert [c["pid"] for c in document["children"]] == [sleeper.process.pid]
    ledger.remove()
    assert not ledger.path.exists()
