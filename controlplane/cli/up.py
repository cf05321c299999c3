"""``turnout serve`` and ``turnout up``: run the control plane, Envoy and the demo."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from pathlib import Path

import httpx
import typer

from controlplane.api.app import create_app
from controlplane.bootstrap import XdsAddress, dump_bootstrap, render_bootstrap
from controlplane.cli.admin import create_key_with
from controlplane.db.migrate import upgrade
from controlplane.domain.keys import Role
from controlplane.processes import (
    ChildProcess,
    RunLedger,
    envoy_binary,
    stop_processes,
    wait_for_port,
)
from controlplane.runtime import ControlPlane, SchemaNotReady
from controlplane.settings import Settings

__all__ = ["run_control_plane", "run_mesh"]

DEMO_MODEL = "demo"
BATCHED_MODEL = "demo-embed"
DEMO_VERSIONS = ("v1", "v2")
DEMO_WEIGHTS = {"v1": 90, "v2": 10}
RUN_DIR = Path(".turnout")
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
    """Run the whole local mesh until SIGINT or SIGTERM; return an exit code."""
    RUN_DIR.mkdir(exist_ok=True)  # noqa: ASYNC240  (once, before anything runs)
    ledger = await _take_over_run_dir()
    if ledger is None:
        return 1
    typer.echo("applying database migrations ...")
    await asyncio.to_thread(upgrade, settings.database_url)
    control_plane = ControlPlane(settings)
    children: list[ChildProcess] = []
    stop = _stop_event()
    try:
        await control_plane.start(api=create_app)
        api = f"http://{settings.api_host}:{control_plane.api_port}"
        typer.echo(f"admin API on {api} (docs at {api}/docs)")
        demo_ports = {v: settings.demo_base_port + i for i, v in enumerate(DEMO_VERSIONS)}
        if demo:
            children += await _start_demo_servers(demo_ports)
            ledger.record(children)
        children.append(await _start_envoy(settings, control_plane.xds_port))
        ledger.record(children)
        await wait_for_port(settings.listener_host, settings.listener_port, timeout=30)
        if demo:
            _, key = await create_key_with(
                control_plane.engine, "demo-admin", Role.ADMIN, actor="turnout-up"
            )
            typer.echo(
                "\nCreated an admin API key for this demo (stored only as a hash; "
                "shown once):\n"
                f"  export TURNOUT_KEY={key}\n"
                'Send it as:  -H "Authorization: Bearer $TURNOUT_KEY"'
            )
            await _register_demo(api, demo_ports, key)
            base = f"http://{settings.listener_host}:{settings.listener_port}"
            if batching:
                children += await _start_batched_demo(control_plane, settings, api, key)
                ledger.record(children)
                typer.echo(
                    f"\nModel '{BATCHED_MODEL}' (KServe v2) goes through a batcher:\n"
                    f"  curl -si {base}/models/{BATCHED_MODEL}/v2/models/{BATCHED_MODEL}/infer "
                    "-H 'content-type: application/json' "
                    '-d \'{"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", '
                    '"data": [1, 2]}]}\''
                )
            typer.echo(
                "\nThe demo mesh is up: model 'demo', versions v1 (90%) and v2 (10%).\n"
                f"Try:  curl -i {base}/models/{DEMO_MODEL}/predict -d '{{\"x\": 1}}'\n"
                f"Shift traffic:  curl -X PUT {api}/v1/models/{DEMO_MODEL}/traffic "
                '-H "Authorization: Bearer $TURNOUT_KEY" '
                '-H \'content-type: application/json\' -d \'{"weights": {"v1": 0, "v2": 100}}\'\n'
            )
        typer.echo(
            f"Envoy serves on {settings.listener_host}:{settings.listener_port}. "
            "Press Ctrl-C to stop."
        )
        await _wait_until_stopped(stop, children)
        return 0
    except (SchemaNotReady, TimeoutError, FileNotFoundError, OSError) as exc:
        typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
        return 1
    finally:
        typer.echo("stopping ...")
        for child in reversed(children):
            await child.stop()
        ledger.remove()
        await control_plane.stop()
        typer.echo("stopped")


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
        for waiter in waiters:
            waiter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await waiter


async def _start_envoy(settings: Settings, xds_port: int) -> ChildProcess:
    bootstrap = render_bootstrap(
        "turnout-local",
        [XdsAddress(settings.xds_host, xds_port)],
        admin_port=settings.envoy_admin_port,
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
        ],
        log_path=RUN_DIR / "envoy.log",
    )
    await child.start()
    typer.echo(f"started Envoy (log: {child.log_path})")
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
    _, viewer_key = await create_key_with(
        control_plane.engine, "demo-batcher", Role.VIEWER, actor="turnout-up"
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
        env={"TURNOUT_API_KEY": viewer_key},
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


async def _register_demo(api: str, ports: dict[str, int], key: str) -> None:
    """Create the demo model through the admin API, with admin ``key``. When it exists
    already, point its versions at this run's servers and keep its traffic split."""
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
            typer.echo("demo model already registered; keeping its traffic split")
