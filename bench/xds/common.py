"""Shared pieces of the xDS benchmarks: statistics, machine facts, result files,
a control plane in its own process, generated state and a fleet of real Envoys."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import math
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import date
from importlib import metadata
from pathlib import Path
from typing import Any

import httpx

from controlplane.bootstrap import XdsAddress, dump_bootstrap, render_bootstrap
from controlplane.domain.state import DesiredState, EndpointSpec, ModelSpec, VersionSpec
from controlplane.processes import ChildProcess, envoy_binary, wait_for_port

__all__ = [
    "RESULTS",
    "ROOT",
    "ControlPlaneProcess",
    "EnvoyFleet",
    "free_port",
    "generate_state",
    "machine",
    "print_setup",
    "ratios",
    "rss_kb",
    "seed_database",
    "summarize",
    "write_result",
]

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench" / "results"
VENV_BIN = Path(sys.executable).parent


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of ``values``."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def summarize(values: Sequence[float], digits: int = 2) -> dict[str, float | int]:
    """Return n, min, p50, p99, max and mean of ``values``, rounded."""
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "min": round(min(values), digits),
        "p50": round(percentile(values, 50), digits),
        "p99": round(percentile(values, 99), digits),
        "max": round(max(values), digits),
        "mean": round(sum(values) / len(values), digits),
    }


def ratios(values: Sequence[float]) -> list[float | None]:
    """Ratio of each value to the one before it (growth between successive sizes)."""
    return [round(b / a, 2) if a else None for a, b in itertools.pairwise(values)]


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "absent"


def machine() -> dict[str, Any]:
    """Facts about where the benchmark ran: cores, memory, load, versions."""
    envoy = "absent"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(
            [envoy_binary(), "--version"], capture_output=True, text=True, timeout=10
        ).stdout
        envoy = out.strip().split("version:")[-1].strip()
    mem_kb = 0
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    return {
        "date": date.today().isoformat(),
        "nproc": os.cpu_count(),
        "affinity": sorted(os.sched_getaffinity(0)),
        "memory_gib": round(mem_kb / 1024 / 1024, 1),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        "platform": platform.platform(),
        "python": platform.python_version(),
        "envoy": envoy,
        "grpcio": _version("grpcio"),
        "protobuf": _version("protobuf"),
        "pinning": "none (2 shared cores; every process floats)",
    }


def print_setup(title: str, setup: dict[str, Any], host: dict[str, Any]) -> None:
    """Print what is measured and where, before any figure."""
    print(f"== {title}")
    for key, value in setup.items():
        print(f"   {key}: {value}")
    print(
        f"   machine: nproc={host['nproc']} mem={host['memory_gib']}GiB "
        f"load={host['loadavg_at_start']} pinning={host['pinning']}"
    )
    print(
        f"   versions: python {host['python']}, envoy {host['envoy']}, "
        f"grpcio {host['grpcio']}, protobuf {host['protobuf']}"
    )


def write_result(name: str, payload: dict[str, Any]) -> Path:
    """Write ``bench/results/xds-<name>.json`` and return its path."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"xds-{name}.json"
    path.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")
    return path


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rss_kb(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak) of ``pid`` in KiB, from /proc/PID/status."""
    fields: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0])
    return fields


# -- generated desired state ----------------------------------------------------------


def model_name(i: int) -> str:
    """The name of generated model ``i``."""
    return f"model-{i:05d}"


def endpoint_address(model: int, version: int, endpoint: int) -> tuple[str, int]:
    """A distinct (address, port) for each generated endpoint."""
    return f"10.{model // 250}.{model % 250}.{version * 16 + endpoint}", 8000 + endpoint


def generate_state(models: int, versions: int, endpoints: int, revision: int = 1) -> DesiredState:
    """``models`` x ``versions`` x ``endpoints``, the first two versions splitting 90/10."""
    specs = []
    for m in range(models):
        version_specs = tuple(
            VersionSpec(
                name=f"v{v + 1}",
                endpoints=tuple(
                    EndpointSpec(*endpoint_address(m, v, e), zone=None, accelerator="gpu")
                    for e in range(endpoints)
                ),
            )
            for v in range(versions)
        )
        weights = (("v1", 90), ("v2", 10)) if versions > 1 else (("v1", 100),)
        specs.append(
            ModelSpec(name=model_name(m), protocol="http", versions=version_specs, weights=weights)
        )
    return DesiredState(revision=revision, models=tuple(specs))


def _seed_sync(database_url: str, models: int, versions: int, endpoints: int) -> None:
    """Migrate and fill the database with generated state in one transaction."""
    from controlplane.db.migrate import upgrade

    upgrade(database_url)
    if models:
        asyncio.run(_seed(database_url, models, versions, endpoints))


async def _seed(database_url: str, models: int, versions: int, endpoints: int) -> None:
    from controlplane.db.engine import create_engine, create_sessionmaker
    from controlplane.db.models import Endpoint, Model, ModelVersion, TrafficSplit
    from controlplane.db.revisions import RevisionRepository
    from controlplane.db.state import load_models

    engine = create_engine(database_url)
    try:
        async with create_sessionmaker(engine)() as session, session.begin():
            state = generate_state(models, versions, endpoints)
            for spec in state.models:
                model = Model(name=spec.name, protocol=spec.protocol)
                session.add(model)
                await session.flush()
                rows = {}
                for version in spec.versions:
                    row = ModelVersion(
                        model_id=model.id,
                        name=version.name,
                        endpoints=[
                            Endpoint(
                                address=e.address,
                                port=e.port,
                                zone=e.zone,
                                accelerator=e.accelerator,
                                weight=e.weight,
                            )
                            for e in version.endpoints
                        ],
                    )
                    session.add(row)
                    rows[version.name] = row
                await session.flush()
                weights = dict(spec.weights)
                for name, row in rows.items():
                    weight = weights.get(name, 0)
                    session.add(TrafficSplit(model_id=model.id, version_id=row.id, weight=weight))
            await session.flush()
            stored = {spec.name: spec for spec in await load_models(session)}
            await RevisionRepository(session).bump(
                actor="bench", action="seed", request_id=None, models=stored, access=((), None)
            )
    finally:
        await engine.dispose()


async def seed_database(database_url: str, models: int, versions: int, endpoints: int) -> None:
    """Migrate ``database_url`` and fill it with generated state (off the event loop)."""
    await asyncio.to_thread(_seed_sync, database_url, models, versions, endpoints)


# -- the control plane in its own process ----------------------------------------------


class ControlPlaneProcess:
    """``turnout serve`` on a fresh migrated SQLite database, in its own process."""

    def __init__(
        self,
        workdir: Path,
        *,
        listener_port: int,
        poll_interval_s: float = 2.0,
        source: Path | None = None,
        ports: tuple[int, int] | None = None,
    ) -> None:
        """``source``: a checkout whose ``controlplane`` to run instead of this one's
        (another git revision, for before/after); ``ports``: (API, xDS) to bind, as a
        restarted control plane does."""
        self.workdir = workdir
        self.database_url = f"sqlite+aiosqlite:///{workdir / 'turnout.db'}"
        self.api_port, self.xds_port = ports if ports is not None else (free_port(), free_port())
        self.source = source
        self.listener_port = listener_port
        self.poll_interval_s = poll_interval_s
        self.api_url = f"http://127.0.0.1:{self.api_port}"
        self.log_path = workdir / "controlplane.log"
        self._process: asyncio.subprocess.Process | None = None
        self.headers: dict[str, str] = {}

    @property
    def pid(self) -> int:
        """The control plane's process id."""
        assert self._process is not None
        return self._process.pid

    async def start(self, timeout: float = 120.0) -> None:
        """Start it and wait until /readyz says the state is loaded; ``headers`` then
        carry an admin key for the admin API."""
        from controlplane.cli.admin import create_key
        from controlplane.db.migrate import upgrade
        from controlplane.domain.keys import Role

        await asyncio.to_thread(upgrade, self.database_url)
        _row, key = await create_key(self.database_url, "bench", Role.ADMIN)
        self.headers = {"authorization": f"Bearer {key}"}
        env = {
            **os.environ,
            "TURNOUT_DATABASE_URL": self.database_url,
            "TURNOUT_API_PORT": str(self.api_port),
            "TURNOUT_XDS_PORT": str(self.xds_port),
            "TURNOUT_LISTENER_PORT": str(self.listener_port),
            # Several benchmark Envoys on this host share the one listener port.
            "TURNOUT_LISTENER_REUSE_PORT": "true",
            "TURNOUT_POLL_INTERVAL_S": str(self.poll_interval_s),
            "TURNOUT_LOG_LEVEL": "WARNING",
            "PYTHONUNBUFFERED": "1",
        }
        if self.source is not None:
            env["PYTHONPATH"] = str(self.source)
        log = self.log_path.open("ab")
        try:
            self._process = await asyncio.create_subprocess_exec(
                str(VENV_BIN / "turnout"),
                "serve",
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient(timeout=5) as client:
            while True:
                if self._process.returncode is not None:
                    raise RuntimeError(f"turnout serve exited: {self.log_path.read_text()[-2000:]}")
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(f"{self.api_url}/readyz")).status_code == 200:
                        return
                if time.monotonic() > deadline:
                    raise TimeoutError("the control plane did not become ready")
                await asyncio.sleep(0.1)

    async def stop(self) -> None:
        """SIGTERM, then SIGKILL after 10 s."""
        if self._process is None or self._process.returncode is not None:
            return
        self._process.terminate()
        try:
            await asyncio.wait_for(self._process.wait(), 10)
        except TimeoutError:
            self._process.kill()
            await self._process.wait()


