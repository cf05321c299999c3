"""The Open Inference Protocol's binary tensor data extension: framing and element codec.

A body that carries binary tensors is a JSON header followed by the raw bytes
of each binary tensor, in the order the tensors appear in the header; the
``Inference-Header-Content-Length`` header gives the JSON header's length and
each binary tensor's ``parameters.binary_data_size`` its length. Tensor bytes
are little-endian, row major, without padding; a BOOL element is one byte (0
or 1) and a BYTES element is a 4-byte little-endian length and that many bytes.
https://github.com/kserve/open-inference-protocol/blob/main/specification/protocol/binary_data.md

Every function here is pure and raises ``ValueError`` (or its subclass
``FramingError``) for bytes or values that do not fit; callers map that to
their own errors.
"""

from __future__ import annotations

import itertools
import math
import struct
from collections.abc import Sequence
from typing import Any

__all__ = [
    "HEADER_LENGTH",
    "FramingError",
    "decode",
    "element_bounds",
    "encode",
    "frame",
    "header_length",
    "unframe",
]

HEADER_LENGTH = "Inference-Header-Content-Length"

# struct format letter of each fixed-size datatype (BF16 is handled apart: struct has none).
_FORMATS = {
    "BOOL": "?",
    "INT8": "b",
    "INT16": "h",
    "INT32": "i",
    "INT64": "q",
    "UINT8": "B",
    "UINT16": "H",
    "UINT32": "I",
    "UINT64": "Q",
    "FP16": "e",
    "FP32": "f",
    "FP64": "d",
}
_LENGTH = struct.Struct("<I")


class FramingError(ValueError):
    """A body's JSON header and binary tensors do not line up."""


def header_length(raw: str, body_length: int) -> int:
    """Return the JSON header length ``raw`` (the header's value) announces for a body.

    Raises ``FramingError`` unless it is a decimal integer within the body.
    """
    if not raw.strip().isdecimal():
        raise FramingError(f"{HEADER_LENGTH} must be a non-negative integer, not {raw!r}")
    length = int(raw)
    if length > body_length:
        raise FramingError(f"{HEADER_LENGTH} {length} exceeds the body's {body_length} bytes")
    return length


def frame(header: bytes, chunks: Sequence[bytes]) -> tuple[bytes, int]:
    """Return the body carrying ``header`` then ``chunks``, and its JSON header length."""
    return header + b"".join(chunks), len(header)


def unframe(body: bytes, length: int, sizes: Sequence[int]) -> tuple[bytes, list[bytes]]:
    """Return the JSON header and one chunk per size; the sizes must cover the rest exactly.

    Inverse of ``frame``: ``unframe(*frame(h, cs), [len(c) for c in cs]) == (h, cs)``.
    """
    if not 0 <= length <= len(body):
        raise FramingError(f"header length {length} outside a body of {len(body)} bytes")
    chunks = []
    offset = length
    for size in sizes:
        if size < 0 or offset + size > len(body):
            raise FramingError("binary_data_size runs past the end of the body")
        chunks.append(body[offset : offset + size])
        offset += size
    if offset != len(body):
        raise FramingError(f"{len(body) - offset} bytes after the last binary tensor")
    return body[:length], chunks


def element_bounds(datatype: str, raw: bytes, count: int) -> list[int]:
    """Return the ``count + 1`` byte offsets that delimit each element of ``raw``.

    Raises ``ValueError`` unless ``raw`` holds exactly ``count`` elements of ``datatype``.
    """
    size = _item_size(datatype)
    if size is not None:
        if len(raw) != count * size:
            raise ValueError(f"{len(raw)} bytes are not {count} {datatype} elements")
        return [i * size for i in range(count + 1)]
    bounds = _bytes_bounds(raw)
    if len(bounds) != count + 1:
        raise ValueError(f"{len(bounds) - 1} BYTES elements where the shape needs {count}")
    return bounds


def encode(datatype: str, values: Sequence[Any]) -> bytes:
    """Return ``values`` (JSON form: numbers, booleans, strings) as tensor bytes."""
    try:
        if datatype == "BYTES":
            parts = []
            for value in values:
                data = value.encode() if isinstance(value, str) else bytes(value)
                parts.append(_LENGTH.pack(len(data)) + data)
            return b"".join(parts)
        if datatype == "BF16":
            return b"".join(struct.pack("<H", _bf16_bits(float(v))) for v in values)
        return struct.pack(f"<{len(values)}{_FORMATS[datatype]}", *values)
    except (struct.error, OverflowError, TypeError, KeyError) as exc:
        raise ValueError(f"values do not fit {datatype}: {exc}") from exc


def decode(datatype: str, raw: bytes) -> list[Any]:
    """Return the elements of ``raw`` in JSON form (BYTES as UTF-8 strings).

    Raises ``ValueError`` for a length that is not whole elements, or BYTES
    that are not UTF-8 (JSON cannot carry them).
    """
    if datatype == "BYTES":
        bounds = _bytes_bounds(raw)
        try:
            return [raw[a + 4 : b].decode() for a, b in itertools.pairwise(bounds)]
        except UnicodeDecodeError as exc:
            raise ValueError("BYTES that are not UTF-8 cannot be sent as JSON") from exc
    size = _item_size(datatype)
    if size is None or len(raw) % size:
        raise ValueError(f"{len(raw)} bytes are not whole {datatype} elements")
    if datatype == "BF16":
        halves = struct.unpack(f"<{len(raw) // 2}H", raw)
        return [struct.unpack("<f", struct.pack("<I", h << 16))[0] for h in halves]
    return list(struct.unpack(f"<{len(raw) // size}{_FORMATS[datatype]}", raw))


def _item_size(datatype: str) -> int | None:
    if datatype == "BF16":
        return 2
    if datatype == "BYTES":
        return None
    if datatype not in _FORMATS:
        raise ValueError(f"unknown datatype {datatype!r}")
    return struct.calcsize(_FORMATS[datatype])


def _bytes_bounds(raw: bytes) -> list[int]:
    bounds = [0]
    offset = 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise ValueError("a BYTES element's length is cut short")
        (length,) = _LENGTH.unpack_from(raw, offset)
        offset += 4 + length
        if offset > len(raw):
            raise ValueError("a BYTES element runs past its tensor")
        bounds.append(offset)
    return bounds


def _bf16_bits(value: float) -> int:
    """Round a float to bfloat16 (nearest, ties to even), as the high half of its FP32 bits."""
    if math.isnan(value):
        return 0x7FC0
    bits: int = struct.unpack("<I", struct.pack("<f", value))[0]
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) & 0xFFFF
