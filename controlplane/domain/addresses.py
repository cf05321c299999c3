"""Endpoint addresses: an IP literal, or a DNS name that Envoy resolves.

A version whose endpoints are all IP literals reaches Envoy over EDS. One that
names any host by DNS becomes a cluster that Envoy resolves itself
(STRICT_DNS): a Kubernetes Service, a compose service or any other name.
"""

from __future__ import annotations

import ipaddress
import re

__all__ = ["endpoint_address", "is_host_name"]

# RFC 1123 labels: letters, digits and inner hyphens, 1 to 63 characters each.
_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
MAX_NAME_LENGTH = 253


def endpoint_address(value: str) -> str:
    """Return ``value`` in its one stored form (an IP literal as Envoy writes it, a
    host name in lower case without a trailing dot); raise ValueError saying
    what to fix when it is neither."""
    if "%" in value:
        raise ValueError(
            "address must not carry an IPv6 zone id (%...): Envoy rejects it; "
            "use an address that needs no zone"
        )
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        pass
    name = value.rstrip(".").lower() if value.endswith(".") and value != "." else value.lower()
    labels = name.split(".")
    if (
        not name
        or len(name) > MAX_NAME_LENGTH
        or not all(_LABEL.match(label) for label in labels)
        # An all-digit last label reads as a malformed IPv4 address, not a name.
        or labels[-1].isdigit()
    ):
        raise ValueError(
            "address must be an IP address or a DNS name (letters, digits, hyphens and "
            "dots, such as sentiment-v2.ml.svc.cluster.local)"
        )
    return name


def is_host_name(address: str) -> bool:
    """Whether a stored ``address`` is a DNS name (not an IP literal)."""
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return True
    return False
