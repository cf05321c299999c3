"""A small authoritative DNS server for tests: A records it is told, over UDP.

Envoy's resolver (c-ares) asks it for the names of endpoints when the control
plane's ``dns_resolvers`` setting points at it. Names it does not know get
NXDOMAIN; AAAA questions for known names get an empty answer, so a resolver
that prefers IPv4 settles on the A records.
"""

from __future__ import annotations

import asyncio
import ipaddress
import struct
from dataclasses import dataclass, field

A, AAAA, IN = 1, 28, 1
NXDOMAIN = 3


def _question(packet: bytes) -> tuple[str, int, int, int]:
    """Return (name, type, class, end offset) of a query's one question."""
    labels, offset = [], 12
    while (length := packet[offset]) != 0:
        labels.append(packet[offset + 1 : offset + 1 + length].decode("ascii").lower())
        offset += 1 + length
    qtype, qclass = struct.unpack_from("!HH", packet, offset + 1)
    return ".".join(labels), qtype, qclass, offset + 5


@dataclass
class DnsServer(asyncio.DatagramProtocol):
    """Answers ``records[name]`` (IPv4 addresses) with ``ttl``; counts the questions."""

    records: dict[str, list[str]] = field(default_factory=dict)
    ttl: int = 1
    questions: int = 0
    port: int = 0
    _transport: asyncio.DatagramTransport | None = None

    async def start(self) -> DnsServer:
        """Listen on 127.0.0.1 and a free UDP port."""
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: self, local_addr=("127.0.0.1", 0)
        )
        self._transport = transport
        self.port = transport.get_extra_info("sockname")[1]
        return self

    def stop(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
        self.questions += 1
        (query_id,) = struct.unpack_from("!H", data)
        name, qtype, qclass, end = _question(data)
        known = name in self.records
        answers = [
            ipaddress.IPv4Address(address).packed
            for address in (self.records.get(name, []) if qtype == A and qclass == IN else [])
        ]
        # Header: id, flags (response, authoritative, recursion desired and available,
        # rcode), one question, the answers, no authority or additional records.
        flags = 0x8580 | (0 if known else NXDOMAIN)
        reply = struct.pack("!HHHHHH", query_id, flags, 1, len(answers), 0, 0)
        reply += data[12:end]
        for packed in answers:
            # The name is a pointer to the question's (offset 12).
            reply += struct.pack("!HHHIH", 0xC00C, A, IN, self.ttl, 4) + packed
        assert self._transport is not None
        self._transport.sendto(reply, addr)
