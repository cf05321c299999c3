"""KServe v2 bodies with the binary tensor data extension, as a model server reads and writes them.

A request may send any input as raw little-endian bytes after its JSON header
(``Inference-Header-Content-Length`` gives the header's length, each binary
input's ``parameters.binary_data_size`` its bytes); a BYTES element is a 4-byte
length and its bytes. An output is answered as binary when the request asks
(``binary_data`` on the requested output, else ``binary_data_output``).
https://github.com/kserve/open-inference-protocol/blob/main/specification/protocol/binary_data.md

This is the example servers' own reading of the specification, written apart
from the batcher's, so that the tests of one check the other.
"""

from __future__ import annotations

import json
import struct
from typing import Any

__all__ = ["HEADER", "read_request", "wants_binary", "write_answer"]

HEADER = "Inference-Header-Content-Length"

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


def read_request(body: bytes, header_length: str | None) -> dict[str, Any]:
    """Return the request document with every binary input turned into JSON ``data``.

    Raises ``ValueError`` for a body that does not match its header and sizes.
    """
    split = len(body) if header_length is None else int(header_length)
    if not 0 <= split <= len(body):
        raise ValueError(f"{HEADER} is outside the body")
    doc = json.loads(body[:split])
    if not isinstance(doc, dict) or not isinstance(doc.get("inputs"), list):
        raise ValueError("body must be an object with an inputs list")
    offset = split
    for tensor in doc["inputs"]:
        parameters = tensor.get("parameters") if isinstance(tensor, dict) else None
        size = parameters.pop("binary_data_size", None) if isinstance(parameters, dict) else None
        if size is None:
            continue
        if not isinstance(size, int) or offset + size > len(body):
            raise ValueError("binary_data_size runs past the body")
        try:
            tensor["data"] = _decode(str(tensor.get("datatype")), body[offset : offset + size])
        except (KeyError, struct.error, UnicodeDecodeError) as exc:
            raise ValueError(f"binary input does not match its datatype: {exc}") from exc
        offset += size
    if offset != len(body):
        raise ValueError("bytes left after the last binary input")
    return doc


def wants_binary(request: dict[str, Any], output: str) -> bool:
    """Whether ``request`` asks for ``output`` as binary data."""
    parameters = request.get("parameters")
    default = bool(parameters.get("binary_data_output")) if isinstance(parameters, dict) else False
    for requested in request.get("outputs") or []:
        if isinstance(requested, dict) and requested.get("name") == output:
            return bool((requested.get("parameters") or {}).get("binary_data", default))
    return default


def write_answer(answer: dict[str, Any], request: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
    """Return the body and headers of ``answer`` (JSON outputs), each output in the asked form."""
    chunks = []
    for output in answer.get("outputs", []):
        if wants_binary(request, output["name"]):
            raw = _encode(output["datatype"], _flat(output.pop("data")))
            output["parameters"] = {**output.get("parameters", {}), "binary_data_size": len(raw)}
            chunks.append(raw)
    header = json.dumps(answer).encode()
    if not chunks:
        return header, {"Content-Type": "application/json"}
    headers = {"Content-Type": "application/octet-stream", HEADER: str(len(header))}
    return header + b"".join(chunks), headers


def _flat(data: Any) -> list[Any]:
    if not isinstance(data, list):
        return [data]
    return [leaf for item in data for leaf in _flat(item)]


def _decode(datatype: str, raw: bytes) -> list[Any]:
    if datatype == "BYTES":
        values, offset = [], 0
        while offset < len(raw):
            (length,) = struct.unpack_from("<I", raw, offset)
            values.append(raw[offset + 4 : offset + 4 + length].decode())
            offset += 4 + length
        return values
    if datatype == "BF16":
        return [struct.unpack("<f", b"\0\0" + raw[i : i + 2])[0] for i in range(0, len(raw), 2)]
    code = _FORMATS[datatype]
    return list(struct.unpack(f"<{len(raw) // struct.calcsize(code)}{code}", raw))


def _encode(datatype: str, values: list[Any]) -> bytes:
    if datatype == "BYTES":
        encoded = [str(v).encode() for v in values]
        return b"".join(struct.pack("<I", len(e)) + e for e in encoded)
    if datatype == "BF16":
        return b"".join(struct.pack("<f", v)[2:] for v in values)  # truncates: a demo server
    return struct.pack(f"<{len(values)}{_FORMATS[datatype]}", *values)
