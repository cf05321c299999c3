"""``turnout serve`` and ``turnout up``: run the control plane, Envoy and the demo."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from pathlib import Path

import httpx
import typer

from controlplane.api.app import create_app
from controlplane.bootstrap import XdsAddress, dump_bootstrap, render_bootstrap
from controlplane.cli.admin import reuse_or_create_key
from controlplane.cli.errors import describe_error
from controlplane.cli.ports import FAULTY_OFFSET, mesh_ports, port_problem
from controlplane.db.migrate import upgrade
from controlplane.domain.keys import Role
from controlplane.logs import JsonFormatter, configure_logging
from controlplane.processes import (
    ChildProcess,
    RunLedger,
    envoy_binary,
    stop_processes,
    wait_for_port,
)
from controlplane.runtime import ControlPlane, SchemaNotReady
from controlplane.settings import Settings
from controlplane.tasks import cancel_and_wait

__all__ = ["RUN_DIR", "log_to_file", "run_control_plane", "run_mesh"]

DEMO_MODEL = "demo"
BATCHED_MODEL = "demo-embed"
DEMO_VERSIONS = ("v1", "v2")
DEMO_WEIGHTS = {"v1": 90, "v2": 10}
# A deliberately faulty version for the canary walkthrough: every tenth call fails
# and each answers 150 ms late. Registered with weight 0.
DEMO_FAULTY = "v3"
DEMO_FAULTY_ARGS = ("--fail-every", "10", "--delay-ms", "150")
RUN_DIR = Path(".turnout")
# The demo's keys, kept between runs so a restart does not mint another live key.
DEMO_ADMIN_KEY_FILE = "demo-admin.key"
DEMO_BATCHER_KEY_FILE = "demo-batcher.key"
ACCESS_LOG = RUN_DIR / "access.log"


def log_to_file(level: str, path: Path) -> None:
    """Send the control plane's JSON log lines to ``path`` instead of stderr."""
    configure_logging(level)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(JsonFormatter())
    logging.getLogger().handlers[:] = [handler]


def read_key_file(path: Path) -> str | None:
    """Return the key stored at ``path``, or None when there is none."""
    try:
        return path.read_text().strip() or None
    except FileNotFoundError:
        return None


