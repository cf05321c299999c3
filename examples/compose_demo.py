"""Sets up the demo of ``docker compose up``, like ``turnout up --demo --batching``.

Run in the Turnout image once the control plane is up (docker-compose.yml's
``demo-setup`` service). It creates the demo's keys on the database directly
(``turnout keys create``), keeping them in ``--state-dir`` so that the next run
reuses them instead of minting more, then registers, through the admin API:

- model ``demo`` (http): ``v1`` and ``v2`` served by the compose services
  ``model-v1`` and ``model-v2`` (DNS names, resolved by Envoy), split 90/10;
- model ``demo-embed`` (kserve-v2): ``v1`` served by ``model-embed`` with its
  batcher on port 9004 beside it, batching on.

A model that exists already keeps its traffic split. The admin key is never
logged: ``python -m examples.compose_demo key`` prints it as an ``export`` line.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

__all__ = ["ENDPOINTS", "main"]

ADMIN_KEY = "admin.key"
BATCHER_KEY = "batcher.key"
DEMO_WEIGHTS = {"v1": 90, "v2": 10}
# Each demo version's endpoint: docker-compose.yml's service names and ports.
ENDPOINTS: dict[tuple[str, str], dict[str, Any]] = {
    ("demo", "v1"): {"address": "model-v1", "port": 9001},
    ("demo", "v2"): {"address": "model-v2", "port": 9001},
    ("demo-embed", "v1"): {"address": "model-embed", "port": 9003, "batcher_port": 9004},
}


class Api:
    """The few admin API calls the setup makes, with one key."""

    def __init__(self, base: str, key: str) -> None:
        self.base = base.rstrip("/")
        self.key = key

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.base + path, data=data, method=method)
        request.add_header("authorization", f"Bearer {self.key}")
        if data is not None:
            request.add_header("content-type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"null")

    def must(self, method: str, path: str, body: Any = None, *, allow: int = 0) -> int:
        status, answer = self.call(method, path, body)
        if status >= 300 and status != allow:
            raise SystemExit(f"{method} {path} answered {status}: {answer}")
        return status


def wait_ready(base: str, timeout_s: float) -> None:
    """Wait until the control plane's /readyz answers 200."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(f"{base.rstrip('/')}/readyz", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"the control plane at {base} was not ready within {timeout_s:.0f} s")
        time.sleep(1)


def demo_key(api_base: str, state: Path, file: str, name: str, role: str) -> str:
    """Return the key kept in ``state/file`` if the API still takes it, else a new one."""
    path = state / file
    if path.exists():
        key = path.read_text().strip()
        status, _ = Api(api_base, key).call("GET", "/v1/models")
        if status == 200:
            return key
    created = subprocess.run(
        [
            sys.executable,
            "-m",
            "controlplane.cli.main",
            "keys",
            "create",
            "--role",
            role,
            "--name",
            name,
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    key = created.stdout.strip()
    state.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(key + "\n")
    return key


def register(api: Api) -> None:
    """Register the two demo models (idempotent)."""
    created = api.must("POST", "/v1/models", {"name": "demo", "protocol": "http"}, allow=409)
    for version in ("v1", "v2"):
        endpoints = [ENDPOINTS["demo", version]]
        path = "/v1/models/demo/versions"
        if api.must("POST", path, {"version": version, "endpoints": endpoints}, allow=409) == 409:
            api.must("PATCH", f"{path}/{version}", {"endpoints": endpoints})
    if created != 409:
        api.must("PUT", "/v1/models/demo/traffic", {"weights": DEMO_WEIGHTS})
    api.must("POST", "/v1/models", {"name": "demo-embed", "protocol": "kserve-v2"}, allow=409)
    endpoints = [ENDPOINTS["demo-embed", "v1"]]
    path = "/v1/models/demo-embed/versions"
    if api.must("POST", path, {"version": "v1", "endpoints": endpoints}, allow=409) == 409:
        api.must("PATCH", f"{path}/v1", {"endpoints": endpoints})
    api.must("PUT", f"{path}/v1/policy", {"batching": {"enabled": True}})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m examples.compose_demo")
    parser.add_argument("action", choices=("setup", "key"), nargs="?", default="setup")
    parser.add_argument("--api", default="http://controlplane-1:8080")
    parser.add_argument("--state-dir", type=Path, default=Path("/var/lib/turnout/demo"))
    parser.add_argument("--timeout-s", type=float, default=120.0)
    args = parser.parse_args(argv)
    if args.action == "key":
        path = args.state_dir / ADMIN_KEY
        if not path.exists():
            raise SystemExit("no demo key yet: run `docker compose up` first")
        print(f"export TURNOUT_API_KEY={path.read_text().strip()}")
        return
    wait_ready(args.api, args.timeout_s)
    admin = demo_key(args.api, args.state_dir, ADMIN_KEY, "compose-demo-admin", "admin")
    demo_key(args.api, args.state_dir, BATCHER_KEY, "compose-demo-batcher", "viewer")
    register(Api(args.api, admin))
    print(
        "demo ready: models demo (v1 90%, v2 10%) and demo-embed (batched); "
        "print the admin key with: docker compose run --rm --no-deps -T demo-setup key",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
