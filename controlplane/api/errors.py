"""Maps domain and validation errors to HTTP, as ``{"error": ..., "detail": ...}``.

A database that is down, refuses connections or does not answer in time
(:func:`is_database_unavailable`) is ``503 database_unavailable`` with
``Retry-After``, never a 500 or a dropped connection.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import IntegrityError
from starlette.exceptions import HTTPException as StarletteHTTPException

from controlplane.db.engine import UNAVAILABLE_ERRORS, is_database_unavailable
from controlplane.domain.errors import (
    Conflict,
    InvalidInput,
    NotFound,
    PermissionDenied,
    PreconditionFailed,
    TurnoutError,
    Unauthenticated,
)

__all__ = [
    "RETRY_AFTER_S",
    "database_unavailable_response",
    "error_response",
    "install_error_handlers",
    "is_database_unavailable",
]

log = logging.getLogger(__name__)

_STATUS = {
    Unauthenticated: 401,
    PermissionDenied: 403,
    NotFound: 404,
    Conflict: 409,
    PreconditionFailed: 412,
    InvalidInput: 422,
}


# How long a client should wait before retrying after a 503 (seconds).
RETRY_AFTER_S = 5


def database_unavailable_response(exc: BaseException | None = None) -> JSONResponse:
    """Return ``503 database_unavailable`` with ``Retry-After``, and log why (the
    error's class and a short message, never a connection string)."""
    if exc is not None:
        log.warning(
            "api.database_unavailable",
            extra={"error_type": type(exc).__name__, "error": str(exc)[:160]},
        )
    response = error_response(
        503,
        "database_unavailable",
        f"the database is unavailable or did not answer in time; retry in {RETRY_AFTER_S} s",
    )
    response.headers["retry-after"] = str(RETRY_AFTER_S)
    return response


def error_response(status: int, error: str, detail: Any = None) -> JSONResponse:
    """Return the standard error body with ``status``."""
    return JSONResponse(
        status_code=status, content=jsonable_encoder({"error": error, "detail": detail})
    )


async def _domain_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, TurnoutError)
    status = next((_STATUS[kind] for kind in type(exc).__mro__ if kind in _STATUS), 400)
    response = error_response(status, exc.code, exc.detail)
    if isinstance(exc, Unauthenticated):
        response.headers["www-authenticate"] = "Bearer"
    return response


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    detail = [
        {"loc": list(e.get("loc", ())), "msg": e.get("msg"), "type": e.get("type")}
        for e in exc.errors()
    ]
    return error_response(422, "validation_error", detail)


async def _http_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    # 400: a body that is not UTF-8 JSON at all (bad bytes, nesting too deep).
    code = {
        400: "bad_request",
        404: "not_found",
        405: "method_not_allowed",
        413: "payload_too_large",
    }.get(exc.status_code, "http_error")
    return error_response(exc.status_code, code, exc.detail)


async def _integrity_error(_request: Request, exc: Exception) -> JSONResponse:
    # A race the service's own checks could not see (two creates at once).
    log.info("api.integrity_conflict", extra={"error": str(exc.__cause__ or exc)[:200]})
    return error_response(409, "conflict", "the change conflicts with a concurrent change")


async def _database_error(request: Request, exc: Exception) -> JSONResponse:
    runtime = getattr(request.app.state, "runtime", None)
    if runtime is not None:
        runtime.metrics.database_unavailable.inc()
    return database_unavailable_response(exc)


def install_error_handlers(app: FastAPI) -> None:
    """Register every error mapping on ``app``."""
    for kind in UNAVAILABLE_ERRORS:
        app.add_exception_handler(kind, _database_error)
    app.add_exception_handler(TurnoutError, _domain_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(IntegrityError, _integrity_error)
