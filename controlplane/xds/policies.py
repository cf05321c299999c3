"""Policies -> Envoy config: the cluster side (per version) and the route side (per model).

Pure functions of the domain values, like the rest of the translator. With the
empty policy nothing is added, so Envoy keeps Turnout's defaults (least-request
load balancing, the 60 s route timeout, no retries).
"""

from __future__ import annotations

from envoy.config.cluster.v3 import circuit_breaker_pb2, cluster_pb2, outlier_detection_pb2
from envoy.config.core.v3 import base_pb2, health_check_pb2
from envoy.config.route.v3 import route_components_pb2
from envoy.extensions.retry.host.previous_hosts.v3 import previous_hosts_pb2
from envoy.extensions.retry.priority.previous_priorities.v3 import (
    previous_priorities_config_pb2,
)
from google.protobuf import duration_pb2, wrappers_pb2

from controlplane.domain.policy import (
    DEFAULT_REQUEST_TIMEOUT_MS,
    Retries,
    VersionPolicy,
)
from controlplane.domain.state import ModelSpec
from controlplane.xds.resources import to_any
from controlplane.xds.shadow import compares, mirror_policy

__all__ = [
    "apply_route_policy",
    "apply_version_policy",
    "hash_header_names",
    "millis",
]

# Envoy's default ring is 1024..8M entries; a model version has a handful of
# replicas, so a small ring spreads keys well and keeps memory per cluster low.
# https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/cluster/v3/cluster.proto#config-cluster-v3-cluster-ringhashlbconfig
RING_SIZE = 1024


