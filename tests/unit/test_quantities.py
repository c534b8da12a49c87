"""Resource quantities in service definitions: what Kubernetes takes is accepted, what no job can run with
(or what overflows a limit) is a 400 naming the field, at create and at update."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from oscar_manager.domain.quantities import parse_quantity, quantity_bytes, quantity_cores
from oscar_manager.domain.service import MinioDefault, Service, normalise_new, normalise_update, parse_service
from oscar_manager.errors import BadRequest
from tests.support.factories import service_body

MINIO = MinioDefault(endpoint="http://minio:9000", region="us-east-1", verify=True)

# Upstream-valid FDL values (resource.Quantity syntax, as oscar-cli and the dashboard send them).
VALID_MEMORY = ["256Mi", "1Gi", "1G", "512M", "128974848", "129e6", "1.5Gi", "+1Gi", "0.5Gi", "100k", "1Ei"]
VALID_CPU = ["0.2", "1", "1.0", "500m", "2", "0.001", "1e0", "1024", 0.5, 2]
# What no memory limit can be: negative, zero, past an int64 byte count, not a number at all.
INVALID_MEMORY = [
    *("-1Gi", "-1", "0", "0Gi", "0.0", "1e30", "9Ei", "9223372036854775808", "1e999"),
    *("NaN", "inf", "1Gb", "1 Gi", "Gi", "abc", "1e3.5", "0x10"),
]
INVALID_CPU = ["-1", "-500m", "0", "0m", "1e30", "1025", "2000", "NaN", "Infinity", "1e99", "one", "1core"]


def _new(**fields: Any) -> Service:
    return normalise_new(
        parse_service(service_body(**fields)), owner="cluster_admin", namespace="ns", minio=MINIO
    )


class TestAtCreate:
    @pytest.mark.parametrize("memory", VALID_MEMORY)
    def test_upstream_memory_accepted(self, memory: str) -> None:
        assert _new(memory=memory).memory == memory

    @pytest.mark.parametrize("cpu", VALID_CPU)
    def test_upstream_cpu_accepted(self, cpu: object) -> None:
        assert _new(cpu=cpu).cpu == str(cpu)

    @pytest.mark.parametrize("memory", INVALID_MEMORY)
    def test_invalid_memory_refused_naming_the_field(self, memory: str) -> None:
        with pytest.raises(BadRequest, match=r"invalid memory"):
            _new(memory=memory)

    @pytest.mark.parametrize("cpu", INVALID_CPU)
    def test_invalid_cpu_refused_naming_the_field(self, cpu: str) -> None:
        with pytest.raises(BadRequest, match=r"invalid cpu"):
            _new(cpu=cpu)

    @pytest.mark.parametrize("field", ["total_memory", "total_cpu", "ephemeral_storage_request"])
    @pytest.mark.parametrize("value", ["-1Gi", "1e30", "NaN"])
    def test_other_quantities_refused(self, field: str, value: str) -> None:
        with pytest.raises(BadRequest, match=rf"invalid {field}"):
            _new(**{field: value})

    @pytest.mark.parametrize("field", ["total_memory", "total_cpu", "ephemeral_storage_request"])
    @pytest.mark.parametrize("value", ["", "0", "2Gi", "4"])
    def test_other_quantities_accepted(self, field: str, value: str) -> None:
        assert getattr(_new(**{field: value}), field) == value

    def test_defaults_still_apply(self) -> None:
        service = _new(memory=None, cpu=None)
        assert (service.memory, service.cpu) == ("256Mi", "0.2")


class TestAtUpdate:
    @pytest.mark.parametrize(("field", "value"), [("memory", "-1Gi"), ("memory", "1e30"), ("cpu", "1e30")])
    def test_invalid_refused(self, field: str, value: str) -> None:
        current = _new()
        with pytest.raises(BadRequest, match=rf"invalid {field}"):
            normalise_update(parse_service(service_body(**{field: value})), current=current, minio=MINIO)


class TestValues:
    def test_exact(self) -> None:
        assert parse_quantity("1.5Gi") == Decimal(3 * 2**29)
        assert parse_quantity("129e6") == Decimal(129_000_000)
        assert parse_quantity("1E") == Decimal(10**18)  # exa, not an exponent
        assert quantity_bytes("256Mi") == 256 * 2**20
        assert quantity_bytes("500m") == 1  # rounded up
        assert quantity_cores("500m") == 0.5
        assert quantity_cores("2") == 2.0

    def test_out_of_range_is_no_value(self) -> None:
        assert quantity_bytes("1e30") is None
        assert quantity_bytes("-1Gi") is None
        assert quantity_cores("0") is None
        assert quantity_cores("") is None
