"""API keys and roles (pure functions).

A key reads ``tk_`` + 30 random base62 characters + a 6-character base62
CRC32 of them, like GitHub's tokens: a scanner recognises the prefix, and a
mistyped key is refused by its checksum before any database lookup. Only the
SHA-256 of a key is stored; the key itself is shown once, when it is created.
"""

from __future__ import annotations

import enum
import hashlib
import re
import secrets
import string
import zlib
from dataclasses import dataclass
from datetime import timedelta

__all__ = [
    "KEY_PREFIX",
    "Permission",
    "Principal",
    "Role",
    "generate_key",
    "hash_key",
    "is_well_formed",
    "key_display_prefix",
    "parse_lifetime",
]

KEY_PREFIX = "tk_"
_ALPHABET = string.digits + string.ascii_letters
_RANDOM_LEN = 30
_CHECKSUM_LEN = 6
KEY_LENGTH = len(KEY_PREFIX) + _RANDOM_LEN + _CHECKSUM_LEN


class Permission(enum.StrEnum):
    """What a route needs."""

    READ = "read"  # models, versions, traffic, history, proxies
    WRITE = "write"  # change models, versions, traffic (and policies)
    AUDIT = "audit"  # the full audit log: query, export, verify
    KEYS = "keys"  # create, list and revoke API keys


class Role(enum.StrEnum):
    """A key's role: a fixed set of permissions."""

    VIEWER = "viewer"
    OPERATOR = "operator"
    ADMIN = "admin"
    AUDITOR = "auditor"

    @property
    def permissions(self) -> frozenset[Permission]:
        """Return the permissions this role grants."""
        return _PERMISSIONS[self]


_PERMISSIONS = {
    Role.VIEWER: frozenset({Permission.READ}),
    Role.OPERATOR: frozenset({Permission.READ, Permission.WRITE}),
    Role.AUDITOR: frozenset({Permission.READ, Permission.AUDIT}),
    Role.ADMIN: frozenset(Permission),
}


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller behind a valid key."""

    key_id: int
    name: str
    role: Role

    def can(self, permission: Permission) -> bool:
        """Return whether this caller's role grants ``permission``."""
        return permission in self.role.permissions


def _base62(number: int, length: int) -> str:
    digits = []
    for _ in range(length):
        number, remainder = divmod(number, 62)
        digits.append(_ALPHABET[remainder])
    return "".join(reversed(digits))


def _checksum(random_part: str) -> str:
    return _base62(zlib.crc32(random_part.encode()), _CHECKSUM_LEN)


def generate_key() -> str:
    """Return a new random key (about 178 bits of entropy)."""
    random_part = "".join(secrets.choice(_ALPHABET) for _ in range(_RANDOM_LEN))
    return KEY_PREFIX + random_part + _checksum(random_part)


def is_well_formed(key: str) -> bool:
    """Return whether ``key`` has the prefix, the length, the alphabet and a valid checksum."""
    if len(key) != KEY_LENGTH or not key.startswith(KEY_PREFIX):
        return False
    body = key[len(KEY_PREFIX) :]
    if any(c not in _ALPHABET for c in body):
        return False
    random_part, checksum = body[:_RANDOM_LEN], body[_RANDOM_LEN:]
    return secrets.compare_digest(_checksum(random_part), checksum)


def hash_key(key: str) -> str:
    """Return the SHA-256 (hex) of ``key``: what the database stores and looks up."""
    return hashlib.sha256(key.encode()).hexdigest()


def key_display_prefix(key: str) -> str:
    """Return the first characters of ``key``, safe to show and log (``tk_AbCd1234``)."""
    return key[: len(KEY_PREFIX) + 8]


_LIFETIME = re.compile(r"^([1-9][0-9]{0,5})([mhdw])$")
_LIFETIME_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
MAX_LIFETIME = timedelta(days=3660)


def parse_lifetime(value: str) -> timedelta:
    """Return the lifetime that ``value`` names: a whole number and a unit, ``m``
    (minutes), ``h`` (hours), ``d`` (days) or ``w`` (weeks), as in ``30d``.

    Raise ValueError, with the accepted form, on anything else or beyond ten years.
    """
    match = _LIFETIME.match(value.strip())
    if match is None:
        raise ValueError(
            f"{value!r} is not a lifetime: use a number and m, h, d or w (for example 30d)"
        )
    lifetime = timedelta(**{_LIFETIME_UNITS[match[2]]: int(match[1])})
    if lifetime > MAX_LIFETIME:
        raise ValueError(f"{value!r} is longer than ten years")
    return lifetime
