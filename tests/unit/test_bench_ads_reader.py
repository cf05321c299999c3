"""The fleet benchmark's incremental response reader reads what protobuf parses."""

from __future__ import annotations

import itertools

from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import Message
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.xds.adsreader import ReadResponse, ResponseReader

_text = st.text(max_size=40)
_any = st.builds(
    any_pb2.Any,
    type_url=st.sampled_from(["", "type.googleapis.com/x.Y", "t" * 200]),
    value=st.binary(max_size=3000),
)


def _resource(
    name: str, version: str, packed: any_pb2.Any | None, extra: int
) -> discovery_pb2.Resource:
    resource = discovery_pb2.Resource(name=name, version=version)
    if packed is not None:
        resource.resource.CopyFrom(packed)
    if extra & 1:
        resource.aliases.extend(["alias-a", "alias-b"])
    if extra & 2:
        resource.ttl.CopyFrom(duration_pb2.Duration(seconds=extra, nanos=5))
    return resource


_delta_resource = st.builds(
    _resource, _text, _text, st.none() | _any, st.integers(min_value=0, max_value=3)
)


@st.composite
def _sotw(draw: st.DrawFn) -> discovery_pb2.DiscoveryResponse:
    response = discovery_pb2.DiscoveryResponse(
        version_info=draw(_text),
        type_url=draw(_text),
        nonce=draw(_text),
        canary=draw(st.booleans()),
    )
    response.resources.extend(draw(st.lists(_any, max_size=8)))
    if draw(st.booleans()):
        response.control_plane.CopyFrom(base_pb2.ControlPlane(identifier=draw(_text)))
    return response


@st.composite
def _delta(draw: st.DrawFn) -> discovery_pb2.DeltaDiscoveryResponse:
    response = discovery_pb2.DeltaDiscoveryResponse(
        system_version_info=draw(_text),
        type_url=draw(_text),
        nonce=draw(_text),
    )
    response.resources.extend(draw(st.lists(_delta_resource, max_size=8)))
    response.removed_resources.extend(draw(st.lists(_text, max_size=5)))
    if draw(st.booleans()):
        response.control_plane.CopyFrom(base_pb2.ControlPlane(identifier=draw(_text)))
    return response


def _fields_shuffled(message: Message, data: st.DataObject) -> bytes:
    """``message``'s wire bytes with its top-level fields (each repeated element its own
    field) in a random order: protobuf allows any order, and repeated elements keep
    theirs only relative to each other."""
    pieces: list[tuple[str, int, bytes]] = []  # (field, index, bytes)
    for descriptor, value in message.ListFields():
        values = list(value) if descriptor.is_repeated else [value]
        for index, item in enumerate(values):
            single = type(message)()
            target = getattr(single, descriptor.name)
            if descriptor.is_repeated:
                if descriptor.message_type is not None:
                    target.add().CopyFrom(item)
                else:
                    target.append(item)
            elif descriptor.message_type is not None:
                target.CopyFrom(item)
            else:
                setattr(single, descriptor.name, item)
            pieces.append((descriptor.name, index, single.SerializeToString()))
    order = data.draw(st.permutations(pieces))
    # Keep each repeated field's elements in their order (the sort is stable per field).
    by_field: dict[str, list[bytes]] = {}
    for name, _, piece in sorted(pieces, key=lambda p: (p[0], p[1])):
        by_field.setdefault(name, []).append(piece)
    out = []
    for name, _, _ in order:
        out.append(by_field[name].pop(0))
    return b"".join(out)


def _framed(data: bytes) -> bytes:
    return b"\x00" + len(data).to_bytes(4, "big") + data


def _chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    edges = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges)]


def _read(delta: bool, keep: bool, data: bytes, cuts: list[int]) -> list[ReadResponse]:
    reader = ResponseReader(delta=delta, keep=lambda t, v: keep)
    read = []
    for chunk in _chunks(data, cuts):
        read.extend(reader.feed(chunk))
    assert reader.idle
    return read


_cuts = st.lists(st.integers(min_value=0, max_value=1 << 20), max_size=40)


@settings(max_examples=300, deadline=None)
@given(st.lists(_sotw(), min_size=1, max_size=4), _cuts, st.booleans(), st.data())
def test_sotw_responses_read_in_any_chunks_and_field_order(
    responses: list[discovery_pb2.DiscoveryResponse],
    cuts: list[int],
    keep: bool,
    data: st.DataObject,
) -> None:
    wire = [_fields_shuffled(r, data) for r in responses]
    read = _read(False, keep, b"".join(_framed(w) for w in wire), cuts)
    assert len(read) == len(responses)
    for got, raw, response in zip(read, wire, responses, strict=True):
        parsed = discovery_pb2.DiscoveryResponse.FromString(raw)
        assert parsed == response
        assert got.version == parsed.version_info
        assert got.type_url == parsed.type_url
        assert got.nonce == parsed.nonce
        assert got.size == len(raw) == parsed.ByteSize()
        assert got.resources == len(parsed.resources)
        assert got.resource_bytes == sum(r.ByteSize() for r in parsed.resources)
        assert got.names == [] and got.removed == []
        expected = [r.SerializeToString() for r in parsed.resources] if keep else []
        assert got.kept == expected


@settings(max_examples=300, deadline=None)
@given(st.lists(_delta(), min_size=1, max_size=4), _cuts, st.booleans(), st.data())
def test_delta_responses_read_in_any_chunks_and_field_order(
    responses: list[discovery_pb2.DeltaDiscoveryResponse],
    cuts: list[int],
    keep: bool,
    data: st.DataObject,
) -> None:
    wire = []
    for response in responses:
        # Each Resource's own fields in a random order too.
        shuffled = discovery_pb2.DeltaDiscoveryResponse()
        shuffled.CopyFrom(response)
        del shuffled.resources[:]
        raw_resources = [_fields_shuffled(r, data) for r in response.resources]
        head = _fields_shuffled(shuffled, data)
        # Resources (field 2, length-delimited: tag 0x12) at random places among the rest.
        parts = [b"\x12" + _varint(len(r)) + r for r in raw_resources]
        position = data.draw(st.integers(min_value=0, max_value=1))
        wire.append(b"".join(parts) + head if position else head + b"".join(parts))
    read = _read(True, keep, b"".join(_framed(w) for w in wire), cuts)
    assert len(read) == len(responses)
    for got, raw, response in zip(read, wire, responses, strict=True):
        parsed = discovery_pb2.DeltaDiscoveryResponse.FromString(raw)
        assert parsed == response
        assert got.version == parsed.system_version_info
        assert got.type_url == parsed.type_url
        assert got.nonce == parsed.nonce
        assert got.size == len(raw)
        assert got.resources == len(parsed.resources)
        assert got.resource_bytes == sum(r.ByteSize() for r in parsed.resources)
        assert got.names == [r.name for r in parsed.resources]
        assert got.removed == list(parsed.removed_resources)
        expected = (
            [r.resource.SerializeToString() for r in parsed.resources if r.HasField("resource")]
            if keep
            else []
        )
        assert got.kept == expected


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def test_a_repeated_scalar_field_reads_as_its_last_value() -> None:
    first = discovery_pb2.DiscoveryResponse(version_info="1", nonce="a").SerializeToString()
    second = discovery_pb2.DiscoveryResponse(version_info="2").SerializeToString()
    (got,) = _read(False, False, _framed(first + second), [])
    assert (got.version, got.nonce) == ("2", "a")
