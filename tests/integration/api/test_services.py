"""/system/services through the HTTP API, on SQLite and PostgreSQL (upstream scenarios §6 items 1-4)."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from oscar_manager.operations import Database
from oscar_manager.settings import Settings
from tests.support.app import app_client
from tests.support.factories import COWSAY_FDL, service_body

pytestmark = pytest.mark.asyncio


async def create(client: httpx.AsyncClient, body: dict[str, Any]) -> httpx.Response:
    return await client.post("/system/services", json=body)


async def names(client: httpx.AsyncClient) -> list[str]:
    response = await client.get("/system/services")
    assert response.status_code == 200
    return [service["name"] for service in response.json()]


class TestCreate:
    @pytest.mark.parametrize("visibility", ["public", "private", "restricted", ""])
    async def test_created_with_201_and_empty_body(self, client: httpx.AsyncClient, visibility: str) -> None:
        response = await create(client, service_body(visibility=visibility))
        assert response.status_code == 201
        assert response.content == b""
        stored = (await client.get("/system/services/cowsay")).json()
        assert stored["visibility"] == (visibility or "private")

    async def test_upstream_defaults_applied(
        self, client: httpx.AsyncClient, backend_settings: Settings
    ) -> None:
        assert (await create(client, service_body(log_level="verbose"))).status_code == 201
        service = (await client.get("/system/services/cowsay")).json()
        assert service["memory"] == "256Mi"
        assert service["cpu"] == "0.2"
        assert service["log_level"] == "INFO"
        assert service["visibility"] == "private"
        assert service["owner"] == "cluster_admin"
        assert service["namespace"] == backend_settings.oscar_services_namespace  # oscar-svc by default
        assert service["labels"]["oscar_service"] == "cowsay"
        assert re.fullmatch(r"[0-9a-f]{64}", service["token"])
        minio = service["storage_providers"]["minio"]["default"]
        assert minio["access_key"] == "hidden"
        assert minio["secret_key"] == "hidden"
        assert minio["region"] == "us-east-1"

    async def test_log_level_upper_cased(self, client: httpx.AsyncClient) -> None:
        await create(client, service_body(log_level="debug"))
        assert (await client.get("/system/services/cowsay")).json()["log_level"] == "DEBUG"

    async def test_token_sent_by_client_is_replaced(self, client: httpx.AsyncClient) -> None:
        await create(client, service_body(token="a" * 64))
        assert (await client.get("/system/services/cowsay")).json()["token"] != "a" * 64

    async def test_each_service_gets_its_own_token(self, client: httpx.AsyncClient) -> None:
        await create(client, service_body("one"))
        await create(client, service_body("two"))
        one = (await client.get("/system/services/one")).json()["token"]
        two = (await client.get("/system/services/two")).json()["token"]
        assert one != two

    async def test_paths_normalised(self, client: httpx.AsyncClient) -> None:
        body = service_body(
            input=[{"storage_provider": "minio", "path": " /cowsay/input/ "}],
            output=[{"storage_provider": "MINIO.default", "path": "out", "suffix": [".txt"]}],
        )
        assert (await create(client, body)).status_code == 201
        service = (await client.get("/system/services/cowsay")).json()
        # Empty suffix/prefix lists are left out, as upstream's omitempty does.
        assert service["input"] == [{"storage_provider": "minio.default", "path": "cowsay/input"}]
        assert service["output"][0]["path"] == "cowsay/out"
        assert service["output"][0]["storage_provider"] == "minio.default"
        assert service["output"][0]["suffix"] == [".txt"]

    async def test_keys_matched_case_insensitively_like_go(self, client: httpx.AsyncClient) -> None:
        body = {"Name": "cowsay", "IMAGE": "img", "Script": "echo", "Environment": {"Variables": {"A": "1"}}}
        assert (await create(client, body)).status_code == 201
        service = (await client.get("/system/services/cowsay")).json()
        assert service["image"] == "img"
        assert service["environment"]["variables"] == {"A": "1"}

    async def test_unknown_keys_kept(self, client: httpx.AsyncClient) -> None:
        body = service_body(future_field={"x": [1, 2]}, delegation="static")
        assert (await create(client, body)).status_code == 201
        service = (await client.get("/system/services/cowsay")).json()
        assert service["future_field"] == {"x": [1, 2]}
        assert service["delegation"] == "static"

    async def test_fields_clients_index_are_always_present(self, client: httpx.AsyncClient) -> None:
        await create(client, service_body())
        listed = (await client.get("/system/services")).json()[0]
        assert isinstance(listed["expose"]["max_scale"], int)
        assert listed["environment"] == {"variables": {}, "secrets": {}}
        assert "default" in listed["storage_providers"]["minio"]
        for key in ("input", "output", "allowed_users", "bucket_list"):
            assert listed[key] == []
        # Left out when empty, as upstream's omitempty does: a v3 client reads api_port as an int.
        assert "image_pull_secrets" not in listed
        assert "api_port" not in listed["expose"]
        assert "nodePort" not in listed["expose"]

    async def test_yaml_fdl_creates_every_service(self, client: httpx.AsyncClient) -> None:
        fdl = """
