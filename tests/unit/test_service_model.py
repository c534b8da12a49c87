from __future__ import annotations

from typing import Any

import pytest

from oscar_manager.domain.access import can_change, can_view
from oscar_manager.domain.principal import Principal
from oscar_manager.domain.providers import ProviderRef
from oscar_manager.domain.service import MinioDefault, Service, normalise_new, normalise_update, parse_service
from oscar_manager.domain.service_views import job_view, public_view
from oscar_manager.errors import BadRequest
from tests.support.factories import service_body

MINIO = MinioDefault(endpoint="http://minio:9000", region="us-east-1", verify=True)


def new(**fields: Any) -> Service:
    return normalise_new(
        parse_service(service_body(**fields)), owner="cluster_admin", namespace="ns", minio=MINIO
    )


class TestGoTolerance:
    def test_exact_key_wins_over_case_folded_one(self) -> None:
        service = parse_service({"Name": "upper", "name": "lower", "image": "i", "script": "s"})
        assert service.name == "lower"
        service = parse_service({"name": "lower", "NAME": "upper", "image": "i", "script": "s"})
        assert service.name == "lower"

    def test_null_means_zero_value(self) -> None:
        service = parse_service(service_body(memory=None, input=None, environment=None, enable_gpu=None))
        assert service.memory == ""
        assert service.input == []
        assert service.environment.variables == {}
        assert service.enable_gpu is False

    def test_nested_keys_folded(self) -> None:
        service = parse_service(service_body(Expose={"MAX_SCALE": 3, "NodePort": 30000}))
        assert service.expose.max_scale == 3
        assert service.expose.node_port == [30000]

    def test_scalar_ports_of_oscar_v3(self) -> None:
        service = parse_service(service_body(expose={"api_port": 8080, "nodePort": 0}))
        assert service.expose.api_port == [8080]
        assert service.expose.node_port == []

    def test_non_string_keys_rejected(self) -> None:
        with pytest.raises(BadRequest, match="keys must be strings"):
            parse_service({**service_body(), 5: "x"})

    def test_map_values_are_text(self) -> None:
        service = parse_service(service_body(labels={"n": 1, "f": 1.5, "b": False}))
        assert service.labels == {"n": "1", "f": "1.5", "b": "false"}

    def test_boolean_quantity_rejected(self) -> None:
        with pytest.raises(BadRequest, match="cpu"):
            parse_service(service_body(cpu=True))


