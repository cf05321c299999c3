"""The audit key, and signed checkpoints of the chain head kept outside the database.

The key comes from ``TURNOUT_AUDIT_KEY``, else from the file
``TURNOUT_AUDIT_KEY_FILE`` (default ``.turnout/audit.key``). A process that
writes events creates that file (0600, 32 random bytes as hex) when neither
exists; one that only verifies never does. Every replica on one database must
use the same key.

:class:`AuditCheckpointer` signs the chain head every
``audit_checkpoint_interval_s`` (when it moved) and on stop, appends the
checkpoint to ``audit_checkpoint_file`` and logs it as ``audit.checkpoint``.
Before signing it checks that the log still extends its previous checkpoint,
and logs ``audit.checkpoint_contradicted`` (error) when it does not.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from controlplane.db.audit_repository import AUDIT_SECRET_KEY, AuditRepository, ChainReport
from controlplane.domain.checkpoints import (
    Checkpoint,
    CheckpointProblem,
    check_against,
    parse_checkpoints,
    sign_checkpoint,
)
from controlplane.domain.clock import utcnow
from controlplane.settings import Settings

__all__ = [
    "AuditCheckpointer",
    "AuditKeyMissing",
    "load_audit_secret",
    "read_checkpoints",
    "verify_with_checkpoints",
]

log = logging.getLogger(__name__)

_MIN_KEY_CHARS = 32


class AuditKeyMissing(RuntimeError):
    """No audit key is configured (and this process may not create one)."""


def load_audit_secret(settings: Settings, *, create: bool) -> bytes:
    """Return the audit key from settings or its file; with ``create``, generate
    the file when neither gives one. Raise AuditKeyMissing otherwise, or when the
    key is shorter than 32 characters."""
    if settings.audit_key is not None:
        value = settings.audit_key.get_secret_value().strip()
        source = "TURNOUT_AUDIT_KEY"
    else:
        path = settings.audit_key_file
        if not path.exists():
            if not create:
                raise AuditKeyMissing(
                    f"no audit key: set TURNOUT_AUDIT_KEY or TURNOUT_AUDIT_KEY_FILE "
                    f"({path} does not exist)"
                )
            _create_key_file(path)
        value = path.read_text().strip()
        source = str(path)
    if len(value) < _MIN_KEY_CHARS:
        raise AuditKeyMissing(f"the audit key from {source} is shorter than {_MIN_KEY_CHARS} chars")
    return value.encode()


def _create_key_file(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    draft = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secrets.token_hex(32) + "\n")
    try:
        # A hard link appears whole or not at all, and never replaces a key that
        # another process created first.
        os.link(draft, path)
        log.info("audit.key_generated", extra={"path": str(path)})
    except FileExistsError:
        pass
    finally:
        draft.unlink()


def read_checkpoints(
    path: Path, secret: bytes
) -> tuple[list[tuple[int, Checkpoint]], list[CheckpointProblem]]:
    """Return the checkpoints of the file at ``path`` that verify under ``secret``,
    and a problem for each line that does not."""
    with path.open(encoding="utf-8") as handle:
        return parse_checkpoints(handle, secret)


async def verify_with_checkpoints(
    session: AsyncSession, secret: bytes | None, checkpoint_file: Path | None
) -> ChainReport:
    """Verify the chain, and the log against the checkpoints in ``checkpoint_file``
    when given; a checkpoint line that does not verify is itself a problem.
    ``secret`` defaults to the session's audit key."""
    if secret is None:
        stored = session.info.get(AUDIT_SECRET_KEY)
        secret = stored if isinstance(stored, bytes) else None
    good: list[tuple[int, Checkpoint]] = []
    bad: list[CheckpointProblem] = []
    if checkpoint_file is not None:
        if secret is None:
            raise AuditKeyMissing("checkpoints are signed: the audit key is needed to check them")
        good, bad = read_checkpoints(checkpoint_file, secret)
    report = await AuditRepository(session).verify(secret=secret, checkpoints=good)
    if not bad:
        return report
    return ChainReport(
        ok=False,
        checked=report.checked,
        head_id=report.head_id,
        broken=report.broken,
        checkpoints_checked=report.checkpoints_checked + len(bad),
        checkpoint_problems=(*bad, *report.checkpoint_problems),
    )


class AuditCheckpointer:
    """Signs the audit chain's head now and then, outside the database."""

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        secret: bytes,
        *,
        path: Path | None,
        interval_s: float,
    ) -> None:
        self._sessionmaker = sessionmaker
        self._secret = secret
        self._path = path
        self._interval_s = interval_s
        self.last: Checkpoint | None = None

    async def checkpoint(self) -> Checkpoint | None:
        """Sign and record the current head if it moved; return the new checkpoint."""
        async with self._sessionmaker() as session:
            audit = AuditRepository(session)
            head = await audit.head()
            if self.last is not None and (self.last.id, self.last.hash) == (
                head.last_id,
                head.last_hash,
            ):
                return None
            problems: list[CheckpointProblem] = []
            if self.last is not None:
                covered = 0 < self.last.id <= head.last_id
                stored = await audit.hashes([self.last.id]) if covered else {}
                problems = check_against(
                    [(0, self.last)],
                    head_id=head.last_id,
                    keyed_from=head.keyed_from,
                    hash_of=stored.get,
                )
        for problem in problems:
            log.error(
                "audit.checkpoint_contradicted",
                extra={"checkpoint_id": problem.checkpoint_id, "reason": problem.reason},
            )
        checkpoint = sign_checkpoint(
            self._secret, head.last_id, head.last_hash, head.keyed_from, utcnow()
        )
        if self._path is not None:
            await asyncio.to_thread(_append_line, self._path, checkpoint.line())
        log.info("audit.checkpoint", extra=checkpoint.document())
        self.last = checkpoint
        return checkpoint

    async def run(self) -> None:
        """Checkpoint every interval until cancelled; a database that is down only
        delays the next checkpoint."""
        while True:
            try:
                await self.checkpoint()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning(
                    "audit.checkpoint_failed",
                    extra={"error_type": type(exc).__name__, "error": str(exc)[:160]},
                )
            await asyncio.sleep(self._interval_s)

    async def final(self) -> None:
        """Checkpoint once more (on stop); never raise."""
        with contextlib.suppress(Exception):
            await self.checkpoint()


def _append_line(path: Path, line: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as handle:
        handle.write(line)
        handle.flush()
        os.fsync(handle.fileno())
