"""FastAPI dependencies, as ``Annotated`` aliases."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession

from controlplane.domain.services import ActionContext, ModelService, committed_revision

if TYPE_CHECKING:
    from controlplane.runtime import ControlPlane

__all__ = ["ContextDep", "ModelServiceDep", "RuntimeDep", "SessionDep"]


def get_runtime(request: Request) -> ControlPlane:
    """Return the control plane this app belongs to."""
    runtime: ControlPlane = request.app.state.runtime
    return runtime


RuntimeDep = Annotated["ControlPlane", Depends(get_runtime)]


async def get_session(runtime: RuntimeDep) -> AsyncIterator[AsyncSession]:
    """One session and one transaction per request, committed before the response.

    After a commit that bumped the config revision, the xDS sync is woken.
    """
    async with runtime.sessionmaker() as session:
        async with session.begin():
            yield session
        if committed_revision(session) is not None:
            runtime.notifier.notify()


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
