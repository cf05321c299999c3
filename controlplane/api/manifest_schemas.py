"""The models manifest: the whole traffic state as one declarative document.

``turnout export`` writes it (as YAML) and ``turnout apply -f`` sends it back;
``GET /v1/manifest`` and ``POST /v1/manifest`` carry it as JSON. It holds what
the API's own bodies hold (endpoints as ``EndpointIn``, policies as the policy
endpoints' bodies), so a manifest says nothing a sequence of API calls could
not, and it maps to the domain's ``ModelSpec`` and back in exactly one place:
:meth:`ManifestModel.to_spec` and :meth:`ManifestModel.from_spec`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from controlplane.api.policy_schemas import ModelPolicyBody, VersionPolicyBody
from controlplane.api.schemas import EndpointIn, KubernetesIn, Name, Protocol
from controlplane.domain.policy import ModelPolicy, VersionPolicy
from controlplane.domain.state import EndpointSpec, ModelSpec, VersionSpec

__all__ = [
    "MANIFEST_KIND",
    "MANIFEST_VERSION",
    "ApplyIn",
    "ApplyOut",
    "Manifest",
    "ManifestModel",
    "ManifestVersion",
]

MANIFEST_VERSION: Literal["turnout/v1"] = "turnout/v1"
MANIFEST_KIND: Literal["Models"] = "Models"
MAX_MODELS = 5000
TOTAL_WEIGHT = 100


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ManifestVersion(_Strict):
    """One version: its replicas (or the Kubernetes Service whose endpoints are
    discovered) and its cluster policy."""

    name: Name
    endpoints: list[EndpointIn] = Field(default_factory=list, max_length=1000)
    kubernetes: KubernetesIn | None = None
    policy: VersionPolicyBody | None = None

    @model_validator(mode="after")
    def _one_source(self) -> ManifestVersion:
        if self.endpoints and self.kubernetes is not None:
            raise ValueError(
                f"version {self.name!r} lists endpoints or names a kubernetes Service, not both"
            )
        return self


class ManifestModel(_Strict):
    """One model: protocol, routing policy, versions and traffic split.

    ``traffic`` gives every version's weight (those left out get 0) and adds up
    to 100; left out, versions that exist keep their weights and new ones get 0
    (a new model's first version gets 100).
    """

    name: Name
    protocol: Protocol
    policy: ModelPolicyBody | None = None
    versions: list[ManifestVersion] = Field(default_factory=list, max_length=100)
    traffic: dict[Name, int] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> ManifestModel:
        names = [version.name for version in self.versions]
        twice = sorted({name for name in names if names.count(name) > 1})
        if twice:
            raise ValueError(f"model {self.name!r} lists version(s) {twice} more than once")
        if self.traffic is not None:
            unknown = sorted(set(self.traffic) - set(names))
            if unknown:
                raise ValueError(
                    f"model {self.name!r}: traffic names version(s) {unknown} it does not list"
                )
            if any(weight < 0 for weight in self.traffic.values()):
                raise ValueError(f"model {self.name!r}: weights must not be negative")
            total = sum(self.traffic.values())
            if names and total != TOTAL_WEIGHT:
                raise ValueError(
                    f"model {self.name!r}: weights must add up to {TOTAL_WEIGHT}, not {total}"
                )
        return self

    def to_spec(self, current_weights: dict[str, int] | None = None) -> ModelSpec:
        """Return the domain value of this model. Weights come from ``traffic``, else
        from ``current_weights`` (the stored split; None: a new model)."""
        versions = tuple(
            VersionSpec(
                name=version.name,
                endpoints=tuple(
                    sorted(
                        (endpoint.to_spec() for endpoint in version.endpoints),
                        key=lambda e: (e.address, e.port),
                    )
                ),
                policy=version.policy.to_policy() if version.policy else VersionPolicy(),
                kubernetes=version.kubernetes.to_ref() if version.kubernetes else None,
            )
            for version in sorted(self.versions, key=lambda v: v.name)
        )
        if self.traffic is not None:
            weights = dict(self.traffic)
        elif current_weights is not None:
            weights = dict(current_weights)
        else:
            weights = {self.versions[0].name: 100} if self.versions else {}
        return ModelSpec(
            name=self.name,
            protocol=self.protocol,
            versions=versions,
            # As loaded: only weights above 0, in version order.
            weights=tuple(
                (v.name, weights[v.name]) for v in versions if weights.get(v.name, 0) > 0
            ),
            policy=self.policy.to_policy() if self.policy else ModelPolicy(),
        )

    @classmethod
    def from_spec(cls, spec: ModelSpec) -> ManifestModel:
        """Return the manifest entry of a model: every weight spelled out."""
        return cls(
            name=spec.name,
            protocol=spec.protocol,
            policy=None
            if spec.policy == ModelPolicy()
            else ModelPolicyBody.from_policy(spec.policy),
            versions=[
                ManifestVersion(
                    name=version.name,
                    endpoints=[_endpoint_in(e) for e in version.endpoints],
                    kubernetes=None
                    if version.kubernetes is None
                    else KubernetesIn(
                        namespace=version.kubernetes.namespace,
                        service=version.kubernetes.service,
                        port=version.kubernetes.port,
                    ),
                    policy=None
                    if version.policy == VersionPolicy()
                    else VersionPolicyBody.from_policy(version.policy),
                )
                for version in spec.versions
            ],
            traffic={v.name: spec.weight_of(v.name) for v in spec.versions}
            if spec.versions
            else None,
        )


def _endpoint_in(endpoint: EndpointSpec) -> EndpointIn:
    return EndpointIn(
        address=endpoint.address,
        port=endpoint.port,
        zone=endpoint.zone,
        accelerator=endpoint.accelerator,
        weight=endpoint.weight,
        batcher_port=endpoint.batcher_port,
    )


class Manifest(_Strict):
    """GET /v1/manifest: every model, as ``turnout export`` writes it."""

    api_version: Literal["turnout/v1"] = Field(default=MANIFEST_VERSION, alias="apiVersion")
    kind: Literal["Models"] = MANIFEST_KIND
    revision: int | None = Field(
        default=None, description="the config revision this manifest was read at"
    )
    models: list[ManifestModel] = Field(default_factory=list, max_length=MAX_MODELS)

    model_config = ConfigDict(extra="forbid", populate_by_name=True, serialize_by_alias=True)

    @model_validator(mode="after")
    def _models_once(self) -> Manifest:
        names = [model.name for model in self.models]
        twice = sorted({name for name in names if names.count(name) > 1})
        if twice:
            raise ValueError(f"the manifest lists model(s) {twice} more than once")
        return self


class ApplyIn(Manifest):
    """POST /v1/manifest: make the models match the manifest, in one revision."""

    prune: bool = Field(
        default=False, description="also delete the models the manifest does not list"
    )
    base_revision: int | None = Field(
        default=None,
        description="apply only if the config revision is still this one (412 otherwise): "
        "the revision a plan was made at",
    )


class ApplyOut(BaseModel):
    """What an apply changed: the models by fate, and the revision it made (None:
    the state already matched)."""

    revision: int | None
    created: list[str]
    changed: list[str]
    deleted: list[str]
    unchanged: list[str]
