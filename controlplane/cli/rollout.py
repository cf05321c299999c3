"""``turnout rollout``: start and steer canary rollouts from a terminal or a pipeline.

``turnout rollout status MODEL --watch`` draws a progress bar until the
rollout ends and exits 0 when it was promoted, 1 when it was rolled back or
aborted (2: the command itself failed), so a CI job can wait on it.
"""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from controlplane.cli.client import call_api

__all__ = ["format_status", "parse_gate", "parse_steps", "rollout_app"]

rollout_app = typer.Typer(
    help="Canary rollouts: start one, watch it, pause, resume, abort or promote it.",
    no_args_is_help=True,
)

ENDED = {"promoted": 0, "rolled_back": 1, "aborted": 1}
_GATE = re.compile(
    r"^(?P<metric>[a-z0-9_]+)(?P<ratio>/baseline)?(?P<op><=|>=)(?P<value>[0-9]+(?:\.[0-9]+)?)$"
)
_DURATION = re.compile(r"^(?P<n>[0-9]+(?:\.[0-9]+)?)(?P<unit>s|m|h)?$")
_UNITS = {None: 1, "s": 1, "m": 60, "h": 3600}
BAR_WIDTH = 30


class UsageError(ValueError):
    """A command-line value that does not parse; its message says what to write."""


def _seconds(text: str) -> float:
    match = _DURATION.match(text.strip())
    if match is None:
        raise UsageError(f"{text!r} is not a duration such as 60, 60s or 2m")
    return float(match.group("n")) * _UNITS[match.group("unit")]


def parse_steps(text: str) -> list[dict[str, Any]]:
    """``5:60,25:120,100`` -> ``[{weight: 5, hold_s: 60}, {weight: 25, hold_s: 120},
    {weight: 100}]`` (a hold may be 60, 60s, 2m)."""
    steps: list[dict[str, Any]] = []
    for part in text.split(","):
        weight, _, hold = part.strip().partition(":")
        if not weight.isdigit():
            raise UsageError(f"step {part.strip()!r}: write WEIGHT[:HOLD], e.g. 25:120")
        step: dict[str, Any] = {"weight": int(weight)}
        if hold:
            step["hold_s"] = _seconds(hold)
        steps.append(step)
    return steps


def parse_gate(text: str) -> dict[str, Any]:
    """``error_rate<=0.01`` -> max, ``success_rate>=0.99`` -> min,
    ``p99_ms/baseline<=1.25`` -> max_ratio_to_baseline."""
    match = _GATE.match(text.replace(" ", ""))
    if match is None:
        raise UsageError(
            f"gate {text!r}: write METRIC<=N, METRIC>=N or METRIC/baseline<=N "
            "(e.g. error_rate<=0.01, p99_ms/baseline<=1.25)"
        )
    value = float(match.group("value"))
    if match.group("ratio"):
        if match.group("op") != "<=":
            raise UsageError(f"gate {text!r}: a baseline ratio is a maximum (<=)")
        return {"metric": match.group("metric"), "max_ratio_to_baseline": value}
    kind = "max" if match.group("op") == "<=" else "min"
    return {"metric": match.group("metric"), kind: value}


