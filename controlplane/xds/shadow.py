"""Shadow comparisons in Envoy: both answers to a sampled request reach the
control plane (docs/shadow.md).

Envoy's mirror drops the shadow's answer, so for a model whose shadow policy
compares (``compare_percent`` > 0) Envoy itself tees both answers:

1. A Lua filter (``turnout.shadow``, listener-wide, no default script: it does
   nothing on routes without its per-route config) runs on every route of the
   model. It removes any client-sent ``x-turnout-shadow-cluster`` header, then
   decides from a hash of ``x-request-id`` whether this request is mirrored
   (``percent``) and, if so, whether it is compared (``compare_percent`` of the
   mirrored ones). It names the mirror's target in ``x-turnout-shadow-cluster``:
   the shadow version's own cluster, or, for a compared request, the version's
   *tap* cluster. The route's mirror policy reads its cluster from that header
   (``cluster_header``; no header, no mirror), so the sampling is the script's
   and deterministic by request id. On the response of a compared request the
   script reports the primary's status, latency and body.
2. The tap cluster (:func:`tap_cluster_name`) has the shadow version's
   endpoints (held inline, see controlplane.xds.translate.tap_clusters) and an
   upstream Lua filter that reports the shadow's status, latency and body of
   every request it carries (only compared mirrors reach it).
3. Reports are asynchronous HTTP calls (fire and forget) to the control plane's
   gRPC port over the bootstrap's ``turnout_xds`` cluster, as the unary method
   :data:`REPORT_PATH` whose message is the report format of
   :func:`controlplane.domain.shadow.encode_report`. The control plane pairs
   the two halves by request id (controlplane.telemetry.shadow).

A body is read only when its ``content-length`` is at most the policy's
``max_body_bytes`` (so no answer is ever held in full beyond that cap, and a
streamed answer, without a length, is never buffered); otherwise the half
carries no body and the comparison covers status and latency only. Streamed
routes (``accept: text/event-stream``, ``"stream": true``) mirror as sampled
but never compare.
"""

from __future__ import annotations

import json

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.common.mutation_rules.v3 import mutation_rules_pb2
from envoy.config.core.v3 import base_pb2, protocol_pb2
from envoy.config.route.v3 import route_components_pb2
from envoy.extensions.filters.http.lua.v3 import lua_pb2
from envoy.extensions.filters.http.upstream_codec.v3 import upstream_codec_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from envoy.type.v3 import percent_pb2
from google.protobuf import struct_pb2

from controlplane.domain.naming import stat_name
from controlplane.domain.policy import Shadow
from controlplane.domain.shadow import REPORT_METHOD, REPORT_SERVICE, REPORT_VERSION
from controlplane.domain.state import ModelSpec
from controlplane.xds.resources import cluster_name, to_any

__all__ = [
    "CLUSTER_HEADER",
    "REPORT_CLUSTER",
    "REPORT_PATH",
    "SHADOW_FILTER",
    "compares",
    "mirror_policy",
    "sampled",
    "shadow_filter",
    "tap_cluster",
    "tap_cluster_name",
    "tap_stat_name",
    "tee_routes",
]

SHADOW_FILTER = "turnout.shadow"
TEE_SCRIPT = "shadow-tee"
CLUSTER_HEADER = "x-turnout-shadow-cluster"
# The bootstrap's cluster of the control plane's gRPC port (envoy/bootstrap.yaml).
REPORT_CLUSTER = "turnout_xds"
REPORT_PATH = f"/{REPORT_SERVICE}/{REPORT_METHOD}"
# A report is fire-and-forget: a long bound costs nothing while the control plane
# keeps up, and keeps a busy one from losing halves (a lost half is a lost sample).
REPORT_TIMEOUT_MS = 10_000
_PPM = 1_000_000
_STREAM_SUFFIXES = ("/stream-sse", "/stream-body")

# Two string hashes of the request id: the first picks mirrored requests, the
# second the compared share of them (sampled() is the same in Python).
_HASHES = ((31, 2147483647), (131, 2147483629))

_SEND = f"""
local function send(handle, model, side, version, rid, status, ms, body)
  local length = "nobody"
  if body ~= nil then
    length = "body " .. #body
  end
  local payload = table.concat({{{json.dumps(REPORT_VERSION)}, model, side, version, rid,
    status, string.format("%.3f", ms), length}}, "\\n") .. "\\n" .. (body or "")
  local n = #payload
  -- A gRPC message: no compression, then its length in four bytes, big-endian.
  local frame = string.char(0, math.floor(n / 16777216) % 256, math.floor(n / 65536) % 256,
    math.floor(n / 256) % 256, n % 256) .. payload
  handle:httpCall({json.dumps(REPORT_CLUSTER)}, {{
    [":method"] = "POST", [":path"] = {json.dumps(REPORT_PATH)}, [":authority"] = "turnout",
    ["content-type"] = "application/grpc", ["te"] = "trailers"}},
    frame, {REPORT_TIMEOUT_MS}, true)
end

-- The body when its announced length is at most cap; nil otherwise (unknown
-- length: a stream, never buffered).
local function capped_body(handle, cap)
  local length = tonumber(handle:headers():get("content-length") or "")
  if length == nil or length > cap then
    return nil
  end
  if length == 0 then
    return ""
  end
  local body = handle:body()
  if body == nil then
    return ""
  end
  return body:getBytes(0, body:length())
end
"""

