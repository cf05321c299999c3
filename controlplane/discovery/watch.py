"""Watching one Kubernetes Service's EndpointSlices: list, then watch.

:class:`SliceWatch` follows the EndpointSlices labelled
``kubernetes.io/service-name=<service>`` in one namespace
(``discovery.k8s.io/v1``) and calls back with the Service's endpoints that may
take traffic (:func:`controlplane.domain.discovery.endpoints_of_slices`)
whenever they change:

1. It lists the slices and remembers the list's ``resourceVersion``.
2. It watches from that version: ADDED, MODIFIED and DELETED events change its
   copy of the slices, BOOKMARK events move the version on.
3. When the watch ends normally (the server's timeout) it watches again from
   the last version it saw. When the server says the version is gone (HTTP 410,
   or an ERROR event whose Status has code 410) it lists again.
4. When the API cannot be reached or the connection drops, it tries again after
   a backoff that doubles up to a bound, with jitter; meanwhile the last
   endpoints it reported stand (nothing is reported on a failure).

Every step is logged (``discovery.*``). :class:`Watches` keeps one watch per
Service that the desired state names. The Kubernetes client
(``kubernetes_asyncio``) loads the configuration and makes the requests; this
module reads the responses itself, as they come.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import Awaitable, Callable, Collection
from typing import Any, cast

import aiohttp
from kubernetes_asyncio import client as k8s
from kubernetes_asyncio import config as k8s_config

from controlplane.domain.discovery import DiscoveredEndpoint, ServiceKey, endpoints_of_slices
from controlplane.tasks import cancel_and_wait

__all__ = ["KubernetesUnavailable", "SliceWatch", "Watches", "api_client"]

log = logging.getLogger(__name__)

SERVICE_LABEL = "kubernetes.io/service-name"
GONE = 410

Report = Callable[[ServiceKey, tuple[DiscoveredEndpoint, ...]], Awaitable[None]]


class KubernetesUnavailable(RuntimeError):
    """The Kubernetes configuration cannot be loaded."""


class _Gone(Exception):
    """The resourceVersion being watched is too old: list again."""


async def api_client(source: str) -> k8s.ApiClient:
    """Return an API client configured from ``source``: ``in-cluster`` (the pod's
    service account), ``auto`` (in-cluster when in a pod, else the kubeconfig that
    KUBECONFIG or ~/.kube/config names) or the path of a kubeconfig file."""
    configuration = k8s.Configuration()
    try:
        if source == "in-cluster":
            k8s_config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        elif source == "auto":
            try:
                k8s_config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
            except k8s_config.ConfigException:
                await k8s_config.load_kube_config(
                    client_configuration=configuration, persist_config=False
                )
        else:
            await k8s_config.load_kube_config(
                config_file=source, client_configuration=configuration, persist_config=False
            )
    except (k8s_config.ConfigException, OSError) as exc:
        raise KubernetesUnavailable(f"cannot load the Kubernetes configuration: {exc}") from exc
    return k8s.ApiClient(configuration=configuration)


class SliceWatch:
    """Lists and watches the EndpointSlices of one Service; see the module."""

    def __init__(
        self,
        api: k8s.ApiClient,
        service: ServiceKey,
        report: Report,
        *,
        backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
        watch_timeout_s: int = 300,
        request_timeout_s: float = 10.0,
    ) -> None:
        self._api = k8s.DiscoveryV1Api(api)
        self.service = service
        self._report = report
        self._backoff_s = backoff_s
        self._max_backoff_s = max_backoff_s
        self._watch_timeout_s = watch_timeout_s
        self._request_timeout_s = request_timeout_s
        self._slices: dict[str, dict[str, Any]] = {}
        self._reported: tuple[DiscoveredEndpoint, ...] | None = None
        self.lists = 0  # how many times it listed
        self.failures = 0  # how many times the API could not be reached or dropped it

    @property
    def _fields(self) -> dict[str, Any]:
        return {"namespace": self.service[0], "service": self.service[1]}

    async def run(self) -> None:
        """List and watch until cancelled."""
        resource_version: str | None = None
        delay = self._backoff_s
        while True:
            try:
                if resource_version is None:
                    resource_version = await self._list()
                    delay = self._backoff_s
                await self._report_if_changed()
                resource_version = await self._watch(resource_version)
                delay = self._backoff_s
            except asyncio.CancelledError:
                raise
            except _Gone:
                log.info("discovery.watch_expired", extra={**self._fields, "relist": True})
                resource_version = None
            except Exception as exc:
                # Jittered: replicas and Services that lost the API together do not
                # all come back at the same instant.
                self.failures += 1
                wait = random.uniform(delay / 2, delay)
                log.warning(
                    "discovery.watch_lost",
                    extra={
                        **self._fields,
                        "error_type": type(exc).__name__,
                        "error": str(exc)[:200],
                        "retry_in_s": round(wait, 3),
                        "resource_version": resource_version,
                    },
                )
                await asyncio.sleep(wait)
                delay = min(delay * 2, self._max_backoff_s)

    async def _request(self, **options: Any) -> aiohttp.ClientResponse:
        """GET the Service's slices (a list, or a watch), the response unread."""
        response = await self._api.list_namespaced_endpoint_slice(
            self.service[0], label_selector=f"{SERVICE_LABEL}={self.service[1]}", **options
        )
        return cast(aiohttp.ClientResponse, response)

    async def _list(self) -> str:
        """List the slices; return the list's resourceVersion."""
        response = await self._request(
            _preload_content=False,
            _request_timeout=self._request_timeout_s,
        )
        try:
            body = await response.read()
            if response.status == GONE:
                raise _Gone()
            if response.status != 200:
                raise RuntimeError(f"list answered {response.status}: {body[:200]!r}")
            document = json.loads(body)
        finally:
            response.release()
        self._slices = {
            item["metadata"]["name"]: item for item in document.get("items") or () if item
        }
        self.lists += 1
        version = str(document["metadata"]["resourceVersion"])
        log.info(
            "discovery.listed",
            extra={**self._fields, "slices": len(self._slices), "resource_version": version},
        )
        return version

    async def _watch(self, resource_version: str) -> str:
        """Watch from ``resource_version`` until the server ends the watch; return the
        last version seen."""
        response = await self._request(
            watch=True,
            resource_version=resource_version,
            allow_watch_bookmarks=True,
            timeout_seconds=self._watch_timeout_s,
            _preload_content=False,
            _request_timeout=aiohttp.ClientTimeout(
                sock_connect=self._request_timeout_s,
                sock_read=self._watch_timeout_s + self._request_timeout_s,
            ),
        )
        try:
            if response.status == GONE:
                raise _Gone()
            if response.status != 200:
                body = await response.read()
                raise RuntimeError(f"watch answered {response.status}: {body[:200]!r}")
            log.info(
                "discovery.watching", extra={**self._fields, "resource_version": resource_version}
            )
            # Lines are read whole whatever their length (a slice may be large).
            pending = b""
            async for chunk in response.content.iter_any():
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    if line.strip():
                        resource_version = await self._event(json.loads(line), resource_version)
        finally:
            response.release()
        log.info(
            "discovery.watch_ended", extra={**self._fields, "resource_version": resource_version}
        )
        return resource_version

    async def _event(self, event: dict[str, Any], resource_version: str) -> str:
        kind = event.get("type")
        obj = event.get("object") or {}
        if kind == "ERROR":
            if obj.get("code") == GONE:
                raise _Gone()
            raise RuntimeError(f"watch error {obj.get('code')}: {obj.get('message')}")
        metadata = obj.get("metadata") or {}
        version = str(metadata.get("resourceVersion") or resource_version)
        if kind in ("ADDED", "MODIFIED"):
            self._slices[metadata["name"]] = obj
        elif kind == "DELETED":
            self._slices.pop(metadata.get("name", ""), None)
        elif kind != "BOOKMARK":
            log.info("discovery.event_ignored", extra={**self._fields, "type": kind})
            return version
        if kind != "BOOKMARK":
            log.info(
                "discovery.event",
                extra={
                    **self._fields,
                    "type": kind,
                    "slice": metadata.get("name"),
                    "resource_version": version,
                },
            )
            await self._report_if_changed()
        return version

    async def flush(self) -> None:
        """Report the endpoints now if the last report of them failed."""
        await self._report_if_changed()

    async def _report_if_changed(self) -> None:
        if not self.lists:
            return  # nothing is known before the first list: keep what is stored
        endpoints = endpoints_of_slices(self._slices.values())
        if endpoints == self._reported:
            return
        try:
            await self._report(self.service, endpoints)
        except Exception as exc:
            # Reported again on the next event or watch: nothing is lost.
            log.warning(
                "discovery.report_failed",
                extra={**self._fields, "error_type": type(exc).__name__, "error": str(exc)[:200]},
            )
            return
        self._reported = endpoints
        log.info(
            "discovery.endpoints",
            extra={**self._fields, "endpoints": [e.address for e in endpoints]},
        )