class TestNormalisation:
    def test_provider_reference(self) -> None:
        ref = ProviderRef("minio")
        assert (ref.type, ref.id) == ("minio", "default")
        ref = ProviderRef("S3.aws")
        assert (ref.type, ref.id) == ("s3", "aws")
        assert str(ProviderRef("webdav.dcache")) == "webdav.dcache"

    def test_bare_path_prefixed_with_service_name(self) -> None:
        service = new(input=[{"storage_provider": "minio", "path": "in"}])
        assert service.input[0].path == "cowsay/in"

    def test_non_bucket_paths_kept(self) -> None:
        service = new(
            output=[{"storage_provider": "webdav.dcache", "path": "/home/user/out/"}],
            storage_providers={"webdav": {"dcache": {"hostname": "h", "login": "l", "password": "p"}}},
        )
        assert service.output[0].path == "home/user/out"

    def test_missing_provider_means_minio_default(self) -> None:
        assert new(input=[{"path": "cowsay/in"}]).input[0].storage_provider == "minio.default"

    def test_server_minio_provider_overrides_client_one(self) -> None:
        service = new(
            storage_providers={"minio": {"default": {"endpoint": "http://evil", "access_key": "x"}}}
        )
        assert service.storage_providers["minio"]["default"] == MINIO.as_provider()

    def test_allowed_users_trimmed(self) -> None:
        assert new(allowed_users=[" a ", "", "  ", "b"]).allowed_users == ["a", "b"]

    def test_federation_defaults(self) -> None:
        service = new(federation={"members": []})
        assert service.federation == {"members": [], "topology": "none", "group_id": "cowsay"}
        assert new().federation is None

    def test_new_token_owner_namespace(self) -> None:
        service = normalise_new(
            parse_service(service_body()), owner="alice", namespace="oscar-svc", minio=MINIO
        )
        assert service.owner == "alice"
        assert service.namespace == "oscar-svc"
        assert len(service.token) == 64

    def test_update_keeps_identity_and_merges_secrets(self) -> None:
        current = new(environment={"secrets": {"KEEP": "one", "DROP": "two"}})
        incoming = parse_service(
            service_body(token="x", owner="mallory", environment={"secrets": {"KEEP": "", "NEW": "3"}})
        )
        updated = normalise_update(incoming, current=current, minio=MINIO)
        assert updated.token == current.token
        assert updated.owner == current.owner
        assert updated.environment.secrets == {"KEEP": "one", "NEW": "3"}

    def test_public_view_masks_secrets_and_drops_absent_optionals(self) -> None:
        view = public_view(new(environment={"secrets": {"K": "v"}}))
        assert view["environment"]["secrets"] == {"K": ""}
        assert "federation" not in view
        assert "kserve" not in view
        assert view["volume_status"] == {"enabled": False}

    def test_storage_provider_credentials_are_masked_and_kept_on_a_round_trip(self) -> None:
        providers = {
            "s3": {"aws": {"access_key": "AKIA", "secret_key": "s3-secret", "region": "eu-west-1"}},
            "webdav": {"dcache": {"hostname": "h", "login": "me", "password": "dav-secret"}},
        }
        current = new(storage_providers=providers)
        view = public_view(current)
        assert view["storage_providers"]["s3"]["aws"] == {
            "access_key": "AKIA",
            "secret_key": "",
            "region": "eu-west-1",
        }
        assert view["storage_providers"]["webdav"]["dcache"]["password"] == ""
        assert view["storage_providers"]["minio"]["default"]["secret_key"] == "hidden"
        assert "s3-secret" not in str(view)
        assert "dav-secret" not in str(view)

        # GET -> PUT: the masked values keep what is stored; a new value replaces it.
        sent_back = {**view, "storage_providers": {**view["storage_providers"]}}
        sent_back["storage_providers"]["webdav"] = {
            "dcache": {"hostname": "h", "login": "me", "password": "new"}
        }
        updated = normalise_update(parse_service(sent_back), current=current, minio=MINIO)
        assert updated.storage_providers["s3"]["aws"]["secret_key"] == "s3-secret"
        assert updated.storage_providers["webdav"]["dcache"]["password"] == "new"
        # Who may change the service (owner, admin) sees them, as oscar-python's storage client needs.
        owners_view = public_view(current, reveal_credentials=True)
        assert owners_view["storage_providers"]["s3"]["aws"]["secret_key"] == "s3-secret"
        # What a job reads still has the credentials.
        assert job_view(updated)["storage_providers"]["s3"]["aws"]["secret_key"] == "s3-secret"


class TestWireShape:
    """What upstream v4.1.2's Go types leave out (``omitempty``) is left out, so both generations of the Go
    types (v3: ``api_port int``; v4: ``[]int``) read an unexposed service."""

    def test_empty_ports_and_other_omitempty_keys_left_out(self) -> None:
        view = public_view(new(input=[{"storage_provider": "minio", "path": "in"}]))
        for key in ("api_port", "nodePort", "auth_type", "probe_mode"):
            assert key not in view["expose"]
        assert view["expose"]["max_scale"] == 0
        assert view["expose"]["health_path"] == ""
        for key in ("image_pull_secrets", "clusters"):
            assert key not in view
        assert view["input"] == [{"storage_provider": "minio.default", "path": "cowsay/in"}]
        assert view["mount"] == {"storage_provider": "", "path": ""}
        # Keys without omitempty stay, even when empty.
        assert view["output"] == []
        assert view["allowed_users"] == []
        assert view["namespace"] == "ns"

    def test_set_values_are_sent_in_the_v4_shape(self) -> None:
        view = public_view(
            new(
                expose={"api_port": 8080, "nodePort": [30080], "auth_type": "basic"},
                input=[{"path": "in", "suffix": [".txt"]}],
                image_pull_secrets=["creds"],
                mount={"storage_provider": "minio", "path": "b", "options": "--read-only"},
            )
        )
        assert view["expose"]["api_port"] == [8080]
        assert view["expose"]["nodePort"] == [30080]
        assert view["expose"]["auth_type"] == "basic"
        assert view["input"][0]["suffix"] == [".txt"]
        assert "prefix" not in view["input"][0]
        assert view["image_pull_secrets"] == ["creds"]
        assert view["mount"]["options"] == "--read-only"

    def test_mount_options_stored_as_a_mapping_read_as_text(self) -> None:
        assert parse_service(service_body(mount={"path": "b", "options": {}})).mount.options == ""

    @pytest.mark.parametrize(
        ("field", "value"),
        [
            ("expose", {"max_scale": 2**31}),
            ("expose", {"nodePort": [2**31]}),
            ("expose", {"cpu_threshold": -(2**31) - 1}),
            ("synchronous", {"min_scale": 2**63}),
            ("clusters", {"a": {"ssl_verify": "maybe"}}),
            ("storage_providers", {"minio": {"x": {"verify": "yes"}}}),
            ("storage_providers", {"s3": {"x": {"secret_key": ["a"]}}}),
            ("replicas", "one"),
            ("replicas", [{"priority": -1}]),
            ("delegation", 5),
            ("rescheduler_threshold", "soon"),
        ],
    )
    def test_values_the_go_types_cannot_hold_are_refused(self, field: str, value: Any) -> None:
        with pytest.raises(BadRequest, match=field):
            parse_service(service_body(**{field: value}))

    def test_provider_fields_spelt_and_typed_as_go_reads_them(self) -> None:
        service = parse_service(
            service_body(
                storage_providers={
                    "S3": {"aws": {"Secret_Key": "k", "REGION": 1, "extra": [1]}},
                    "minio": {"m": {"endpoint": "http://m", "verify": None, "secret_key": None}},
                }
            )
        )
        assert service.storage_providers["s3"]["aws"] == {"secret_key": "k", "region": "1", "extra": [1]}
        assert service.storage_providers["minio"]["m"] == {
            "endpoint": "http://m",
            "verify": False,
            "secret_key": "",
        }


