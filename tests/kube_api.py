"""A fake Kubernetes API server that speaks list and watch for EndpointSlices.

Only ``GET /apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices``
with a ``labelSelector`` of ``kubernetes.io/service-name=<name>``, in the
shapes of the real API:

- a list is an ``EndpointSliceList`` whose ``metadata.resourceVersion`` is the
  store's version;
- ``?watch=true&resourceVersion=N`` streams newline-delimited JSON events
  (``ADDED``, ``MODIFIED``, ``DELETED``) after N, then each new one as it
  happens, until ``timeoutSeconds``; a version older than the store keeps
  gets one ``ERROR`` event with a ``Status`` of code 410 (Gone), like the real
  server after compaction;
- every request needs the bearer token of the kubeconfig it writes (401 else).

A test changes the store (:meth:`put_slice`, :meth:`delete_slice`), forgets
history (:meth:`compact`: open watches get the 410 event too) or drops every
open watch connection without a word (:meth:`drop_watches`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from aiohttp import web

__all__ = ["FakeKubernetes", "slice_endpoint"]

TOKEN = "fake-token-for-tests"
SERVICE_LABEL = "kubernetes.io/service-name"


def slice_endpoint(
    address: str,
    *,
    ready: bool | None = True,
    serving: bool | None = None,
    terminating: bool | None = None,
    zone: str | None = None,
) -> dict[str, Any]:
    """One entry of an EndpointSlice's ``endpoints``, as the API gives it."""
    conditions: dict[str, Any] = {}
    if ready is not None:
        conditions["ready"] = ready
    conditions["serving"] = ready if serving is None else serving
    conditions["terminating"] = bool(terminating)
    endpoint: dict[str, Any] = {
        "addresses": [address],
        "conditions": conditions,
        "targetRef": {"kind": "Pod", "name": f"pod-{address}", "uid": str(uuid.uuid4())},
        "nodeName": "node-1",
    }
    if zone is not None:
        endpoint["zone"] = zone
    return endpoint