# -- real Envoys ------------------------------------------------------------------------


class EnvoyFleet:
    """N real Envoys bootstrapped to one xDS server, each with its own admin port.

    They all receive the same Listener (one port); Envoy binds listeners with
    SO_REUSEPORT on Linux by default, so they share it.
    """

    def __init__(self, count: int, xds_port: int, workdir: Path, *, delta: bool = False) -> None:
        self.workdir = workdir
        self.admin_ports = [free_port() for _ in range(count)]
        self.node_ids = [f"bench-{i:03d}" for i in range(count)]
        self._children: list[ChildProcess] = []
        for node_id, admin_port in zip(self.node_ids, self.admin_ports, strict=True):
            bootstrap = render_bootstrap(
                node_id, [XdsAddress("127.0.0.1", xds_port)], admin_port=admin_port, delta=delta
            )
            path = workdir / f"envoy-{node_id}.yaml"
            path.write_text(dump_bootstrap(bootstrap))
            self._children.append(
                ChildProcess(
                    node_id,
                    [
                        envoy_binary(),
                        "-c",
                        str(path),
                        "--disable-hot-restart",
                        "--concurrency",
                        "1",
                        "--log-level",
                        "warn",
                    ],
                    log_path=workdir / f"envoy-{node_id}.log",
                )
            )

    @property
    def pids(self) -> list[int]:
        """Process ids of the running Envoys."""
        return [c.process.pid for c in self._children if c.process is not None]

    async def start(self, timeout: float = 60.0) -> None:
        """Start every Envoy and wait for each admin port."""
        for child in self._children:
            await child.start()
        for port in self.admin_ports:
            await wait_for_port("127.0.0.1", port, timeout=timeout)

    async def stop(self) -> None:
        """Stop every Envoy."""
        await asyncio.gather(*(c.stop(grace=5) for c in self._children))


def temp_workdir(prefix: str) -> tempfile.TemporaryDirectory[str]:
    """A temporary directory for one benchmark run (databases, bootstraps, logs)."""
    return tempfile.TemporaryDirectory(prefix=prefix)


def remove_tree(path: Path) -> None:
    """Remove ``path`` if it exists."""
    shutil.rmtree(path, ignore_errors=True)
