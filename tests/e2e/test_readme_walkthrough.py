"""The README's walkthrough, run as written against `turnout up --demo`.

The ``sh`` blocks of the sections in ``SECTIONS`` are cut into commands (a
command ends where bash sees a complete statement) and run in order, in one
bash, in a directory where ``.venv`` is this virtual environment, so that
variables (``ETAG``) carry over as they would in a terminal. Only the ports
change, to free ones. Each command must exit 0. Where the README shows output
(a comment right after a command that starts with ``{`` or ``[``; ``...`` stands
for anything, a trailing ``(note)`` is not output), the output must match.
A command whose output the README does not show must not answer an error.

Not run here: the tenants and batching sections (their answers depend on
Envoy's timing and rate buckets, or on ``--batching``) and "Running it
yourself" (it starts servers of its own).
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.e2e.test_turnout_up import exported_key, mesh_env, turnout_up

pytestmark = pytest.mark.envoy

README = Path(__file__).resolve().parents[2] / "README.md"
SECTIONS = (
    "Walkthrough",
    "Keys, roles and the audit log",
    "Traffic policy",
    "Revisions, diffs, rollback and dry runs",
    "Configuration as code",
)


@dataclass
class Command:
    """One command of the README and the output it shows, if any."""

    section: str
    text: str
    expected: list[str] = field(default_factory=list)


def _complete(text: str) -> bool:
    if text.endswith("\\"):  # a continuation line, which bash -n accepts at the end
        return False
    return (
        subprocess.run(["bash", "-n"], input=text, capture_output=True, text=True).returncode == 0
    )


def _section_blocks(readme: str, title: str) -> list[str]:
    body = readme.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sh\n(.*?)```", body, flags=re.DOTALL)


def readme_commands(readme: str) -> list[Command]:
    """Every command of the walkthrough sections, in order, with its shown output."""
    commands: list[Command] = []
    for title in SECTIONS:
        for block in _section_blocks(readme, title):
            pending: list[str] = []
            last: Command | None = None
            for line in block.splitlines():
                stripped = line.strip()
                if not pending and stripped.startswith("#"):
                    shown = stripped[1:].strip()
                    if last is not None and shown[:1] in ("{", "["):
                        last.expected.append(shown)
                    else:
                        last = None  # a description of what follows
                    continue
                if not pending and not stripped:
                    continue
                pending.append(line)
                if _complete("\n".join(pending)):
                    last = Command(title, "\n".join(pending))
                    commands.append(last)
                    pending = []
            assert not pending, f"incomplete command in {title!r}: {pending}"
    return commands


def matches(expected: str, output: str) -> bool:
    """Whether ``output`` holds ``expected``, ``...`` standing for anything."""
    expected = re.sub(r"\s{2,}\(.*\)$", "", expected)
    pattern = ".*?".join(re.escape(part) for part in expected.split("..."))
    return re.search(pattern, output, flags=re.DOTALL) is not None


def test_the_walkthrough_is_found_and_parsed() -> None:
    commands = readme_commands(README.read_text())
    assert {c.section for c in commands} == set(SECTIONS)
    assert len(commands) >= 30
    shown = [c for c in commands if c.expected]
    assert len(shown) >= 3, shown
    assert matches('{"error": "x", ...}   (a note)', '{"error": "x", "detail": 1}')
    assert not matches('{"error": "x", ...}', '{"error": "y"}')


def _localised(text: str, env: dict[str, str]) -> str:
    """The command with the README's default ports replaced by this run's."""
    base = int(env["TURNOUT_DEMO_BASE_PORT"])
    for default, port in (
        ("127.0.0.1:8080", f"127.0.0.1:{env['TURNOUT_API_PORT']}"),
        ("127.0.0.1:10000", f"127.0.0.1:{env['TURNOUT_LISTENER_PORT']}"),
        ('"port": 9001', f'"port": {base}'),
        ('"port": 9002', f'"port": {base + 1}'),
    ):
        text = text.replace(default, port)
    return text


def _script(commands: list[Command], env: dict[str, str]) -> str:
    parts = []
    for i, command in enumerate(commands):
        parts += [
            f"printf '\\n@@start {i}@@\\n'",
            _localised(command.text, env),
            f"printf '\\n@@end {i} %d@@\\n' $?",
        ]
    return "\n".join(parts) + "\n"


@pytest.mark.timeout(240)
async def test_the_readme_walkthrough_runs_as_written(tmp_path: Path) -> None:
    commands = readme_commands(README.read_text())
    (tmp_path / ".venv").symlink_to(Path(sys.executable).parent.parent)
    env = mesh_env()
    async with turnout_up(tmp_path, env) as output:
        env["TURNOUT_API_KEY"] = exported_key(output)
        script = tmp_path / "walkthrough.sh"
        script.write_text(_script(commands, env))
        result = await asyncio.to_thread(
            subprocess.run,
            ["bash", str(script)],
            cwd=tmp_path,
            env={**env, "PATH": os.environ["PATH"]},
            capture_output=True,
            text=True,
            timeout=180,
        )
    failures = []
    for i, command in enumerate(commands):
        found = re.search(
            rf"@@start {i}@@\n(.*?)\n@@end {i} (\d+)@@", result.stdout, flags=re.DOTALL
        )
        if found is None:
            failures.append(f"[{i}] did not run: {command.text}")
            continue
        out, code = found[1], int(found[2])
        if code != 0:
            failures.append(f"[{i}] exit {code}: {command.text}\n{out}")
        for expected in command.expected:
            if not matches(expected, out):
                failures.append(f"[{i}] {command.text}\nexpected {expected}\ngot {out[:500]}")
        if not command.expected and re.search(r'"error"\s*:\s*"', out):
            failures.append(f"[{i}] answered an error: {command.text}\n{out[:500]}")
    assert not failures, "\n\n".join(failures) + "\n\nstderr:\n" + result.stderr[-2000:]