class Watches:
    """One :class:`SliceWatch` per Service named; :meth:`follow` starts and stops them."""

    def __init__(
        self,
        api: k8s.ApiClient,
        report: Report,
        *,
        max_backoff_s: float = 30.0,
        watch_timeout_s: int = 300,
    ) -> None:
        self._api = api
        self._report = report
        self._max_backoff_s = max_backoff_s
        self._watch_timeout_s = watch_timeout_s
        self._tasks: dict[ServiceKey, asyncio.Task[None]] = {}
        self.watches: dict[ServiceKey, SliceWatch] = {}

    def follow(self, services: Collection[ServiceKey]) -> None:
        """Watch exactly ``services``: start the new ones, stop the others."""
        wanted = set(services)
        for service in set(self._tasks) - wanted:
            self._tasks.pop(service).cancel()
            self.watches.pop(service, None)
            log.info(
                "discovery.watch_stopped", extra={"namespace": service[0], "service": service[1]}
            )
        for service in sorted(wanted - set(self._tasks)):
            watch = SliceWatch(
                self._api,
                service,
                self._report,
                max_backoff_s=self._max_backoff_s,
                watch_timeout_s=self._watch_timeout_s,
            )
            self.watches[service] = watch
            self._tasks[service] = asyncio.create_task(
                watch.run(), name=f"turnout-discovery-{service[0]}-{service[1]}"
            )
            log.info(
                "discovery.watch_started", extra={"namespace": service[0], "service": service[1]}
            )

    async def flush(self) -> None:
        """Report again, for every Service, what a failed report left unstored."""
        for watch in list(self.watches.values()):
            await watch.flush()

    async def stop(self) -> None:
        """Stop every watch and close the client."""
        tasks = list(self._tasks.values())
        self._tasks.clear()
        self.watches.clear()
        await cancel_and_wait(*tasks)
        await self._api.close()