def write_key_file(path: Path, key: str) -> None:
    """Store ``key`` at ``path``, readable and writable by this user only."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        os.fchmod(file.fileno(), 0o600)  # an older file may have had a wider mode
        file.write(key + "\n")


async def _demo_key(
    control_plane: ControlPlane, name: str, role: Role, file_name: str
) -> tuple[str, bool]:
    """Return the demo key ``name`` and whether it was reused: the one stored in
    ``.turnout/`` while it still works, else a new one that replaces it (any other
    live key of that name made by ``turnout up`` is revoked)."""
    path = RUN_DIR / file_name
    stored = await asyncio.to_thread(read_key_file, path)
    key, reused = await reuse_or_create_key(
        control_plane.engine, name, role, stored, actor="turnout-up"
    )
    if not reused:
        await asyncio.to_thread(write_key_file, path, key)
    return key, reused


# Names the children of the running `turnout up`, for the next run to find.
LEDGER = RUN_DIR / "children.json"


def _stop_event() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def run_control_plane(settings: Settings) -> None:
    """Serve the API and xDS until SIGINT or SIGTERM."""
    control_plane = ControlPlane(settings)
    try:
        await control_plane.start(api=create_app)
    except SchemaNotReady as exc:
        typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
        await control_plane.stop()
        raise typer.Exit(code=2) from exc
    typer.echo(
        f"admin API on http://{settings.api_host}:{control_plane.api_port}, "
        f"xDS on {settings.xds_host}:{control_plane.xds_port}"
    )
    try:
        await _stop_event().wait()
    finally:
        await control_plane.stop()


async def run_mesh(settings: Settings, *, demo: bool, batching: bool = False) -> int:
    """Run the whole local mesh until SIGINT or SIGTERM; return an exit code.

    Progress goes to stdout as it happens; once everything is up, one block says
    where the API and Envoy are, which key to export and what to try."""
    RUN_DIR.mkdir(exist_ok=True)  # noqa: ASYNC240  (once, before anything runs)
    settings = _with_local_access_log(settings)
    ledger = await _take_over_run_dir()
    if ledger is None:
        return 2
    # After the take-over: what a dead run left behind held some of these ports.
    problem = port_problem(mesh_ports(settings, demo=demo, batching=batching))
    if problem:
        typer.secho(f"error: {problem}", err=True, fg=typer.colors.RED)
        ledger.remove()
        return 2
    typer.echo("applying database migrations ...")
    try:
        await asyncio.to_thread(upgrade, settings.database_url)
    except Exception as exc:
        typer.secho(f"error: migration failed: {describe_error(exc)}", err=True, fg="red")
        return 1
    control_plane = ControlPlane(settings)
    children: list[ChildProcess] = []
    stop = _stop_event()
    try:
        await control_plane.start(api=create_app)
        api = f"http://{settings.api_host}:{control_plane.api_port}"
        typer.echo(f"started the admin API on {api} and xDS on port {control_plane.xds_port}")
        demo_ports = {v: settings.demo_base_port + i for i, v in enumerate(DEMO_VERSIONS)}
        demo_ports[DEMO_FAULTY] = settings.demo_base_port + FAULTY_OFFSET
        if demo:
            children += await _start_demo_servers(demo_ports)
            ledger.record(children)
        children.append(await _start_envoy(settings, control_plane.xds_port))
        ledger.record(children)
        await wait_for_port(settings.listener_host, settings.listener_port, timeout=30)
        base = f"http://{settings.listener_host}:{settings.listener_port}"
        key: str | None = None
        reused = False
        weights: dict[str, int] = {}
        if demo:
            key, reused = await _demo_key(
                control_plane, "demo-admin", Role.ADMIN, DEMO_ADMIN_KEY_FILE
            )
            weights = await _register_demo(api, demo_ports, key)
            if batching:
                children += await _start_batched_demo(control_plane, settings, api, key)
                ledger.record(children)
        typer.echo(
            _start_block(
                settings, api, base, control_plane.xds_port, key, reused, weights, batching
            )
        )
        await _wait_until_stopped(stop, children)
        return 0
    except (SchemaNotReady, TimeoutError, OSError, httpx.HTTPError) as exc:
        typer.secho(f"error: {describe_error(exc)}", err=True, fg=typer.colors.RED)
        typer.echo(f"  the logs are in {RUN_DIR}/", err=True)
        return 1
    finally:
        typer.echo("stopping ...")
        for child in reversed(children):
            await child.stop()
        ledger.remove()
        await control_plane.stop()
        typer.echo("stopped")


def _with_local_access_log(settings: Settings) -> Settings:
    """Return ``settings`` with Envoy's access log in ``.turnout/access.log`` (as an
    absolute path: Envoy opens it), unless ``TURNOUT_ACCESS_LOG_PATH`` says otherwise."""
    if "access_log_path" in settings.model_fields_set:
        return settings
    return settings.model_copy(update={"access_log_path": str(ACCESS_LOG.absolute())})


def _start_block(
    settings: Settings,
    api: str,
    base: str,
    xds_port: int,
    key: str | None,
    reused: bool,
    weights: dict[str, int],
    batching: bool,
) -> str:
    """Return what ``turnout up`` prints once everything is up, apart from the logs."""
    lines = [
        "",
        "=" * 72,
        "Turnout is up.",
        f"  admin API   {api}   (API docs: {api}/docs)",
        f"  console     {api}/console   (sign in with the admin API key)",
        f"  Envoy       {base}   (its admin: http://127.0.0.1:{settings.envoy_admin_port})",
        f"  xDS         {settings.xds_host}:{xds_port}",
        f"  logs        {RUN_DIR}/",
    ]
    if settings.access_log_path:
        lines.append(f"  access log  {settings.access_log_path}")
    if weights:
        split = ", ".join(f"{version} {weight}%" for version, weight in sorted(weights.items()))
        lines.append(f"  model       '{DEMO_MODEL}': {split}")
    if batching:
        lines.append(f"  model       '{BATCHED_MODEL}' (KServe v2), through a batcher")
    if key is not None:
        kept = f"{RUN_DIR / DEMO_ADMIN_KEY_FILE}, readable only by you"
        origin = "the same key as last time" if reused else "a new key"
        lines += [
            "",
            f"Admin API key: {origin}, kept in {kept}.",
            "In the terminal you use for curl:",
            f"  export TURNOUT_API_KEY={key}",
            "",
            "Try:",
            f"  curl -i {base}/models/{DEMO_MODEL}/predict -d '{{\"x\": 1}}'",
            f'  curl -s {api}/v1/models/{DEMO_MODEL}/traffic -H "Authorization: Bearer '
            '$TURNOUT_API_KEY"',
        ]
        if batching:
            lines.append(
                f"  curl -si {base}/models/{BATCHED_MODEL}/v2/models/{BATCHED_MODEL}/infer "
                "-H 'content-type: application/json' "
                '-d \'{"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", '
                '"data": [1, 2]}]}\''
            )
    else:
        lines += [
            "",
            "An admin API key: `turnout keys create --role admin --name NAME`, then",
            "  export TURNOUT_API_KEY=tk_...",
        ]
    lines += ["", "Press Ctrl-C to stop.", "=" * 72]
    return "\n".join(lines)


async def _take_over_run_dir() -> RunLedger | None:
    """Claim the run directory: stop what a previous run that died left running
    (its children hold the ports), or return None when a live `turnout up` owns it."""
    ledger = RunLedger(LEDGER)
    previous = ledger.previous()
    if previous.owner is not None:
        typer.secho(
            f"error: another `turnout up` (pid {previous.owner.pid}) runs in this "
            f"directory; stop it first: kill {previous.owner.pid}",
            err=True,
            fg=typer.colors.RED,
        )
        return None
    if previous.children:
        named = ", ".join(f"{c.name} (pid {c.pid})" for c in previous.children)
        typer.echo(f"stopping what a previous `turnout up` left running: {named}")
        await stop_processes(previous.children)
    ledger.record([])
    return ledger


async def _wait_until_stopped(stop: asyncio.Event, children: list[ChildProcess]) -> None:
    async def child_exit(child: ChildProcess) -> None:
        assert child.process is not None
        code = await child.process.wait()
        typer.secho(
            f"{child.name} exited with code {code}; see {child.log_path}",
            err=True,
            fg=typer.colors.RED,
        )

    waiters = [asyncio.create_task(stop.wait())] + [
        asyncio.create_task(child_exit(c)) for c in children
    ]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        await cancel_and_wait(*waiters)


async def _start_envoy(settings: Settings, xds_port: int) -> ChildProcess:
    bootstrap = render_bootstrap(
        "turnout-local",
        [XdsAddress(settings.xds_host, xds_port)],
        admin_port=settings.envoy_admin_port,
        stats_flush_interval_s=settings.stats_flush_interval_s,
    )
    path = RUN_DIR / "envoy-bootstrap.yaml"
    path.write_text(dump_bootstrap(bootstrap))
    child = ChildProcess(
        "envoy",
        [
            envoy_binary(settings.envoy_binary),
            "-c",
            str(path),
            "--disable-hot-restart",
            "--log-level",
            "warn",
            # Access log lines reach the file within a second (Envoy's default: 10 s).
            "--file-flush-interval-msec",
            "1000",
        ],
        log_path=RUN_DIR / "envoy.log",
    )
    await child.start()
    typer.echo(f"started Envoy on {settings.listener_host}:{settings.listener_port}")
    return child


async def _start_demo_servers(ports: dict[str, int]) -> list[ChildProcess]:
    children = []
    for version, port in ports.items():
        child = ChildProcess(
            f"model server {version}",
            [
                sys.executable,
                "-m",
                "examples.model_server",
                "--version",
                version,
                "--port",
                str(port),
                *(DEMO_FAULTY_ARGS if version == DEMO_FAULTY else ()),
            ],
            log_path=RUN_DIR / f"model-{version}.log",
        )
        await child.start()
        children.append(child)
    for port in ports.values():
        await wait_for_port("127.0.0.1", port, timeout=15)
    typer.echo(f"started example model servers on ports {sorted(ports.values())}")
    return children


async def _start_batched_demo(
    control_plane: ControlPlane, settings: Settings, api: str, admin_key: str
) -> list[ChildProcess]:
    """Start a synthetic (batch-aware) model server and a batcher beside it, and
    register them as model ``demo-embed`` with batching on."""
    server_port = settings.demo_base_port + len(DEMO_VERSIONS)
    batcher_port = server_port + 1
    viewer_key, _ = await _demo_key(
        control_plane, "demo-batcher", Role.VIEWER, DEMO_BATCHER_KEY_FILE
    )
    server = ChildProcess(
        "synthetic model server",
        [
            sys.executable,
            "-m",
            "examples.model_server",
            "--mode",
            "synthetic",
            "--version",
            "v1",
            "--port",
            str(server_port),
        ],
        log_path=RUN_DIR / "model-synthetic.log",
    )
    batcher = ChildProcess(
        "batcher",
        [
            sys.executable,
            "-m",
            "filters.batcher",
            "--upstream",
            f"http://127.0.0.1:{server_port}",
            "--listen",
            f"127.0.0.1:{batcher_port}",
            "--control-plane",
            api,
            "--model",
            BATCHED_MODEL,
            "--model-version",
            "v1",
            "--disabled",
        ],
        log_path=RUN_DIR / "batcher.log",
        env={"TURNOUT_API_KEY": viewer_key, **_tracing_env(settings)},
    )
    await server.start()
    await batcher.start()
    for port in (server_port, batcher_port):
        await wait_for_port("127.0.0.1", port, timeout=15)
    headers = {"authorization": f"Bearer {admin_key}"}
    async with httpx.AsyncClient(base_url=api, timeout=10, headers=headers) as client:
        response = await client.post(
            "/v1/models", json={"name": BATCHED_MODEL, "protocol": "kserve-v2"}
        )
        if response.status_code != 409:
            response.raise_for_status()
        endpoints = [{"address": "127.0.0.1", "port": server_port, "batcher_port": batcher_port}]
        response = await client.post(
            f"/v1/models/{BATCHED_MODEL}/versions", json={"version": "v1", "endpoints": endpoints}
        )
        if response.status_code == 409:
            response = await client.patch(
                f"/v1/models/{BATCHED_MODEL}/versions/v1", json={"endpoints": endpoints}
            )
        response.raise_for_status()
        response = await client.put(
            f"/v1/models/{BATCHED_MODEL}/versions/v1/policy", json={"batching": {"enabled": True}}
        )
        response.raise_for_status()
    typer.echo(f"started a synthetic model server on {server_port}, its batcher on {batcher_port}")
    return [server, batcher]


async def _register_demo(api: str, ports: dict[str, int], key: str) -> dict[str, int]:
    """Create the demo model through the admin API, with admin ``key``. When it exists
    already, point its versions at this run's servers and keep its traffic split.
    Return the split the model has now."""
    headers = {"authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=api, timeout=10, headers=headers) as client:
        response = await client.post("/v1/models", json={"name": DEMO_MODEL, "protocol": "http"})
        created = response.status_code != 409
        if created:
            response.raise_for_status()
        for version, port in ports.items():
            endpoints = [{"address": "127.0.0.1", "port": port}]
            response = await client.post(
                f"/v1/models/{DEMO_MODEL}/versions",
                json={"version": version, "endpoints": endpoints},
            )
            if response.status_code == 409:
                response = await client.patch(
                    f"/v1/models/{DEMO_MODEL}/versions/{version}", json={"endpoints": endpoints}
                )
            response.raise_for_status()
        if created:
            response = await client.put(
                f"/v1/models/{DEMO_MODEL}/traffic", json={"weights": DEMO_WEIGHTS}
            )
            response.raise_for_status()
        else:
            typer.echo("the demo model exists already: keeping its traffic split")
        response = await client.get(f"/v1/models/{DEMO_MODEL}/traffic")
        response.raise_for_status()
        weights: dict[str, int] = response.json()["weights"]
        return weights


def _tracing_env(settings: Settings) -> dict[str, str]:
    """The environment that makes a batcher trace like the control plane."""
    if settings.otlp_endpoint is None:
        return {}
    return {
        "TURNOUT_OTLP_ENDPOINT": settings.otlp_endpoint,
        "TURNOUT_TRACE_SAMPLING": str(settings.trace_sampling),
    }
