"""The control-plane process: database, snapshot sync, xDS server and admin API.

``ControlPlane`` wires the pieces together and runs them on one event loop;
``turnout serve`` and ``turnout up`` use it, and so do the tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

import uvicorn
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from starlette.types import ASGIApp

from controlplane.db.audit_repository import audit_session_info
from controlplane.db.engine import create_engine, create_sessionmaker, is_sqlite
from controlplane.db.migrate import current_revision, head_revision
from controlplane.discovery.watch import Watches, api_client
from controlplane.memory import pin_mmap_threshold
from controlplane.metrics import ControlPlaneMetrics, ProxyFigure, XdsFigures
from controlplane.notify import Notifier, PostgresListener
from controlplane.services.audit import AuditCheckpointer, load_audit_secret
from controlplane.services.discovery import DiscoveryLeader
from controlplane.services.keys import VerifiedKeys
from controlplane.services.rollout_driver import RolloutDriver
from controlplane.services.shadow import ShadowRecorder
from controlplane.settings import Settings
from controlplane.sync import StateSync
from controlplane.tasks import cancel_and_wait
from controlplane.telemetry.cache import WindowCache
from controlplane.telemetry.exposition import DataPlaneExposition
from controlplane.telemetry.shadow import ShadowPairs, shadow_report_handler
from controlplane.telemetry.sink import Folder, metrics_service_handler
from controlplane.telemetry.window import TrafficWindow
from controlplane.tracing import Tracing, envoy_tracing
from controlplane.xds.cache import SnapshotCache
from controlplane.xds.server import XdsServer
from controlplane.xds.status import ProxyRegistry
from controlplane.xds.translate import DnsOptions, ListenerOptions

__all__ = ["ControlPlane", "SchemaNotReady"]

log = logging.getLogger(__name__)


class SchemaNotReady(RuntimeError):
    """The database schema is missing or older than this code expects."""


@dataclass
class _Tasks:
    sync: asyncio.Task[None] | None = None
    api: asyncio.Task[None] | None = None
    checkpoints: asyncio.Task[None] | None = None
    rollouts: asyncio.Task[None] | None = None
    shadow: asyncio.Task[None] | None = None


class ControlPlane:
    """One control-plane replica: call :meth:`start`, then :meth:`stop`."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = ControlPlaneMetrics()
        self.engine: AsyncEngine = create_engine(
            settings.database_url,
            connect_timeout_s=settings.database_connect_timeout_s,
            statement_timeout_s=settings.database_statement_timeout_s,
        )
        self._untime_statements = self.metrics.time_statements(self.engine.sync_engine)
        audit_secret = load_audit_secret(settings, create=True)
        self.sessionmaker: async_sessionmaker[AsyncSession] = create_sessionmaker(
            self.engine, info=audit_session_info(audit_secret)
        )
        self.verified_keys = VerifiedKeys(settings.verified_key_ttl_s)
        self.audit_checkpoints = AuditCheckpointer(
            self.sessionmaker,
            audit_secret,
            path=settings.audit_checkpoint_file,
            interval_s=settings.audit_checkpoint_interval_s,
        )
        self.notifier = Notifier()
        self.cache = SnapshotCache()
        self.registry = ProxyRegistry()
        self.tracing = Tracing.from_settings(settings)
        # The one mapping of settings to the listener: what the sync loop pushes is
        # what a dry run or a revision diff shows.
        self.listener = ListenerOptions(
            host=settings.listener_host,
            port=settings.listener_port,
            reuse_port=settings.listener_reuse_port,
            access_log_path=settings.access_log_path or None,
            tracing=envoy_tracing(settings),
            dns=DnsOptions(
                refresh_rate_s=settings.dns_refresh_rate_s,
                respect_ttl=settings.dns_respect_ttl,
                resolvers=settings.dns_resolver_list,
            ),
        )
        self.sync = StateSync(
            self.sessionmaker,
            self.cache,
            self.notifier,
            listener=self.listener,
            poll_interval_s=settings.poll_interval_s,
            metrics=self.metrics,
            tracing=self.tracing,
            verify_handoff=settings.sync_verify_handoff,
        )
        # Envoy's statistics, streamed by every proxy's stat sink to the xDS port.
        self.traffic = TrafficWindow(
            lambda: self.sync.state,
            retention_s=settings.metrics_retention_s,
            flush_interval_s=settings.stats_flush_interval_s,
        )
        # The summary and the data-plane series of /metrics, computed once a slot.
        self.traffic_cache = WindowCache(self.traffic, settings.metrics_cache_s)
        self.data_plane = DataPlaneExposition(self.traffic, settings.metrics_cache_s)
        # One task folds every proxy's flushes into the window, a flush at a time.
        self.folder = Folder(self.traffic)
        # Canary rollouts: every replica publishes its figures, the lease holder drives.
        self.rollouts = RolloutDriver(
            self.sessionmaker,
            self.traffic,
            interval_s=settings.rollout_interval_s,
            lease_s=settings.rollout_lease_s,
            retention_s=settings.metrics_retention_s,
            write_timeout_s=settings.write_lock_timeout_s,
            on_change=self.notifier.notify,
        )
        # Shadow comparisons: Envoy reports both answers to the xDS port as well
        # (controlplane.xds.shadow); pairs become rows every replica can read.
        self.shadow_pairs = ShadowPairs(
            max_pending=settings.shadow_max_pending,
            expiry_s=settings.shadow_pair_expiry_s,
            clock=time.monotonic,
        )
        self.shadow = ShadowRecorder(
            self.sessionmaker,
            lambda: self.sync.state,
            retention_s=settings.shadow_retention_s,
            max_comparisons=settings.shadow_max_comparisons,
            pairs=self.shadow_pairs,
            write_timeout_s=settings.write_lock_timeout_s,
        )
        self.xds = XdsServer(
            self.cache,
            self.registry,
            handlers=[
                metrics_service_handler(self.folder),
                shadow_report_handler(self.shadow_pairs, self.shadow.offer),
            ],
        )
        self.metrics.watch_xds(self.xds_figures)
        # Kubernetes endpoint discovery (off unless configured): one replica watches.
        self.discovery: DiscoveryLeader | None = None
        if settings.kubernetes != "off":
            self.discovery = DiscoveryLeader(
                self.sessionmaker,
                self._watches,
                lambda: self.sync.state,
                self.notifier.notify,
                lease_s=settings.kubernetes_lease_s,
            )
        self._listener: PostgresListener | None = None
        self._api_server: uvicorn.Server | None = None
        # Set when stop() begins: streams that would run until their reader leaves
        # (the rollout events) end instead, so that the API server can stop.
        self.stopping = asyncio.Event()
        self._tasks = _Tasks()
        self.api_port = 0
        self.xds_port = 0

    async def check_schema(self) -> None:
        """Raise SchemaNotReady unless the database is migrated to this code's head."""
        try:
            current = await current_revision(self.engine)
        except Exception as exc:
            raise SchemaNotReady(f"cannot read the database at {self._safe_url()}: {exc}") from exc
        head = head_revision(self.settings.database_url)
        if current != head:
            raise SchemaNotReady(
                f"database schema is at {current or 'nothing'}, this code needs {head}: "
                "run `turnout db upgrade`"
            )

    async def start(self, api: Callable[[ControlPlane], ASGIApp] | None = None) -> None:
        """Check the schema, load the state, then start the xDS server and, when
        ``api`` builds an admin API for this replica, serve it."""
        await self.check_schema()
        # Large xDS responses are short-lived: give their memory back when freed.
        pin_mmap_threshold()
        if not is_sqlite(self.settings.database_url):
            self._listener = PostgresListener(
                self.settings.database_url,
                self.notifier,
                metrics=self.metrics,
                connect_timeout_s=self.settings.database_connect_timeout_s,
            )
            await self._listener.start()
        # Load state before serving xDS: a replica without state answers no stream.
        await self.sync.sync_once()
        self._tasks.sync = asyncio.create_task(self.sync.run(), name="turnout-sync")
        self._tasks.checkpoints = asyncio.create_task(
            self.audit_checkpoints.run(), name="turnout-audit-checkpoints"
        )
        if self.discovery is not None:
            self.discovery.start()
        self._tasks.rollouts = asyncio.create_task(self.rollouts.run(), name="turnout-rollouts")
        self._tasks.shadow = asyncio.create_task(self.shadow.run(), name="turnout-shadow")
        self.xds_port = await self.xds.start(self.settings.xds_host, self.settings.xds_port)
        if api is not None:
            # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY on accepted sockets only
            # when the listener's proto says TCP; without it every response whose
            # headers and body are two writes waits ~40 ms for a delayed ACK.
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.settings.api_host, self.settings.api_port))
            self.api_port = sock.getsockname()[1]
            config = uvicorn.Config(
                api(self),
                log_config=None,
                access_log=False,
                lifespan="off",
                # Without it, one request or connection that never ends holds stop() forever.
                timeout_graceful_shutdown=self.settings.api_shutdown_grace_s,
            )
            self._api_server = uvicorn.Server(config)
            self._tasks.api = asyncio.create_task(
                self._api_server.serve(sockets=[sock]), name="turnout-api"
            )
            # uvicorn offers no start event; its `started` flag flips once it listens.
            while not self._api_server.started and not self._tasks.api.done():  # noqa: ASYNC110
                await asyncio.sleep(0.01)
            if self._tasks.api.done():
                self._tasks.api.result()
        log.info(
            "controlplane.started",
            extra={"api_port": self.api_port, "xds_port": self.xds_port},
        )

    async def stop(self) -> None:
        """Stop serving and release every resource; safe to call twice."""
        self.stopping.set()
        if self._api_server is not None:
            self._api_server.should_exit = True
        if self._tasks.api is not None:
            with contextlib.suppress(Exception):
                await self._tasks.api
            self._tasks.api = None
            assert self._api_server is not None
            state = self._api_server.server_state
            if state.connections or state.tasks:
                # Past the grace: uvicorn cancelled what still ran and dropped the rest.
                log.warning(
                    "api.shutdown_forced",
                    extra={
                        "connections": len(state.connections),
                        "requests": len(state.tasks),
                        "grace_s": self.settings.api_shutdown_grace_s,
                    },
                )
        await self.xds.stop(grace=0.5)
        await self.folder.close()
        await self.data_plane.close()
        if self.discovery is not None:
            await self.discovery.stop()
        await cancel_and_wait(self._tasks.sync)
        self._tasks.sync = None
        if self._tasks.rollouts is not None:
            await cancel_and_wait(self._tasks.rollouts)
            self._tasks.rollouts = None
            await self.rollouts.stop()
        if self._tasks.checkpoints is not None:
            await cancel_and_wait(self._tasks.checkpoints)
            self._tasks.checkpoints = None
            await self.audit_checkpoints.final()
        if self._tasks.shadow is not None:
            await cancel_and_wait(self._tasks.shadow)
            self._tasks.shadow = None
            with contextlib.suppress(Exception):
                await self.shadow.flush()
        if self._listener is not None:
            await self._listener.stop()
        await self.engine.dispose()
        self._untime_statements()
        # In a thread: it waits for the last spans to reach the collector.
        await asyncio.to_thread(self.tracing.shutdown)

    async def _watches(self) -> Watches:
        assert self.discovery is not None
        return Watches(
            await api_client(self.settings.kubernetes),
            self.discovery.report,
            max_backoff_s=self.settings.kubernetes_max_backoff_s,
        )

    def xds_figures(self) -> XdsFigures:
        """What /metrics shows of xDS now: the revision served and each proxy's status
        and the revision it last held all of."""
        snapshot = self.cache.snapshot
        proxies = [
            ProxyFigure(
                node=connection.node_id,
                status=ProxyRegistry.overall(
                    connection, self.cache.snapshot_for(connection.zone)
                ).value,
                held_revision=connection.held_revision,
            )
            for connection in self.registry.latest()
        ]
        return XdsFigures(snapshot.revision if snapshot is not None else None, proxies)

    def _safe_url(self) -> str:
        return self.engine.url.render_as_string(hide_password=True)
