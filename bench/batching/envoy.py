"""A static Envoy for the batching bench: the data path Turnout deploys, without the control plane.

One listener per route: ``turnout`` goes to the batcher (batching on), ``envoy``
goes straight to the model server (batching off: Envoy alone). The routes carry
the SLO as their timeout, so Envoy sends ``x-envoy-expected-rq-timeout-ms`` and
the batcher's deadline is the one Envoy enforces, as in a deployment.
"""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["bootstrap", "envoy_argv"]


def _cluster(name: str, port: int, max_requests: int = 100000) -> dict[str, object]:
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "circuit_breakers": {
            "thresholds": [
                {
                    "max_connections": 100000,
                    "max_pending_requests": 100000,
                    "max_requests": max_requests,
                }
            ]
        },
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {
                            "endpoint": {
                                "address": {
                                    "socket_address": {"address": "127.0.0.1", "port_value": port}
                                }
                            }
                        }
                    ]
                }
            ],
        },
    }


def _listener(name: str, port: int, cluster: str, timeout_ms: float) -> dict[str, object]:
    route = {"cluster": cluster, "timeout": f"{timeout_ms / 1000:.3f}s"}
    # When Envoy received the request: the batcher's deadline runs from then, as Envoy's does.
    start = {"header": {"key": "x-request-start", "value": "%START_TIME(%s.%3f)%"}}
    manager = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network."
        "http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": name,
        "route_config": {
            "virtual_hosts": [
                {
                    "name": name,
                    "domains": ["*"],
                    "routes": [{"match": {"prefix": "/"}, "route": route}],
                    "request_headers_to_add": [start],
                }
            ]
        },
        "http_filters": [
            {
                "name": "envoy.filters.http.router",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                },
            }
        ],
    }
    return {
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [
            {
                "filters": [
                    {
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": manager,
                    }
                ]
            }
        ],
    }


def bootstrap(
    routes: dict[str, tuple[int, int]],
    timeout_ms: float,
    max_requests: dict[str, int] | None = None,
    admin_port: int = 0,
) -> dict[str, object]:
    """Return a static bootstrap: ``routes`` maps a name to (listen port, upstream port);
    ``max_requests`` caps a route's requests in flight upstream (the circuit breaker
    of the model's policy, ``circuit_breakers.max_requests``: Envoy answers 503 at once
    beyond it); ``admin_port`` is the admin interface's (0: any free port)."""
    caps = max_requests or {}
    return {
        "admin": {
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}
        },
        "static_resources": {
            "listeners": [
                _listener(name, listen, f"{name}_upstream", timeout_ms)
                for name, (listen, _) in routes.items()
            ],
            "clusters": [
                _cluster(f"{name}_upstream", upstream, caps.get(name, 100000))
                for name, (_, upstream) in routes.items()
            ],
        },
    }


def envoy_argv(binary: str, config_path: Path, config: dict[str, object]) -> list[str]:
    """Write ``config`` to ``config_path`` and return the command line that runs one Envoy."""
    config_path.write_text(json.dumps(config))
    return [
        binary,
        "-c",
        str(config_path),
        "--disable-hot-restart",
        "--concurrency",
        "1",
        "--log-level",
        "error",
    ]
