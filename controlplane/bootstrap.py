"""Envoy bootstrap rendering, from the template in ``envoy/bootstrap.yaml``."""

from __future__ import annotations

import copy
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

__all__ = ["TEMPLATE_PATH", "XdsAddress", "dump_bootstrap", "render_bootstrap"]

TEMPLATE_PATH = Path(__file__).resolve().parents[1] / "envoy" / "bootstrap.yaml"


@dataclass(frozen=True, slots=True)
class XdsAddress:
    """One control-plane replica's xDS address."""

    host: str
    port: int

    @classmethod
    def parse(cls, value: str) -> XdsAddress:
        """Parse ``host:port``; raise ValueError with a hint on a bad value."""
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{value!r} is not host:port (for example 127.0.0.1:18000)")
        return cls(host.strip("[]"), int(port))


@lru_cache(maxsize=1)
def _template() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(TEMPLATE_PATH.read_text())
    return loaded


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def render_bootstrap(
    node_id: str,
    xds: Sequence[XdsAddress],
    *,
    admin_port: int = 9901,
    node_cluster: str = "turnout",
    zone: str | None = None,
) -> dict[str, Any]:
    """Return the bootstrap of one Envoy as a dict (dump it as YAML or JSON).

    Every address in ``xds`` is an endpoint of the ``turnout_xds`` cluster, so
    Envoy fails over between control-plane replicas. With ``zone``, the node's
    locality says where this Envoy runs, and the control plane sends it the
    endpoints of that zone at priority 0 (the others fail over at priority 1).
    """
    if not node_id:
        raise ValueError("node id must not be empty")
    if not xds:
        raise ValueError("at least one xDS address is needed")
    bootstrap = copy.deepcopy(_template())
    bootstrap["node"] = {"id": node_id, "cluster": node_cluster}
    if zone:
        bootstrap["node"]["locality"] = {"zone": zone}
    bootstrap["admin"]["address"]["socket_address"]["port_value"] = admin_port
    cluster = bootstrap["static_resources"]["clusters"][0]
    if not all(_is_ip(a.host) for a in xds):
        cluster["type"] = "STRICT_DNS"
    cluster["load_assignment"]["endpoints"] = [
        {
            "lb_endpoints": [
                {
                    "endpoint": {
                        "address": {"socket_address": {"address": a.host, "port_value": a.port}}
                    }
                }
                for a in xds
            ]
        }
    ]
    return bootstrap


def dump_bootstrap(bootstrap: dict[str, Any]) -> str:
    """Return ``bootstrap`` as YAML text."""
    return yaml.safe_dump(bootstrap, sort_keys=False)
