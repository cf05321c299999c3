"""The admin API's outer ASGI layer: request ids, body limits, and for every
mutating request one transaction, one idempotency check and exactly one audit
event.

A mutating request (POST, PUT, PATCH, DELETE) runs like this:

1. Its body is read, up to ``max_request_bytes`` (413 beyond), and its query
   parsed: a change takes ``?dry_run=true|false|1|0`` and nothing else (422).
2. A unit of work (:class:`~controlplane.api.unit_of_work.UnitOfWork`) opens a
   write transaction (:func:`~controlplane.db.engine.write_transaction`) and
   takes the audit chain lock first, so mutating requests run one at a time,
   in the order they came: an ``If-Match`` check and the write it guards see
   the same state, on SQLite as on Postgres. When the database's write lock
   does not come free within ``write_lock_timeout_s`` the answer is
   ``503 database_unavailable`` with ``Retry-After``, and nothing was written.
3. The caller's key is looked up. A POST with an ``Idempotency-Key`` that was
   seen before is answered from the stored first response (or 422 when the
   body differs) without running the route.
4. The route runs inside that transaction. On a 2xx the idempotency record and,
   if the route wrote none, an audit event are added and the transaction
   commits before the response goes out, with the revision it created in
   ``x-turnout-revision``. A dry run answers what the change would do (the
   state and Envoy resources it alters) and rolls back. Otherwise it rolls
   back, and one audit event (denied, rejected, error or dry run, with the
   status code) is written in a transaction of its own.

The audit action of each route is declared on the route
(:func:`~controlplane.api.unit_of_work.audited`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from fastapi.encoders import jsonable_encoder
from opentelemetry import trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.datastructures import Headers, MutableHeaders
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from controlplane.api.errors import (
    database_unavailable_response,
    error_response,
    is_database_unavailable,
)
from controlplane.api.unit_of_work import Audited, UnitOfWork, audited_of, parse_dry_run
from controlplane.db.audit_repository import AuditRepository, was_audited
from controlplane.db.engine import DatabaseBusy, write_transaction
from controlplane.db.key_repository import IdempotencyRepository
from controlplane.db.models import IdempotencyRecord
from controlplane.db.revisions import RevisionRepository
from controlplane.db.state import load_state
from controlplane.domain.audit import ActionContext, AuditEntry, Outcome
from controlplane.domain.clock import utcnow
from controlplane.domain.errors import InvalidInput
from controlplane.domain.keys import Principal
from controlplane.domain.state import CommittedChange
from controlplane.services.changes import committed_changes, committed_revision
from controlplane.services.keys import authenticate
from controlplane.services.revisions import whole_diff

if TYPE_CHECKING:
    from controlplane.runtime import ControlPlane

__all__ = ["MUTATING_METHODS", "REVISION_HEADER", "AdminGateway", "bearer_key"]

log = logging.getLogger(__name__)

MUTATING_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# On the answer to a change that created a config revision: its number.
REVISION_HEADER = b"x-turnout-revision"
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")
# Seconds a client waits before sending a change again after a busy database.
RETRY_AFTER_BUSY_S = 1
# W3C traceparent: an admin write continues its caller's trace.
_TRACE_CONTEXT = TraceContextTextMapPropagator()
log = logging.getLogger(__name__)


def bearer_key(headers: Headers) -> str | None:
    """Return the token of an ``Authorization: Bearer`` header, or None."""
    scheme, _, token = headers.get("authorization", "").partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


class _TooLarge(Exception):
    pass


@dataclass
class _Captured:
    status: int = 500
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytearray = field(default_factory=bytearray)

    def header(self, name: bytes) -> str | None:
        for key, value in self.headers:
            if key.lower() == name:
                return value.decode("latin-1")
        return None

    async def send_to(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status, "headers": self.headers})
        await send({"type": "http.response.body", "body": bytes(self.body)})


@dataclass
class _Route:
    """What the audit log records of a request, known before the route runs."""

    declared: Audited | None
    path_params: dict[str, Any]
    action: str
    resource_type: str
    resource_id: str
    model: str | None
    version: str | None


class AdminGateway:
    """ASGI middleware: see the module docstring."""

    def __init__(self, app: ASGIApp, *, runtime: ControlPlane, routes: Sequence[BaseRoute]) -> None:
        self.app = app
        self.runtime = runtime
        self.routes = routes
        self._write_timeout_s = runtime.settings.write_lock_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        given = headers.get("x-request-id", "")
        request_id = given if _REQUEST_ID.match(given) else uuid.uuid4().hex
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        send = _adding_request_id(send, request_id)
        try:
            await self._serve(scope, headers, receive, send)
        except DatabaseBusy as exc:
            # Nothing was written, and no audit event can be: the lock is taken.
            log.warning("api.database_busy", extra={"path": scope["path"], "reason": str(exc)})
            response = error_response(
                503, "database_unavailable", "the database is busy; send the request again"
            )
            response.headers["retry-after"] = str(RETRY_AFTER_BUSY_S)
            await response(scope, receive, send)

    async def _serve(self, scope: Scope, headers: Headers, receive: Receive, send: Send) -> None:
        mutating = scope["method"] in MUTATING_METHODS
        try:
            body = await _read_body(receive, headers, self.runtime.settings.max_request_bytes)
        except _TooLarge:
            limit = self.runtime.settings.max_request_bytes
            response = error_response(
                413, "payload_too_large", f"request bodies are limited to {limit} bytes"
            )
            if mutating:
                await self._audit_failure(scope, headers, None, None, 413)
            await response(scope, receive, send)
            return
        replay = _replaying(body, receive)
        if not mutating:
            await self.app(scope, replay, send)
            return
        caller = _TRACE_CONTEXT.extract(headers)
        with self.runtime.tracing.tracer.start_as_current_span(
            "admin.write",
            context=caller,
            kind=trace.SpanKind.SERVER,
            attributes={"http.request.method": scope["method"], "url.path": scope["path"]},
        ):
            await self._mutate(scope, headers, body, replay, send)

    async def _mutate(
        self, scope: Scope, headers: Headers, body: bytes, receive: Receive, send: Send
    ) -> None:
        state = scope["state"]
        principal: Principal | None = None
        route = self._route(scope, body)
        try:
            dry_run = parse_dry_run(_query(scope))
        except InvalidInput as exc:
            await self._audit_failure(scope, headers, route, None, 422)
            response = error_response(422, exc.code, exc.detail)
            await response(scope, receive, send)
            return
        captured = _Captured()
        outcome = Outcome.SUCCESS
        handed: list[CommittedChange] = []
        try:
            async with self.runtime.sessionmaker() as session:
                try:
                    async with self._write_transaction(session):
                        await AuditRepository(session).lock()
                        principal = await authenticate(session, bearer_key(headers))
                        state.update(
                            unit_of_work=UnitOfWork(session, principal, dry_run),
                            principal=principal,
                            authenticated=True,
                        )
                        captured = await self._respond(session, scope, headers, body, receive)
                        if captured.status >= 400:
                            raise _Rollback
                        if dry_run:
                            outcome = Outcome.DRY_RUN
                            captured = await self._dry_run(session)
                            raise _Rollback
                        await self._remember(
                            session, scope, headers, body, principal, route, captured
                        )
                        if not was_audited(session):
                            if captured.header(b"idempotent-replayed") == "true":
                                outcome = Outcome.REPLAYED
                            await AuditRepository(session).append(
                                self._entry(
                                    scope, headers, route, principal, captured.status, outcome
                                )
                            )
                except _Rollback:
                    pass
                else:
                    revision = committed_revision(session)
                    if revision is not None:
                        captured.headers.append((REVISION_HEADER, str(revision).encode()))
                        span = trace.get_current_span()
                        span.set_attribute("turnout.revision", revision)
                        self.runtime.tracing.remember(revision, span)
                        handed = committed_changes(session)
        except DatabaseBusy:
            raise
        except Exception as exc:
            if not is_database_unavailable(exc):
                await self._audit_failure(scope, headers, route, principal, 500)
                raise
            # The transaction rolled back, or never began, and nothing else can be
            # written now, the request's audit event included: log it instead.
            self.runtime.metrics.database_unavailable.inc()
            response = database_unavailable_response(exc)
            _log_unaudited(scope, route, principal)
            await response(scope, receive, send)
            return
        finally:
            state.pop("unit_of_work", None)
        try:
            _trace_outcome(
                route,
                captured.status,
                outcome if captured.status < 400 else Outcome.for_status(captured.status),
            )
            if captured.status == 503 and captured.header(b"retry-after") is not None:
                _log_unaudited(scope, route, principal)  # the route found the database unavailable
            elif captured.status >= 400:
                await self._audit_failure(scope, headers, route, principal, captured.status)
            elif outcome == Outcome.DRY_RUN:
                await self._audit_failure(
                    scope, headers, route, principal, captured.status, Outcome.DRY_RUN
                )
            await captured.send_to(send)
        finally:
            # Handed to the sync loop once the answer is written: its pass (translation
            # and push) does not hold the answer back, and the commit is durable anyway.
            if handed:
                self.runtime.sync.offer(handed)

    @contextlib.asynccontextmanager
    async def _write_transaction(self, session: AsyncSession) -> AsyncIterator[None]:
        """The request's write transaction, its commit traced as ``db.commit``."""
        commit: trace.Span | None = None
        try:
            async with write_transaction(session, timeout_s=self._write_timeout_s):
                yield
                # The body returned: leaving the block commits.
                commit = self.runtime.tracing.tracer.start_span("db.commit")
        except BaseException as exc:
            if commit is not None:
                commit.record_exception(exc)
                commit.set_status(trace.StatusCode.ERROR, type(exc).__name__)
            raise
        finally:
            if commit is not None:
                commit.end()

    async def _dry_run(self, session: AsyncSession) -> _Captured:
        """Return what the change made in ``session`` would do: the state and the
        Envoy resources it alters (nothing when it made no config revision)."""
        revision = committed_revision(session)
        outcome: dict[str, Any] = {"dry_run": True, "revision": revision}
        if revision is None:  # the change touches no desired state (an API key, say)
            outcome.update(state={}, resources={})
        else:
            before = await RevisionRepository(session).state_at(revision - 1)
            after = await load_state(session)
            outcome.update(whole_diff(before or after, after, self.runtime.listener))
        payload = json.dumps(jsonable_encoder(outcome)).encode()
        return _Captured(
            status=200,
            headers=[
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
            ],
            body=bytearray(payload),
        )

    async def _respond(
        self, session: AsyncSession, scope: Scope, headers: Headers, body: bytes, receive: Receive
    ) -> _Captured:
        """Return the stored first response of an idempotent POST, or run the route."""
        principal: Principal | None = scope["state"]["principal"]
        key = headers.get("idempotency-key")
        if key is None or scope["method"] != "POST" or principal is None:
            return await _run(self.app, scope, receive)
        if not _IDEMPOTENCY_KEY.match(key):
            return await _error(422, "invalid_idempotency_key", "use 1 to 255 printable characters")
        record = await IdempotencyRepository(session).get(principal.key_id, key)
        if record is None:
            return await _run(self.app, scope, receive)
        if record.request_hash != _request_hash(scope, body):
            return await _error(
                422,
                "idempotency_key_reused",
                "this Idempotency-Key was used with a different request; use a new key",
            )
        replay = _Captured(status=record.status_code)
        replay.headers = [
            (b"content-type", (record.content_type or "application/json").encode("latin-1")),
            (b"idempotent-replayed", b"true"),
            (b"content-length", str(len(record.response_body.encode())).encode()),
        ]
        replay.body = bytearray(record.response_body.encode())
        return replay

    async def _remember(
        self,
        session: AsyncSession,
        scope: Scope,
        headers: Headers,
        body: bytes,
        principal: Principal | None,
        route: _Route,
        captured: _Captured,
    ) -> None:
        """Store the first response to a POST with an Idempotency-Key."""
        key = headers.get("idempotency-key")
        if key is None or scope["method"] != "POST" or principal is None:
            return
        if captured.header(b"idempotent-replayed") == "true":
            return
        stored = captured.body.decode()
        secrets = route.declared.secrets if route.declared is not None else ()
        if secrets:
            document = json.loads(stored)
            document.update(dict.fromkeys(secrets))
            stored = json.dumps(document)
        await IdempotencyRepository(session).add(
            IdempotencyRecord(
                api_key_id=principal.key_id,
                key=key,
                request_hash=_request_hash(scope, body),
                status_code=captured.status,
                response_body=stored,
                content_type=captured.header(b"content-type"),
                created_at=utcnow(),
            )
        )

    def _route(self, scope: Scope, body: bytes) -> _Route:
        declared: Audited | None = None
        params: dict[str, Any] = {}
        for candidate in self.routes:
            match, child = candidate.matches(scope)
            if match == Match.FULL:
                declared = audited_of(child.get("endpoint"))
                params = dict(child.get("path_params", {}))
                break
        if declared is not None:
            action, resource_type = declared.action.value, declared.resource_type
        else:
            action, resource_type = f"{scope['method'].lower()} {scope['path']}"[:64], "unknown"
        fields = _json_object(body)
        model = params.get("model")
        version = params.get("version")
        if declared is not None and declared.model_field:
            model = _short(fields.get(declared.model_field))
        if declared is not None and declared.version_field:
            version = _short(fields.get(declared.version_field))
        if "key_id" in params:
            resource_id = str(params["key_id"])
        elif declared is not None and declared.id_field:
            resource_id = _short(fields.get(declared.id_field)) or ""
        elif "credential_id" in params:
            resource_id = f"{params.get('tenant')}/{params['credential_id']}"
        elif "tenant" in params:
            resource_id = str(params["tenant"])
        elif "revision" in params:
            resource_id = str(params["revision"])
        elif model is not None and version is not None:
            resource_id = f"{model}/{version}"
        else:
            resource_id = model or ""
        return _Route(declared, params, action, resource_type, resource_id[:160], model, version)

    def _entry(
        self,
        scope: Scope,
        headers: Headers,
        route: _Route,
        principal: Principal | None,
        status: int,
        outcome: str,
    ) -> AuditEntry:
        context = request_context(scope, headers, principal, status)
        return context.entry(
            route.action,
            route.resource_type,
            route.resource_id,
            model=route.model,
            version=route.version,
            outcome=outcome,
        )

    async def _audit_failure(
        self,
        scope: Scope,
        headers: Headers,
        route: _Route | None,
        principal: Principal | None,
        status: int,
        outcome: str | None = None,
    ) -> None:
        """Write the one audit event of a request that changed nothing; if the
        database fails meanwhile, log that instead of failing the answer."""
        if route is None:
            route = self._route(scope, b"")
        outcome = outcome or Outcome.for_status(status)
        entry = self._entry(scope, headers, route, principal, status, outcome)
        try:
            async with (
                self.runtime.sessionmaker() as session,
                write_transaction(session, timeout_s=self._write_timeout_s),
            ):
                await AuditRepository(session).append(entry)
        except DatabaseBusy:
            log.warning(
                "audit.write_failed",
                extra={"request_id": entry.request_id, "action": entry.action, "busy": True},
            )
        except Exception as exc:
            if not is_database_unavailable(exc):
                raise
            log.warning(
                "audit.write_failed",
                extra={
                    "request_id": entry.request_id,
                    "action": entry.action,
                    "status_code": status,
                    "error_type": type(exc).__name__,
                },
            )


