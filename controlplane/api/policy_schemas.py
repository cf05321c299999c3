"""Request and response bodies of the policy endpoints.

The same shape goes in (PUT, which replaces the whole policy) and comes out
(GET). Units are in the field names (``_ms``, ``_percent``). Rules that need
the model's state (unknown versions, a try longer than the request) are the
domain's (controlplane.domain.policy.check_model_policy); these schemas check
shape and ranges.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)

from controlplane.api.schemas import Name
from controlplane.domain import policy as domain
from controlplane.domain.policy import (
    DEFAULT_MAX_REQUEST_BYTES,
    DEFAULT_RETRY_ON,
    DEFAULT_SHADOW_COMPARE_PERCENT,
    DEFAULT_SHADOW_MAX_BODY_BYTES,
    MAX_REQUEST_BYTES_LIMIT,
    RETRY_ON,
    SHADOW_MAX_BODY_BYTES_LIMIT,
)

__all__ = ["ModelPolicyBody", "VersionPolicyBody"]


def _not_envoy_header(value: str) -> str:
    if value.startswith("x-envoy-"):
        raise ValueError("x-envoy-* headers belong to Envoy")
    return value


# Lower-case HTTP header names (HTTP/2 and Envoy's matchers see them lower-cased),
# without underscores (the listener rejects requests whose headers have them).
HeaderName = Annotated[
    str,
    StringConstraints(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$"),
    AfterValidator(_not_envoy_header),
]
# A header value a request can carry, for Envoy to match exactly: no control
# characters (RFC 9110 field-value) and no surrounding whitespace (Envoy trims it).
HeaderValue = Annotated[
    str,
    StringConstraints(pattern=r"^[^\x00-\x20\x7f](?:[^\x00-\x1f\x7f]{0,254}[^\x00-\x20\x7f])?$"),
]
Millis = Annotated[int, Field(ge=1, le=86_400_000)]
Count = Annotated[int, Field(ge=1, le=1_000_000)]
# The model name a server expects (vLLM's --served-model-name, a Hugging Face id):
# it is written into JSON bodies as it is, so it holds no quote, backslash or space.
ServedModelName = Annotated[
    str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,255}$")
]
RetryCondition = Literal[RETRY_ON]  # type: ignore[valid-type]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TimeoutsBody(_Strict):
    """The whole request's bound (retries included) and the stream idle bound; a
    streamed response (SSE) has no total bound, only ``stream_idle_timeout_ms``
    between two chunks (default 60 s)."""

    request_timeout_ms: Millis | None = None
    idle_timeout_ms: Millis | None = None
    stream_idle_timeout_ms: Millis | None = None


class RetriesBody(_Strict):
    """Envoy's retry policy, with an optional retry budget for the model's clusters."""

    retry_on: list[RetryCondition] = Field(
        default_factory=lambda: list(DEFAULT_RETRY_ON), min_length=1, max_length=len(RETRY_ON)
    )
    num_retries: int = Field(default=1, ge=0, le=10)
    per_try_timeout_ms: Millis | None = None
    retriable_status_codes: list[Annotated[int, Field(ge=100, le=599)]] = Field(
        default_factory=list, max_length=50
    )
    backoff_base_ms: Millis | None = None
    backoff_max_ms: Millis | None = None
    budget_percent: float | None = Field(default=None, gt=0, le=100)
    budget_min_concurrency: Count | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.retriable_status_codes and "retriable-status-codes" not in self.retry_on:
            raise ValueError(
                "retriable_status_codes only apply with 'retriable-status-codes' in retry_on"
            )
        if self.backoff_max_ms is not None:
            if self.backoff_base_ms is None:
                raise ValueError("backoff_max_ms needs backoff_base_ms")
            if self.backoff_max_ms < self.backoff_base_ms:
                raise ValueError("backoff_max_ms must not be below backoff_base_ms")
        if self.budget_min_concurrency is not None and self.budget_percent is None:
            raise ValueError("budget_min_concurrency needs budget_percent")
        return self


class ShadowBody(_Strict):
    """Mirror a share of the model's requests to a version; clients never see its
    answers. A share of the mirrored requests is compared with the primary's answer
    (GET /v1/models/{model}/shadow; docs/shadow.md)."""

    version: Name
    percent: float = Field(gt=0, le=100)
    compare_percent: float = Field(
        default=DEFAULT_SHADOW_COMPARE_PERCENT,
        ge=0,
        le=100,
        description="share of the mirrored requests whose two answers are compared (0: none)",
    )
    keep_bodies: bool = Field(
        default=False,
        description="keep both bodies of a disagreement (capped at max_body_bytes each); "
        "off: no body is stored, disagreements show only where the bodies differ",
    )
    max_body_bytes: int = Field(
        default=DEFAULT_SHADOW_MAX_BODY_BYTES,
        ge=1,
        le=SHADOW_MAX_BODY_BYTES_LIMIT,
        description="bodies larger than this are compared by status and latency only",
    )


class ExperimentBody(_Strict):
    """Requests with ``header: value`` (exact) go to ``version``, ahead of the weights."""

    header: HeaderName
    value: HeaderValue
    version: Name


class StickyBody(_Strict):
    """Hash this header (a user id) to choose the version: each user keeps one arm."""

    header: HeaderName


class ModelPolicyBody(_Strict):
    """PUT/GET /v1/models/{model}/policy: how the model's requests are routed."""

    timeouts: TimeoutsBody | None = None
    retries: RetriesBody | None = None
    shadow: ShadowBody | None = None
    experiments: list[ExperimentBody] = Field(default_factory=list, max_length=50)
    sticky: StickyBody | None = None
    max_request_bytes: int | None = Field(
        default=None,
        ge=1,
        le=MAX_REQUEST_BYTES_LIMIT,
        description=f"the largest request body the model takes, in bytes (null: "
        f"{DEFAULT_MAX_REQUEST_BYTES}, 8 MiB); a larger one gets 413 from Envoy, "
        "whether the path, the x-turnout-model header or the JSON body names the model",
    )

    def to_policy(self) -> domain.ModelPolicy:
        """Return the domain value of this policy."""
        return domain.model_policy_from_document(self.model_dump())

    @classmethod
    def from_policy(cls, policy: domain.ModelPolicy) -> ModelPolicyBody:
        """Return the API view of a domain policy."""
        return cls.model_validate(policy, from_attributes=True)