class FakeKubernetes:
    """The fake API server; ``await start()``, then ``await stop()``."""

    def __init__(self) -> None:
        self.version = 1
        self._slices: dict[tuple[str, str], dict[str, Any]] = {}
        # (version, type, object) of every change since ``_oldest``.
        self._events: list[tuple[int, str, dict[str, Any]]] = []
        self._oldest = 1
        self._changed = asyncio.Condition()
        self._watches: dict[web.StreamResponse, web.Request] = {}
        self._gone: set[web.StreamResponse] = set()
        self._dropped: set[web.StreamResponse] = set()
        self.lists = 0
        self.watch_requests = 0
        self.unauthorized = 0
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def start(self, port: int = 0) -> FakeKubernetes:
        app = web.Application()
        app.router.add_get(
            "/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices", self._handle
        )
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port, reuse_address=True)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def stop(self) -> None:
        self.drop_watches()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def kubeconfig(self, path: Path) -> Path:
        """Write a kubeconfig that points at this server; return its path."""
        document = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {"server": f"http://127.0.0.1:{self.port}"}}],
            "users": [{"name": "tester", "user": {"token": TOKEN}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "tester"}}],
            "current-context": "fake",
        }
        path.write_text(json.dumps(document))  # JSON is YAML
        return path

    # -- changing the store --------------------------------------------------------

    async def put_slice(
        self,
        namespace: str,
        name: str,
        service: str,
        endpoints: Sequence[dict[str, Any]],
        ports: Sequence[tuple[str | None, int]] = (("http", 8080),),
        address_type: str = "IPv4",
    ) -> None:
        """Create or replace EndpointSlice ``name`` of ``service``."""
        kind = "MODIFIED" if (namespace, name) in self._slices else "ADDED"
        self.version += 1
        obj = {
            "kind": "EndpointSlice",
            "apiVersion": "discovery.k8s.io/v1",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "uid": str(uuid.uuid4()),
                "resourceVersion": str(self.version),
                "generation": 1,
                "labels": {
                    SERVICE_LABEL: service,
                    "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
                },
            },
            "addressType": address_type,
            "endpoints": list(endpoints),
            "ports": [
                {"name": port_name, "protocol": "TCP", "port": number}
                if port_name is not None
                else {"protocol": "TCP", "port": number}
                for port_name, number in ports
            ],
        }
        self._slices[(namespace, name)] = obj
        await self._record(kind, obj)

    async def delete_slice(self, namespace: str, name: str) -> None:
        obj = self._slices.pop((namespace, name))
        self.version += 1
        obj = {**obj, "metadata": {**obj["metadata"], "resourceVersion": str(self.version)}}
        await self._record("DELETED", obj)

    async def compact(self) -> None:
        """Forget every event so far: a watch from an older version is Gone (410),
        and the open watches are told so."""
        self._events.clear()
        self._oldest = self.version + 1
        self._gone |= set(self._watches)
        async with self._changed:
            self._changed.notify_all()

    def drop_watches(self) -> None:
        """Close every open watch connection abruptly (no final chunk)."""
        for response, request in list(self._watches.items()):
            self._dropped.add(response)
            if request.transport is not None:
                request.transport.abort()
        self._watches.clear()

    async def _record(self, kind: str, obj: dict[str, Any]) -> None:
        self._events.append((self.version, kind, obj))
        async with self._changed:
            self._changed.notify_all()

    # -- serving -------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            self.unauthorized += 1
            return web.json_response(_status(401, "Unauthorized", "Unauthorized"), status=401)
        namespace = request.match_info["namespace"]
        selector = request.query.get("labelSelector", "")
        key, _, service = selector.partition("=")
        if key != SERVICE_LABEL or not service:
            return web.json_response(_status(400, "BadRequest", "unsupported selector"), status=400)
        # The API server reads booleans as Go's strconv.ParseBool does.
        if request.query.get("watch") in ("1", "t", "T", "true", "TRUE", "True"):
            return await self._watch(request, namespace, service)
        self.lists += 1
        items = [
            {k: v for k, v in obj.items() if k not in ("kind", "apiVersion")}
            for (ns, _), obj in sorted(self._slices.items())
            if ns == namespace and obj["metadata"]["labels"][SERVICE_LABEL] == service
        ]
        return web.json_response(
            {
                "kind": "EndpointSliceList",
                "apiVersion": "discovery.k8s.io/v1",
                "metadata": {"resourceVersion": str(self.version)},
                "items": items,
            }
        )

    async def _watch(
        self, request: web.Request, namespace: str, service: str
    ) -> web.StreamResponse:
        self.watch_requests += 1
        since = int(request.query.get("resourceVersion") or self.version)
        timeout = float(request.query.get("timeoutSeconds") or 1800)
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        self._watches[response] = request
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            if since + 1 < self._oldest:
                await _send(response, "ERROR", _gone(since, self._oldest))
                return response
            sent = since
            while loop.time() < deadline and response not in self._dropped:
                for version, kind, obj in list(self._events):
                    if version <= sent:
                        continue
                    sent = version
                    meta = obj["metadata"]
                    if meta["namespace"] == namespace and meta["labels"][SERVICE_LABEL] == service:
                        await _send(response, kind, obj)
                if response in self._gone:
                    self._gone.discard(response)
                    await _send(response, "ERROR", _gone(sent, self._oldest))
                    return response
                # Woken by a change, or now and then to see a dropped connection.
                async with self._changed:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(
                            self._changed.wait(), max(0.0, min(0.2, deadline - loop.time()))
                        )
            if response in self._dropped:
                return response
            await response.write_eof()
            return response
        except (ConnectionResetError, RuntimeError):
            return response
        finally:
            self._watches.pop(response, None)
            self._dropped.discard(response)


async def _send(response: web.StreamResponse, kind: str, obj: dict[str, Any]) -> None:
    await response.write(json.dumps({"type": kind, "object": obj}).encode() + b"\n")


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


def _gone(asked: int, oldest: int) -> dict[str, Any]:
    return _status(410, "Expired", f"too old resource version: {asked} ({oldest - 1})")