def millis(value: int) -> duration_pb2.Duration:
    """Return ``value`` milliseconds as a protobuf Duration."""
    return duration_pb2.Duration(seconds=value // 1000, nanos=(value % 1000) * 1_000_000)


def apply_version_policy(
    cluster: cluster_pb2.Cluster, policy: VersionPolicy, retries: Retries | None
) -> None:
    """Add a version's cluster policy (and its model's retry budget) to ``cluster``."""
    thresholds = _thresholds(policy, retries)
    if thresholds is not None:
        cluster.circuit_breakers.thresholds.append(thresholds)
    outlier = policy.outlier_detection
    if outlier is not None:
        cluster.outlier_detection.CopyFrom(
            outlier_detection_pb2.OutlierDetection(
                consecutive_5xx=wrappers_pb2.UInt32Value(value=outlier.consecutive_5xx),
                interval=millis(outlier.interval_ms),
                base_ejection_time=millis(outlier.base_ejection_time_ms),
                max_ejection_percent=wrappers_pb2.UInt32Value(value=outlier.max_ejection_percent),
            )
        )
    check = policy.health_check
    if check is not None:
        cluster.health_checks.append(
            health_check_pb2.HealthCheck(
                timeout=millis(check.timeout_ms),
                interval=millis(check.interval_ms),
                # Without traffic Envoy would check only every 60 s by default; a
                # replica must be known healthy before the first request arrives.
                # https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/core/v3/health_check.proto#envoy-v3-api-field-config-core-v3-healthcheck-no-traffic-interval
                no_traffic_interval=millis(check.interval_ms),
                healthy_threshold=wrappers_pb2.UInt32Value(value=check.healthy_threshold),
                unhealthy_threshold=wrappers_pb2.UInt32Value(value=check.unhealthy_threshold),
                http_health_check=health_check_pb2.HealthCheck.HttpHealthCheck(path=check.path),
            )
        )
    balancing = policy.load_balancing
    if balancing is not None and balancing.policy == "ring_hash":
        cluster.lb_policy = cluster_pb2.Cluster.RING_HASH
        cluster.ring_hash_lb_config.CopyFrom(
            cluster_pb2.Cluster.RingHashLbConfig(
                minimum_ring_size=wrappers_pb2.UInt64Value(value=RING_SIZE)
            )
        )


def _thresholds(
    policy: VersionPolicy, retries: Retries | None
) -> circuit_breaker_pb2.CircuitBreakers.Thresholds | None:
    breakers = policy.circuit_breakers
    has_budget = retries is not None and retries.budget_percent is not None
    if breakers is None and not has_budget:
        return None
    thresholds = circuit_breaker_pb2.CircuitBreakers.Thresholds(
        priority=base_pb2.RoutingPriority.DEFAULT
    )
    if breakers is not None:
        for field in ("max_connections", "max_pending_requests", "max_requests", "max_retries"):
            value = getattr(breakers, field)
            if value is not None:
                getattr(thresholds, field).value = value
    if retries is not None and retries.budget_percent is not None:
        # A budget caps concurrent retries at a share of active requests; when set,
        # Envoy uses it instead of max_retries.
        # https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/cluster/v3/circuit_breaker.proto#envoy-v3-api-msg-config-cluster-v3-circuitbreakers-thresholds-retrybudget
        budget = thresholds.retry_budget
        budget.budget_percent.value = retries.budget_percent
        if retries.budget_min_concurrency is not None:
            budget.min_retry_concurrency.value = retries.budget_min_concurrency
    return thresholds


def hash_header_names(model: ModelSpec) -> list[str]:
    """Return the headers whose hash picks the version (sticky) and the replica (ring hash)."""
    names: list[str] = []
    if model.policy.sticky is not None:
        names.append(model.policy.sticky.header)
    for version in model.versions:
        balancing = version.policy.load_balancing
        if balancing is not None and balancing.hash_header and balancing.hash_header not in names:
            names.append(balancing.hash_header)
    return names


def apply_route_policy(
    action: route_components_pb2.RouteAction, model: ModelSpec, target_version: str | None
) -> None:
    """Add the model's routing policy to a route ``action``.

    ``target_version`` is the one version the route sends to (an experiment or a
    pin), or None for the weighted split.
    """
    policy = model.policy
    timeout_ms = DEFAULT_REQUEST_TIMEOUT_MS
    if policy.timeouts is not None:
        timeout_ms = policy.timeouts.request_timeout_ms or timeout_ms
        if policy.timeouts.idle_timeout_ms is not None:
            action.idle_timeout.CopyFrom(millis(policy.timeouts.idle_timeout_ms))
    action.timeout.CopyFrom(millis(timeout_ms))
    if policy.retries is not None:
        action.retry_policy.CopyFrom(_retry_policy(policy.retries))
    action.hash_policy.extend(
        route_components_pb2.RouteAction.HashPolicy(
            header=route_components_pb2.RouteAction.HashPolicy.Header(header_name=name)
        )
        for name in hash_header_names(model)
    )
    shadow = policy.shadow
    if shadow is not None and shadow.version != target_version:
        action.request_mirror_policies.append(
            mirror_policy(model.name, shadow, compares(model) is not None)
        )
    if target_version is None and policy.sticky is not None:
        # Pick the version from the request's hash rather than at random, so a
        # user id keeps its arm while the population splits by the weights.
        # https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/route/v3/route_components.proto#envoy-v3-api-field-config-route-v3-weightedcluster-use-hash-policy
        action.weighted_clusters.use_hash_policy.value = True


def _retry_policy(retries: Retries) -> route_components_pb2.RetryPolicy:
    retry = route_components_pb2.RetryPolicy(
        retry_on=",".join(retries.retry_on),
        num_retries=wrappers_pb2.UInt32Value(value=retries.num_retries),
        retriable_status_codes=list(retries.retriable_status_codes),
        # Retry on another replica: a dead or overloaded one would likely fail again.
        # https://www.envoyproxy.io/docs/envoy/latest/intro/arch_overview/http/http_connection_management#retry-plugin-configuration
        retry_host_predicate=[
            route_components_pb2.RetryPolicy.RetryHostPredicate(
                name="envoy.retry_host_predicates.previous_hosts",
                typed_config=to_any(previous_hosts_pb2.PreviousHostsPredicate()),
            )
        ],
        host_selection_retry_max_attempts=3,
        # After two failed tries in one priority (the local zone), retry the next
        # one: failover must not wait for health checks to notice a dead zone.
        # https://www.envoyproxy.io/docs/envoy/latest/intro/arch_overview/http/http_connection_management#retry-plugin-configuration
        retry_priority=route_components_pb2.RetryPolicy.RetryPriority(
            name="envoy.retry_priorities.previous_priorities",
            typed_config=to_any(
                previous_priorities_config_pb2.PreviousPrioritiesConfig(update_frequency=2)
            ),
        ),
    )
    if retries.per_try_timeout_ms is not None:
        retry.per_try_timeout.CopyFrom(millis(retries.per_try_timeout_ms))
    if retries.backoff_base_ms is not None:
        retry.retry_back_off.base_interval.CopyFrom(millis(retries.backoff_base_ms))
        if retries.backoff_max_ms is not None:
            retry.retry_back_off.max_interval.CopyFrom(millis(retries.backoff_max_ms))
    return retry
