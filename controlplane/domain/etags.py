"""Strong ETags over a resource's stored content, and ``If-Match`` (RFC 9110 13.1.1)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from controlplane.domain.errors import PreconditionFailed

__all__ = ["check_if_match", "etag_of"]


def etag_of(document: Mapping[str, Any]) -> str:
    """Return a strong ETag (quoted) of ``document``'s canonical JSON."""
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"), default=str)
    return '"' + hashlib.sha256(canonical.encode()).hexdigest()[:32] + '"'


def check_if_match(if_match: str | None, current: str) -> None:
    """Raise PreconditionFailed unless ``If-Match`` is absent, ``*``, or lists ``current``.

    Weak tags (``W/"..."``) never match: If-Match uses the strong comparison.
    """
    if if_match is None:
        return
    tags = [tag.strip() for tag in if_match.split(",")]
    if "*" in tags or current in tags:
        return
    raise PreconditionFailed(
        {
            "message": "the resource changed since you read it: GET it again and retry",
            "current_etag": current,
        }
    )
