"""Settings: the one place that reads the environment.

Every option is an environment variable prefixed ``TURNOUT_`` (for example
``TURNOUT_DATABASE_URL``). Nothing else in the package reads ``os.environ``.
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache
from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["DEFAULT_DATABASE_URL", "Settings", "get_settings"]

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///turnout.db"


class Settings(BaseSettings):
    """Control-plane configuration, from ``TURNOUT_*`` environment variables."""

    model_config = SettingsConfigDict(env_prefix="TURNOUT_", extra="ignore")

    database_url: str = Field(
        default=DEFAULT_DATABASE_URL,
        description="SQLAlchemy URL: SQLite (embedded) by default, or postgresql+asyncpg://...",
    )
    api_host: str = "127.0.0.1"
    api_port: int = Field(default=8080, ge=0, le=65535)
    xds_host: str = "127.0.0.1"
    xds_port: int = Field(default=18000, ge=0, le=65535)
    listener_host: str = Field(default="127.0.0.1", description="data-plane listener address")
    listener_port: int = Field(default=10000, ge=1, le=65535, description="data-plane port")
    listener_reuse_port: bool = Field(
        default=False,
        description="let several Envoys on one host share the listener port (SO_REUSEPORT); "
        "off, an Envoy refuses a port that another process holds",
    )
    access_log_path: str | None = Field(
        default="/dev/stdout",
        description="where every Envoy appends its JSON access log, one line per request "
        "(`turnout up`: .turnout/access.log); empty: no access log",
    )
    envoy_admin_port: int = Field(default=9901, ge=0, le=65535)
    demo_base_port: int = Field(
        default=9001, ge=1, le=65000, description="first port of the demo model servers"
    )
    poll_interval_s: float = Field(
        default=2.0, gt=0, description="re-read the state this often even without a notification"
    )
    sync_verify_handoff: bool = Field(
        default=False,
        description="compare every state the sync loop builds from a commit in this process "
        "with a read of the tables (a check for tests; one full read per change)",
    )
    max_request_bytes: int = Field(
        default=1024 * 1024, ge=1024, description="admin API requests with a larger body get 413"
    )
    write_lock_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="a change that cannot have the database's write lock (SQLite) "
        "this long gets 503 database_unavailable",
    )
    api_shutdown_grace_s: int = Field(
        default=10,
        ge=1,
        description="on stop, admin API requests still running after this long are cancelled "
        "and connections still open are dropped",
    )
    log_level: str = "INFO"
    api_key: SecretStr | None = Field(
        default=None, description="key that `turnout` commands send to the admin API"
    )
    envoy_binary: str | None = Field(
        default=None, description="path to envoy; by default the one next to the Python interpreter"
    )
    database_connect_timeout_s: float = Field(
        default=5.0, gt=0, le=300, description="give up opening a database connection after this"
    )
    database_statement_timeout_s: float = Field(
        default=5.0,
        gt=0,
        le=3600,
        description="give up on a database statement after this (SQLite: its busy timeout)",
    )
    verified_key_ttl_s: float = Field(
        default=60.0,
        ge=0,
        le=60,
        description="while the database is down, keys verified this recently still read "
        "what needs no database (proxy status)",
    )
    stats_flush_interval_s: float = Field(
        default=1.0,
        ge=0.05,
        le=300,
        description="how often every Envoy streams its statistics to the control plane "
        "(written into the bootstrap)",
    )
    metrics_retention_s: float = Field(
        default=300.0,
        ge=10,
        le=3600,
        description="how far back the traffic window keeps Envoy's statistics: the longest "
        "?window= the metrics endpoints accept",
    )
    shadow_retention_s: float = Field(
        default=3600.0,
        ge=10,
        le=7 * 86400,
        description="how long shadow comparisons are kept: the longest ?window= of "
        "GET /v1/models/{model}/shadow",
    )
    shadow_max_comparisons: int = Field(
        default=10_000,
        ge=10,
        le=10_000_000,
        description="the most shadow comparisons kept (all models); the oldest go first",
    )
    shadow_pair_expiry_s: float = Field(
        default=60.0,
        gt=0,
        le=3600,
        description="how long one side's answer waits for the other's before it is dropped",
    )
    shadow_max_pending: int = Field(
        default=10_000,
        ge=1,
        le=1_000_000,
        description="the most answers waiting for their other side; over it the oldest go",
    )
    dns_refresh_rate_s: float = Field(
        default=5.0,
        ge=0.001,
        le=3600,
        description="how often Envoy re-resolves endpoints named by DNS",
    )
    dns_respect_ttl: bool = Field(
        default=True,
        description="re-resolve a DNS name when its answer's TTL runs out, instead of "
        "every dns_refresh_rate_s",
    )
    dns_resolvers: str | None = Field(
        default=None,
        description="comma-separated IP:PORT of the DNS servers Envoy asks for endpoint "
        "names; unset: the proxy's own (/etc/resolv.conf)",
    )
    kubernetes: str = Field(
        default="off",
        description="discover the endpoints of versions that name a Kubernetes Service: off, "
        "auto (in-cluster in a pod, else the kubeconfig), in-cluster, or a kubeconfig path",
    )
    kubernetes_lease_s: float = Field(
        default=15.0,
        ge=1,
        le=300,
        description="one replica watches Kubernetes at a time, under a lease of this "
        "length; another takes over within it when that replica stops",
    )
    kubernetes_max_backoff_s: float = Field(
        default=30.0,
        ge=0.1,
        le=600,
        description="a lost Kubernetes watch is retried after a doubling, jittered backoff "
        "of at most this",
    )
    rollout_interval_s: float = Field(
        default=1.0,
        ge=0.05,
        le=3600,
        description="how often each replica publishes its rollout figures and the driving "
        "replica evaluates every progressing rollout's gates",
    )
    rollout_lease_s: float = Field(
        default=3.0,
        ge=0.2,
        le=300,
        description="how long the rollout driver's lease lasts unless renewed: another "
        "replica takes over this long after the driver dies",
    )
    metrics_cache_s: float = Field(
        default=5.0,
        ge=0,
        le=60,
        description="GET /v1/metrics/summary and the data-plane series of /metrics are "
        "computed at most once per this many seconds and per 5-second slot of the "
        "traffic window (0: every call)",
    )
    audit_key: SecretStr | None = Field(
        default=None, description="the audit chain's HMAC key (32 characters or more)"
    )
    audit_key_file: Path = Field(
        default=Path(".turnout/audit.key"),
        description="file holding the audit key when audit_key is unset; created if missing",
    )
    audit_checkpoint_file: Path | None = Field(
        default=Path(".turnout/audit-checkpoints.jsonl"),
        description="signed checkpoints of the audit chain's head are appended here",
    )
    audit_checkpoint_interval_s: float = Field(
        default=10.0, gt=0, description="checkpoint the audit chain's head this often"
    )
    otlp_endpoint: str | None = Field(
        default=None,
        description="HOST:PORT of an OpenTelemetry collector (OTLP/gRPC); when set, Envoy, "
        "the batchers and the control plane send it traces",
    )
    trace_sampling: float = Field(
        default=1.0,
        ge=0,
        le=100,
        description="percent (0 to 100) of requests without a sampling decision that start a trace",
    )

    @field_validator("dns_resolvers")
    @classmethod
    def _resolvers(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        resolvers = [part.strip() for part in value.split(",") if part.strip()]
        for resolver in resolvers:
            host, _, port = resolver.rpartition(":")
            try:
                ipaddress.ip_address(host.strip("[]"))
            except ValueError:
                host = ""
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(
                    "TURNOUT_DNS_RESOLVERS must be IP:PORT pairs separated by commas "
                    f"(e.g. 10.96.0.10:53,[fd00::a]:53), not {resolver!r}"
                )
        return ",".join(resolvers)

    @property
    def dns_resolver_list(self) -> tuple[str, ...]:
        """The DNS servers of ``dns_resolvers``, in order."""
        return tuple(self.dns_resolvers.split(",")) if self.dns_resolvers else ()

    @field_validator("kubernetes")
    @classmethod
    def _kubernetes(cls, value: str) -> str:
        value = value.strip()
        return value if value else "off"

    @field_validator("otlp_endpoint")
    @classmethod
    def _host_and_port(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        host, _, port = value.rpartition(":")
        if not host or "/" in value or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(
                f"TURNOUT_OTLP_ENDPOINT must be HOST:PORT (e.g. otel-collector:4317), not {value!r}"
            )
        return value


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Return the process-wide settings, read once from the environment."""
    return Settings()
