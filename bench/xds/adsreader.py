"""Reads gRPC-framed discovery responses as their bytes arrive, without holding them.

A response on an ADS stream is a gRPC message (1 byte compressed flag, 4 bytes
big-endian length, then the message) holding a ``DiscoveryResponse`` or a
``DeltaDiscoveryResponse``. A state-of-the-world RouteConfiguration for 1,000
models is 8.6 MB, sent to every proxy: a bench client that parsed whole
messages would hold megabytes per stream. :class:`ResponseReader` reads only
the top-level fields (and, for delta, each ``Resource``'s name), counts the
bytes of the resources as they stream by and keeps a resource's ``Any`` only
when asked to (clusters and listeners, which are small and whose contents the
client needs). Protobuf fields may come in any order and a field may repeat
(the last one wins); the reader depends on neither.
https://protobuf.dev/programming-guides/encoding/

Fields read (``envoy.service.discovery.v3``):

- ``DiscoveryResponse``: version_info = 1, resources = 2 (Any), type_url = 4, nonce = 5.
- ``DeltaDiscoveryResponse``: system_version_info = 1, resources = 2 (Resource),
  type_url = 4, nonce = 5, removed_resources = 6.
- ``Resource``: version = 1, resource = 2 (Any), name = 3.

Everything else is skipped by its wire type. Names and type URLs are interned:
2,000 delta streams each hold the same 6,000 names.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["ReadResponse", "ResponseReader", "WireError"]

# States of the reader.
_PREFIX = 0  # the 5-byte gRPC message prefix
_TAG = 1  # a field's tag (varint)
_LENGTH = 2  # a length-delimited field's length (varint)
_VARINT = 3  # a varint field's value, skipped
_SKIP = 4  # bytes to skip (counted)
_CAPTURE = 5  # bytes to keep (a small field)

# What a captured field is for.
_VERSION = 1
_TYPE_URL = 2
_NONCE = 3
_REMOVED = 4
_RESOURCE = 5  # a sotw resource's Any, or a delta Resource's Any
_NAME = 6  # a delta Resource's name


class WireError(ValueError):
    """The bytes are not a response this reader understands."""


@dataclass(slots=True)
class ReadResponse:
    """What one response held: its top-level fields and its resources' sizes."""

    version: str = ""
    type_url: str = ""
    nonce: str = ""
    size: int = 0  # the message's bytes (the gRPC length prefix)
    resources: int = 0  # how many resources
    resource_bytes: int = 0  # the bytes of every resource field's value, summed
    names: list[str] = field(default_factory=list)  # delta: each resource's name
    removed: list[str] = field(default_factory=list)  # delta: removed_resources
    kept: list[bytes] = field(default_factory=list)  # the Anys kept, serialized


# keep(type_url or None, version or None) -> whether to keep a resource's Any. It is asked
# as each resource starts; the type and version are None while not yet read.
Keep = Callable[[str | None, str | None], bool]


def _never(type_url: str | None, version: str | None) -> bool:
    return False