TEE_SOURCE = (
    _SEND
    + f"""
local function context(handle)
  -- Indexing the context table misses its keys in Envoy 1.40; iterating finds them.
  local c = {{}}
  for key, value in pairs(handle:filterContext()) do
    c[key] = value
  end
  return c
end

local function hash(s, multiplier, modulus)
  local h = 0
  for i = 1, #s do
    h = (h * multiplier + string.byte(s, i)) % modulus
  end
  return h % {_PPM}
end

function envoy_on_request(handle)
  local headers = handle:headers()
  headers:remove({json.dumps(CLUSTER_HEADER)})
  local rid = headers:get("x-request-id")
  if rid == nil then
    return
  end
  local c = context(handle)
  if c.mirror_ppm == nil or hash(rid, {_HASHES[0][0]}, {_HASHES[0][1]}) >= c.mirror_ppm then
    return
  end
  if c.compare_ppm > 0 and hash(rid, {_HASHES[1][0]}, {_HASHES[1][1]}) < c.compare_ppm then
    headers:replace({json.dumps(CLUSTER_HEADER)}, c.tap_cluster)
    local meta = handle:streamInfo():dynamicMetadata()
    meta:set("turnout.shadow", "t0", handle:timestamp())
    meta:set("turnout.shadow", "rid", rid)
  else
    headers:replace({json.dumps(CLUSTER_HEADER)}, c.shadow_cluster)
  end
end

function envoy_on_response(handle)
  local meta = handle:streamInfo():dynamicMetadata():get("turnout.shadow")
  if meta == nil or meta["rid"] == nil then
    return
  end
  local c = context(handle)
  local headers = handle:headers()
  local status = headers:get(":status") or "0"
  local version = headers:get("x-turnout-version") or ""
  local body = capped_body(handle, c.max_body_bytes)
  send(handle, c.model, "primary", version, meta["rid"], status,
    handle:timestamp() - meta["t0"], body)
end
"""
)


def _tap_source(model: str, version: str, cap: int) -> str:
    return (
        _SEND
        + f"""
local MODEL = {json.dumps(model)}
local VERSION = {json.dumps(version)}
local CAP = {cap}

function envoy_on_request(handle)
  local meta = handle:streamInfo():dynamicMetadata()
  meta:set("turnout.shadow_tap", "t0", handle:timestamp())
  meta:set("turnout.shadow_tap", "rid", handle:headers():get("x-request-id") or "")
end

function envoy_on_response(handle)
  local meta = handle:streamInfo():dynamicMetadata():get("turnout.shadow_tap")
  if meta == nil or meta["rid"] == nil or meta["rid"] == "" then
    return
  end
  local status = handle:headers():get(":status") or "0"
  local body = capped_body(handle, CAP)
  send(handle, MODEL, "shadow", VERSION, meta["rid"], status,
    handle:timestamp() - meta["t0"], body)
end
"""
    )


def sampled(request_id: str, percent: float, compare_percent: float) -> tuple[bool, bool]:
    """Return (mirrored, compared) for ``request_id``, as the Envoy script decides."""
    marks = []
    for multiplier, modulus in _HASHES:
        h = 0
        for byte in request_id.encode():
            h = (h * multiplier + byte) % modulus
        marks.append(h % _PPM)
    mirrored = marks[0] < _ppm(percent)
    return mirrored, mirrored and marks[1] < _ppm(compare_percent)


def _ppm(percent: float) -> int:
    return round(percent * 10_000)


def compares(model: ModelSpec) -> Shadow | None:
    """Return the model's shadow policy when it compares answers, else None."""
    shadow = model.policy.shadow
    if shadow is None or shadow.compare_percent <= 0:
        return None
    if all(v.name != shadow.version for v in model.versions):
        return None
    return shadow


def tap_cluster_name(model: str, version: str) -> str:
    """Return the name of the cluster that carries compared mirrors to ``version``:
    it starts ``model/`` like the model's own clusters (containment holds it with
    its model), and no version's cluster has a second ``/``."""
    return f"{model}/{version}/shadow-tap"


def tap_stat_name(model: str, version: str) -> str:
    """Return the tap cluster's statistics name: it starts with ``_``, which no
    version's stat name does (names start with a letter or digit), so the traffic
    window never counts it as a version's traffic."""
    return "_shadow_tap_" + stat_name(cluster_name(model, version))


