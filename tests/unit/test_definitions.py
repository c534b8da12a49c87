from __future__ import annotations

import pytest

from oscar_manager.domain.definitions import load_document, service_definitions
from oscar_manager.errors import BadRequest


def test_json_and_yaml_give_the_same_document() -> None:
    assert load_document(b'{"name": "a", "cpu": "1"}') == load_document(b"name: a\ncpu: '1'\n")


def test_json_error_reported_as_json() -> None:
    with pytest.raises(BadRequest, match="malformed JSON"):
        load_document(b'{"name": "a",,}')


def test_plain_text_is_not_a_definition() -> None:
    with pytest.raises(BadRequest, match="expected a service definition"):
        service_definitions(load_document(b"just some words"))


def test_fdl_merges_shared_providers_service_entries_win() -> None:
    document = {
        "functions": {
            "oscar": [{"cluster-a": {"name": "x", "storage_providers": {"s3": {"mine": {"region": "own"}}}}}]
        },
        "storage_providers": {"s3": {"mine": {"region": "shared"}, "other": {"region": "r"}}},
        "clusters": {"cluster-a": {"endpoint": "https://a"}},
    }
    (service,) = service_definitions(document)
    assert service["storage_providers"]["s3"] == {"mine": {"region": "own"}, "other": {"region": "r"}}
    assert service["clusters"] == {"cluster-a": {"endpoint": "https://a"}}
    assert service["cluster_id"] == "cluster-a"


def test_fdl_keeps_explicit_cluster_id() -> None:
    (service,) = service_definitions({"functions": {"oscar": [{"key": {"name": "x", "cluster_id": "mine"}}]}})
    assert service["cluster_id"] == "mine"


@pytest.mark.parametrize(
    "document",
    [
        {"functions": {"oscar": "x"}},
        {"functions": {"oscar": [{"a": {}, "b": {}}]}},
        {"functions": {"oscar": [{"a": "not-a-mapping"}]}},
        {"functions": []},
        {"functions": {"oscar": [{"a": {"name": "x"}}]}, "storage_providers": ["x"]},
    ],
)
def test_malformed_fdl(document: object) -> None:
    with pytest.raises(BadRequest, match="FDL document"):
        service_definitions(document)