def _trace_outcome(route: _Route, status: int, outcome: str) -> None:
    span = trace.get_current_span()
    if not span.is_recording():
        return
    span.set_attribute("turnout.action", route.action)
    span.set_attribute("turnout.outcome", str(outcome))
    span.set_attribute("http.response.status_code", status)
    if status >= 500:
        span.set_status(trace.StatusCode.ERROR)


def _log_unaudited(scope: Scope, route: _Route, principal: Principal | None) -> None:
    log.warning(
        "audit.skipped_database_unavailable",
        extra={
            "request_id": scope["state"]["request_id"],
            "action": route.action,
            "resource_id": route.resource_id,
            "actor": principal.name if principal else None,
            "status_code": 503,
        },
    )


class _Rollback(Exception):
    """The route answered 4xx: undo whatever it flushed."""


def request_context(
    scope: Scope, headers: Headers, principal: Principal | None, status: int | None
) -> ActionContext:
    """Return who is acting, from where, in which request."""
    client = scope.get("client")
    return ActionContext(
        actor=principal.name if principal else "anonymous",
        actor_id=principal.key_id if principal else None,
        role=principal.role.value if principal else None,
        request_id=scope["state"]["request_id"],
        source_ip=client[0] if client else None,
        user_agent=(headers.get("user-agent") or None) and headers["user-agent"][:256],
        status_code=status,
    )


