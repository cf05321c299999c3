"""The ports ``turnout serve`` and ``turnout up`` will listen on, checked before
anything starts: a port in use stops the start with one line that names the port
and the setting that changes it.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Sequence
from dataclasses import dataclass

from controlplane.settings import Settings

__all__ = ["FAULTY_OFFSET", "PlannedPort", "control_plane_ports", "mesh_ports", "port_problem"]

DEMO_SERVERS = 2  # the demo model servers take the base port and the next one
# The demo's deliberately faulty v3 (for the canary walkthrough): after the two
# ports the batched demo takes, whether or not it runs.
FAULTY_OFFSET = 4


@dataclass(frozen=True, slots=True)
class PlannedPort:
    """A port some part of the mesh will bind, and the setting that moves it."""

    what: str
    host: str
    port: int
    setting: str


def control_plane_ports(settings: Settings) -> list[PlannedPort]:
    """The ports of ``turnout serve``: the admin API and the xDS server (0: any)."""
    return [
        PlannedPort("the admin API", settings.api_host, settings.api_port, "TURNOUT_API_PORT"),
        PlannedPort("the xDS server", settings.xds_host, settings.xds_port, "TURNOUT_XDS_PORT"),
    ]


def mesh_ports(settings: Settings, *, demo: bool, batching: bool = False) -> list[PlannedPort]:
    """The ports of ``turnout up``: the control plane's, Envoy's listener and admin
    port, and with ``demo`` the example model servers (and the batched demo's)."""
    planned = [
        *control_plane_ports(settings),
        PlannedPort(
            "Envoy's listener",
            settings.listener_host,
            settings.listener_port,
            "TURNOUT_LISTENER_PORT",
        ),
        PlannedPort(
            "Envoy's admin interface",
            "127.0.0.1",
            settings.envoy_admin_port,
            "TURNOUT_ENVOY_ADMIN_PORT",
        ),
    ]
    if demo:
        extra = 2 if batching else 0
        for offset in range(DEMO_SERVERS + extra):
            planned.append(
                PlannedPort(
                    "a demo model server" if offset < DEMO_SERVERS + 1 else "the demo batcher",
                    "127.0.0.1",
                    settings.demo_base_port + offset,
                    "TURNOUT_DEMO_BASE_PORT",
                )
            )
        planned.append(
            PlannedPort(
                "the demo's faulty model server (v3)",
                "127.0.0.1",
                settings.demo_base_port + FAULTY_OFFSET,
                "TURNOUT_DEMO_BASE_PORT",
            )
        )
    return planned


def _in_use(host: str, port: int) -> bool:
    """Whether binding ``host:port`` fails because something holds the port."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror:
        return False  # an unresolvable host is reported by whatever binds it
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as sock:
        # As servers bind: SO_REUSEADDR lets a port in TIME_WAIT through, not a listener.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as exc:
            return exc.errno in (errno.EADDRINUSE, errno.EACCES)
    return False


def port_problem(planned: Sequence[PlannedPort]) -> str | None:
    """Return one line about the first port that is taken (by another process, or
    by two parts of this mesh at once), or None when every port is free."""
    seen: dict[int, PlannedPort] = {}
    for entry in planned:
        if entry.port == 0:
            continue
        earlier = seen.get(entry.port)
        if earlier is not None and earlier.setting != entry.setting:
            return (
                f"port {entry.port} is set for both {earlier.what} ({earlier.setting}) and "
                f"{entry.what} ({entry.setting}): give one of them another port"
            )
        seen[entry.port] = entry
        if _in_use(entry.host, entry.port):
            return (
                f"port {entry.port} ({entry.what}, on {entry.host}) is already in use: "
                f"stop what holds it or set {entry.setting} to a free port"
            )
    return None
