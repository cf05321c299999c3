"""Tenant credentials: ES256 JSON Web Tokens signed by Turnout, verified by Envoy.

Turnout keeps one P-256 signing key (made once, stored in the database, never
returned by the API). Envoy gets only its public half, as a JSON Web Key Set
inside its listener configuration, so a credential never appears in Envoy's
configuration: Envoy checks signatures, it does not look tokens up.

A token carries ``iss`` (:data:`ISSUER`), ``aud`` (:data:`AUDIENCE`), ``sub``
(the tenant's subject, a random id that a recreated tenant of the same name
does not share), ``jti`` (the credential's id, which revocation names),
``tenant`` (the name, for people) and ``iat``. It has no expiry: it is valid
until revoked. RFC 7519: https://www.rfc-editor.org/rfc/rfc7519
"""

from __future__ import annotations

import base64
import json
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

__all__ = [
    "ALGORITHM",
    "AUDIENCE",
    "ISSUER",
    "SigningKeyMaterial",
    "generate_signing_key",
    "issue_token",
    "jwks_of",
    "new_jti",
    "new_subject",
]

ALGORITHM = "ES256"
ISSUER = "turnout"
AUDIENCE = "turnout-inference"


@dataclass(frozen=True, slots=True)
class SigningKeyMaterial:
    """A new signing key: its id, its private key (PKCS#8 PEM) and its public JWK."""

    kid: str
    private_pem: str
    public_jwk: dict[str, Any]


def _b64url(value: int) -> str:
    raw = value.to_bytes(32, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def generate_signing_key() -> SigningKeyMaterial:
    """Return a fresh P-256 key pair for ES256 (RFC 7518 section 3.4)."""
    private = ec.generate_private_key(ec.SECP256R1())
    numbers = private.public_key().public_numbers()
    kid = f"turnout-{secrets.token_hex(8)}"
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    jwk = {
        "kty": "EC",
        "crv": "P-256",
        "alg": ALGORITHM,
        "use": "sig",
        "kid": kid,
        "x": _b64url(numbers.x),
        "y": _b64url(numbers.y),
    }
    return SigningKeyMaterial(kid=kid, private_pem=pem, public_jwk=jwk)


def jwks_of(public_jwks: list[dict[str, Any]]) -> str | None:
    """Return the JWKS document (JSON) of these public keys, or None when there are none."""
    if not public_jwks:
        return None
    return json.dumps({"keys": public_jwks}, sort_keys=True, separators=(",", ":"))


def new_subject() -> str:
    """Return a new tenant subject (the ``sub`` of its credentials)."""
    return f"tn_{secrets.token_hex(12)}"


def new_jti() -> str:
    """Return a new credential id (a token's ``jti``)."""
    return secrets.token_hex(16)


def issue_token(
    *, private_pem: str, kid: str, subject: str, tenant: str, jti: str, issued_at: datetime
) -> str:
    """Return a signed credential for ``tenant``. It is shown to the caller once and
    stored nowhere."""
    claims = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": subject,
        "jti": jti,
        "tenant": tenant,
        "iat": int(issued_at.timestamp()),
    }
    return jwt.encode(claims, private_pem, algorithm=ALGORITHM, headers={"kid": kid})
