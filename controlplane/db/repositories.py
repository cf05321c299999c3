"""Repositories: the only code that writes SQL. They flush, never commit."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload

from controlplane.db.models import Endpoint, Model, ModelVersion, TrafficSplit

__all__ = ["ModelRepository", "TrafficRepository", "VersionRepository"]


class ModelRepository:
    """Models by name."""

    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def get(self, name: str) -> Model | None:
        """Return the model called ``name``, or None."""
        return await self._session.scalar(select(Model).where(Model.name == name))

    async def all(self) -> Sequence[Model]:
        """Return every model, sorted by name."""
        return (await self._session.scalars(select(Model).order_by(Model.name))).all()

    async def add(self, model: Model) -> Model:
        """Insert ``model`` and flush, so a duplicate name raises here."""
        self._session.add(model)
        await self._session.flush()
        return model

    async def delete(self, model: Model) -> None:
        """Delete ``model``; its versions, endpoints and splits go with it."""
        await self._session.execute(delete(Model).where(Model.id == model.id))

    async def flush(self) -> None:
        """Flush pending changes to the database."""
        await self._session.flush()


class VersionRepository:
    """Versions of one model, with their endpoints loaded."""

    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def get(self, model: Model, name: str) -> ModelVersion | None:
        """Return version ``name`` of ``model`` with its endpoints, or None."""
        return await self._session.scalar(
            select(ModelVersion)
            .where(ModelVersion.model_id == model.id, ModelVersion.name == name)
            .options(selectinload(ModelVersion.endpoints))
        )

    async def of_model(self, model: Model) -> Sequence[ModelVersion]:
        """Return the versions of ``model`` sorted by name, endpoints loaded."""
        return (
            await self._session.scalars(
                select(ModelVersion)
                .where(ModelVersion.model_id == model.id)
                .order_by(ModelVersion.name)
                .options(selectinload(ModelVersion.endpoints))
            )
        ).all()

    async def add(self, version: ModelVersion) -> ModelVersion:
        """Insert ``version`` (with its endpoints) and flush."""
        self._session.add(version)
        await self._session.flush()
        return version

    async def replace_endpoints(self, version: ModelVersion, endpoints: list[Endpoint]) -> None:
        """Replace every endpoint of ``version`` with ``endpoints``."""
        await self._session.execute(delete(Endpoint).where(Endpoint.version_id == version.id))
        for endpoint in endpoints:
            endpoint.version_id = version.id
        self._session.add_all(endpoints)
        await self._session.flush()
        self._session.expire(version, ["endpoints"])
        await self._session.refresh(version, ["endpoints", "updated_at"])

    async def delete(self, version: ModelVersion) -> None:
        """Delete ``version`` and its endpoints and split rows."""
        await self._session.execute(delete(ModelVersion).where(ModelVersion.id == version.id))


class TrafficRepository:
    """Traffic weights of a model's versions."""

    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def weights(self, model: Model) -> dict[str, int]:
        """Return ``{version name: weight}`` for every version of ``model`` (0 if unset)."""
        return {name: weight for name, (_id, weight) in (await self.split(model)).items()}

    async def split(self, model: Model) -> dict[str, tuple[int, int]]:
        """Return ``{version name: (version id, weight)}`` for every version of ``model``
        (weight 0 if unset), sorted by name."""
        rows = await self._session.execute(
            select(ModelVersion.name, ModelVersion.id, TrafficSplit.weight)
            .select_from(ModelVersion)
            .outerjoin(TrafficSplit, TrafficSplit.version_id == ModelVersion.id)
            .where(ModelVersion.model_id == model.id)
            .order_by(ModelVersion.name)
        )
        return {name: (version_id, weight or 0) for name, version_id, weight in rows}

    async def set(self, model: Model, weights_by_version_id: dict[int, int]) -> None:
        """Replace the split of ``model``: one row per version with a weight above 0."""
        await self._session.execute(delete(TrafficSplit).where(TrafficSplit.model_id == model.id))
        self._session.add_all(
            TrafficSplit(model_id=model.id, version_id=version_id, weight=weight)
            for version_id, weight in weights_by_version_id.items()
            if weight > 0
        )
        await self._session.flush()