def shadow_filter() -> hcm_pb2.HttpFilter:
    """Return the listener's shadow filter: no default script, so it acts only on
    routes that carry its config (:func:`tee_routes`)."""
    return hcm_pb2.HttpFilter(
        name=SHADOW_FILTER,
        typed_config=to_any(
            lua_pb2.Lua(source_codes={TEE_SCRIPT: base_pb2.DataSource(inline_string=TEE_SOURCE)})
        ),
    )


def mirror_policy(
    model: str, shadow: Shadow, compare: bool
) -> route_components_pb2.RouteAction.RequestMirrorPolicy:
    """Return the route's mirror: to the shadow version's cluster for ``percent`` of
    requests, or, when the model compares, to the cluster the script names."""
    if not compare:
        # Envoy mirrors fire-and-forget: the shadow's response is discarded, so
        # clients only ever see the primary's answer.
        # https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/route/v3/route_components.proto#config-route-v3-routeaction-requestmirrorpolicy
        return route_components_pb2.RouteAction.RequestMirrorPolicy(
            cluster=cluster_name(model, shadow.version),
            runtime_fraction=_fraction(_ppm(shadow.percent)),
        )
    return route_components_pb2.RouteAction.RequestMirrorPolicy(
        # No header (the script did not sample the request): no mirror.
        cluster_header=CLUSTER_HEADER,
        runtime_fraction=_fraction(_PPM),
        request_headers_mutations=[
            mutation_rules_pb2.HeaderMutation(remove=CLUSTER_HEADER),
        ],
    )


def _fraction(ppm: int) -> base_pb2.RuntimeFractionalPercent:
    return base_pb2.RuntimeFractionalPercent(
        default_value=percent_pb2.FractionalPercent(
            numerator=ppm, denominator=percent_pb2.FractionalPercent.MILLION
        )
    )


def tee_routes(model: ModelSpec, routes: list[route_components_pb2.Route]) -> None:
    """Give every route of ``model`` that mirrors by header the shadow script's
    config (it must run wherever the header decides: it removes a client's)."""
    shadow = compares(model)
    if shadow is None:
        return
    for route in routes:
        if not route.HasField("route"):
            continue
        if not any(m.cluster_header for m in route.route.request_mirror_policies):
            continue
        stream = route.name.endswith(_STREAM_SUFFIXES)
        context = struct_pb2.Struct()
        context.update(
            {
                "model": model.name,
                "mirror_ppm": _ppm(shadow.percent),
                "compare_ppm": 0 if stream else _ppm(shadow.compare_percent),
                "max_body_bytes": shadow.max_body_bytes,
                "shadow_cluster": cluster_name(model.name, shadow.version),
                "tap_cluster": tap_cluster_name(model.name, shadow.version),
            }
        )
        route.typed_per_filter_config[SHADOW_FILTER].CopyFrom(
            to_any(lua_pb2.LuaPerRoute(name=TEE_SCRIPT, filter_context=context))
        )


def tap_cluster(model: ModelSpec, version_cluster: cluster_pb2.Cluster) -> cluster_pb2.Cluster:
    """Return the tap cluster of ``model``'s shadow version, made from that
    version's own cluster (``version_cluster``: the same endpoints, over EDS or
    DNS, and policy) with an upstream filter that reports the shadow's answers.
    It runs no health checks of its own: the version's cluster does."""
    shadow = compares(model)
    assert shadow is not None, "tap_cluster needs a model whose shadow compares"
    name = tap_cluster_name(model.name, shadow.version)
    options = http_protocol_options_pb2.HttpProtocolOptions(
        # HTTP/1.1, as the version's own cluster speaks to its replicas.
        explicit_http_config=http_protocol_options_pb2.HttpProtocolOptions.ExplicitHttpConfig(
            http_protocol_options=protocol_pb2.Http1ProtocolOptions(),
        ),
        http_filters=[
            hcm_pb2.HttpFilter(
                name="envoy.filters.http.lua",
                typed_config=to_any(
                    lua_pb2.Lua(
                        default_source_code=base_pb2.DataSource(
                            inline_string=_tap_source(
                                model.name, shadow.version, shadow.max_body_bytes
                            )
                        )
                    )
                ),
            ),
            hcm_pb2.HttpFilter(
                name="envoy.filters.http.upstream_codec",
                typed_config=to_any(upstream_codec_pb2.UpstreamCodec()),
            ),
        ],
    )
    cluster = cluster_pb2.Cluster()
    cluster.CopyFrom(version_cluster)
    cluster.name = name
    cluster.alt_stat_name = tap_stat_name(model.name, shadow.version)
    cluster.ClearField("health_checks")
    if cluster.HasField("load_assignment"):
        cluster.load_assignment.cluster_name = name
    cluster.typed_extension_protocol_options[
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    ].CopyFrom(to_any(options))
    return cluster
