"""The EndpointSlice watch against a fake Kubernetes API server (real HTTP, the
real client library, a kubeconfig file): it lists, then watches, follows every
change, lists again after a 410 and resumes after a dropped connection."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from controlplane.discovery.watch import KubernetesUnavailable, SliceWatch, api_client
from controlplane.domain.discovery import DiscoveredEndpoint, ServiceKey
from tests.kube_api import FakeKubernetes, slice_endpoint
from tests.support import until

SERVICE = ("ml", "sentiment-v2")


class Reports:
    """What the watch reported, per Service."""

    def __init__(self) -> None:
        self.latest: dict[ServiceKey, tuple[DiscoveredEndpoint, ...]] = {}
        self.count = 0

    async def __call__(
        self, service: ServiceKey, endpoints: tuple[DiscoveredEndpoint, ...]
    ) -> None:
        self.latest[service] = endpoints
        self.count += 1

    def addresses(self) -> list[str] | None:
        found = self.latest.get(SERVICE)
        return None if found is None else [e.address for e in found]


@pytest.fixture
async def watching(
    fake: FakeKubernetes, tmp_path: Path
) -> AsyncIterator[tuple[SliceWatch, Reports]]:
    reports = Reports()
    api = await api_client(str(fake.kubeconfig(tmp_path / "kubeconfig")))
    watch = SliceWatch(api, SERVICE, reports, backoff_s=0.05, max_backoff_s=0.2)
    task = asyncio.create_task(watch.run())
    try:
        yield watch, reports
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await api.close()


async def _until(reports: Reports, addresses: list[str]) -> None:
    await until(lambda: reports.addresses() == addresses)


async def test_endpoints_added_removed_and_turning_not_ready_are_followed(
    fake: FakeKubernetes, watching: tuple[SliceWatch, Reports]
) -> None:
    watch, reports = watching
    await fake.put_slice("ml", "sentiment-v2-abc", "sentiment-v2", [slice_endpoint("10.0.0.1")])
    # Another Service's slice and another namespace's are none of its business.
    await fake.put_slice("ml", "other-xyz", "other", [slice_endpoint("10.9.9.9")])
    await fake.put_slice("dev", "sentiment-v2-dev", "sentiment-v2", [slice_endpoint("10.8.8.8")])
    await _until(reports, ["10.0.0.1"])

    await fake.put_slice(
        "ml",
        "sentiment-v2-abc",
        "sentiment-v2",
        [slice_endpoint("10.0.0.1", zone="a"), slice_endpoint("10.0.0.2", zone="b")],
    )
    await _until(reports, ["10.0.0.1", "10.0.0.2"])
    assert [e.zone for e in reports.latest[SERVICE]] == ["a", "b"]

    await fake.put_slice(
        "ml",
        "sentiment-v2-abc",
        "sentiment-v2",
        [slice_endpoint("10.0.0.1", ready=False), slice_endpoint("10.0.0.2")],
    )
    await _until(reports, ["10.0.0.2"])

    await fake.put_slice("ml", "sentiment-v2-abc", "sentiment-v2", [])
    await _until(reports, [])
    assert watch.lists == 1


async def test_a_deleted_slice_takes_its_endpoints_away(
    fake: FakeKubernetes, watching: tuple[SliceWatch, Reports]
) -> None:
    _, reports = watching
    await fake.put_slice("ml", "sentiment-v2-a", "sentiment-v2", [slice_endpoint("10.0.0.1")])
    await fake.put_slice("ml", "sentiment-v2-b", "sentiment-v2", [slice_endpoint("10.0.0.2")])
    await _until(reports, ["10.0.0.1", "10.0.0.2"])
    await fake.delete_slice("ml", "sentiment-v2-a")
    await _until(reports, ["10.0.0.2"])


async def test_the_slices_present_before_the_watch_are_listed(
    fake: FakeKubernetes, tmp_path: Path
) -> None:
    await fake.put_slice("ml", "sentiment-v2-a", "sentiment-v2", [slice_endpoint("10.0.0.7")])
    reports = Reports()
    api = await api_client(str(fake.kubeconfig(tmp_path / "kubeconfig")))
    task = asyncio.create_task(SliceWatch(api, SERVICE, reports).run())
    try:
        await _until(reports, ["10.0.0.7"])
        assert fake.lists == 1
        assert fake.unauthorized == 0
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await api.close()


async def test_a_410_gone_makes_it_list_again(
    fake: FakeKubernetes, watching: tuple[SliceWatch, Reports]
) -> None:
    watch, reports = watching
    await fake.put_slice("ml", "sentiment-v2-a", "sentiment-v2", [slice_endpoint("10.0.0.1")])
    await _until(reports, ["10.0.0.1"])
    await until(lambda: fake.watch_requests >= 1)
    # History compacted: the open watch gets an ERROR event with Status code 410.
    await fake.compact()
    await fake.put_slice("ml", "sentiment-v2-a", "sentiment-v2", [slice_endpoint("10.0.0.3")])
    await _until(reports, ["10.0.0.3"])
    await until(lambda: watch.lists == 2)


async def test_a_dropped_connection_resumes_from_the_last_version(
    fake: FakeKubernetes, watching: tuple[SliceWatch, Reports]
) -> None:
    watch, reports = watching
    await fake.put_slice("ml", "sentiment-v2-a", "sentiment-v2", [slice_endpoint("10.0.0.1")])
    await _until(reports, ["10.0.0.1"])
    await until(lambda: fake.watch_requests == 1)
    fake.drop_watches()
    # A change while it reconnects is not lost: the new watch starts where it was.
    await fake.put_slice("ml", "sentiment-v2-a", "sentiment-v2", [slice_endpoint("10.0.0.4")])
    await _until(reports, ["10.0.0.4"])
    assert fake.watch_requests >= 2
    assert watch.lists == 1


async def test_an_unreachable_api_keeps_the_last_endpoints_and_is_retried(
    fake: FakeKubernetes, tmp_path: Path
) -> None:
    await fake.put_slice("ml", "sentiment-v2-a", "sentiment-v2", [slice_endpoint("10.0.0.1")])
    kubeconfig = fake.kubeconfig(tmp_path / "kubeconfig")
    reports = Reports()
    api = await api_client(str(kubeconfig))
    watch = SliceWatch(api, SERVICE, reports, backoff_s=0.05, max_backoff_s=0.2)
    task = asyncio.create_task(watch.run())
    restarted = FakeKubernetes()
    try:
        await _until(reports, ["10.0.0.1"])
        count = reports.count
        await fake.stop()
        await until(lambda: watch.failures >= 2)
        # Down: nothing is reported, so the endpoints last reported stand.
        assert reports.count == count and reports.addresses() == ["10.0.0.1"]
        # The API comes back (same address, same history): the watch resumes.
        restarted.version = fake.version
        await restarted.start(port=fake.port)
        await restarted.put_slice(
            "ml", "sentiment-v2-a", "sentiment-v2", [slice_endpoint("10.0.0.5")]
        )
        await _until(reports, ["10.0.0.5"])
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await api.close()
        await restarted.stop()


async def test_a_kubeconfig_that_is_missing_is_reported(tmp_path: Path) -> None:
    with pytest.raises(KubernetesUnavailable):
        await api_client(str(tmp_path / "missing"))


async def test_a_failed_report_is_made_again_and_nothing_is_reported_before_a_list(
    fake: FakeKubernetes, tmp_path: Path
) -> None:
    stored: list[list[str]] = []
    failing = [True]

    async def report(service: ServiceKey, endpoints: tuple[DiscoveredEndpoint, ...]) -> None:
        if failing[0]:
            raise ConnectionError("database down")
        stored.append([e.address for e in endpoints])

    api = await api_client(str(fake.kubeconfig(tmp_path / "kubeconfig")))
    watch = SliceWatch(api, SERVICE, report)
    try:
        failing[0] = False
        await watch.flush()
        assert stored == []  # not listed yet: what is stored stands
        failing[0] = True
        await fake.put_slice("ml", "sentiment-v2-a", "sentiment-v2", [slice_endpoint("10.0.0.1")])
        task = asyncio.create_task(watch.run())
        try:
            await until(lambda: watch.lists == 1 and fake.watch_requests == 1)
            assert stored == []
            failing[0] = False
            await watch.flush()
            assert stored == [["10.0.0.1"]]
            await watch.flush()
            assert stored == [["10.0.0.1"]]  # reported once
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    finally:
        await api.close()
