"""The ``turnout`` command line.

Every failure ends as one or two lines on stderr (what failed, what to do) and a
non-zero exit code; ``turnout --debug ...`` adds the traceback.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from controlplane.bootstrap import XdsAddress, dump_bootstrap, render_bootstrap
from controlplane.cli.errors import CliError, describe_error
from controlplane.logs import configure_logging
from controlplane.settings import get_settings

__all__ = ["app", "main"]

app = typer.Typer(
    name="turnout",
    help="Turnout: Envoy in front of model servers, steered over xDS.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
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


_DEBUG = "--debug"


@app.callback()
def _global_options(
    debug: Annotated[
        bool, typer.Option(_DEBUG, help="show the traceback of an unexpected error")
    ] = False,
) -> None:
    """Turnout: Envoy in front of model servers, steered over xDS."""


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
        raise _fail(f"migration failed: {describe_error(exc)}") from exc
    typer.echo(f"database is at {target}")


def _database_error(exc: Exception) -> typer.Exit:
    """One line about a failed database call: never its SQL or parameters."""
    return _fail(
        f"{describe_error(exc)}\n"
        "  is the database migrated and TURNOUT_DATABASE_URL right? (`turnout db upgrade`)"
    )


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Option("--name", help="who or what holds the key")],
    role: Annotated[str, typer.Option("--role", help="viewer, operator, admin or auditor")],
    expires_in: Annotated[
        str | None,
        typer.Option(
            "--expires-in",
            help="lifetime: a number and m, h, d or w (for example 30d); by default none",
        ),
    ] = None,
) -> None:
    """Create an API key and print it (it is stored only as SHA-256: copy it now)."""
    from controlplane.api.schemas import NAME_PATTERN
    from controlplane.cli.admin import create_key
    from controlplane.domain.clock import utcnow
    from controlplane.domain.keys import Role, parse_lifetime

    if role not in {r.value for r in Role}:
        raise _fail(f"--role must be one of {', '.join(r.value for r in Role)}, not {role!r}")
    if not re.match(NAME_PATTERN, name):
        raise _fail("--name must be 1-63 letters, digits, '.', '_' or '-'")
    try:
        lifetime = parse_lifetime(expires_in) if expires_in is not None else None
    except ValueError as exc:
        raise _fail(f"--expires-in: {exc}") from exc
    expires_at = utcnow() + lifetime if lifetime is not None else None
    try:
        row, key = asyncio.run(
            create_key(get_settings().database_url, name, Role(role), expires_at=expires_at)
        )
    except Exception as exc:
        raise _database_error(exc) from exc
    typer.echo(key)
    until = f", expires {_when(row.expires_at)}" if row.expires_at else ""
    typer.echo(f"key {row.id} ({row.name}, {row.role}{until}); shown once: store it now", err=True)


def _when(value: datetime | None) -> str:
    return value.isoformat(timespec="seconds") if value is not None else "-"


def format_keys(rows: list[Any]) -> str:
    """Return a table of API keys with a header row; never the keys themselves."""
    table: list[tuple[str, ...]] = [
        ("ID", "NAME", "ROLE", "PREFIX", "CREATED", "EXPIRES", "REVOKED")
    ]
    table += [
        (
            str(row.id),
            row.name,
            row.role,
            f"{row.prefix}...",
            _when(row.created_at),
            _when(row.expires_at),
            _when(row.revoked_at),
        )
        for row in rows
    ]
    return _columns(table) + ("(no keys)\n" if not rows else "")


def _columns(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    return "\n".join(lines) + "\n"


@keys_app.command("list")
def keys_list() -> None:
    """List keys (id, name, role, prefix, created, expires, revoked), never the keys."""
    from controlplane.cli.admin import list_keys

    try:
        rows = asyncio.run(list_keys(get_settings().database_url))
    except Exception as exc:
        raise _database_error(exc) from exc
    typer.echo(format_keys(list(rows)), nl=False)


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
    admin_port: Annotated[
        int | None,
        typer.Option(help="Envoy admin port (on 127.0.0.1); by default TURNOUT_ENVOY_ADMIN_PORT"),
    ] = None,
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
            node_id,
            addresses,
            admin_port=settings.envoy_admin_port if admin_port is None else admin_port,
            delta=delta,
            zone=zone,
            stats_flush_interval_s=settings.stats_flush_interval_s,
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
    from controlplane.cli.ports import control_plane_ports, port_problem
    from controlplane.cli.up import run_control_plane

    settings = get_settings()
    problem = port_problem(control_plane_ports(settings))
    if problem:
        raise _fail(problem)
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
    verbose: Annotated[
        bool,
        typer.Option(
            "--verbose", help="write the control plane's logs to stderr, not .turnout/turnout.log"
        ),
    ] = False,
) -> None:
    """Run the API, the xDS server and a local Envoy until Ctrl-C or SIGTERM."""
    from controlplane.cli.up import RUN_DIR, log_to_file, run_mesh

    if batching and not demo:
        raise _fail("--batching goes with --demo")
    settings = get_settings()
    RUN_DIR.mkdir(exist_ok=True)
    if verbose:
        configure_logging(settings.log_level)
    else:
        log_to_file(settings.log_level, RUN_DIR / "turnout.log")
    raise typer.Exit(code=asyncio.run(run_mesh(settings, demo=demo, batching=batching)))


def _batching_default(field: str) -> str:
    from filters.batcher import BatchingPolicy

    return f"(default {getattr(BatchingPolicy(), field)})"


@app.command("batcher")
def batcher(
    upstream: Annotated[
        str, typer.Option("--upstream", help="the model server's base URL (http://host:port)")
    ],
    listen: Annotated[
        str, typer.Option("--listen", help="HOST:PORT the batcher serves on")
    ] = "127.0.0.1:9101",
    control_plane: Annotated[
        str | None,
        typer.Option(
            "--control-plane",
            help="admin API URL to poll for the version's batching policy "
            "(needs --model, --model-version and a viewer key in TURNOUT_API_KEY)",
        ),
    ] = None,
    model: Annotated[str | None, typer.Option("--model", help="the model's name")] = None,
    model_version: Annotated[
        str | None, typer.Option("--model-version", help="the version's name")
    ] = None,
    max_batch_size: Annotated[
        int | None,
        typer.Option(help=f"rows in one upstream call {_batching_default('max_batch_size')}"),
    ] = None,
    max_queue_delay_ms: Annotated[
        float | None,
        typer.Option(
            help="longest wait for a batch to grow, in ms "
            f"{_batching_default('max_queue_delay_ms')}"
        ),
    ] = None,
    max_queue: Annotated[
        int | None,
        typer.Option(help=f"queued requests beyond which 429 {_batching_default('max_queue')}"),
    ] = None,
    slo_ms: Annotated[
        float | None,
        typer.Option(help=f"latency objective per request, in ms {_batching_default('slo_ms')}"),
    ] = None,
    max_in_flight: Annotated[
        int, typer.Option(help="upstream calls at once (default 1)", show_default=False)
    ] = 1,
    disabled: Annotated[
        bool, typer.Option("--disabled", help="start in pass-through mode (no batching)")
    ] = False,
) -> None:
    """Run a batcher beside one model-server replica, until Ctrl-C or SIGTERM.

    With --control-plane it follows the version's batching policy, polled from the
    admin API; without, the flags here are its policy.
    """
    from filters.batcher import run_batcher
    from filters.batcher.__main__ import build_config

    argv = ["--upstream", upstream, "--listen", listen, "--max-in-flight", str(max_in_flight)]
    optional: dict[str, object | None] = {
        "--control-plane": control_plane,
        "--model": model,
        "--model-version": model_version,
        "--max-batch-size": max_batch_size,
        "--max-queue-delay-ms": max_queue_delay_ms,
        "--max-queue": max_queue,
        "--slo-ms": slo_ms,
    }
    argv += [
        part for flag, value in optional.items() if value is not None for part in (flag, str(value))
    ]
    if disabled:
        argv.append("--disabled")
    settings = get_settings()
    configure_logging(settings.log_level)
    key = settings.api_key.get_secret_value() if settings.api_key else None
    config = build_config(
        argv,
        api_key=key,
        otlp_endpoint=settings.otlp_endpoint,
        trace_sampling=settings.trace_sampling,
        prog="turnout batcher",
    )
    asyncio.run(run_batcher(config))


def _read_api(api: str | None, path: str, params: dict[str, str] | None = None) -> Any:
    """GET ``path`` from the admin API with TURNOUT_API_KEY; return its JSON body,
    or fail with a message that says what to fix."""
    from controlplane.cli.client import call_api

    return call_api("GET", path, api=api, params=params).json()


_ApiOption = Annotated[
    str | None, typer.Option(help="admin API base URL; by default from TURNOUT_API_*")
]


@app.command("proxy-status")
def proxy_status(api: _ApiOption = None) -> None:
    """Show each connected Envoy: per resource type SYNCED, STALE, NACKED or NOT SENT.

    Needs a key with the read permission in TURNOUT_API_KEY."""
    typer.echo(format_proxy_status(_read_api(api, "/v1/proxies")), nl=False)


@app.command("top")
def top(
    api: _ApiOption = None,
    model: Annotated[str | None, typer.Option(help="show only this model")] = None,
    window: Annotated[str, typer.Option(help="how far back the figures look")] = "10s",
    interval: Annotated[float, typer.Option(min=0.1, help="seconds between refreshes")] = 1.0,
    once: Annotated[bool, typer.Option("--once", help="print the table once and exit")] = False,
) -> None:
    """Live traffic per model version: weight, requests/s, errors, p50 and p99
    latency, mean batch size; refreshed every second until Ctrl-C.

    Needs a key with the read permission in TURNOUT_API_KEY."""
    from controlplane.cli.top import format_top

    params = {"window": window}
    if once:
        typer.echo(format_top(_read_api(api, "/v1/metrics/summary", params), model), nl=False)
        return
    # On a terminal each frame replaces the last; piped, frames follow each other.
    clear = "\x1b[H\x1b[2J" if sys.stdout.isatty() else ""
    try:
        while True:
            table = format_top(_read_api(api, "/v1/metrics/summary", params), model)
            sys.stdout.write(clear + table + ("" if clear else "\n"))
            sys.stdout.flush()
            time.sleep(interval)
    except KeyboardInterrupt:
        typer.echo("")


@app.command("export")
def export(
    api: _ApiOption = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="write to this file, not stdout")
    ] = None,
) -> None:
    """Write every model (versions, endpoints, policies, traffic) as a YAML
    manifest that `turnout apply -f` takes back.

    Needs a key with the read permission in TURNOUT_API_KEY."""
    from controlplane.cli.manifest import export_manifest

    text = export_manifest(api)
    if output is None:
        typer.echo(text, nl=False)
    else:
        output.write_text(text)
        typer.echo(f"wrote {output}", err=True)


@app.command("apply")
def apply(
    file: Annotated[
        Path, typer.Option("--file", "-f", help="the manifest (YAML or JSON; - for stdin)")
    ],
    api: _ApiOption = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="print the plan and change nothing")
    ] = False,
    prune: Annotated[
        bool, typer.Option("--prune", help="also delete the models the manifest does not list")
    ] = False,
) -> None:
    """Make the control plane's models match a manifest: print the plan, then
    apply it as one revision (refused if the state changed since the plan).

    Needs a key with the write permission in TURNOUT_API_KEY."""
    from controlplane.cli.manifest import apply_file

    apply_file(file, api=api, dry_run=dry_run, prune=prune, echo=lambda t: typer.echo(t, nl=False))


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
    text = _columns(rows)
    if len(rows) == 1:
        text += "(no proxies connected)\n"
    return text + "".join(f"NACK {error}\n" for error in errors)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``turnout`` script: run a command; an unexpected error
    becomes one line on stderr (with ``--debug``, its traceback) and exit code 1."""
    args = sys.argv[1:] if argv is None else argv
    try:
        app(args=args, prog_name="turnout")
    except CliError as exc:
        typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
        raise SystemExit(2) from None
    except Exception as exc:
        if _DEBUG in args:
            raise
        typer.secho(f"error: {describe_error(exc)}", err=True, fg=typer.colors.RED)
        typer.echo("  run it again with `turnout --debug ...` to see the traceback", err=True)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
