"""The web console's static files at /console (no key: the page itself holds no
data; every call it makes sends the user's key), and GET /v1/whoami, which tells
the console what the caller's key may do.

The files live in ``controlplane/console/`` inside the package; nothing is fetched
from elsewhere at run time, and the Content-Security-Policy says so to the browser.
"""

from __future__ import annotations

from importlib import resources
from typing import Annotated

from fastapi import APIRouter, Path
from fastapi.responses import RedirectResponse, Response
from pydantic import BaseModel, Field

from controlplane.api.deps import CurrentPrincipal
from controlplane.api.schemas import ErrorBody
from controlplane.domain.errors import NotFound

__all__ = ["CONSOLE_HEADERS", "router"]

router = APIRouter()

# The page loads only its own files and talks only to this API.
CONSOLE_HEADERS = {
    "content-security-policy": (
        "default-src 'self'; img-src 'self' data:; object-src 'none'; "
        "base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
    ),
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-cache",
}
_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
Asset = Annotated[str, Path(pattern=r"^[a-z][a-z0-9-]{0,40}\.(html|js|css|svg)$")]


def _asset(name: str) -> Response:
    source = resources.files("controlplane") / "console" / name
    if not source.is_file():
        raise NotFound(f"the console has no file {name!r}")
    suffix = name[name.rindex(".") :]
    return Response(source.read_bytes(), media_type=_TYPES[suffix], headers=CONSOLE_HEADERS)


@router.get("/console", include_in_schema=False)
async def console_root() -> RedirectResponse:
    """The console lives under /console/, so that its relative asset paths resolve."""
    return RedirectResponse("/console/", status_code=308)


@router.get("/console/", include_in_schema=False)
async def console_index() -> Response:
    """The console's page."""
    return _asset("index.html")


@router.get("/console/{name}", include_in_schema=False)
async def console_asset(name: Asset) -> Response:
    """One of the console's scripts or style sheets."""
    return _asset(name)


class WhoAmIOut(BaseModel):
    """The caller behind the request's key."""

    name: str = Field(description="the key's name")
    role: str
    permissions: list[str] = Field(description="what the role may do: read, write, audit, keys")


@router.get(
    "/v1/whoami",
    tags=["keys"],
    responses={401: {"model": ErrorBody, "description": "no valid API key"}},
)
async def whoami(principal: CurrentPrincipal) -> WhoAmIOut:
    """Who the key belongs to and what its role may do (any valid key may ask)."""
    return WhoAmIOut(
        name=principal.name,
        role=principal.role.value,
        permissions=sorted(p.value for p in principal.role.permissions),
    )