class ResponseReader:
    """Feed it an ADS stream's bytes in chunks of any size; it returns the responses
    completed by each chunk."""

    def __init__(self, *, delta: bool, keep: Keep = _never) -> None:
        self.delta = delta
        self.keep = keep
        self._state = _PREFIX
        self._small = bytearray()  # a prefix or a captured field being collected
        self._varint = 0
        self._shift = 0
        self._tag = 0
        self._want = 0  # bytes left in the field being skipped or captured
        self._purpose = 0
        self._message_left = 0
        self._resource_left = -1  # bytes left of the delta Resource being read; -1: none
        self._resource_name = ""
        self._resource_any: bytes | None = None
        self._response = ReadResponse()
        self._version: str | None = None
        self._type_url: str | None = None

    @property
    def idle(self) -> bool:
        """Whether the reader is between messages (nothing of one read yet)."""
        return self._state == _PREFIX and not self._small

    def feed(self, data: bytes | bytearray | memoryview) -> list[ReadResponse]:
        """Read ``data``; the responses it completed, in order."""
        done: list[ReadResponse] = []
        view = memoryview(data)
        pos = 0
        end = len(view)
        while pos < end:
            state = self._state
            if state == _PREFIX:
                take = min(5 - len(self._small), end - pos)
                self._small += view[pos : pos + take]
                pos += take
                if len(self._small) == 5:
                    if self._small[0] != 0:
                        raise WireError("compressed gRPC messages are not read")
                    length = int.from_bytes(self._small[1:5], "big")
                    self._small.clear()
                    self._start(length)
                    if length == 0:
                        done.append(self._finish())
                continue
            if state in (_SKIP, _CAPTURE):
                take = min(self._want, end - pos)
                if state == _CAPTURE:
                    self._small += view[pos : pos + take]
                pos += take
                self._want -= take
                self._consumed(take)
                if self._want == 0:
                    if state == _CAPTURE:
                        self._captured(bytes(self._small))
                        self._small.clear()
                    if self._field_done():
                        done.append(self._finish())
                continue
            if state == _TAG and self._resource_left < 0 and view[pos] == 0x12:
                # Resources whose bytes are all in this chunk, read in one loop (3,000
                # of them in a response at 1,000 models): the common case, fast.
                pos = self._skim(view, pos, end)
                if self._message_left == 0:
                    done.append(self._finish())
                    continue
                if pos >= end:
                    break
            # A varint: a tag, a length or a value.
            value = self._varint
            shift = self._shift
            start = pos
            complete = False
            while pos < end:
                byte = view[pos]
                pos += 1
                value |= (byte & 0x7F) << shift
                shift += 7
                if byte < 0x80:
                    complete = True
                    break
                if shift > 63:
                    raise WireError("varint too long")
            self._consumed(pos - start)
            if not complete:
                self._varint, self._shift = value, shift
                continue
            self._varint = self._shift = 0
            if state == _TAG:
                if self._on_tag(value) and self._field_done():
                    done.append(self._finish())
            elif state == _LENGTH:
                if self._on_length(value) and self._field_done():
                    done.append(self._finish())
            elif self._field_done():  # _VARINT: a value skipped
                done.append(self._finish())
        return done

    def _skim(self, view: memoryview, pos: int, end: int) -> int:
        """Read top-level ``resources`` fields that lie whole in ``view[pos:end]``; stop
        at anything else (the general path reads it). Returns the position reached."""
        response = self._response
        left = self._message_left
        count = 0
        total = 0
        keep = self.keep(self._type_url, self._version)
        delta = self.delta
        names = response.names
        kept = response.kept
        while pos < end and view[pos] == 0x12:
            # The length (a varint) after the tag.
            p = pos + 1
            length = 0
            shift = 0
            while p < end:
                byte = view[p]
                p += 1
                length |= (byte & 0x7F) << shift
                if byte < 0x80:
                    break
                shift += 7
            else:
                break
            if shift > 63:
                break
            field_end = p + length
            if field_end > end or field_end - pos > left:
                break
            if delta:
                # A Resource: its name and Any (other fields skipped), any order.
                name = ""
                packed: bytes | None = None
                q = p
                whole = True
                while q < field_end:
                    tag = view[q]
                    if tag & 0x80 or tag & 7 != 2:
                        whole = False  # a long tag or another wire type: the general path
                        break
                    q += 1
                    size = 0
                    shift = 0
                    while q < field_end:
                        byte = view[q]
                        q += 1
                        size |= (byte & 0x7F) << shift
                        if byte < 0x80:
                            break
                        shift += 7
                    else:
                        whole = False
                        break
                    if q + size > field_end:
                        whole = False
                        break
                    if tag == 0x1A:
                        name = sys.intern(bytes(view[q : q + size]).decode())
                    elif tag == 0x12 and keep:
                        packed = bytes(view[q : q + size])
                    q += size
                if not whole or q != field_end:
                    break
                names.append(name)
                if packed is not None:
                    kept.append(packed)
            elif keep:
                kept.append(bytes(view[p:field_end]))
            count += 1
            total += length
            left -= field_end - pos
            pos = field_end
        self._message_left = left
        response.resources += count
        response.resource_bytes += total
        return pos

    # The parts of one message.

    def _start(self, length: int) -> None:
        self._response = ReadResponse(size=length)
        self._version = self._type_url = None
        self._message_left = length
        self._resource_left = -1
        self._state = _TAG

    def _consumed(self, count: int) -> None:
        self._message_left -= count
        if self._message_left < 0:
            raise WireError("a field runs past the end of its message")
        if self._resource_left >= 0:
            self._resource_left -= count
            if self._resource_left < 0:
                raise WireError("a field runs past the end of its resource")

    def _on_tag(self, tag: int) -> bool:
        """A field starts; True when it is complete already (nothing follows the tag)."""
        wire_type = tag & 7
        self._tag = tag >> 3
        if wire_type == 0:
            self._state = _VARINT
            return False
        if wire_type == 2:
            self._state = _LENGTH
            return False
        if wire_type in (1, 5):
            self._skip(8 if wire_type == 1 else 4)
            return False
        raise WireError(f"wire type {wire_type} is not read")

    def _skip(self, count: int) -> None:
        self._state = _SKIP
        self._want = count

    def _capture(self, count: int, purpose: int) -> None:
        self._state = _CAPTURE
        self._want = count
        self._purpose = purpose

    def _on_length(self, length: int) -> bool:
        """A length-delimited field's length; True when the field is complete (empty)."""
        number = self._tag
        if self._resource_left >= 0:  # inside a delta Resource
            if number == 3:
                self._capture(length, _NAME)
            elif number == 2 and self.keep(self._type_url, self._version):
                self._capture(length, _RESOURCE)
            else:
                self._skip(length)
        else:
            response = self._response
            if number == 2:
                response.resources += 1
                response.resource_bytes += length
                if self.delta:
                    self._resource_left = length
                    self._resource_name = ""
                    self._resource_any = None
                    self._state = _TAG
                    return length == 0
                if self.keep(self._type_url, self._version):
                    self._capture(length, _RESOURCE)
                else:
                    self._skip(length)
            elif number == 1:
                self._capture(length, _VERSION)
            elif number == 4:
                self._capture(length, _TYPE_URL)
            elif number == 5:
                self._capture(length, _NONCE)
            elif number == 6 and self.delta:
                self._capture(length, _REMOVED)
            else:
                self._skip(length)
        if length == 0:
            if self._state == _CAPTURE:
                self._captured(b"")
            return True
        return False

    def _captured(self, value: bytes) -> None:
        purpose = self._purpose
        response = self._response
        if purpose == _RESOURCE:
            if self._resource_left >= 0:
                self._resource_any = value
            else:
                response.kept.append(value)
        elif purpose == _NAME:
            self._resource_name = sys.intern(value.decode())
        elif purpose == _VERSION:
            response.version = self._version = value.decode()
        elif purpose == _TYPE_URL:
            response.type_url = self._type_url = sys.intern(value.decode())
        elif purpose == _NONCE:
            response.nonce = value.decode()
        elif purpose == _REMOVED:
            response.removed.append(sys.intern(value.decode()))

    def _field_done(self) -> bool:
        """A field is complete: back to reading tags; True when the message is too."""
        if self._resource_left == 0:  # the delta Resource is complete as well
            self._response.names.append(self._resource_name)
            if self._resource_any is not None:
                self._response.kept.append(self._resource_any)
            self._resource_left = -1
        self._state = _TAG
        return self._message_left == 0

    def _finish(self) -> ReadResponse:
        if self._resource_left >= 0:
            raise WireError("a resource runs past the end of its message")
        self._state = _PREFIX
        response = self._response
        self._response = ReadResponse()
        return response
