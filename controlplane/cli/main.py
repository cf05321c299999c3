"""The ``turnout`` command line."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
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
keys_app = typer.Typer(
    help="Admin API keys, straight on the database (works with the API down).",
    no_args_is_help=True,
)
audit_app = typer.Typer(help="The audit log.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(envoy_app, name="envoy")
app.add_typer(keys_app, name="keys")
app.add_typer(audit_app, name="audit")


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


def _database_error(exc: Exception) -> typer.Exit:
    return _fail(f"database error (is it migrated? run `turnout db upgrade`): {exc}")


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Option("--name", help="who or what holds the key")],
    role: Annotated[str, typer.Option("--role", help="viewer, operator, admin or auditor")],
) -> None:
    """Create an API key and print it (it is stored only as SHA-256: copy it now)."""
    from controlplane.api.schemas import NAME_PATTERN
    from controlplane.cli.admin import create_key
    from controlplane.domain.keys import Role

    if role not in {r.value for r in Role}:
        raise _fail(f"--role must be one of {', '.join(r.value for r in Role)}, not {role!r}")
    if not re.match(NAME_PATTERN, name):
        raise _fail("--name must be 1-63 letters, digits, '.', '_' or '-'")
    try:
        row, key = asyncio.run(create_key(get_settings().database_url, name, Role(role)))
    except Exception as exc:
        raise _database_error(exc) from exc
    typer.echo(key)
    typer.echo(f"key {row.id} ({row.name}, {row.role}); shown once: store it now", err=True)


@keys_app.command("list")
def keys_list() -> None:
    """List keys (id, name, role, prefix, created, revoked), never the keys themselves."""
    from controlplane.cli.admin import list_keys

    try:
        rows = asyncio.run(list_keys(get_settings().database_url))
    except Exception as exc:
        raise _database_error(exc) from exc
    for row in rows:
        revoked = row.revoked_at.isoformat() if row.revoked_at else "-"
        typer.echo(
            f"{row.id}\t{row.name}\t{row.role}\t{row.prefix}...\t"
            f"{row.created_at.isoformat()}\t{revoked}"
        )


@keys_app.command("revoke")
def keys_revoke(key_id: Annotated[int, typer.Argument(help="the key's id")]) -> None:
    """Revoke a key: it stops working at once."""
    from controlplane.cli.admin import revoke_key
    from controlplane.domain.errors import NotFound

    try:
        asyncio.run(revoke_key(get_settings().database_url, key_id))
    except NotFound as exc:
        raise _fail(str(exc.detail)) from exc
    except Exception as exc:
        raise _database_error(exc) from exc
    typer.echo(f"key {key_id} revoked")


@audit_app.command("verify")
def audit_verify(
    checkpoint: Annotated[
        Path | None,
        typer.Option(
            "--checkpoint",
            help="also check the log against the signed checkpoints in this file "
            "(detects a wiped log, a cut tail, a rewritten history)",
            exists=True,
            dir_okay=False,
        ),
    ] = None,
) -> None:
    """Recompute the audit log's keyed hash chain; exit 1 at the first broken
    position or the first checkpoint the log contradicts."""
    from controlplane.cli.admin import verify_audit
    from controlplane.services.audit import AuditKeyMissing

    try:
        report = asyncio.run(verify_audit(get_settings().database_url, checkpoint))
    except AuditKeyMissing as exc:
        raise _fail(str(exc)) from exc
    except Exception as exc:
        raise _database_error(exc) from exc
    if report.broken is not None:
        typer.secho(
            f"BROKEN at position {report.broken.position} (event id {report.broken.event_id}): "
            f"{report.broken.reason}; {report.checked} events before it verify",
            fg=typer.colors.RED,
        )
        raise typer.Exit(code=1)
    for problem in report.checkpoint_problems:
        typer.secho(
            f"CHECKPOINT line {problem.line} (event id {problem.checkpoint_id}): {problem.reason}",
            fg=typer.colors.RED,
        )
    if report.checkpoint_problems:
        raise typer.Exit(code=1)
    against = f", consistent with {report.checkpoints_checked} checkpoints" if checkpoint else ""
    typer.echo(f"ok: {report.checked} events, chain intact up to event {report.head_id}{against}")


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
    batching: Annotated[
        bool,
        typer.Option(
            "--batching",
            help="with --demo: also a batch-aware model server behind a batcher (demo-embed)",
        ),
    ] = False,
) -> None:
    """Run the API, the xDS server and a local Envoy until Ctrl-C or SIGTERM."""
    from controlplane.cli.up import run_mesh

    if batching and not demo:
        raise _fail("--batching goes with --demo")
    settings = get_settings()
    configure_logging(settings.log_level)
    raise typer.Exit(code=asyncio.run(run_mesh(settings, demo=demo, batching=batching)))


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
    """Show each connected Envoy: per resource type SYNCED, STALE, NACKED or NOT SENT.

    Needs a key with the read permission in TURNOUT_API_KEY."""
    import httpx

    settings = get_settings()
    base = api or f"http://{settings.api_host}:{settings.api_port}"
    headers = (
        {"authorization": f"Bearer {settings.api_key.get_secret_value()}"}
        if settings.api_key
        else {}
    )
    try:
        response = httpx.get(f"{base}/v1/proxies", headers=headers, timeout=10)
    except httpx.HTTPError as exc:
        raise _fail(f"cannot read {base}/v1/proxies ({exc}); is `turnout serve` running?") from exc
    if response.status_code in (401, 403):
        raise _fail(
            f"the admin API refused the key ({response.status_code}): set TURNOUT_API_KEY "
            "to a key with the read permission (`turnout keys create --role viewer`)"
        )
    if response.is_error:
        raise _fail(f"{base}/v1/proxies answered {response.status_code}: {response.text[:200]}")
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
