"""What the ``turnout`` commands say: one or two lines per error, no traceback
unless ``--debug``, never SQL, parameters or key hashes; tables with headers."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import free_port

TURNOUT = str(Path(sys.executable).parent / "turnout")
HEX_HASH = re.compile(r"\b[0-9a-f]{64}\b")


def turnout(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TURNOUT_")}
    return subprocess.run(
        [TURNOUT, *args],
        cwd=cwd,
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


def assert_short_error(result: subprocess.CompletedProcess[str]) -> str:
    """The command failed with one or two lines on stderr and no traceback."""
    assert result.returncode != 0, result.stdout
    lines = result.stderr.strip().splitlines()
    assert 1 <= len(lines) <= 2, result.stderr
    assert lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    return result.stderr


@pytest.fixture
def listening() -> Iterator[int]:
    """A port that another process-like listener holds."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def test_keys_create_before_migrating_says_so_without_sql_or_hashes(tmp_path: Path) -> None:
    result = turnout("keys", "create", "--role", "admin", "--name", "alice", cwd=tmp_path)
    text = assert_short_error(result)
    assert "turnout db upgrade" in text
    for leak in ("INSERT", "SELECT", "[SQL", "parameters", "key_hash"):
        assert leak not in text + result.stdout
    assert not HEX_HASH.search(text + result.stdout)


def test_keys_list_has_a_header_row_and_shows_the_expiry(tmp_path: Path) -> None:
    assert turnout("db", "upgrade", cwd=tmp_path).returncode == 0
    empty = turnout("keys", "list", cwd=tmp_path)
    assert empty.stdout.splitlines()[0].split() == [
        "ID",
        "NAME",
        "ROLE",
        "PREFIX",
        "CREATED",
        "EXPIRES",
        "REVOKED",
    ]
    made = turnout(
        "keys", "create", "--role", "viewer", "--name", "ci", "--expires-in", "30d", cwd=tmp_path
    )
    assert made.returncode == 0, made.stderr
    assert made.stdout.startswith("tk_")
    assert "expires" in made.stderr
    turnout("keys", "create", "--role", "admin", "--name", "alice", cwd=tmp_path)
    lines = turnout("keys", "list", cwd=tmp_path).stdout.splitlines()
    assert len(lines) == 3
    ci, alice = (line.split() for line in lines[1:])
    assert ci[:3] == ["1", "ci", "viewer"] and ci[5].startswith("20") and ci[6] == "-"
    assert alice[:3] == ["2", "alice", "admin"] and alice[5] == "-"
    assert "tk_" not in made.stdout[3:] and made.stdout.strip() not in "\n".join(lines)


def test_a_bad_lifetime_is_one_line(tmp_path: Path) -> None:
    result = turnout(
        "keys", "create", "--role", "admin", "--name", "a", "--expires-in", "soon", cwd=tmp_path
    )
    assert "30d" in assert_short_error(result)


def test_proxy_status_without_a_key_names_the_variable(tmp_path: Path) -> None:
    result = turnout("proxy-status", cwd=tmp_path, env={"TURNOUT_API_PORT": str(free_port())})
    text = assert_short_error(result)
    assert "no admin API key is set" in text
    assert "TURNOUT_API_KEY" in text


def test_envoy_bootstrap_follows_the_admin_port_setting(tmp_path: Path) -> None:
    result = turnout(
        "envoy",
        "bootstrap",
        "--node-id",
        "edge-1",
        "--output",
        "json",
        cwd=tmp_path,
        env={"TURNOUT_ENVOY_ADMIN_PORT": "19901", "TURNOUT_XDS_PORT": "18123"},
    )
    assert result.returncode == 0, result.stderr
    assert '"port_value": 19901' in result.stdout
    assert '"port_value": 18123' in result.stdout
    flag = turnout(
        "envoy", "bootstrap", "--node-id", "e", "--output", "json", "--admin-port", "7001",
        cwd=tmp_path, env={"TURNOUT_ENVOY_ADMIN_PORT": "19901"},
    )  # fmt: skip
    assert '"port_value": 7001' in flag.stdout


def test_batcher_help_is_like_every_other_command(tmp_path: Path) -> None:
    result = turnout("batcher", "--help", cwd=tmp_path)
    assert result.returncode == 0
    assert "Usage: turnout batcher [OPTIONS]" in result.stdout
    for flag in ("--upstream", "--listen", "--control-plane", "--max-batch-size", "--disabled"):
        assert flag in result.stdout
    assert "usage: turnout batcher" not in result.stdout  # not argparse's


def test_an_unexpected_error_is_one_line_and_debug_shows_the_traceback(tmp_path: Path) -> None:
    args = ("batcher", "--upstream", "http://127.0.0.1:1", "--max-batch-size", "0")
    text = assert_short_error(turnout(*args, cwd=tmp_path))
    assert "max_batch_size" in text and "--debug" in text
    debug = turnout("--debug", *args, cwd=tmp_path)
    assert debug.returncode != 0
    assert "Traceback" in debug.stderr


def test_serve_on_a_used_port_names_the_port_and_the_setting(
    tmp_path: Path, listening: int
) -> None:
    assert turnout("db", "upgrade", cwd=tmp_path).returncode == 0
    result = turnout(
        "serve", cwd=tmp_path, env={"TURNOUT_API_PORT": str(listening), "TURNOUT_XDS_PORT": "0"}
    )
    text = assert_short_error(result)
    assert len(text.strip().splitlines()) == 1
    assert f"port {listening}" in text and "TURNOUT_API_PORT" in text


@pytest.mark.parametrize(
    "setting",
    [
        "TURNOUT_API_PORT",
        "TURNOUT_XDS_PORT",
        "TURNOUT_LISTENER_PORT",
        "TURNOUT_ENVOY_ADMIN_PORT",
        "TURNOUT_DEMO_BASE_PORT",
    ],
)
def test_up_checks_every_port_before_starting(tmp_path: Path, listening: int, setting: str) -> None:
    env = {
        "TURNOUT_API_PORT": str(free_port()),
        "TURNOUT_XDS_PORT": str(free_port()),
        "TURNOUT_LISTENER_PORT": str(free_port()),
        "TURNOUT_ENVOY_ADMIN_PORT": str(free_port()),
        "TURNOUT_DEMO_BASE_PORT": str(free_port()),
        setting: str(listening),
    }
    result = turnout("up", "--demo", cwd=tmp_path, env=env)
    text = assert_short_error(result)
    assert len(text.strip().splitlines()) == 1
    assert f"port {listening}" in text and setting in text
    assert not (tmp_path / "turnout.db").exists()  # nothing started


def test_a_bad_setting_names_the_variable(tmp_path: Path) -> None:
    result = turnout("keys", "list", cwd=tmp_path, env={"TURNOUT_API_PORT": "eighty"})
    text = assert_short_error(result)
    assert "TURNOUT_API_PORT" in text and "integer" in text
