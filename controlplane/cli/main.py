"""The ``turnout`` command line."""

from __future__ import annotations

import asyncio
import json
from typing import Annotated

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
    output: Annotated[str, typer.Option(help="yaml or json")] = "yaml",
    zone: Annotated[
        str | None,
        typer.Option(help="the zone this Envoy runs in: its replicas there are preferred"),
    ] = None,
) -> None:
    """Print an Envoy bootstrap that points at the xDS server(s)."""
    settings = get_settings()
    try:
        addresses = (
            [XdsAddress.parse(a) for a in xds]
            if xds
            else [XdsAddress(settings.xds_host, settings.xds_port)]
        )
        bootstrap = render_bootstrap(node_id, addresses, admin_port=admin_port, zone=zone)
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


def main() -> None:
    """Entry point of the ``turnout`` script."""
    app()


if __name__ == "__main__":
    main()
