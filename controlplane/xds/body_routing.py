"""OpenAI-style routing: pick the model from the JSON body's ``"model"`` field.

Envoy matches routes on headers, not bodies, and resolves the route before
the body arrives. So the OpenAI paths (POST /v1/chat/completions,
/v1/completions, /v1/embeddings) without an ``x-turnout-model`` header first
match a fallback route of their own, which raises the body limit and enables
two HTTP filters that are off everywhere else:

1. ``buffer`` (the listener's, first in the chain: controlplane.xds.edge)
   holds the whole body, here up to the largest ``max_request_bytes`` of any
   model (:func:`controlplane.xds.edge.largest_limit`, 8 MiB by default), and
   raises the stream's buffer limit to match, so a body routed by its content
   is not held to the listener's 1 MiB buffer when the same body routed by
   header would pass; a larger body gets a JSON 413 (``request_too_large``,
   controlplane.xds.replies).
   https://www.envoyproxy.io/docs/envoy/latest/configuration/http/http_filters/buffer_filter
2. ``json_to_metadata`` parses the body as JSON (in C++, so nested or escaped
   ``"model"`` strings inside messages cannot fool it) and stores the top-level
   ``model`` (and ``stream``) in dynamic metadata. It takes ``application/json``
   with parameters (``; charset=utf-8``, as .NET and OkHttp send it), in any
   case, and bodies with no content type at all.
   https://www.envoyproxy.io/docs/envoy/latest/configuration/http/http_filters/json_to_metadata_filter
3. a small Lua script copies that value into ``x-turnout-model`` (and, for
   ``name:version``, the version into ``x-turnout-version``). Headers changed
   by the Lua filter clear the route cache (its ``clear_route_cache`` option,
   left at its default), so Envoy matches the request again and the model's
   header routes take it; verified against Envoy 1.40 by tests/e2e/test_policies.py.
   That route's metadata carries the model's own body limit, which the script
   then checks (a JSON 413 when the body is over it).
   https://www.envoyproxy.io/docs/envoy/latest/configuration/http/http_filters/lua_filter

A fourth filter, always on, rewrites the body's ``"model"`` to the name the
chosen version's server expects (its ``served_model_name``, default the
model's name), so ``"model": "chat:v2"`` reaches the server as ``"chat"``.
It acts only on body-routed requests (those with the metadata of step 2,
which a client cannot set) and only on routes that carry its per-route
config: each version's route and each version's entry in a weighted split
(:func:`served_model_config`). Envoy picks the weighted entry when it resolves
the route, before the filters run, so the most specific per-route config the
filter sees is that of the version the request goes to.
https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/route/v3/route_components.proto#envoy-v3-api-field-config-route-v3-weightedcluster-clusterweight-typed-per-filter-config

Why not Lua alone: Envoy's Lua has no JSON parser, and pattern matching a
body goes wrong for bodies that quote JSON. Why not json_to_metadata alone,
with routes matching dynamic metadata: something must still clear the route
cache once the body is parsed, which is exactly what the Lua step does, and
the header it sets is the one the existing header routes already match. The
rewrite scans the body's JSON structure (strings skipped whole) for the
top-level ``"model"`` value; served names hold no character that JSON escapes
(controlplane.api.policy_schemas), so the name goes in as it is.
The JSON and Lua steps are disabled unless the fallback route enables them.
A body naming no known model gets the fallback's 404.
"""

from __future__ import annotations

import json

from envoy.config.core.v3 import base_pb2
from envoy.config.route.v3 import route_components_pb2
from envoy.extensions.filters.http.json_to_metadata.v3 import json_to_metadata_pb2
from envoy.extensions.filters.http.lua.v3 import lua_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.type.matcher.v3 import regex_pb2, string_pb2
from google.protobuf import any_pb2, struct_pb2

from controlplane.xds.edge import BODY_LIMIT_FILTER, limit_config
from controlplane.xds.replies import METADATA_NAMESPACE, error_metadata
from controlplane.xds.resources import to_any

__all__ = [
    "METADATA_NAMESPACE",
    "OPENAI_PATHS",
    "SERVED_MODEL_FILTER",
    "STREAM_KEY",
    "body_routing_filters",
    "body_routing_routes",
    "served_model_config",
]

OPENAI_PATHS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")
JSON_FILTER = "envoy.filters.http.json_to_metadata"
LUA_FILTER = "envoy.filters.http.lua"
SERVED_MODEL_FILTER = "turnout.served_model"
LUA_SCRIPT_NAME = "model-from-body"
SERVED_MODEL_SCRIPT = "served-model"
STREAM_KEY = "stream"
# application/json, any case, with or without parameters (RFC 9110 section 8.3.1).
JSON_CONTENT_TYPES = r"(?i)application/json[ \t]*(;.*)?"

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

