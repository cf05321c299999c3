"""Edge defaults of the inference listener that depend on the models: body size limits.

Every request body is capped (a model's ``max_request_bytes``, else
``DEFAULT_MAX_REQUEST_BYTES``) by Envoy's ``buffer`` filter, first in the chain:
it counts the body as it arrives and answers 413 once it passes the limit of
the route the request matched.
https://www.envoyproxy.io/docs/envoy/latest/configuration/http/http_filters/buffer_filter

A request routed by its JSON body matches the OpenAI fallback route first, so
that route's limit is the largest of every model's (the body must be read to
learn the model); once the body names the model, the Lua step compares the
body with that model's limit, carried in its header routes' metadata, and
answers 413 itself. Either way the same limit applies to a model, whichever
way the request names it. 413 replies (and the 400 of a path with an escaped
slash) get JSON bodies like every other local reply (controlplane.xds.replies).
"""

from __future__ import annotations

from collections.abc import Iterable

from envoy.config.route.v3 import route_components_pb2
from envoy.extensions.filters.http.buffer.v3 import buffer_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from google.protobuf import any_pb2, wrappers_pb2

from controlplane.domain.policy import DEFAULT_MAX_REQUEST_BYTES
from controlplane.domain.state import ModelSpec
from controlplane.xds.resources import to_any

__all__ = [
    "BODY_LIMIT_FILTER",
    "LIMIT_METADATA_KEY",
    "body_limit",
    "body_limit_filter",
    "largest_limit",
    "limit_config",
]

BODY_LIMIT_FILTER = "envoy.filters.http.buffer"
# Route metadata, under the Lua filter's name, that the body-routing script reads.
LIMIT_METADATA_KEY = "max_request_bytes"


def _buffer(limit: int) -> buffer_pb2.Buffer:
    return buffer_pb2.Buffer(max_request_bytes=wrappers_pb2.UInt32Value(value=limit))


def body_limit_filter() -> hcm_pb2.HttpFilter:
    """The listener's buffer filter, with the default limit."""
    return hcm_pb2.HttpFilter(
        name=BODY_LIMIT_FILTER, typed_config=to_any(_buffer(DEFAULT_MAX_REQUEST_BYTES))
    )


def limit_config(limit: int) -> any_pb2.Any:
    """The per-route config of the buffer filter that sets the body limit ``limit``."""
    return to_any(buffer_pb2.BufferPerRoute(buffer=_buffer(limit)))


def body_limit(route: route_components_pb2.Route, limit: int) -> None:
    """Give ``route`` the body limit ``limit`` (left to the listener's at the default)."""
    if limit != DEFAULT_MAX_REQUEST_BYTES:
        route.typed_per_filter_config[BODY_LIMIT_FILTER].CopyFrom(limit_config(limit))


def largest_limit(models: Iterable[ModelSpec]) -> int:
    """The largest body limit of any model (the default when there are none)."""
    return max((m.policy.request_limit() for m in models), default=DEFAULT_MAX_REQUEST_BYTES)