functions:
  oscar:
  - c1:
      name: first
      image: img
      script: echo 1
  - c1:
      name: second
      image: img
      script: echo 2
      input: [{storage_provider: minio.store, path: second/in}]
storage_providers:
  minio:
    store: {endpoint: "http://other:9000", access_key: ak, secret_key: sk, region: us-east-1, verify: true}
"""
        response = await client.post(
            "/system/services", content=fdl, headers={"content-type": "application/yaml"}
        )
        assert response.status_code == 201, response.text
        assert await names(client) == ["first", "second"]
        second = (await client.get("/system/services/second")).json()
        assert second["cluster_id"] == "c1"
        assert second["storage_providers"]["minio"]["store"]["endpoint"] == "http://other:9000"
        # The server's own provider is always present, with its keys hidden.
        assert second["storage_providers"]["minio"]["default"]["access_key"] == "hidden"

    async def test_upstream_cowsay_example_round_trips(self, client: httpx.AsyncClient) -> None:
        response = await client.post("/system/services", content=COWSAY_FDL)
        assert response.status_code == 201, response.text
        service = (await client.get("/system/services/cowsay")).json()
        assert service["cpu"] == "1.0"
        assert service["memory"] == "1Gi"
        assert service["log_level"] == "CRITICAL"
        assert service["environment"]["variables"] == {"INPUT_TYPE": "json"}
        assert service["script"].startswith("#!/bin/sh\nif [")
        assert service["cluster_id"] == "oscar-cluster"

    async def test_yaml_numbers_accepted_for_quantities_and_env(self, client: httpx.AsyncClient) -> None:
        fdl = "name: num\nimage: img\nscript: echo\ncpu: 1.5\nenvironment:\n  variables: {N: 5, B: true}\n"
        assert (await client.post("/system/services", content=fdl)).status_code == 201
        service = (await client.get("/system/services/num")).json()
        assert service["cpu"] == "1.5"
        assert service["environment"]["variables"] == {"N": "5", "B": "true"}

    async def test_crlf_script_normalised(self, client: httpx.AsyncClient) -> None:
        await create(client, service_body(script="echo a\r\necho b\r\n"))
        assert (await client.get("/system/services/cowsay")).json()["script"] == "echo a\necho b\n"


class TestCreateRejects:
    """Each bad input gets a precise 4xx and leaves the registry unchanged."""

    async def assert_rejected(
        self, client: httpx.AsyncClient, response: httpx.Response, status: int, fragment: str
    ) -> None:
        assert response.status_code == status, response.text
        assert fragment in response.text
        assert await names(client) == []

    async def test_malformed_json(self, client: httpx.AsyncClient) -> None:
        response = await client.post(
            "/system/services", content=b'{"name": "x", ', headers={"content-type": "application/json"}
        )
        await self.assert_rejected(client, response, 400, "malformed JSON")

    async def test_malformed_yaml(self, client: httpx.AsyncClient) -> None:
        response = await client.post("/system/services", content=b"name: x\n  image: : [\n")
        await self.assert_rejected(client, response, 400, "malformed YAML")

    async def test_empty_body(self, client: httpx.AsyncClient) -> None:
        await self.assert_rejected(client, await client.post("/system/services", content=b""), 400, "empty")

    async def test_not_an_object(self, client: httpx.AsyncClient) -> None:
        response = await client.post("/system/services", json=["name", "x"])
        await self.assert_rejected(client, response, 400, "expected a service definition")

    @pytest.mark.parametrize("missing", ["name", "image", "script"])
    async def test_missing_required_field(self, client: httpx.AsyncClient, missing: str) -> None:
        body = service_body()
        del body[missing]
        response = await create(client, body)
        await self.assert_rejected(client, response, 400, f"{missing}: Field required")

    @pytest.mark.parametrize(
        ("field", "value"),
        [("image", 5), ("enable_gpu", {"a": 1}), ("input", "bucket/in"), ("environment", []), ("expose", 3)],
    )
    async def test_wrong_types(self, client: httpx.AsyncClient, field: str, value: Any) -> None:
        response = await create(client, service_body(**{field: value}))
        await self.assert_rejected(client, response, 400, field)

    @pytest.mark.parametrize(
        "name", ["Cowsay", "cow_say", "-cow", "cow-", "a" * 40, "", "cow.say", "cow say"]
    )
    async def test_invalid_names(self, client: httpx.AsyncClient, name: str) -> None:
        response = await create(client, service_body(name))
        await self.assert_rejected(client, response, 400, "invalid service name")

    @pytest.mark.parametrize(
        ("field", "value"), [("memory", "lots"), ("cpu", "1 core"), ("total_memory", "5X")]
    )
    async def test_invalid_quantities(self, client: httpx.AsyncClient, field: str, value: str) -> None:
        response = await create(client, service_body(**{field: value}))
        await self.assert_rejected(client, response, 400, f"invalid {field}")

    async def test_invalid_visibility(self, client: httpx.AsyncClient) -> None:
        response = await create(client, service_body(visibility="everyone"))
        await self.assert_rejected(client, response, 400, "invalid visibility")

    async def test_empty_input_path(self, client: httpx.AsyncClient) -> None:
        response = await create(client, service_body(input=[{"storage_provider": "minio", "path": " / "}]))
        await self.assert_rejected(client, response, 400, "input path cannot be empty")

    @pytest.mark.parametrize("path", ["cowsay/../etc", "cowsay//in", "cowsay/./in"])
    async def test_traversal_in_paths(self, client: httpx.AsyncClient, path: str) -> None:
        response = await create(client, service_body(input=[{"storage_provider": "minio", "path": path}]))
        await self.assert_rejected(client, response, 400, "segments are not allowed")

    async def test_unrecognised_input_provider(self, client: httpx.AsyncClient) -> None:
        body = service_body(
            input=[{"storage_provider": "onedata.one", "path": "b/in"}],
            storage_providers={"onedata": {"one": {"oneprovider_host": "h", "token": "t", "space": "s"}}},
        )
        await self.assert_rejected(client, await create(client, body), 400, "unrecognized input")

    async def test_an_input_on_s3_without_a_queue(self, client: httpx.AsyncClient) -> None:
        """S3 reports new objects only to a queue (``test_s3_sqs``): an input without one could never run."""
        body = service_body(
            input=[{"storage_provider": "s3.aws", "path": "b/in"}],
            storage_providers={"s3": {"aws": {"access_key": "a", "secret_key": "b", "region": "r"}}},
        )
        await self.assert_rejected(client, await create(client, body), 400, "storage_providers.s3.aws.queue")

    async def test_undeclared_provider(self, client: httpx.AsyncClient) -> None:
        body = service_body(output=[{"storage_provider": "s3.aws", "path": "b/out"}])
        await self.assert_rejected(client, await create(client, body), 400, "not declared")

    async def test_duplicate_name_is_409_and_keeps_the_first(self, client: httpx.AsyncClient) -> None:
        assert (await create(client, service_body(image="first"))).status_code == 201
        response = await create(client, service_body(image="second"))
        assert response.status_code == 409
        assert "already exists" in response.text
        assert (await client.get("/system/services/cowsay")).json()["image"] == "first"

    async def test_fdl_is_all_or_nothing(self, client: httpx.AsyncClient) -> None:
        fdl = {
            "functions": {
                "oscar": [
                    {"c": service_body("good")},
                    {"c": service_body("bad", memory="not-a-quantity")},
                ]
            }
        }
        await self.assert_rejected(client, await create(client, fdl), 400, "invalid memory")

    async def test_fdl_conflict_with_existing_creates_nothing(self, client: httpx.AsyncClient) -> None:
        await create(client, service_body("taken"))
        fdl = {"functions": {"oscar": [{"c": service_body("fresh")}, {"c": service_body("taken")}]}}
        assert (await create(client, fdl)).status_code == 409
        assert await names(client) == ["taken"]

    async def test_fdl_defining_a_name_twice(self, client: httpx.AsyncClient) -> None:
        fdl = {"functions": {"oscar": [{"c": service_body("twin")}, {"c": service_body("twin")}]}}
        await self.assert_rejected(client, await create(client, fdl), 400, "more than once")

    async def test_fdl_without_services(self, client: httpx.AsyncClient) -> None:
        await self.assert_rejected(
            client, await create(client, {"functions": {"oscar": []}}), 400, "functions.oscar"
        )

    async def test_yaml_aliases_refused(self, client: httpx.AsyncClient) -> None:
        bomb = "a: &a [x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a]\nc: [*b, *b, *b, *b]\n"
        response = await client.post("/system/services", content=bomb)
        await self.assert_rejected(client, response, 400, "aliases are not allowed")

    async def test_not_utf8(self, client: httpx.AsyncClient) -> None:
        response = await client.post("/system/services", content=b"\xff\xfe name: x")
        await self.assert_rejected(client, response, 400, "not UTF-8")


class TestRead:
    async def test_read_and_list(self, client: httpx.AsyncClient) -> None:
        await create(client, service_body("b-svc"))
        await create(client, service_body("a-svc"))
        assert await names(client) == ["a-svc", "b-svc"]
        response = await client.get("/system/services/a-svc")
        assert response.status_code == 200
        assert response.json()["name"] == "a-svc"

    async def test_empty_list_is_an_array(self, client: httpx.AsyncClient) -> None:
        response = await client.get("/system/services")
        assert response.status_code == 200
        assert response.json() == []

    async def test_missing_is_404(self, client: httpx.AsyncClient) -> None:
        response = await client.get("/system/services/nothing")
        assert response.status_code == 404
        assert response.text == "service 'nothing' not found"

    async def test_invalid_name_is_400(self, client: httpx.AsyncClient) -> None:
        response = await client.get("/system/services/bad%20name!")
        assert response.status_code == 400

    async def test_secrets_are_never_echoed(self, client: httpx.AsyncClient) -> None:
        await create(client, service_body(environment={"secrets": {"API_KEY": "s3cr3t"}}))
        for response in (await client.get("/system/services/cowsay"), await client.get("/system/services")):
            assert "s3cr3t" not in response.text
        assert (await client.get("/system/services/cowsay")).json()["environment"]["secrets"] == {
            "API_KEY": ""
        }


class TestUpdate:
    async def test_update_replaces_definition_and_keeps_token(self, client: httpx.AsyncClient) -> None:
        await create(client, service_body(memory="1Gi"))
        before = (await client.get("/system/services/cowsay")).json()
        changed = {**before, "memory": "2Gi", "script": "echo new", "token": "f" * 64, "owner": "someone"}
        response = await client.put("/system/services", json=changed)
        assert response.status_code == 204
        assert response.content == b""
        after = (await client.get("/system/services/cowsay")).json()
        assert after["memory"] == "2Gi"
        assert after["script"] == "echo new"
        assert after["token"] == before["token"]
        assert after["owner"] == "cluster_admin"

    async def test_update_applies_defaults(self, client: httpx.AsyncClient) -> None:
        await create(client, service_body(memory="1Gi"))
        assert (await client.put("/system/services", json=service_body(log_level="x"))).status_code == 204
        after = (await client.get("/system/services/cowsay")).json()
        assert after["memory"] == "256Mi"
        assert after["log_level"] == "INFO"

    async def test_round_tripped_secrets_are_kept_and_new_ones_stored(
        self, client: httpx.AsyncClient
    ) -> None:
        await create(client, service_body(environment={"secrets": {"KEEP": "one", "DROP": "two"}}))
        current = (await client.get("/system/services/cowsay")).json()
        current["environment"]["secrets"] = {"KEEP": "", "NEW": "three"}
        assert (await client.put("/system/services", json=current)).status_code == 204
        after = (await client.get("/system/services/cowsay")).json()
        assert after["environment"]["secrets"] == {"KEEP": "", "NEW": ""}

    async def test_cluster_passwords_never_shown_kept_when_masked_replaced_when_new(
        self, client: httpx.AsyncClient, backend_settings: Settings
    ) -> None:
        """What oscar-cli's apply stores: the target clusters' credentials, the admin password included."""
        cluster = {"endpoint": "https://oscar.example", "auth_user": "oscar", "ssl_verify": True}
        clusters = {"a": {**cluster, "auth_password": "pass-a"}, "b": {**cluster, "auth_password": "pass-b"}}
        await create(client, service_body(clusters=clusters))
        for response in (await client.get("/system/services/cowsay"), await client.get("/system/services")):
            assert "pass-a" not in response.text
            assert "pass-b" not in response.text
        current = (await client.get("/system/services/cowsay")).json()
        assert current["clusters"]["a"] == {**cluster, "auth_password": ""}
        current["clusters"]["b"]["auth_password"] = "new-pass-b"
        assert (await client.put("/system/services", json=current)).status_code == 204
        assert "new-pass-b" not in (await client.get("/system/services/cowsay")).text
        database = Database(backend_settings.oscar_database_url)
        try:
            async with database.transaction() as tx:
                stored = await tx.services.get("cowsay")
        finally:
            await database.dispose()
        assert stored is not None
        assert stored.clusters["a"].auth_password == "pass-a"
        assert stored.clusters["b"].auth_password == "new-pass-b"

    async def test_unknown_service_is_404(self, client: httpx.AsyncClient) -> None:
        response = await client.put("/system/services", json=service_body("ghost"))
        assert response.status_code == 404
        assert await names(client) == []

    async def test_invalid_update_leaves_service_unchanged(self, client: httpx.AsyncClient) -> None:
        await create(client, service_body(memory="1Gi"))
        before = (await client.get("/system/services/cowsay")).json()
        for bad in (service_body(memory="huge"), {"name": "cowsay"}, service_body(image=7)):
            assert (await client.put("/system/services", json=bad)).status_code == 400
        bad_json = await client.put(
            "/system/services", content=b"{", headers={"content-type": "application/json"}
        )
        assert bad_json.status_code == 400
        assert (await client.get("/system/services/cowsay")).json() == before

    async def test_volume_change_refused(self, client: httpx.AsyncClient) -> None:
        await create(client, service_body(volume={"size": "1Gi", "mount_path": "/data"}))
        response = await client.put(
            "/system/services", json=service_body(volume={"size": "2Gi", "mount_path": "/data"})
        )
        assert response.status_code == 400
        assert "volume" in response.text


class TestDelete:
    async def test_delete(self, client: httpx.AsyncClient) -> None:
        await create(client, service_body("keep"))
        await create(client, service_body("gone"))
        response = await client.delete("/system/services/gone")
        assert response.status_code == 204
        assert await names(client) == ["keep"]
        assert (await client.get("/system/services/gone")).status_code == 404

    async def test_unknown_is_404(self, client: httpx.AsyncClient) -> None:
        assert (await client.delete("/system/services/ghost")).status_code == 404

    async def test_name_can_be_reused_after_delete(self, client: httpx.AsyncClient) -> None:
        await create(client, service_body(image="old"))
        await client.delete("/system/services/cowsay")
        assert (await create(client, service_body(image="new"))).status_code == 201
        assert (await client.get("/system/services/cowsay")).json()["image"] == "new"


class TestBodyLimit:
    @pytest.fixture
    async def small_client(self, settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
        async with app_client(settings.model_copy(update={"oscar_max_body_bytes": 4096})) as http:
            yield http

    async def test_body_over_limit_is_413(self, small_client: httpx.AsyncClient) -> None:
        body = json.dumps(service_body(script="x" * 4096)).encode()
        response = await small_client.post("/system/services", content=body)
        assert response.status_code == 413
        assert "exceeds the limit of" in response.text
        assert await names(small_client) == []

    async def test_body_under_limit_is_accepted(self, small_client: httpx.AsyncClient) -> None:
        body = json.dumps(service_body(script="x" * 3000)).encode()
        assert (await small_client.post("/system/services", content=body)).status_code == 201

    async def test_streamed_body_over_limit_is_413(self, small_client: httpx.AsyncClient) -> None:
        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(8):
                yield b"x" * 1024

        response = await small_client.post("/system/services", content=chunks())
        assert response.status_code == 413
        assert await names(small_client) == []
