"""FastAPI dependencies, as ``Annotated`` aliases."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Depends, Query, Request
from sqlalchemy.ext.asyncio import AsyncSession

from controlplane.domain.services import ActionContext, ModelService, committed_revision

if TYPE_CHECKING:
    from controlplane.runtime import ControlPlane

__all__ = ["ContextDep", "DryRun", "ModelServiceDep", "RuntimeDep", "SessionDep"]


def get_runtime(request: Request) -> ControlPlane:
    """Return the control plane this app belongs to."""
    runtime: ControlPlane = request.app.state.runtime
    return runtime


RuntimeDep = Annotated["ControlPlane", Depends(get_runtime)]


class DryRun(Exception):
    """Raised after a ``?dry_run=true`` mutation: it rolls the transaction back and
    carries what the change would have done."""

    def __init__(self, outcome: dict[str, Any]) -> None:
        super().__init__("dry run")
        self.outcome = outcome


async def get_session(
    runtime: RuntimeDep,
    dry_run: Annotated[
        bool,
        Query(description="on a change: report the Envoy resources it would alter, change nothing"),
    ] = False,
) -> AsyncIterator[AsyncSession]:
    """One session and one transaction per request, committed before the response.

    After a commit that bumped the config revision, the xDS sync is woken. With
    ``dry_run`` a change is computed, diffed against the current state and
    rolled back.
    """
    async with runtime.sessionmaker() as session:
        async with session.begin():
            yield session
            revision = committed_revision(session)
            if dry_run and revision is not None:
                raise DryRun(await _dry_run_outcome(session, revision, runtime))
        if committed_revision(session) is not None:
            runtime.notifier.notify()


async def _dry_run_outcome(
    session: AsyncSession, revision: int, runtime: ControlPlane
) -> dict[str, Any]:
    from controlplane.db.repositories import StateRepository
    from controlplane.domain.revisions import RevisionService, state_diff
    from controlplane.xds.diff import resource_diff
    from controlplane.xds.translate import ListenerOptions, translate

    after = await StateRepository(session).load()
    before = await RevisionService(session, ActionContext()).state_at(revision - 1)
    listener = ListenerOptions(
        host=runtime.settings.listener_host, port=runtime.settings.listener_port
    )
    return {
        "dry_run": True,
        "revision": revision,
        "state": state_diff(before, after),
        "resources": resource_diff(translate(before, listener), translate(after, listener)),
    }


# scope="function": commit when the handler returns, before the response goes out,
# so a 2xx always means the change is durable.
SessionDep = Annotated[AsyncSession, Depends(get_session, scope="function")]


def get_context(request: Request) -> ActionContext:
    """Return who is acting and the request id."""
    return ActionContext(actor="anonymous", request_id=request.state.request_id)


ContextDep = Annotated[ActionContext, Depends(get_context)]


def get_model_service(session: SessionDep, context: ContextDep) -> ModelService:
    """Return the model service bound to this request's transaction."""
    return ModelService(session, context)


ModelServiceDep = Annotated[ModelService, Depends(get_model_service)]
