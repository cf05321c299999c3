"""Database faults for tests: a throwaway Postgres the test may stop and restart,
and a TCP proxy in front of a database that can refuse connections or accept
them and never answer.

The machine's shared Postgres is never stopped: :class:`ThrowawayPostgres` runs
its own server (initdb into a temporary directory, on a free port).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Literal

POSTGRES_BIN = Path(os.environ.get("TURNOUT_TEST_POSTGRES_BIN", "/usr/lib/postgresql/15/bin"))

Mode = Literal["forward", "refuse", "blackhole"]


class ThrowawayPostgres:
    """A Postgres server of this test's own, on ``port``; trust auth, user postgres."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._root = Path(tempfile.mkdtemp(prefix="turnout-pg-"))
        self._data = self._root / "data"
        self._as_postgres = os.geteuid() == 0  # initdb refuses to run as root

    @staticmethod
    def missing() -> str | None:
        """Return why no throwaway Postgres can run here, or None."""
        for tool in ("initdb", "pg_ctl"):
            if not (POSTGRES_BIN / tool).exists():
                return f"no {POSTGRES_BIN / tool} (set TURNOUT_TEST_POSTGRES_BIN)"
        if os.geteuid() == 0 and shutil.which("runuser") is None:
            return "running as root without runuser"
        return None

    def url(self, database: str) -> str:
        """Return the SQLAlchemy URL of ``database`` on this server."""
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{database}"

    def _run(self, *args: str) -> None:
        command = [str(POSTGRES_BIN / args[0]), *args[1:]]
        if self._as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            raise RuntimeError(f"{args[0]} failed: {result.stdout}\n{result.stderr}")

    def init(self) -> None:
        """Create the cluster."""
        if self._as_postgres:
            shutil.chown(self._root, user="postgres")
        self._run("initdb", "-D", str(self._data), "-A", "trust", "-U", "postgres", "--no-sync")

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        options = (
            f"-p {self.port} -k {self._root} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c full_page_writes=off -c synchronous_commit=off"
        )
        self._run(
            "pg_ctl",
            "-D",
            str(self._data),
            "-o",
            options,
            "-l",
            str(self._root / "log"),
            "-w",
            "start",
        )

    def stop(self) -> None:
        """Stop the server (fast: open sessions are closed at once)."""
        self._run("pg_ctl", "-D", str(self._data), "-m", "fast", "-w", "stop")

    def restart(self) -> None:
        """Stop, then start the server on the same port."""
        self.stop()
        self.start()

    def remove(self) -> None:
        """Stop the server if it runs and delete its files."""
        with contextlib.suppress(RuntimeError):
            self.stop()
        shutil.rmtree(self._root, ignore_errors=True)


class TcpProxy:
    """A TCP proxy to ``127.0.0.1:target_port`` whose behaviour the test sets.

    ``forward``: relay both ways. ``refuse``: stop listening, so connections are
    refused, and drop open ones. ``blackhole``: accept connections and never
    answer, and stop relaying on open ones (a database that hangs).
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.mode: Mode = "forward"
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Listen on a free port (the same one again after :meth:`refuse`)."""
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def set_mode(self, mode: Mode) -> None:
        """Switch behaviour; connections that lived through a change are dropped
        when relaying resumes (they lost bytes)."""
        previous, self.mode = self.mode, mode
        if mode == "refuse":
            if self._server is not None:
                self._server.close()
                self._server = None
            self._drop_all()
        elif self._server is None:
            await self.start()
        if mode == "forward" and previous == "blackhole":
            self._drop_all()

    def _drop_all(self) -> None:
        for writer in list(self._writers):
            transport = writer.transport
            if not transport.is_closing():
                transport.abort()
        self._writers.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        if self.mode != "forward":
            await self._pump(reader, None)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self._writers.add(up_writer)
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pump(source, sink))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pump(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter | None) -> None:
        try:
            while chunk := await source.read(65536):
                if sink is not None and self.mode == "forward":
                    sink.write(chunk)
                    await sink.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            # Close, not abort: what the source sent last (an error message) arrives.
            if sink is not None and not sink.transport.is_closing():
                sink.close()

    async def close(self) -> None:
        """Stop listening and drop every connection."""
        if self._server is not None:
            self._server.close()
            self._server = None
        self._drop_all()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