SERVED_MODEL_SOURCE = """
-- The index of the closing quote of the JSON string that opens at i.
local function string_end(s, i)
  local j = i + 1
  while true do
    local q = string.find(s, '["\\\\]', j)
    if q == nil or string.byte(s, q) == 34 then
      return q
    end
    j = q + 2
  end
end

-- The indices of the quotes around the top-level "model" string value.
local function model_value(s)
  local depth, i = 0, 1
  while true do
    local p = string.find(s, '[{}%[%]"]', i)
    if p == nil then
      return nil
    end
    local c = string.byte(s, p)
    if c == 34 then
      local e = string_end(s, p)
      if e == nil then
        return nil
      end
      if depth == 1 and e - p == 6 and string.sub(s, p + 1, e - 1) == "model" then
        local _, _, q = string.find(s, '^%s*:%s*()"', e + 1)
        if q ~= nil then
          return q, string_end(s, q)
        end
      end
      i = e + 1
    else
      if c == 123 or c == 91 then
        depth = depth + 1
      else
        depth = depth - 1
      end
      i = p + 1
    end
  end
end

function envoy_on_request(handle)
  local meta = handle:streamInfo():dynamicMetadata():get("turnout")
  if meta == nil or type(meta["model"]) ~= "string" then
    return
  end
  -- Indexing the context table misses its keys in Envoy 1.40; iterating finds them.
  local served = nil
  for key, value in pairs(handle:filterContext()) do
    if key == "served_model_name" then
      served = value
    end
  end
  if served == nil or served == meta["model"] then
    return
  end
  local body = handle:body()
  if body == nil then
    return
  end
  local s = body:getBytes(0, body:length())
  local first, last = model_value(s)
  if first ~= nil and last ~= nil then
    body:setBytes(string.sub(s, 1, first) .. served .. string.sub(s, last))
  end
end
"""

NO_MODEL_ERROR = "model_not_found"
NO_MODEL_DETAIL = 'the JSON body\'s "model" field names no model (use "name" or "name:version")'
NO_MODEL_BODY = json.dumps({"error": NO_MODEL_ERROR, "detail": NO_MODEL_DETAIL})


def _json_to_metadata() -> json_to_metadata_pb2.JsonToMetadata:
    def rule(key: str, kind: int) -> json_to_metadata_pb2.JsonToMetadata.Rule:
        return json_to_metadata_pb2.JsonToMetadata.Rule(
            selectors=[json_to_metadata_pb2.JsonToMetadata.Selector(key=key)],
            on_present=json_to_metadata_pb2.JsonToMetadata.KeyValuePair(
                metadata_namespace=METADATA_NAMESPACE,
                key=key,
                type=kind,
            ),
        )

    return json_to_metadata_pb2.JsonToMetadata(
        request_rules=json_to_metadata_pb2.JsonToMetadata.MatchRules(
            rules=[
                rule("model", json_to_metadata_pb2.JsonToMetadata.STRING),
                # A bool stays a bool: the stream routes match it as one.
                rule(STREAM_KEY, json_to_metadata_pb2.JsonToMetadata.PROTOBUF_VALUE),
            ],
            allow_content_types_regex=regex_pb2.RegexMatcher(regex=JSON_CONTENT_TYPES),
            allow_empty_content_type=True,
        )
    )


def body_routing_filters() -> list[hcm_pb2.HttpFilter]:
    """Return the HTTP filters of body routing that go before the router (after the
    listener's buffer filter, controlplane.xds.edge): two disabled unless a route
    enables them, then the served-name rewrite, which acts only where a route
    configures it."""
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
        # No default script: the filter does nothing on a route without its config.
        hcm_pb2.HttpFilter(
            name=SERVED_MODEL_FILTER,
            typed_config=to_any(
                lua_pb2.Lua(
                    source_codes={
                        SERVED_MODEL_SCRIPT: base_pb2.DataSource(inline_string=SERVED_MODEL_SOURCE)
                    }
                )
            ),
        ),
    ]


def served_model_config(served_model_name: str) -> dict[str, any_pb2.Any]:
    """Return the ``typed_per_filter_config`` that makes body-routed requests to one
    version say ``served_model_name`` in their body's ``"model"``."""
    context = struct_pb2.Struct()
    context.update({"served_model_name": served_model_name})
    return {
        SERVED_MODEL_FILTER: to_any(
            lua_pb2.LuaPerRoute(name=SERVED_MODEL_SCRIPT, filter_context=context)
        )
    }


def body_routing_routes(limit: int) -> list[route_components_pb2.Route]:
    """Return the fallback routes of the OpenAI paths, which enable the two filters
    and take bodies up to ``limit`` bytes (the largest any model takes,
    controlplane.xds.edge.largest_limit; the model's own limit is checked once the
    body names it)."""
    enable = {
        # The listener's buffer filter is on everywhere: only its limit changes here.
        BODY_LIMIT_FILTER: limit_config(limit),
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
            metadata=error_metadata(NO_MODEL_ERROR, NO_MODEL_DETAIL),
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
