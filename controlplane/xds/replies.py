"""Envoy's own replies as JSON: one shape everywhere, the OpenAI shape on OpenAI paths.

Every reply that Envoy generates itself (a local reply) goes through the
connection manager's ``local_reply_config``: the first mapper whose filter
matches rewrites the body.
https://www.envoyproxy.io/docs/envoy/latest/configuration/http/http_conn_man/local_reply

The shape, on every path::

    {"error": "<code>", "detail": "<what happened>", "request_id": "<x-request-id>",
     "reason": "<Envoy's own words, for replies Envoy made up itself>"}

and on the OpenAI paths (``/v1/...``, also under ``/models/{name}``), where the
OpenAI SDKs read the body to raise their typed errors (``NotFoundError``,
``RateLimitError``, ...)::

    {"error": {"message": "<detail>", "type": "<kind>", "param": null,
               "code": "<code>", "request_id": "<x-request-id>"}}

Each reply also carries the ``x-request-id`` header (the connection manager's
``always_set_request_id_in_response``), which the OpenAI SDKs expose as the
error's ``request_id``.

The codes, first match first:

=====================  ======  ==============================================
code                   status  when
=====================  ======  ==============================================
overloaded             503     a circuit breaker is open (flag UO)
no_healthy_upstream    503     no healthy replica (UH)
upstream_unavailable   503     connect failure, reset, retries spent (UF ...)
upstream_timeout       504     the request timeout passed (UT)
stream_idle_timeout    408/504 a stream stayed silent too long (SI)
route_not_found        404     no route (NR)
request_too_large      413     the body exceeds the model's limit
unauthenticated        401     no valid tenant credential
permission_denied      403     the credential may not call this model
rate_limited           429     the tenant's request rate is exceeded
(the route's own)      404/503 Turnout's direct responses: ``model_not_found``,
                               ``version_not_found``, ``no_serving_version``
bad_request            400     a request Envoy refuses (an escaped slash in
                               the path, controlplane.xds.translate)
bad_request            4xx     any other request Envoy refuses
proxy_error            5xx     any other failure
=====================  ======  ==============================================

Turnout's direct responses (an unknown model, no serving version) carry their
code and detail as route metadata (:func:`error_metadata`), which the mappers
read with ``%METADATA(ROUTE:turnout:...)%``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from envoy.config.accesslog.v3 import accesslog_pb2
from envoy.config.core.v3 import base_pb2, substitution_format_string_pb2
from envoy.config.route.v3 import route_components_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.type.matcher.v3 import regex_pb2, string_pb2
from google.protobuf import struct_pb2

__all__ = ["METADATA_NAMESPACE", "OPENAI_PATH_REGEX", "error_metadata", "local_reply_config"]

METADATA_NAMESPACE = "turnout"
# The OpenAI paths, by body or header routing (/v1/...) or by path (/models/{name}/v1/...).
OPENAI_PATH_REGEX = r"^(/models/[^/?]+)?/v1/.*"
REQUEST_ID = "%REQ(X-REQUEST-ID)%"
ROUTE_ERROR = f"%METADATA(ROUTE:{METADATA_NAMESPACE}:error)%"
ROUTE_DETAIL = f"%METADATA(ROUTE:{METADATA_NAMESPACE}:detail)%"


@dataclass(frozen=True, slots=True)
class _Case:
    """One kind of local reply: how to recognise it, and what to say."""

    error: str
    detail: str
    flags: Sequence[str] = ()
    statuses: tuple[int, int] | None = None  # inclusive range
    envoy_reason: bool = True  # add Envoy's own words ("reason")


_CASES = (
    _Case("overloaded", "too many requests in flight to this model version; retry later", ("UO",)),
    _Case("no_healthy_upstream", "no healthy replica of this model version", ("UH",)),
    _Case("upstream_timeout", "the model server did not answer within the timeout", ("UT",)),
    _Case(
        "upstream_unavailable",
        "the model server could not be reached or reset the connection",
        ("UF", "UC", "UR", "URX", "LR", "NC"),
    ),
    _Case("stream_idle_timeout", "the stream sent nothing for too long", ("SI",)),
    _Case("route_not_found", "no route matches the request", ("NR",)),
    _Case(
        "request_too_large",
        "the request body is larger than the model's limit (max_request_bytes)",
        statuses=(413, 413),
    ),
    _Case("unauthenticated", "a valid tenant credential is required", statuses=(401, 401)),
    _Case(
        "permission_denied",
        "the credential may not call this model, or it was revoked",
        statuses=(403, 403),
    ),
    _Case(
        "rate_limited", "the tenant's request rate is exceeded; retry later", statuses=(429, 429)
    ),
    # Turnout's own direct responses: their route says what happened.
    _Case(ROUTE_ERROR, ROUTE_DETAIL, statuses=(404, 404), envoy_reason=False),
    _Case(ROUTE_ERROR, ROUTE_DETAIL, statuses=(503, 503), envoy_reason=False),
    _Case(
        "bad_request",
        "Envoy refused the request (for example an escaped slash in the path)",
        statuses=(400, 400),
    ),
    _Case("bad_request", "the request was refused", statuses=(400, 499)),
    _Case("proxy_error", "the proxy could not complete the request", statuses=(500, 599)),
)

# The OpenAI error "type" of each status class, as OpenAI's API names them.
_OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}


def error_metadata(error: str, detail: str) -> base_pb2.Metadata:
    """Return the route metadata of a direct response that fails with ``error``."""
    metadata = base_pb2.Metadata()
    metadata.filter_metadata[METADATA_NAMESPACE].update({"error": error, "detail": detail})
    return metadata


def local_reply_config() -> hcm_pb2.LocalReplyConfig:
    """Return the mappers that give every local reply its JSON body: the OpenAI shape
    on the OpenAI paths first, then the plain shape everywhere else."""
    openai = _path_filter()
    return hcm_pb2.LocalReplyConfig(
        mappers=[
            *(_mapper(case, openai) for case in _CASES),
            *(_mapper(case, None) for case in _CASES),
        ]
    )


def _path_filter() -> accesslog_pb2.AccessLogFilter:
    return accesslog_pb2.AccessLogFilter(
        header_filter=accesslog_pb2.HeaderFilter(
            header=route_components_pb2.HeaderMatcher(
                name=":path",
                string_match=string_pb2.StringMatcher(
                    safe_regex=regex_pb2.RegexMatcher(regex=OPENAI_PATH_REGEX)
                ),
            )
        )
    )


def _status_filter(low: int, high: int) -> accesslog_pb2.AccessLogFilter:
    def compare(op: int, value: int) -> accesslog_pb2.AccessLogFilter:
        return accesslog_pb2.AccessLogFilter(
            status_code_filter=accesslog_pb2.StatusCodeFilter(
                comparison=accesslog_pb2.ComparisonFilter(
                    op=op,
                    value=base_pb2.RuntimeUInt32(
                        default_value=value, runtime_key=f"turnout.local_reply.{op}.{value}"
                    ),
                )
            )
        )

    if low == high:
        return compare(accesslog_pb2.ComparisonFilter.EQ, low)
    return accesslog_pb2.AccessLogFilter(
        and_filter=accesslog_pb2.AndFilter(
            filters=[
                compare(accesslog_pb2.ComparisonFilter.GE, low),
                compare(accesslog_pb2.ComparisonFilter.LE, high),
            ]
        )
    )


def _case_filter(case: _Case) -> accesslog_pb2.AccessLogFilter:
    if case.flags:
        return accesslog_pb2.AccessLogFilter(
            response_flag_filter=accesslog_pb2.ResponseFlagFilter(flags=list(case.flags))
        )
    assert case.statuses is not None
    return _status_filter(*case.statuses)


def _mapper(case: _Case, path: accesslog_pb2.AccessLogFilter | None) -> hcm_pb2.ResponseMapper:
    matched = _case_filter(case)
    if path is not None:
        matched = accesslog_pb2.AccessLogFilter(
            and_filter=accesslog_pb2.AndFilter(filters=[path, matched])
        )
    body = struct_pb2.Struct()
    if path is not None:
        status = case.statuses[0] if case.statuses is not None else 503
        body.update(
            {
                "error": {
                    "message": case.detail,
                    "type": _OPENAI_TYPES.get(status, "server_error"),
                    "param": None,
                    "code": case.error,
                    "request_id": REQUEST_ID,
                }
            }
        )
    else:
        body.update({"error": case.error, "detail": case.detail, "request_id": REQUEST_ID})
        if case.envoy_reason:
            body.update({"reason": "%LOCAL_REPLY_BODY%"})
    return hcm_pb2.ResponseMapper(
        filter=matched,
        body_format_override=substitution_format_string_pb2.SubstitutionFormatString(
            json_format=body
        ),
    )
