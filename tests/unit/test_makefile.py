"""`make up` on a fresh clone shows what it does from its first second: pip's own
progress, never `--quiet`."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _dry_run(target: str) -> list[str]:
    # -B: as on a fresh clone (every prerequisite out of date); -n: print, run nothing.
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAKE")}  # under make test
    result = subprocess.run(
        ["make", "-nB", "--no-print-directory", target, "VENV=/nonexistent-venv"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout.splitlines()


def test_make_up_announces_itself_first_and_lets_pip_show_progress() -> None:
    lines = _dry_run("up")
    assert lines[0].startswith("echo"), lines[:3]  # says what is happening before anything slow
    installs = [line for line in lines if "pip install" in line]
    assert installs
    for line in installs:
        assert "--quiet" not in line and " -q" not in line
    assert any("turnout up --demo" in line for line in lines)


def test_make_test_installs_chromium_for_the_browser_tests_or_says_they_are_skipped() -> None:
    lines = "\n".join(_dry_run("pytest"))
    assert "apt-get install -y -q chromium" in lines
    assert "the console's browser tests will be skipped" in lines
    assert lines.index("chromium") < lines.index("pytest -q")