def _query(scope: Scope) -> dict[str, list[str]]:
    raw = scope.get("query_string", b"").decode("latin-1")
    return parse_qs(raw, keep_blank_values=True)


def _short(value: Any) -> str | None:
    return value[:63] if isinstance(value, str) else None


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        value = json.loads(body) if body else {}
    except (ValueError, RecursionError):  # not JSON, or nested past the recursion limit
        return {}
    return value if isinstance(value, dict) else {}


def _request_hash(scope: Scope, body: bytes) -> str:
    digest = hashlib.sha256()
    for part in (scope["method"], scope["path"], scope.get("query_string", b"").decode("latin-1")):
        digest.update(part.encode() + b"\n")
    digest.update(body)
    return digest.hexdigest()


async def _error(status: int, error: str, detail: str) -> _Captured:
    response = error_response(status, error, detail)
    return _Captured(
        status=status, headers=list(response.raw_headers), body=bytearray(response.body)
    )


async def _run(app: ASGIApp, scope: Scope, receive: Receive) -> _Captured:
    """Run ``app`` and keep its whole response (mutating responses are small JSON)."""
    captured = _Captured()

    async def collect(message: Message) -> None:
        if message["type"] == "http.response.start":
            captured.status = message["status"]
            captured.headers = list(message.get("headers", []))
        elif message["type"] == "http.response.body":
            captured.body += message.get("body", b"")

    await app(scope, receive, collect)
    return captured


async def _read_body(receive: Receive, headers: Headers, limit: int) -> bytes:
    declared = headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _TooLarge
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        body += message.get("body", b"")
        if len(body) > limit:
            raise _TooLarge
        if not message.get("more_body", False):
            break
    return bytes(body)


def _replaying(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def _adding_request_id(send: Send, request_id: str) -> Callable[[Message], Awaitable[None]]:
    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            MutableHeaders(scope=message)["x-request-id"] = request_id
        await send(message)

    return wrapped
