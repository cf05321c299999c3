"""The one codec between the desired state and its JSON documents.

Revisions store the traffic state as one document per model, addressed by the
SHA-256 of its canonical JSON (:func:`digest_of`), and the access state as one
document; the audit log and the diffs use the same documents. Nothing else
maps the state to JSON or back: ``decode_model(encode_model(m)) == m`` and
``decode_access(encode_access(s)) == (s.tenants, s.jwks)`` for every value,
which a property test checks.

Document shapes (JSON)::

    model:  {"name", "protocol", "policy": {...},
             "versions": [{"name", "policy": {...},
                           "endpoints": [{"address", "port", "zone", "accelerator",
                                          "weight", "batcher_port"}],
                           "kubernetes": {"namespace", "service", "port"}  (only when set)}],
             "weights": [[version, weight], ...]}
    access: {"tenants": [{"name", "subject", "models", "requests_per_second",
                          "burst", "revoked"}], "jwks": str | null}
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from functools import lru_cache
from typing import Any

from controlplane.domain.policy import (
    ModelPolicy,
    VersionPolicy,
    model_policy_from_document,
    version_policy_from_document,
)
from controlplane.domain.state import (
    DesiredState,
    EndpointSpec,
    KubernetesRef,
    ModelSpec,
    TenantSpec,
    VersionSpec,
)

__all__ = [
    "decode_access",
    "decode_endpoint",
    "decode_kubernetes_ref",
    "decode_model",
    "decode_state",
    "digest_of",
    "encode_access",
    "encode_endpoint",
    "encode_kubernetes_ref",
    "encode_model",
    "encode_policy",
    "encode_state",
    "encode_tenant",
]


def digest_of(document: Any) -> str:
    """Return the SHA-256 (hex) of ``document``'s canonical JSON: its address."""
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def encode_endpoint(endpoint: EndpointSpec) -> dict[str, Any]:
    """Return the document of one endpoint."""
    return {
        "address": endpoint.address,
        "port": endpoint.port,
        "zone": endpoint.zone,
        "accelerator": endpoint.accelerator,
        "weight": endpoint.weight,
        "batcher_port": endpoint.batcher_port,
    }


def decode_endpoint(document: dict[str, Any]) -> EndpointSpec:
    """Return the endpoint of :func:`encode_endpoint`'s document."""
    return EndpointSpec(
        address=document["address"],
        port=int(document["port"]),
        zone=document.get("zone"),
        accelerator=document.get("accelerator"),
        weight=int(document.get("weight", 1)),
        batcher_port=document.get("batcher_port"),
    )


@lru_cache(maxsize=4096)
def _policy_json(policy: ModelPolicy | VersionPolicy) -> str:
    return json.dumps(asdict(policy))


def encode_policy(policy: ModelPolicy | VersionPolicy) -> dict[str, Any]:
    """Return the document of a model or version policy (a fresh copy each call)."""
    document: dict[str, Any] = json.loads(_policy_json(policy))
    return document


def encode_model(model: ModelSpec) -> dict[str, Any]:
    """Return the document of one model: everything of it that shapes traffic."""
    return {
        "name": model.name,
        "protocol": model.protocol,
        "policy": encode_policy(model.policy),
        "versions": [_encode_version(version) for version in model.versions],
        "weights": [[name, weight] for name, weight in model.weights],
    }


def _encode_version(version: VersionSpec) -> dict[str, Any]:
    document: dict[str, Any] = {
        "name": version.name,
        "policy": encode_policy(version.policy),
        "endpoints": [encode_endpoint(e) for e in version.endpoints],
    }
    # Only when set: the documents of versions without one keep their digests.
    if version.kubernetes is not None:
        document["kubernetes"] = encode_kubernetes_ref(version.kubernetes)
    return document


def encode_kubernetes_ref(ref: KubernetesRef) -> dict[str, Any]:
    """Return the document of a version's Kubernetes Service reference (also its
    column value)."""
    return {"namespace": ref.namespace, "service": ref.service, "port": ref.port}


def decode_kubernetes_ref(document: dict[str, Any] | None) -> KubernetesRef | None:
    """Return the reference of :func:`encode_kubernetes_ref`'s document (None: none)."""
    if document is None:
        return None
    port = document["port"]
    return KubernetesRef(
        namespace=str(document["namespace"]),
        service=str(document["service"]),
        port=port if isinstance(port, int) else str(port),
    )


def decode_model(document: dict[str, Any]) -> ModelSpec:
    """Return the model of :func:`encode_model`'s document."""
    return ModelSpec(
        name=document["name"],
        protocol=document["protocol"],
        versions=tuple(
            VersionSpec(
                name=v["name"],
                endpoints=tuple(decode_endpoint(e) for e in v["endpoints"]),
                policy=version_policy_from_document(v.get("policy")),
                kubernetes=decode_kubernetes_ref(v.get("kubernetes")),
            )
            for v in document["versions"]
        ),
        weights=tuple((name, int(weight)) for name, weight in document["weights"]),
        policy=model_policy_from_document(document.get("policy")),
    )


def encode_tenant(tenant: TenantSpec) -> dict[str, Any]:
    """Return the document of one tenant: its grants, rate limit and revocations."""
    return {
        "name": tenant.name,
        "subject": tenant.subject,
        "models": list(tenant.models),
        "requests_per_second": tenant.requests_per_second,
        "burst": tenant.burst,
        "revoked": list(tenant.revoked),
    }


def encode_access(tenants: tuple[TenantSpec, ...], jwks: str | None) -> dict[str, Any]:
    """Return the document of the access state: tenants and the key set Envoy checks."""
    return {"tenants": [encode_tenant(t) for t in tenants], "jwks": jwks}


def decode_access(document: dict[str, Any]) -> tuple[tuple[TenantSpec, ...], str | None]:
    """Return ``(tenants, jwks)`` of :func:`encode_access`'s document."""
    tenants = tuple(
        TenantSpec(
            name=t["name"],
            subject=t["subject"],
            models=tuple(t["models"]),
            requests_per_second=int(t["requests_per_second"]),
            burst=int(t["burst"]),
            revoked=tuple(t["revoked"]),
        )
        for t in document.get("tenants", ())
    )
    return tenants, document.get("jwks")


def encode_state(state: DesiredState) -> dict[str, Any]:
    """Return the whole state as one document (for dry runs, diffs and exports)."""
    return {
        "revision": state.revision,
        "models": [encode_model(m) for m in state.models],
        **encode_access(state.tenants, state.jwks),
    }


def decode_state(document: dict[str, Any]) -> DesiredState:
    """Return the state of :func:`encode_state`'s document."""
    tenants, jwks = decode_access(document)
    return DesiredState(
        revision=int(document["revision"]),
        models=tuple(decode_model(m) for m in document["models"]),
        tenants=tenants,
        jwks=jwks,
    )
