"""What each connected proxy was sent, acknowledged or rejected, per resource type.

Like ``istioctl proxy-status``: for each type a proxy is SYNCED (it ACKed the
current version), STALE (it has not yet ACKed the current version), NACKED
(it rejected the last version sent; ``error`` says why) or NOT SENT. A proxy
that holds all of the current snapshot is synced at that snapshot's config
revision (:meth:`ProxyRegistry.synced_revision`): what a caller that made a
change waits for before it relies on Envoy enforcing it.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from controlplane.domain.clock import utcnow
from controlplane.xds.resources import PUSH_ORDER
from controlplane.xds.snapshot import Snapshot

__all__ = ["ProxyConnection", "ProxyRegistry", "SyncStatus", "TypeState"]

log = logging.getLogger(__name__)


class SyncStatus(StrEnum):
    """Where one proxy stands on one resource type."""

    SYNCED = "SYNCED"
    STALE = "STALE"
    NACKED = "NACKED"
    NOT_SENT = "NOT SENT"


@dataclass
class TypeState:
    """Protocol state of one resource type on one stream."""

    subscribed: bool = False
    names: frozenset[str] = frozenset()
    sent_version: str | None = None
    sent_nonce: str | None = None
    sent_names: frozenset[str] = frozenset()
    pending: bool = False
    acked_version: str | None = None
    nacked_version: str | None = None
    error: str | None = None
    sent_at: datetime | None = None
    acked_at: datetime | None = None
    # What the proxy holds as of the last response: names, in that response's snapshot.
    sent_snapshot: Snapshot | None = None
    holding: frozenset[str] = frozenset()

    def record_ack(self, version: str | None) -> None:
        """The proxy accepted the last response, now at ``version``."""
        self.acked_version = version
        self.acked_at = utcnow()
        self.nacked_version = None
        self.error = None

    def record_nack(self, error: str, node_id: str, type_url: str) -> None:
        """The proxy rejected the last response; it keeps its previous config."""
        self.nacked_version = self.sent_version
        self.error = error
        log.warning(
            "xds.nack",
            extra={
                "node": node_id,
                "type_url": type_url,
                "version": self.sent_version,
                "error": error,
            },
        )

    def client_version(self) -> str | None:
        """The version the proxy has or is about to have for this type."""
        return self.sent_version if self.sent_version is not None else self.acked_version

    def status(self, current_version: str | None) -> SyncStatus:
        """Return this type's sync status against the snapshot's ``current_version``."""
        if self.nacked_version is not None:
            return SyncStatus.NACKED
        if self.sent_version is None and self.acked_version is None:
            return SyncStatus.NOT_SENT
        if self.acked_version == current_version and not self.pending:
            return SyncStatus.SYNCED
        return SyncStatus.STALE


@dataclass
class ProxyConnection:
    """One ADS stream from one Envoy."""

    stream_id: int
    variant: str = "sotw"
    node_id: str = ""
    cluster: str = ""
    zone: str = ""
    connected_at: datetime = field(default_factory=utcnow)
    # The config revision of the newest snapshot the proxy held all of (None: none yet).
    held_revision: int | None = None
    types: dict[str, TypeState] = field(
        default_factory=lambda: {type_url: TypeState() for type_url in PUSH_ORDER}
    )


class ProxyRegistry:
    """The live ADS streams of this control-plane replica."""

    def __init__(self) -> None:
        self._connections: dict[int, ProxyConnection] = {}
        self._ids = itertools.count(1)

    def connect(self, variant: str = "sotw") -> ProxyConnection:
        """Register a new stream ("sotw" or "delta") and return its state holder."""
        connection = ProxyConnection(stream_id=next(self._ids), variant=variant)
        self._connections[connection.stream_id] = connection
        return connection

    def disconnect(self, connection: ProxyConnection) -> None:
        """Forget a stream that has closed."""
        self._connections.pop(connection.stream_id, None)

    def connections(self) -> list[ProxyConnection]:
        """Return the streams that have identified their node, oldest first."""
        return [c for c in self._connections.values() if c.node_id]

    def latest(self) -> list[ProxyConnection]:
        """Return the newest stream of each node id that has identified itself: a
        proxy that reconnected counts once, at its new stream."""
        return list({c.node_id: c for c in self._connections.values() if c.node_id}.values())

    def find(self, node_id: str) -> ProxyConnection | None:
        """Return the newest stream of ``node_id``, or None."""
        matches = [c for c in self._connections.values() if c.node_id == node_id]
        return matches[-1] if matches else None

    @staticmethod
    def statuses(
        connection: ProxyConnection, snapshot: Snapshot | None
    ) -> dict[str, tuple[TypeState, SyncStatus]]:
        """Return each type's state and status for ``connection`` against ``snapshot``."""
        return {
            type_url: (
                state,
                state.status(snapshot.version(type_url) if snapshot is not None else None),
            )
            for type_url, state in connection.types.items()
        }

    @classmethod
    def overall(cls, connection: ProxyConnection, snapshot: Snapshot | None) -> SyncStatus:
        """Return the proxy's status as a whole: NACKED when it rejected the last
        version of any type, SYNCED when it holds all of ``snapshot``, else STALE."""
        if any(state.nacked_version is not None for state in connection.types.values()):
            return SyncStatus.NACKED
        if cls.synced_revision(connection, snapshot) is not None:
            return SyncStatus.SYNCED
        return SyncStatus.STALE

    @staticmethod
    def synced_revision(connection: ProxyConnection, snapshot: Snapshot | None) -> int | None:
        """Return ``snapshot``'s config revision if the proxy holds all of it, else None.

        The proxy holds a snapshot when every type is SYNCED against it, or has
        nothing to hold: a type the proxy never subscribed to while the snapshot
        has no resource of it (Envoy asks for endpoints only once a cluster needs
        them). Versions are content hashes, so a proxy synced at revision N holds
        every change of the revisions before N that N still contains.
        """
        if snapshot is None:
            return None
        for type_url, state in connection.types.items():
            status = state.status(snapshot.version(type_url))
            if status is SyncStatus.SYNCED:
                continue
            if (
                status is SyncStatus.NOT_SENT
                and not state.subscribed
                and not snapshot.resources[type_url]
            ):
                continue
            return None
        return snapshot.revision
