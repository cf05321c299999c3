"""`turnout export` and `turnout apply -f`: the traffic state as a file.

``export`` writes every model (versions, endpoints, policies, traffic) as a
YAML manifest; ``apply -f`` prints the plan (the admin API's dry run of the
apply), then applies it as one revision, only if nothing changed since the
plan. An export applied back changes nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from controlplane.cli.client import call_api
from controlplane.cli.errors import CliError

__all__ = ["apply_file", "export_manifest", "format_plan", "read_manifest"]


def export_manifest(api: str | None) -> str:
    """Return the current models as a YAML manifest."""
    manifest = call_api("GET", "/v1/manifest", api=api).json()
    revision = manifest.pop("revision", None)
    header = f"# turnout export at config revision {revision}\n"
    return header + yaml.safe_dump(manifest, sort_keys=False, default_flow_style=False)


def read_manifest(path: Path) -> dict[str, Any]:
    """Return the manifest in ``path`` (YAML or JSON); raise CliError saying what
    is wrong with the file."""
    try:
        text = path.read_text() if str(path) != "-" else _stdin()
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror}") from exc
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise CliError(f"{path} is not valid YAML{where}: {getattr(exc, 'problem', exc)}") from exc
    if not isinstance(document, dict) or "models" not in document:
        raise CliError(
            f"{path} is not a models manifest: expected a mapping with apiVersion: turnout/v1, "
            "kind: Models and a models list (`turnout export` writes one)"
        )
    document.pop("revision", None)
    return document


def _stdin() -> str:
    import sys

    return sys.stdin.read()


def apply_file(
    path: Path, *, api: str | None, dry_run: bool, prune: bool, echo: Any
) -> dict[str, Any] | None:
    """Print the plan of applying ``path``, then (unless ``dry_run``) apply it;
    return what the apply changed (None for a dry run or when nothing would)."""
    body = {**read_manifest(path), "prune": prune}
    plan = call_api(
        "POST",
        "/v1/manifest",
        api=api,
        params={"dry_run": "true"},
        json=body,
        permission="write",
    ).json()
    echo(format_plan(plan))
    if plan.get("revision") is None or dry_run:
        return None
    # Only if the state is still the one planned against.
    applied = call_api(
        "POST",
        "/v1/manifest",
        api=api,
        json={**body, "base_revision": plan["revision"] - 1},
        permission="write",
    ).json()
    echo(
        f"applied as revision {applied['revision']}: "
        + ", ".join(
            f"{len(applied[fate])} {fate}"
            for fate in ("created", "changed", "deleted", "unchanged")
        )
        + "\n"
    )
    return dict(applied)


def format_plan(plan: dict[str, Any]) -> str:
    """Return the dry run of an apply as lines a person reads: the models it
    creates, changes (and what of them) and deletes, and the Envoy resources."""
    if plan.get("revision") is None:
        return "no changes: the control plane already matches the manifest\n"
    state = plan.get("state", {})
    lines = [f"  + model {name}" for name in state.get("added", [])]
    for name, sides in sorted(state.get("changed", {}).items()):
        before, after = sides.get("before") or {}, sides.get("after") or {}
        parts = [
            key for key in ("protocol", "policy", "weights") if before.get(key) != after.get(key)
        ]
        versions_before = {v["name"]: v for v in before.get("versions", [])}
        versions_after = {v["name"]: v for v in after.get("versions", [])}
        parts += [f"+{v}" for v in sorted(set(versions_after) - set(versions_before))]
        parts += [f"-{v}" for v in sorted(set(versions_before) - set(versions_after))]
        parts += [
            f"~{v}"
            for v in sorted(set(versions_before) & set(versions_after))
            if versions_before[v] != versions_after[v]
        ]
        lines.append(f"  ~ model {name}: " + ", ".join(parts))
    lines += [f"  - model {name}" for name in state.get("removed", [])]
    counts = []
    for type_name, changes in sorted(plan.get("resources", {}).items()):
        moved = [f"{len(changes.get(k, []))} {k}" for k in ("added", "changed", "removed")]
        moved = [m for m in moved if not m.startswith("0 ")]
        if moved:
            counts.append(f"{type_name} " + ", ".join(moved))
    text = "plan:\n" + "\n".join(lines or ["  (models unchanged)"]) + "\n"
    if counts:
        text += "Envoy resources: " + "; ".join(counts) + "\n"
    return text
