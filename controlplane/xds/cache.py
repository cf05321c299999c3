"""The snapshot cache: the current snapshots and a way to wait for the next ones.

It knows nothing about gRPC; the servers watch it. Proxies get the default
snapshot, or the one made for their zone (which orders endpoints so that the
proxy's own zone comes first) when the state has endpoints in that zone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Protocol

from controlplane.xds.snapshot import Snapshot

__all__ = ["Feedback", "SnapshotCache"]


class Feedback(Protocol):
    """What the proxies make of the snapshots: streams report, the publisher listens."""

    def accepted(self, snapshot: Snapshot) -> None:
        """A proxy holds the whole of ``snapshot`` (every type ACKed at its versions)."""

    def rejected(self, snapshot: Snapshot | None, type_url: str, error: str, node: str) -> None:
        """A proxy rejected (NACKed) the resources of ``type_url`` it was sent from
        ``snapshot`` with ``error``."""

    def sent(
        self, snapshot: Snapshot, type_urls: Sequence[str], variant: str, *, update: bool
    ) -> None:
        """A stream of ``variant`` ("sotw" or "delta") sent one response per type in
        ``type_urls`` from ``snapshot``; ``update``: to a proxy that held all of an
        earlier snapshot (not the first config of a new stream)."""


class SnapshotCache:
    """Holds the latest consistent snapshots; watchers wait for changes."""

    def __init__(self) -> None:
        self._snapshot: Snapshot | None = None
        self._by_zone: Mapping[str, Snapshot] = MappingProxyType({})
        self._changed = asyncio.Condition()
        self._feedback: Feedback | None = None

    def observe(self, feedback: Feedback) -> None:
        """Send what the proxies accept and reject to ``feedback`` (the publisher)."""
        self._feedback = feedback

    def report_accepted(self, snapshot: Snapshot) -> None:
        """A stream's proxy holds all of ``snapshot``."""
        if self._feedback is not None:
            self._feedback.accepted(snapshot)

    def report_rejected(
        self, snapshot: Snapshot | None, type_url: str, error: str, node: str
    ) -> None:
        """A stream's proxy NACKed ``type_url`` of ``snapshot``."""
        if self._feedback is not None:
            self._feedback.rejected(snapshot, type_url, error, node)

    def report_sent(
        self, snapshot: Snapshot, type_urls: Sequence[str], variant: str, *, update: bool
    ) -> None:
        """A stream sent responses of ``type_urls`` from ``snapshot``."""
        if self._feedback is not None:
            self._feedback.sent(snapshot, type_urls, variant, update=update)

    @property
    def snapshot(self) -> Snapshot | None:
        """The default snapshot, or None before the state has been loaded."""
        return self._snapshot

    def snapshot_for(self, zone: str) -> Snapshot | None:
        """The snapshot for a proxy in ``zone`` ("" for none): its zone's, else the default."""
        return self._by_zone.get(zone, self._snapshot) if zone else self._snapshot

    async def publish(
        self, snapshot: Snapshot, by_zone: Mapping[str, Snapshot] | None = None
    ) -> None:
        """Check every snapshot for consistency, make them current and wake every watcher.

        Raises InconsistentSnapshot (and publishes nothing) when one is not
        consistent.
        """
        zones = dict(by_zone or {})
        snapshot.check_consistent()
        for candidate in zones.values():
            # A zone's snapshot differs from the default only in its endpoints'
            # priorities; the same resources under the same names are as consistent.
            if not candidate.same_names_and_references(snapshot):
                candidate.check_consistent()
        async with self._changed:
            self._snapshot = snapshot
            self._by_zone = MappingProxyType(zones)
            self._changed.notify_all()

    async def next_snapshot(self, seen: Snapshot | None, zone: str = "") -> Snapshot:
        """Wait until the snapshot for ``zone`` is not ``seen`` and return it."""
        async with self._changed:
            await self._changed.wait_for(
                lambda: self.snapshot_for(zone) is not None and self.snapshot_for(zone) is not seen
            )
            current = self.snapshot_for(zone)
            assert current is not None
            return current