def _number(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def format_status(rollout: dict[str, Any]) -> str:
    """One rollout as a few lines: a progress bar over its steps, each gate's
    last value and verdict, and how it ended."""
    steps = rollout["spec"]["steps"]
    weights = [s["weight"] for s in steps]
    state = rollout["state"]
    done = rollout["step"] + (1 if rollout["step_started_at"] or state == "promoted" else 0)
    filled = round(BAR_WIDTH * rollout["weight"] / 100)
    bar = "#" * filled + "-" * (BAR_WIDTH - filled)
    lines = [
        f"rollout {rollout['id']} of {rollout['model']}: {rollout['baseline']} -> "
        f"{rollout['candidate']}  {state}",
        f"[{bar}] {rollout['weight']:3d}%  step {min(done, len(steps))}/{len(steps)} "
        f"({'/'.join(str(w) for w in weights)})",
    ]
    for gate in rollout.get("gates", []):
        name = gate["metric"]
        if gate["kind"] == "max_ratio_to_baseline":
            name += f"/baseline<={_number(gate['threshold'])}"
        else:
            name += ("<=" if gate["kind"] == "max" else ">=") + _number(gate["threshold"])
        value = "inf" if gate.get("infinite") else _number(gate["value"])
        lines.append(
            f"  {name:28s} {value:>10s}  {gate['samples']}/{gate['min_samples']} samples  "
            f"{gate['verdict']}"
        )
    if rollout.get("reason"):
        lines.append(f"  reason: {rollout['reason']}")
    return "\n".join(lines) + "\n"


def _fail(message: str) -> typer.Exit:
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    return typer.Exit(code=2)


def _call(api: str | None, method: str, path: str, body: Any = None) -> Any:
    """Send one admin API request with TURNOUT_API_KEY; return its JSON, or fail
    with a message that says what to fix."""
    permission = "read" if method == "GET" else "write"
    return call_api(method, path, api=api, json=body, permission=permission).json()


_Api = Annotated[str | None, typer.Option(help="admin API base URL; by default from TURNOUT_API_*")]
_Model = Annotated[str, typer.Argument(help="the model")]


def _latest(api: str | None, model: str, *, active: bool) -> dict[str, Any]:
    rollouts: list[dict[str, Any]] = _call(api, "GET", f"/v1/models/{model}/rollouts")
    for rollout in rollouts:
        if not active or rollout["state"] in ("progressing", "paused"):
            return rollout
    raise _fail(
        f"model {model!r} has no {'active ' if active else ''}rollout "
        f"(start one with `turnout rollout start {model} --candidate VERSION --steps ...`)"
    )


@rollout_app.command("start")
def start(
    model: _Model,
    candidate: Annotated[str | None, typer.Option(help="the version to roll out")] = None,
    baseline: Annotated[
        str | None, typer.Option(help="the version it replaces (default: most weight now)")
    ] = None,
    steps: Annotated[
        str | None, typer.Option(help="WEIGHT:HOLD,...: e.g. 5:60,25:120,50:120,100")
    ] = None,
    gate: Annotated[
        list[str] | None,
        typer.Option(help="repeatable: error_rate<=0.01, p99_ms<=800, p99_ms/baseline<=1.25"),
    ] = None,
    min_requests: Annotated[
        int | None, typer.Option(help="candidate requests each step needs (default 100)")
    ] = None,
    file: Annotated[
        Path | None, typer.Option("--file", help="the whole spec as JSON (options override it)")
    ] = None,
    api: _Api = None,
) -> None:
    """Start a canary rollout of MODEL."""
    spec: dict[str, Any] = {}
    if file is not None:
        try:
            spec = json.loads(file.read_text())
        except (OSError, ValueError) as exc:
            raise _fail(f"cannot read the spec in {file}: {exc}") from exc
        if not isinstance(spec, dict):
            raise _fail(f"{file} must hold a JSON object")
    try:
        if candidate is not None:
            spec["candidate"] = candidate
        if baseline is not None:
            spec["baseline"] = baseline
        if steps is not None:
            spec["steps"] = parse_steps(steps)
        if gate:
            spec["gates"] = [parse_gate(g) for g in gate]
        if min_requests is not None:
            spec["min_requests"] = min_requests
    except UsageError as exc:
        raise _fail(str(exc)) from exc
    if "candidate" not in spec or "steps" not in spec:
        raise _fail("give --candidate and --steps (or a --file with both)")
    rollout = _call(api, "POST", f"/v1/models/{model}/rollouts", spec)
    typer.echo(format_status(rollout), nl=False)


@rollout_app.command("status")
def status(
    model: _Model,
    watch: Annotated[
        bool, typer.Option("--watch", help="follow it until it ends; exit 0 if promoted, else 1")
    ] = False,
    interval: Annotated[float, typer.Option(min=0.1, help="seconds between refreshes")] = 1.0,
    api: _Api = None,
) -> None:
    """Show MODEL's latest rollout: step, weight, each gate's value and verdict."""
    rollout = _latest(api, model, active=False)
    path = f"/v1/models/{model}/rollouts/{rollout['id']}"
    rollout = _call(api, "GET", path)
    if not watch:
        typer.echo(format_status(rollout), nl=False)
        return
    clear = "\x1b[H\x1b[2J" if sys.stdout.isatty() else ""
    last = ""
    while True:
        text = format_status(rollout)
        if clear or text != last:
            sys.stdout.write(clear + text)
            sys.stdout.flush()
            last = text
        if rollout["state"] in ENDED:
            raise typer.Exit(code=ENDED[rollout["state"]])
        time.sleep(interval)
        rollout = _call(api, "GET", path)


def _act(api: str | None, model: str, action: str) -> None:
    rollout = _latest(api, model, active=True)
    changed = _call(api, "POST", f"/v1/models/{model}/rollouts/{rollout['id']}/{action}")
    typer.echo(format_status(changed), nl=False)


@rollout_app.command("pause")
def pause(model: _Model, api: _Api = None) -> None:
    """Pause MODEL's rollout: weights stay; manual traffic changes are allowed."""
    _act(api, model, "pause")


@rollout_app.command("resume")
def resume(model: _Model, api: _Api = None) -> None:
    """Resume MODEL's paused rollout (its step's hold time starts again)."""
    _act(api, model, "resume")


@rollout_app.command("abort")
def abort(model: _Model, api: _Api = None) -> None:
    """Abort MODEL's rollout: the baseline gets all the traffic back."""
    _act(api, model, "abort")


@rollout_app.command("promote")
def promote(model: _Model, api: _Api = None) -> None:
    """Promote MODEL's rollout now: the candidate gets all the traffic."""
    _act(api, model, "promote")
