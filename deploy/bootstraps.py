"""The Envoy bootstraps committed under deploy/, and the commands that render them.

Each file is exactly what ``turnout envoy bootstrap`` prints for its arguments
(with no TURNOUT_* setting in the environment, so that the defaults apply).
Regenerate them after a change to the bootstrap template or to these arguments:

    .venv/bin/python deploy/bootstraps.py          # rewrite the files
    .venv/bin/python deploy/bootstraps.py --check  # exit 1 if one differs

tests/unit/test_kubernetes_manifests.py and tests/unit/test_docker_compose.py
fail when a committed file drifts from what the CLI renders.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# path (relative to the repository) -> the arguments after `turnout envoy bootstrap`
BOOTSTRAPS: dict[str, list[str]] = {
    # docker-compose.yml: one Envoy, both control-plane replicas by service name.
    "deploy/compose/envoy.yaml": [
        "--node-id",
        "compose-envoy",
        "--xds",
        "controlplane-1:18000",
        "--xds",
        "controlplane-2:18000",
        "--admin-port",
        "9901",
    ],
    # Kubernetes: every Envoy pod; the headless xDS Service resolves to every ready
    # control-plane pod. The node id is replaced per pod (envoy --service-node).
    "deploy/kubernetes/base/envoy/envoy.yaml": [
        "--node-id",
        "turnout-envoy",
        "--xds",
        "turnout-xds:18000",
        "--admin-port",
        "9901",
    ],
}


def render(arguments: list[str]) -> str:
    """Return what `turnout envoy bootstrap ARGUMENTS` prints."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TURNOUT_")}
    done = subprocess.run(
        [sys.executable, "-m", "controlplane.cli.main", "envoy", "bootstrap", *arguments],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare only; exit 1 on a drift")
    args = parser.parse_args()
    drifted = []
    for relative, arguments in BOOTSTRAPS.items():
        path = ROOT / relative
        text = render(arguments)
        if path.exists() and path.read_text() == text:
            continue
        drifted.append(relative)
        if not args.check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    for relative in drifted:
        print(f"{'differs' if args.check else 'rewrote'}: {relative}")
    return 1 if args.check and drifted else 0


if __name__ == "__main__":
    sys.exit(main())