CLUSTER = {
    "endpoint": "https://oscar.example",
    "auth_user": "oscar",
    "auth_password": "admin-pass",
    "ssl_verify": True,
}


class TestCredentials:
    def test_cluster_password_never_shown(self) -> None:
        current = new(clusters={"oscar-a": CLUSTER})
        for view in (public_view(current), public_view(current, reveal_credentials=True), job_view(current)):
            assert view["clusters"]["oscar-a"] == {**CLUSTER, "auth_password": ""}
            assert "admin-pass" not in str(view)

    def test_cluster_password_kept_when_sent_back_masked_and_replaced_by_a_new_one(self) -> None:
        current = new(clusters={"oscar-a": CLUSTER, "oscar-b": {**CLUSTER, "auth_password": "b-pass"}})
        sent_back = public_view(current)
        sent_back["clusters"]["oscar-b"]["auth_password"] = "new-b-pass"
        sent_back["clusters"]["oscar-c"] = {**CLUSTER, "auth_password": ""}
        updated = normalise_update(parse_service(sent_back), current=current, minio=MINIO)
        assert updated.clusters["oscar-a"].auth_password == "admin-pass"
        assert updated.clusters["oscar-b"].auth_password == "new-b-pass"
        assert updated.clusters["oscar-c"].auth_password == ""

    def test_case_folded_and_rucio_credentials_are_masked_and_kept(self) -> None:
        current = new(
            storage_providers={
                "s3": {"aws": {"Secret_Key": "s3-secret"}},
                "rucio": {"r": {"host": "h", "refresh_token": "rucio-token"}},
            }
        )
        view = public_view(current)
        assert "s3-secret" not in str(view)
        assert view["storage_providers"]["rucio"]["r"] == {"host": "h", "refresh_token": ""}
        updated = normalise_update(parse_service(view), current=current, minio=MINIO)
        assert updated.storage_providers["s3"]["aws"]["secret_key"] == "s3-secret"
        assert updated.storage_providers["rucio"]["r"]["refresh_token"] == "rucio-token"


def principal(uid: str) -> Principal:
    return Principal(uid=uid)


class TestVisibilityMatrix:
    """Upstream TestMakeReadHandlerVisibility: who may see and change whose service."""

    @pytest.mark.parametrize(
        ("visibility", "allowed", "caller", "visible"),
        [
            ("public", [], "stranger", True),
            ("public", [], "owner", True),
            ("private", [], "owner", True),
            ("private", [], "stranger", False),
            ("restricted", ["friend"], "friend", True),
            ("restricted", ["friend"], "owner", True),
            ("restricted", ["friend"], "stranger", False),
        ],
    )
    def test_view(self, visibility: str, allowed: list[str], caller: str, visible: bool) -> None:
        service = normalise_new(
            parse_service(service_body(visibility=visibility, allowed_users=allowed)),
            owner="owner",
            namespace="ns",
            minio=MINIO,
        )
        assert can_view(principal(caller), service) is visible
        assert can_view(Principal.admin("oscar"), service) is True

    @pytest.mark.parametrize("visibility", ["public", "private", "restricted"])
    def test_only_owner_or_admin_changes(self, visibility: str) -> None:
        service = normalise_new(
            parse_service(service_body(visibility=visibility, allowed_users=["friend"])),
            owner="owner",
            namespace="ns",
            minio=MINIO,
        )
        assert can_change(principal("owner"), service)
        assert can_change(Principal.admin("oscar"), service)
        assert not can_change(principal("friend"), service)
        assert not can_change(principal("stranger"), service)
