"""Label and annotation rules as Kubernetes' apimachinery states them (IsQualifiedName, IsValidLabelValue,
ValidateAnnotations)."""

from __future__ import annotations

import pytest

from oscar_manager.domain.kube_metadata import check_annotations, check_labels, qualified_name_problem
from oscar_manager.errors import BadRequest


@pytest.mark.parametrize(
    "key",
    ["a", "team", "app.kubernetes.io/name", "example.org/x_y.z-1", "A9", "x" * 63, f"{'a' * 253}/b"],
)
def test_qualified_names(key: str) -> None:
    assert qualified_name_problem(key) is None


@pytest.mark.parametrize(
    "key",
    [
        "",
        "bad key!",
        "/x",
        "a/b/c",
        "-a",
        "a-",
        "x" * 64,
        "Example.org/x",
        "ex_ample.org/x",
        f"{'a' * 254}/b",
    ],
)
def test_not_qualified_names(key: str) -> None:
    assert qualified_name_problem(key) is not None


def test_label_values() -> None:
    check_labels({"a": "", "b": "x" * 63, "c": "v1.2_3-x"})
    for value in ("x" * 64, "-x", "a b", "x/y"):
        with pytest.raises(BadRequest, match="labels"):
            check_labels({"a": value})


def test_annotation_keys_are_checked_lower_cased_and_their_size_counted() -> None:
    check_annotations({"Example.org/Owner": "anything: at all", "k": "v" * (256 * 1024 - 1 - 33)})
    with pytest.raises(BadRequest, match="annotations: 262145 bytes"):
        check_annotations({"k": "v" * (256 * 1024)})
    with pytest.raises(BadRequest, match="invalid key"):
        check_annotations({"bad key": ""})
