"""The snapshot cache: the current snapshot and a way to wait for the next one.

It knows nothing about gRPC; the servers watch it. Every proxy receives the
same snapshot (Turnout's config does not vary by node).
"""

from __future__ import annotations

import asyncio

from controlplane.xds.snapshot import Snapshot

__all__ = ["SnapshotCache"]


class SnapshotCache:
    """Holds the latest consistent snapshot; watchers wait for changes."""

    def __init__(self) -> None:
        self._snapshot: Snapshot | None = None
        self._changed = asyncio.Condition()

    @property
    def snapshot(self) -> Snapshot | None:
        """The current snapshot, or None before the state has been loaded."""
        return self._snapshot

    async def publish(self, snapshot: Snapshot) -> None:
        """Check ``snapshot`` for consistency, make it current and wake every watcher.

        Raises InconsistentSnapshot (and publishes nothing) when it is not
        consistent.
        """
        snapshot.check_consistent()
        async with self._changed:
            self._snapshot = snapshot
            self._changed.notify_all()

    async def next_snapshot(self, seen: Snapshot | None) -> Snapshot:
        """Wait until the current snapshot is not ``seen`` and return it."""
        async with self._changed:
            await self._changed.wait_for(
                lambda: self._snapshot is not None and self._snapshot is not seen
            )
            assert self._snapshot is not None
            return self._snapshot
