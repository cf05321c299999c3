"""The values every protocol module shares: a parsed call, a framed message, their errors."""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import Enum
from typing import Any

__all__ = ["Call", "MalformedInput", "Message", "Protocol", "SplitError", "canon", "flatten"]


class MalformedInput(ValueError):
    """The body of one call can never be valid; it fails alone with 400."""


class SplitError(ValueError):
    """The upstream's answer to a batched call cannot be split back by row."""


class Protocol(Enum):
    """The wire protocols the batcher knows how to batch."""

    KSERVE_V2 = "kserve_v2"
    OPENAI_EMBEDDINGS = "openai_embeddings"
    KSERVE_V1 = "kserve_v1"


@dataclass(frozen=True, slots=True)
class Message:
    """A body and the headers that say how to read it.

    ``headers`` always holds ``Content-Type``, and ``Inference-Header-Content-Length``
    when the body carries binary tensors after its JSON header.
    """

    body: bytes
    headers: dict[str, str]


@dataclass(frozen=True, slots=True, eq=False)
class Call:
    """One validated inference call, ready to join a batch.

    Calls with equal ``key`` can share an upstream call. ``rows`` is the size
    of dimension 0; ``body`` is the original request body, ``doc`` its parsed
    JSON (header), ``rows_data`` the protocol-specific rows to merge, and
    ``header_length`` the JSON header's length when binary tensors follow it.
    """

    protocol: Protocol
    key: tuple[Any, ...]
    rows: int
    body: bytes
    doc: dict[str, Any]
    rows_data: Any
    weight: int = 1
    header_length: int | None = None


def canon(value: Any) -> str:
    """Return ``value`` as canonical JSON (sorted keys), for batch keys."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def flatten(data: Any, out: list[Any]) -> None:
    """Append the leaves of nested lists ``data`` to ``out``, row major."""
    if isinstance(data, list):
        for element in data:
            flatten(element, out)
    else:
        out.append(data)
