"""Config revisions and the state each one left, stored as what it changed.

A revision stores a :class:`RevisionModel` row for each model it changed (the
digest of the model's document, or NULL when it deleted the model) and the
digest of the access state it left. Documents are stored once, under their
digest. A write therefore costs what it changes, and the state at any revision
is the newest row of each model at or below it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from controlplane.db.models import ConfigHead, ConfigRevision, RevisionModel, StateDocument
from controlplane.db.state import load_access, load_models
from controlplane.domain.documents import (
    decode_access,
    decode_model,
    digest_of,
    encode_access,
    encode_model,
)
from controlplane.domain.state import DesiredState, ModelSpec, TenantSpec
from controlplane.notify import CHANNEL as NOTIFY_CHANNEL

__all__ = ["Changes", "RevisionRepository"]

# What one revision changed: the models named (a spec, or None when deleted),
# and the access state when it changed.
Changes = Mapping[str, ModelSpec | None]


class RevisionRepository:
    """The monotonic config revision, and the desired state at each revision."""

    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def bump(
        self,
        *,
        actor: str,
        action: str,
        request_id: str | None,
        models: Changes,
        access: tuple[tuple[TenantSpec, ...], str | None] | None,
    ) -> int:
        """Increment the revision and store what it changed; return the new number.

        ``models`` are the specs of the models the change touched, read after
        it; ``access`` the access state when the change touched it (None: as
        before). The ``UPDATE`` takes the head row's lock, so concurrent
        writers commit in revision order.
        """
        head = (
            await self._session.execute(
                update(ConfigHead)
                .where(ConfigHead.id == 1)
                .values(revision=ConfigHead.revision + 1)
                .returning(ConfigHead.revision, ConfigHead.access_digest)
            )
        ).one_or_none()
        if head is None:
            raise RuntimeError("config_head is empty: run `turnout db upgrade`")
        revision, previous = int(head[0]), head[1]
        if previous is None and revision > 1:
            # The revision before predates stored states: store everything once,
            # so that every later state can be shown.
            models = {spec.name: spec for spec in await load_models(self._session)}
            access = await load_access(self._session)
        if access is None and previous is None:
            access = await load_access(self._session)
        access_digest = previous
        if access is not None:
            access_digest = await self._store(encode_access(*access))
            if access_digest != previous:
                await self._session.execute(
                    update(ConfigHead).where(ConfigHead.id == 1).values(access_digest=access_digest)
                )
        self._session.add(
            ConfigRevision(
                revision=revision,
                actor=actor,
                action=action,
                request_id=request_id,
                access_digest=access_digest,
            )
        )
        for name, spec in sorted(models.items()):
            digest = await self._store(encode_model(spec)) if spec is not None else None
            self._session.add(RevisionModel(model=name, revision=revision, digest=digest))
        await self._session.flush()
        if self._dialect() == "postgresql":
            # Delivered to every LISTENing replica when (and only if) this commits.
            await self._session.execute(
                text("SELECT pg_notify(:channel, :revision)"),
                {"channel": NOTIFY_CHANNEL, "revision": str(revision)},
            )
        return revision

    async def _store(self, document: dict[str, Any]) -> str:
        """Store ``document`` under its digest unless it is there already."""
        digest = digest_of(document)
        insert = postgresql.insert if self._dialect() == "postgresql" else sqlite.insert
        await self._session.execute(
            insert(StateDocument)
            .values(digest=digest, body=document)
            .on_conflict_do_nothing(index_elements=[StateDocument.digest])
        )
        return digest

    def _dialect(self) -> str:
        return self._session.get_bind().dialect.name

    async def page(self, *, before: int | None, limit: int) -> Sequence[ConfigRevision]:
        """Return up to ``limit`` revisions, newest first, below ``before``."""
        query = select(ConfigRevision).order_by(ConfigRevision.revision.desc()).limit(limit)
        if before is not None:
            query = query.where(ConfigRevision.revision < before)
        return (await self._session.scalars(query)).all()

    async def get(self, revision: int) -> ConfigRevision | None:
        """Return one revision, or None."""
        return await self._session.get(ConfigRevision, revision)

    async def current(self) -> int:
        """Return the latest committed revision."""
        revision = await self._session.scalar(select(ConfigHead.revision).where(ConfigHead.id == 1))
        return int(revision or 0)

    async def head(self) -> tuple[int, datetime | None]:
        """Return the latest committed revision and its ``created_at``: the writer's
        clock just before the commit (None for revision 0, which has no row)."""
        row = (
            await self._session.execute(
                select(ConfigHead.revision, ConfigRevision.created_at)
                .select_from(ConfigHead)
                .outerjoin(ConfigRevision, ConfigRevision.revision == ConfigHead.revision)
                .where(ConfigHead.id == 1)
            )
        ).one_or_none()
        if row is None:
            return 0, None
        return int(row[0] or 0), row[1]

    async def model_digests(self, revision: int) -> dict[str, str]:
        """Return ``{model: document digest}`` of every model at ``revision``."""
        newest = (
            select(RevisionModel.model, func.max(RevisionModel.revision).label("revision"))
            .where(RevisionModel.revision <= revision)
            .group_by(RevisionModel.model)
            .subquery()
        )
        rows = await self._session.execute(
            select(RevisionModel.model, RevisionModel.digest).join(
                newest,
                (RevisionModel.model == newest.c.model)
                & (RevisionModel.revision == newest.c.revision),
            )
        )
        return {model: digest for model, digest in rows if digest is not None}

    async def documents(self, digests: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Return the stored documents with these digests."""
        found: dict[str, dict[str, Any]] = {}
        unique = sorted(set(digests))
        for start in range(0, len(unique), 500):
            chunk = unique[start : start + 500]
            for digest, body in await self._session.execute(
                select(StateDocument.digest, StateDocument.body).where(
                    StateDocument.digest.in_(chunk)
                )
            ):
                found[digest] = body
        return found

    async def state_at(self, revision: int) -> DesiredState | None:
        """Return the desired state as of ``revision`` (0 is the empty start), or
        None when the revision does not exist or predates stored states."""
        if revision == 0:
            return DesiredState(revision=0)
        row = await self.get(revision)
        return await self.state_of(row) if row is not None else None

    async def state_of(self, row: ConfigRevision) -> DesiredState | None:
        """Return the desired state that revision ``row`` left, or None when it
        predates stored states."""
        if row.access_digest is None:
            return None
        digests = await self.model_digests(row.revision)
        documents = await self.documents([*digests.values(), row.access_digest])
        tenants, jwks = decode_access(documents[row.access_digest])
        models = sorted(
            (decode_model(documents[digest]) for digest in digests.values()),
            key=lambda model: model.name,
        )
        return DesiredState(revision=row.revision, models=tuple(models), tenants=tenants, jwks=jwks)

    async def models_at(self, revision: int, names: Sequence[str]) -> dict[str, ModelSpec | None]:
        """Return the named models as of ``revision`` (None: absent then)."""
        return await self.models_of(await self.model_digests(revision), names)

    async def models_of(
        self, digests: dict[str, str], names: Sequence[str]
    ) -> dict[str, ModelSpec | None]:
        """Return the named models of a revision whose :meth:`model_digests` are
        ``digests`` (None: absent then)."""
        documents = await self.documents([digests[n] for n in names if n in digests])
        return {
            name: decode_model(documents[digests[name]]) if name in digests else None
            for name in names
        }

    async def revision_at(self, at: datetime) -> int | None:
        """Return the newest revision committed at or before ``at`` (None before any)."""
        revision = await self._session.scalar(
            select(func.max(ConfigRevision.revision)).where(ConfigRevision.created_at <= at)
        )
        return int(revision) if revision is not None else None

    async def changed_since(self, after: int) -> tuple[int, set[str] | None, bool]:
        """Return ``(latest revision, models changed since revision after, whether the
        access state changed)``; the set is None when some revision in between is
        missing or unshowable (then trust nothing and read everything)."""
        current = await self.current()
        rows = (
            await self._session.execute(
                select(ConfigRevision.revision, ConfigRevision.access_digest).where(
                    ConfigRevision.revision >= after, ConfigRevision.revision <= current
                )
            )
        ).all()
        digests = dict(rows)
        if len(digests) != current - after + 1 or None in digests.values():
            return current, None, True
        changed = {
            model
            for (model,) in await self._session.execute(
                select(RevisionModel.model)
                .where(RevisionModel.revision > after, RevisionModel.revision <= current)
                .distinct()
            )
        }
        return current, changed, digests[after] != digests[current]
