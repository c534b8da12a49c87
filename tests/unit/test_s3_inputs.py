"""Amazon S3 inputs: which queue each input reads, the rules a bucket gets, and the write an event names."""

from __future__ import annotations

from datetime import UTC, datetime

from oscar_manager.domain.events import InputRoute
from oscar_manager.domain.s3_inputs import QueueSource, routes_by_queue, s3_generation
from oscar_manager.domain.service import Service
from oscar_manager.storage.s3_queue_rules import outermost

SINCE = datetime(2026, 1, 1, tzinfo=UTC)


def service(name: str, *, queue: str, key: str = "AK") -> Service:
    return Service.model_validate(
        {
            "name": name,
            "image": "busybox",
            "script": "true",
            "input": [{"storage_provider": "s3.aws", "path": "photos/in"}],
            "storage_providers": {"s3": {"aws": {"access_key": key, "secret_key": "s", "queue": queue}}},
        }
    )


def route(name: str, provider: str = "s3.aws", folder: str = "in") -> InputRoute:
    return InputRoute(provider=provider, bucket="photos", folder=folder, service=name, since=SINCE)


def test_services_sharing_a_queue_with_the_same_credentials_are_read_once() -> None:
    services = [service("a", queue="q1"), service("b", queue="q1"), service("c", queue="q1", key="other")]
    routes = [route("a"), route("b"), route("c"), route("a", provider="minio.default")]
    grouped = routes_by_queue(services, routes)
    shared = QueueSource(queue="q1", endpoint="", access_key="AK", secret_key="s", region="us-east-1")
    assert {r.service for r in grouped[shared]} == {"a", "b"}
    assert len(grouped) == 2  # c reads the same queue with other credentials: a reader of its own
    assert all(r.provider == "s3.aws" for rs in grouped.values() for r in rs)


def test_rules_cover_each_folder_once_as_s3_refuses_overlapping_prefixes() -> None:
    assert outermost({"in/", "in/sub/", "other/"}) == ["in/", "other/"]
    assert outermost({"", "in/"}) == [""]
    assert outermost({"in/", "input/"}) == ["in/", "input/"]  # "input/" is not inside "in/"


def test_a_record_and_a_listing_name_one_write_alike() -> None:
    listed = datetime(2026, 3, 1, 12, 0, 5, tzinfo=UTC)  # listings on AWS: whole seconds
    with_millis = datetime(2026, 3, 1, 12, 0, 5, 734000, tzinfo=UTC)  # listings elsewhere
    assert s3_generation(listed) == s3_generation(with_millis)
    assert s3_generation(listed) != s3_generation(datetime(2026, 3, 1, 12, 0, 6, tzinfo=UTC))
