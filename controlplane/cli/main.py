"""The ``turnout`` command line."""

from __future__ import annotations

import asyncio
import json
from typing import Annotated, Any

import typer

from controlplane.bootstrap import XdsAddress, dump_bootstrap, render_bootstrap
from controlplane.logs import configure_logging
from controlplane.settings import get_settings

__all__ = ["app", "main"]

app = typer.Typer(
    name="turnout",
    help="Turnout: Envoy in front of model servers, steered over xDS.",
    no_args_is_help=True,
    add_completion=False,
)
db_app = typer.Typer(help="Database schema (Alembic migrations).", no_args_is_help=True)
envoy_app = typer.Typer(help="Envoy helpers.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(envoy_app, name="envoy")


def _fail(message: str) -> typer.Exit:
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    return typer.Exit(code=2)


@db_app.command("upgrade")
def db_upgrade(
    target: Annotated[str, typer.Argument(help="migration to reach")] = "head",
) -> None:
    """Apply migrations to TURNOUT_DATABASE_URL (SQLite file turnout.db by default)."""
    from controlplane.db.migrate import upgrade

    settings = get_settings()
    try:
        upgrade(settings.database_url, target)
    except Exception as exc:
        raise _fail(f"migration failed: {exc}") from exc
    typer.echo(f"database is at {target}")


@envoy_app.command("bootstrap")
def envoy_bootstrap(
    node_id: Annotated[str, typer.Option("--node-id", help="this Envoy's node id")],
    xds: Annotated[
        list[str] | None,
        typer.Option("--xds", help="xDS server host:port; repeat for every replica"),
    ] = None,
    admin_port: Annotated[int, typer.Option(help="Envoy admin port (on 127.0.0.1)")] = 9901,
    delta: Annotated[
        bool, typer.Option("--delta", help="incremental (delta) ADS instead of state-of-the-world")
    ] = False,
    zone: Annotated[
        str | None, typer.Option(help="this Envoy's zone; its endpoints come first")
    ] = None,
    output: Annotated[str, typer.Option(help="yaml or json")] = "yaml",
) -> None:
    """Print an Envoy bootstrap that points at the xDS server(s)."""
    settings = get_settings()
    try:
        addresses = (
            [XdsAddress.parse(a) for a in xds]
            if xds
            else [XdsAddress(settings.xds_host, settings.xds_port)]
        )
        bootstrap = render_bootstrap(
            node_id, addresses, admin_port=admin_port, delta=delta, zone=zone
        )
    except ValueError as exc:
        raise _fail(str(exc)) from exc
    if output == "json":
        typer.echo(json.dumps(bootstrap, indent=2))
    elif output == "yaml":
        typer.echo(dump_bootstrap(bootstrap), nl=False)
    else:
        raise _fail(f"--output must be yaml or json, not {output!r}")


@app.command("serve")
def serve() -> None:
    """Run the admin API and the xDS server (no Envoy, no model servers)."""
    from controlplane.cli.up import run_control_plane

    settings = get_settings()
    configure_logging(settings.log_level)
    asyncio.run(run_control_plane(settings))


@app.command("up")
def up(
    demo: Annotated[
        bool, typer.Option("--demo", help="also start two example model servers and a demo model")
    ] = False,
) -> None:
    """Run the API, the xDS server and a local Envoy until Ctrl-C or SIGTERM."""
    from controlplane.cli.up import run_mesh

    settings = get_settings()
    configure_logging(settings.log_level)
    raise typer.Exit(code=asyncio.run(run_mesh(settings, demo=demo)))


@app.command(
    "batcher",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    add_help_option=False,
)
def batcher(ctx: typer.Context) -> None:
    """Run a batcher beside one model-server replica, until Ctrl-C or SIGTERM.

    Flags: --upstream URL --listen HOST:PORT [--max-batch-size N --max-queue-delay-ms MS
    --max-queue N --slo-ms MS --max-in-flight N --disabled] [--control-plane URL --model M
    --model-version V]; `turnout batcher --help` lists them all.
    """
    from filters.batcher import run_batcher
    from filters.batcher.__main__ import build_config

    settings = get_settings()
    configure_logging(settings.log_level)
    key = settings.api_key.get_secret_value() if settings.api_key else None
    config = build_config(list(ctx.args), api_key=key, prog="turnout batcher")
    asyncio.run(run_batcher(config))


@app.command("proxy-status")
def proxy_status(
    api: Annotated[
        str | None, typer.Option(help="admin API base URL; by default from TURNOUT_API_*")
    ] = None,
) -> None:
    """Show each connected Envoy: per resource type SYNCED, STALE, NACKED or NOT SENT."""
    import httpx

    settings = get_settings()
    base = api or f"http://{settings.api_host}:{settings.api_port}"
    try:
        response = httpx.get(f"{base}/v1/proxies", timeout=10)
        response.raise_for_status()
    except httpx.HTTPError as exc:
        raise _fail(f"cannot read {base}/v1/proxies ({exc}); is `turnout serve` running?") from exc
    typer.echo(format_proxy_status(response.json()), nl=False)


def format_proxy_status(proxies: list[dict[str, Any]]) -> str:
    """Return a table of proxies and their per-type status, NACK errors below it."""
    columns = ("clusters", "endpoints", "listeners", "routes")
    rows = [("NODE", "XDS", "ZONE", *(c.upper() for c in columns))]
    errors: list[str] = []
    for proxy in proxies:
        statuses = []
        for column in columns:
            entry = proxy["types"][column]
            statuses.append(entry["status"])
            if entry["error"]:
                errors.append(f"{proxy['node_id']} {column}: {entry['error']}")
        rows.append((proxy["node_id"], proxy["xds"], proxy["zone"] or "-", *statuses))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    if len(rows) == 1:
        lines.append("(no proxies connected)")
    lines += [f"NACK {error}" for error in errors]
    return "\n".join(lines) + "\n"


def main() -> None:
    """Entry point of the ``turnout`` script."""
    app()


if __name__ == "__main__":
    main()
