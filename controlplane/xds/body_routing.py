"""OpenAI-style routing: pick the model from the JSON body's ``"model"`` field.

Envoy matches routes on headers, not bodies, and resolves the route before
the body arrives. So the OpenAI paths (POST /v1/chat/completions,
/v1/completions, /v1/embeddings) without an ``x-turnout-model`` header first
match a fallback route of their own, which enables two HTTP filters that are
off everywhere else:

1. ``json_to_metadata`` buffers the body, parses it as JSON (in C++, so
   nested or escaped ``"model"`` strings inside messages cannot fool it) and
   stores the top-level ``model`` in dynamic metadata;
   https://www.envoyproxy.io/docs/envoy/latest/configuration/http/http_filters/json_to_metadata_filter
2. a small Lua script copies that value into ``x-turnout-model`` (and, for
   ``name:version``, the version into ``x-turnout-version``). Headers changed
   by the Lua filter clear the route cache (its ``clear_route_cache`` option,
   left at its default), so Envoy matches the request again and the model's
   header routes take it; verified against Envoy 1.40 by tests/e2e/test_policies.py.
   https://www.envoyproxy.io/docs/envoy/latest/configuration/http/http_filters/lua_filter

Why not Lua alone: Envoy's Lua has no JSON parser, and pattern matching a
body goes wrong for bodies that quote JSON. Why not json_to_metadata alone,
with routes matching dynamic metadata: something must still clear the route
cache once the body is parsed, which is exactly what the Lua step does, and
the header it sets is the one the existing header routes already match.
Other requests never buffer: both filters are disabled unless the fallback
route enables them. A body naming no known model gets the fallback's 404.
"""

from __future__ import annotations

import json

from envoy.config.core.v3 import base_pb2
from envoy.config.route.v3 import route_components_pb2
from envoy.extensions.filters.http.buffer.v3 import buffer_pb2
from envoy.extensions.filters.http.json_to_metadata.v3 import json_to_metadata_pb2
from envoy.extensions.filters.http.lua.v3 import lua_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.type.matcher.v3 import string_pb2
from google.protobuf import wrappers_pb2

from controlplane.xds.resources import to_any

__all__ = ["OPENAI_PATHS", "body_routing_filters", "body_routing_routes"]

OPENAI_PATHS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")
JSON_FILTER = "envoy.filters.http.json_to_metadata"
LUA_FILTER = "envoy.filters.http.lua"
METADATA_NAMESPACE = "turnout"
LUA_SCRIPT_NAME = "model-from-body"

LUA_SOURCE = """
function envoy_on_request(handle)
  local headers = handle:headers()
  if headers:get("x-turnout-model") ~= nil then
    return
  end
  local meta = handle:streamInfo():dynamicMetadata():get("turnout")
  if meta == nil or type(meta["model"]) ~= "string" then
    return
  end
  local name = meta["model"]
  local model, version = string.match(name, "^([^:]+):(.+)$")
  if model == nil then
    model = name
  end
  headers:replace("x-turnout-model", model)
  if version ~= nil then
    headers:replace("x-turnout-version", version)
  end
  -- The route is matched again for the new headers: its metadata has the
  -- model's body limit, which the buffer filter (run before) could not know.
  local limit = handle:metadata():get("max_request_bytes")
  if limit ~= nil and handle:body():length() > limit then
    handle:respond({[":status"] = "413", ["content-type"] = "application/json"},
      '{"error": "request_too_large", "detail": "the body is over the model limit"}')
  end
end
"""

NO_MODEL_BODY = json.dumps(
    {
        "error": "model_not_found",
        "detail": 'the JSON body\'s "model" field names no model (use "name" or "name:version")',
    }
)


def _json_to_metadata() -> json_to_metadata_pb2.JsonToMetadata:
    rule = json_to_metadata_pb2.JsonToMetadata.Rule(
        selectors=[json_to_metadata_pb2.JsonToMetadata.Selector(key="model")],
        on_present=json_to_metadata_pb2.JsonToMetadata.KeyValuePair(
            metadata_namespace=METADATA_NAMESPACE,
            key="model",
            type=json_to_metadata_pb2.JsonToMetadata.STRING,
        ),
    )
    return json_to_metadata_pb2.JsonToMetadata(
        request_rules=json_to_metadata_pb2.JsonToMetadata.MatchRules(rules=[rule])
    )


def body_routing_filters() -> list[hcm_pb2.HttpFilter]:
    """Return the two HTTP filters (disabled by default) that go before the router."""
    return [
        hcm_pb2.HttpFilter(
            name=JSON_FILTER, typed_config=to_any(_json_to_metadata()), disabled=True
        ),
        hcm_pb2.HttpFilter(
            name=LUA_FILTER,
            typed_config=to_any(
                lua_pb2.Lua(
                    source_codes={LUA_SCRIPT_NAME: base_pb2.DataSource(inline_string=LUA_SOURCE)}
                )
            ),
            disabled=True,
        ),
    ]


def body_routing_routes(body_limit: int) -> list[route_components_pb2.Route]:
    """Return the fallback routes of the OpenAI paths, which enable the two filters
    and take bodies up to ``body_limit`` bytes (the model's own limit is checked
    once the body names it)."""
    enable = {
        "envoy.filters.http.buffer": to_any(
            buffer_pb2.BufferPerRoute(
                buffer=buffer_pb2.Buffer(
                    max_request_bytes=wrappers_pb2.UInt32Value(value=body_limit)
                )
            )
        ),
        # Envoy takes no empty per-route config, so each filter gets a real one.
        JSON_FILTER: to_any(route_components_pb2.FilterConfig(config=to_any(_json_to_metadata()))),
        LUA_FILTER: to_any(
            route_components_pb2.FilterConfig(
                config=to_any(lua_pb2.LuaPerRoute(name=LUA_SCRIPT_NAME))
            )
        ),
    }
    return [
        route_components_pb2.Route(
            name=f"openai-body{path}",
            match=route_components_pb2.RouteMatch(
                path=path,
                headers=[
                    route_components_pb2.HeaderMatcher(
                        name=":method", string_match=string_pb2.StringMatcher(exact="POST")
                    )
                ],
            ),
            direct_response=route_components_pb2.DirectResponseAction(
                status=404, body=base_pb2.DataSource(inline_string=NO_MODEL_BODY)
            ),
            response_headers_to_add=[
                base_pb2.HeaderValueOption(
                    header=base_pb2.HeaderValue(key="content-type", value="application/json"),
                    append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
                )
            ],
            typed_per_filter_config=enable,
        )
        for path in OPENAI_PATHS
    ]
