"""A model's shadow comparisons: how its shadow's answers compare with the primary's.

Read from the database (every replica answers the same): the comparisons of
the last ``window`` (``300s``, ``5m`` or plain seconds; at most
``TURNOUT_SHADOW_RETENTION_S``). How the two answers meet: docs/shadow.md.
"""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, Field

from controlplane.api.deps import RuntimeDep, SessionDep, require
from controlplane.api.policy_schemas import ShadowBody
from controlplane.api.routes.telemetry import WindowQuery, parse_window
from controlplane.api.schemas import ErrorBody
from controlplane.domain.errors import NotFound
from controlplane.domain.keys import Permission
from controlplane.services.shadow import Disagreement, ShadowSummary, shadow_summary

__all__ = ["router"]

router = APIRouter(tags=["metrics"])

DEFAULT_WINDOW = "300s"
NO_POLICY = (
    "the model has no shadow policy: PUT /v1/models/{model}/policy with "
    '{"shadow": {"version": ..., "percent": ...}} to mirror and compare'
)
NOT_COMPARING = "the shadow policy compares nothing (compare_percent is 0)"


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


class DisagreementOut(BaseModel):
    request_id: str = Field(description="the request's x-request-id")
    at: str
    primary_version: str
    shadow_version: str
    primary_status: int
    shadow_status: int
    diff: str | None = Field(
        description="where the answers first differ (values only when bodies are kept)"
    )
    primary_body: str | None = Field(description="only when the policy keeps bodies")
    shadow_body: str | None


class ShadowOut(BaseModel):
    model: str
    window_s: float
    shadow: ShadowBody | None = Field(description="the model's shadow policy now")
    note: str | None = Field(description="why nothing is being compared, when that is so")
    compared: int = Field(description="requests whose two answers were compared")
    agreement_rate: float | None = Field(description="status and body (where compared) agree")
    status_agreement_rate: float | None
    body_compared: int = Field(
        description="comparisons with both bodies (others were over max_body_bytes)"
    )
    body_agreement_rate: float | None = Field(description="exact JSON equality")
    latency_diff_ms: dict[str, float | None] = Field(
        description="p50 and p99 of shadow minus primary, milliseconds"
    )
    numeric_compared: int = Field(description="comparisons of numeric outputs")
    max_abs_diff: float | None = Field(description="largest absolute difference of any output")
    min_cosine: float | None
    mean_cosine: float | None
    disagreements: list[DisagreementOut] = Field(description="the most recent, newest first")

    @classmethod
    def of(
        cls,
        model: str,
        window_s: float,
        shadow: ShadowBody | None,
        note: str | None,
        s: ShadowSummary,
    ) -> ShadowOut:
        return cls(
            model=model,
            window_s=window_s,
            shadow=shadow,
            note=note,
            compared=s.compared,
            agreement_rate=_round(s.agreed / s.compared) if s.compared else None,
            status_agreement_rate=_round(s.status_agreement),
            body_compared=s.body_compared,
            body_agreement_rate=_round(s.body_agreement),
            latency_diff_ms={
                "p50": _round(s.latency_diff_p50_ms, 3),
                "p99": _round(s.latency_diff_p99_ms, 3),
            },
            numeric_compared=s.numeric_compared,
            max_abs_diff=s.max_abs_diff,
            min_cosine=_round(s.min_cosine, 6),
            mean_cosine=_round(s.mean_cosine, 6),
            disagreements=[_disagreement(d) for d in s.disagreements],
        )


def _disagreement(d: Disagreement) -> DisagreementOut:
    return DisagreementOut(
        request_id=d.request_id,
        at=d.at,
        primary_version=d.primary_version,
        shadow_version=d.shadow_version,
        primary_status=d.primary_status,
        shadow_status=d.shadow_status,
        diff=d.diff,
        primary_body=d.primary_body,
        shadow_body=d.shadow_body,
    )


@router.get(
    "/v1/models/{model}/shadow",
    dependencies=[require(Permission.READ)],
    responses={
        401: {"model": ErrorBody, "description": "no valid API key"},
        403: {"model": ErrorBody, "description": "the key's role lacks the permission"},
        404: {"model": ErrorBody, "description": "no such model"},
        422: {"model": ErrorBody, "description": "the window is not a duration within retention"},
    },
)
async def model_shadow(
    model: str, runtime: RuntimeDep, session: SessionDep, window: WindowQuery = DEFAULT_WINDOW
) -> ShadowOut:
    """How the shadow's answers compared with the primary's over the window: status
    and body agreement, latency difference, numeric differences, and the latest
    disagreements."""
    seconds = parse_window(window, runtime.settings.shadow_retention_s)
    state = runtime.sync.state
    spec = state.model(model) if state is not None else None
    if spec is None:
        raise NotFound(f"model {model!r} not found")
    policy = spec.policy.shadow
    note = None
    if policy is None:
        note = NO_POLICY
    elif policy.compare_percent <= 0:
        note = NOT_COMPARING
    summary = await shadow_summary(session, model, seconds)
    body = None if policy is None else ShadowBody.model_validate(policy, from_attributes=True)
    return ShadowOut.of(model, seconds, body, note, summary)