class CircuitBreakersBody(_Strict):
    """Limits per replica set; requests over them get 503 with x-envoy-overloaded."""

    max_connections: Count | None = None
    max_pending_requests: Count | None = None
    max_requests: Count | None = None
    max_retries: Count | None = None


class OutlierDetectionBody(_Strict):
    """Eject a replica after ``consecutive_5xx`` failures in a row."""

    consecutive_5xx: int = Field(default=5, ge=1, le=1000)
    interval_ms: Millis = 10_000
    base_ejection_time_ms: Millis = 30_000
    max_ejection_percent: int = Field(default=10, ge=0, le=100)


class HealthCheckBody(_Strict):
    """Active HTTP health checks: GET ``path`` on every replica each ``interval_ms``."""

    path: Annotated[str, StringConstraints(pattern=r"^/[\x21-\x7e]{0,255}$")] = "/healthz"
    interval_ms: Millis = 5_000
    timeout_ms: Millis = 1_000
    healthy_threshold: int = Field(default=2, ge=1, le=100)
    unhealthy_threshold: int = Field(default=3, ge=1, le=100)


class LoadBalancingBody(_Strict):
    """``least_request`` (default) or ``ring_hash`` on ``hash_header`` (session affinity)."""

    policy: Literal["least_request", "ring_hash"] = "least_request"
    hash_header: HeaderName | None = None

    @model_validator(mode="after")
    def _header_with_ring_hash(self) -> Self:
        if self.policy == "ring_hash" and self.hash_header is None:
            raise ValueError("ring_hash needs hash_header (the header to hash)")
        if self.policy == "least_request" and self.hash_header is not None:
            raise ValueError("hash_header only applies to ring_hash")
        return self


_BATCHING_DEFAULTS = domain.Batching()


def _batching_field(name: str) -> Any:
    """The field ``name`` of the batching policy, with the domain's default and range."""
    low, high = domain.BATCHING_RANGES[name]
    return Field(default=getattr(_BATCHING_DEFAULTS, name), ge=low, le=high)


class BatchingBody(_Strict):
    """Coalesce concurrent calls into batches in the batcher beside each replica.

    Envoy sends the version's traffic to each endpoint's ``batcher_port``
    (endpoints without one are called directly); running batchers pick up a
    change within a second.
    """

    enabled: bool = _BATCHING_DEFAULTS.enabled
    max_batch_size: int = _batching_field("max_batch_size")
    max_queue_delay_ms: float = _batching_field("max_queue_delay_ms")
    max_queue: int = _batching_field("max_queue")
    slo_ms: float = _batching_field("slo_ms")


class VersionPolicyBody(_Strict):
    """PUT/GET /v1/models/{model}/versions/{version}/policy: how its replicas are
    treated, and the model name its server expects (``served_model_name``, default
    the model's name): requests routed by their body's ``"model"`` get it there."""

    circuit_breakers: CircuitBreakersBody | None = None
    outlier_detection: OutlierDetectionBody | None = None
    health_check: HealthCheckBody | None = None
    load_balancing: LoadBalancingBody | None = None
    batching: BatchingBody | None = None
    served_model_name: ServedModelName | None = None

    def to_policy(self) -> domain.VersionPolicy:
        """Return the domain value of this policy."""
        return domain.version_policy_from_document(self.model_dump())

    @classmethod
    def from_policy(cls, policy: domain.VersionPolicy) -> VersionPolicyBody:
        """Return the API view of a domain policy."""
        return cls.model_validate(policy, from_attributes=True)
