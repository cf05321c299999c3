"""The console's browser tests: Chromium from the system (Debian's package at
/usr/bin/chromium, `apt-get install chromium`), driven by pytest-playwright,
against one `turnout up --demo` per module."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, BrowserType, Playwright, expect, sync_playwright

from tests.e2e.test_turnout_up import READY, TURNOUT, exported_key, mesh_env

CHROMIUM = Path(os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium"))
# Screenshots of every page, kept after the run (the repository ignores .turnout/).
SCREENSHOTS = Path(__file__).resolve().parents[2] / ".turnout" / "screenshots"


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args: dict[str, Any]) -> dict[str, Any]:
    """Launch the system Chromium: Playwright's own download is not used."""
    if not CHROMIUM.exists():
        pytest.skip(f"no Chromium at {CHROMIUM}: `apt-get install chromium` (or `make browser`)")
    return {**browser_type_launch_args, "executable_path": str(CHROMIUM)}


_taken: list[Path] = []

# CI is a loaded two-core machine: give each expectation time to come true.
expect.set_options(timeout=15_000)


# pytest-playwright keeps one Playwright (and its event loop) for the whole session;
# while it runs, no asyncio test can start its own loop. Here it lives as long as
# one browser test module, so the asyncio tests after it run as usual.
@pytest.fixture(scope="module")
def playwright(_pw_api_request_contexts: Any) -> Iterator[Playwright]:
    pw = sync_playwright().start()
    if _pw_api_request_contexts:
        _pw_api_request_contexts.instrument(pw)
    yield pw
    pw.stop()


@pytest.fixture(scope="module")
def browser_type(playwright: Playwright, browser_name: str) -> BrowserType:
    chosen: BrowserType = getattr(playwright, browser_name)
    return chosen


@pytest.fixture(scope="module")
def launch_browser(
    browser_type_launch_args: dict[str, Any], browser_type: BrowserType
) -> Callable[..., Browser]:
    def launch(**kwargs: Any) -> Browser:
        return browser_type.launch(**{**browser_type_launch_args, **kwargs})

    return launch


@pytest.fixture(scope="module")
def browser(launch_browser: Callable[..., Browser]) -> Iterator[Browser]:
    launched = launch_browser()
    yield launched
    launched.close()


@pytest.fixture(scope="module")
def browser_context_args() -> dict[str, Any]:
    """Every page at 1280x800 (the tests that check a phone's width narrow it)."""
    return {"viewport": {"width": 1280, "height": 800}}


@pytest.fixture(scope="session")
def screenshots() -> Path:
    """Where each page's screenshot goes (named at the end of the run)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    _taken.append(SCREENSHOTS)
    return SCREENSHOTS


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _taken:
        terminalreporter.write_line(f"console screenshots: {SCREENSHOTS}")


@dataclass
class Mesh:
    """A running `turnout up --demo`."""

    cwd: Path
    env: dict[str, str]
    key: str
    output: list[str] = field(default_factory=list)

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.env['TURNOUT_API_PORT']}"

    @property
    def listener(self) -> str:
        return f"http://127.0.0.1:{self.env['TURNOUT_LISTENER_PORT']}"

    def admin(self, key: str | None = None) -> httpx.Client:
        """An admin API client with ``key`` (the demo admin's by default)."""
        return httpx.Client(
            base_url=self.api, timeout=10, headers={"authorization": f"Bearer {key or self.key}"}
        )


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    """`turnout up --demo` as a user runs it, stopped with SIGTERM (it must exit 0)."""
    if shutil.which(str(CHROMIUM)) is None:
        pytest.skip(f"no Chromium at {CHROMIUM}: `apt-get install chromium` (or `make browser`)")
    cwd = tmp_path_factory.mktemp("console")
    env = mesh_env()
    process = subprocess.Popen(
        [TURNOUT, "up", "--demo"],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output: list[str] = []
    up = threading.Event()

    def read() -> None:  # keeps draining stdout while the mesh runs
        assert process.stdout is not None
        for line in process.stdout:
            output.append(line)
            if line.strip() == READY:
                up.set()
        up.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        up.wait(timeout=90)
        assert process.poll() is None and any(line.strip() == READY for line in output), "".join(
            output
        )
        api = f"http://127.0.0.1:{env['TURNOUT_API_PORT']}"
        assert f"  console     {api}/console" in "".join(output)
        yield Mesh(cwd=cwd, env=env, key=exported_key(output), output=output)
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=30)
        reader.join(timeout=5)
    assert code == 0, "".join(output)
    # The key went through the browser and every request; it is in no log.
    key = exported_key(output)
    for log in (cwd / ".turnout").glob("*.log"):
        assert key not in log.read_text(), log
