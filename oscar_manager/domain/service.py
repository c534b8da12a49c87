"""The OSCAR service definition (upstream ``pkg/types/service.go``) and its server-side normalisation.

``Service`` mirrors the full upstream schema so that every client's body round-trips. ``normalise_new``
and ``normalise_update`` apply the upstream defaults (``checkValues`` in ``create.go``) and our stricter
validation, so what reaches the registry is always complete and valid.
"""

from __future__ import annotations

import re
import secrets
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, ValidationError, field_validator

from oscar_manager.domain import credentials
from oscar_manager.domain.gomodel import GoModel, Int32, Int64, NodePortList, PortList, Quantity, TextMap
from oscar_manager.domain.kafka_inputs import kafka_inputs
from oscar_manager.domain.kube_metadata import check_annotations, check_label_value, check_labels
from oscar_manager.domain.providers import (
    BUCKET_PROVIDER_TYPES,
    DEFAULT_PROVIDER_ID,
    ProviderRef,
    check_provider_references,
    typed_provider,
)
from oscar_manager.domain.quantities import check_cpu, check_memory, check_quantity
from oscar_manager.errors import BadRequest

DEFAULT_OWNER = "cluster_admin"
DEFAULT_MEMORY = "256Mi"
DEFAULT_CPU = "0.2"
HIDDEN = "hidden"
SERVICE_LABEL = "oscar_service"
LOG_LEVELS = frozenset({"NOTSET", "DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"})
VISIBILITIES = ("private", "public", "restricted")

MAX_NAME_LENGTH = 39
# A Kubernetes label value: what upstream checks before reading a service.
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
# A DNS-1123 label: the name becomes Kubernetes object names and a bucket name, so it must be one.
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


class StorageIOConfig(GoModel):
    storage_provider: str = ""
    path: str = ""
    suffix: list[str] = Field(default_factory=list)
    prefix: list[str] = Field(default_factory=list)


def _empty_text_as_none(value: Any) -> Any:
    return None if value == "" else value


def _empty_mapping_as_text(value: Any) -> Any:
    """``mount.options`` is rclone's flags as one string upstream; definitions stored before it was typed
    hold ``{}`` there."""
    return "" if value == {} else value


class MountConfig(StorageIOConfig):
    options: Annotated[str, BeforeValidator(_empty_mapping_as_text)] = ""


class Synchronous(GoModel):
    min_scale: Int64 = 0
    max_scale: Int64 = 0


class Expose(GoModel):
    min_scale: Int32 = 0
    max_scale: Int32 = 0
    api_port: PortList = Field(default_factory=list)
    cpu_threshold: Int32 = 0
    rewrite_target: bool = False
    node_port: NodePortList = Field(default_factory=list, alias="nodePort")
    default_command: bool = False
    set_auth: bool = False
    auth_type: str = ""
    health_path: str = ""
    probe_mode: str = ""


class Environment(GoModel):
    variables: TextMap = Field(default_factory=dict)
    secrets: TextMap = Field(default_factory=dict)


class VolumeStatus(GoModel):
    enabled: bool = False


class Cluster(GoModel):
    """A target cluster oscar-cli's ``apply`` records in the service (upstream ``types.Cluster``)."""

    endpoint: str = ""
    auth_user: str = ""
    auth_password: str = ""
    ssl_verify: bool = False


class Replica(GoModel):
    """A federation member as OSCAR v3 recorded it (``types.Replica``): v3 clients still send and read it."""

    type: str = ""
    cluster_id: str = ""
    service_name: str = ""
    url: str = ""
    ssl_verify: bool = False
    priority: Annotated[int, Field(ge=0, le=2**64 - 1)] = 0
    headers: dict[str, str] = Field(default_factory=dict)


class Service(GoModel):
    """Field order follows the Go struct, so dumps read like upstream's."""

    name: str
    cluster_id: str = ""
    memory: Quantity = ""
    cpu: Quantity = ""
    total_memory: Quantity = ""
    total_cpu: Quantity = ""
    ephemeral_storage_request: Quantity = ""
    enable_gpu: bool = False
    enable_sgx: bool = False
    image_prefetch: bool = False
    synchronous: Synchronous = Field(default_factory=Synchronous)
    federation: dict[str, Any] | None = None
    # OSCAR v3's federation fields (v4 moved them under ``federation``). Typed, not kept as unknown keys:
    # a value of another type would make every v3 client (oscar-cli) fail to read the service list.
    replicas: list[Replica] | None = None
    delegation: str | None = None
    # The dashboard's form sends "" here (upstream v4 no longer has the field and ignores it): no value.
    rescheduler_threshold: Annotated[Int64 | None, BeforeValidator(_empty_text_as_none)] = None
    log_level: str = ""
    image: str
    alpine: bool = False
    token: str = ""
    file_stage_in: bool = False
    input: list[StorageIOConfig] = Field(default_factory=list)
    output: list[StorageIOConfig] = Field(default_factory=list)
    script: str
    image_pull_secrets: list[str] = Field(default_factory=list)
    expose: Expose = Field(default_factory=Expose)
    environment: Environment = Field(default_factory=Environment)
    annotations: TextMap = Field(default_factory=dict)
    vo: str = ""
    labels: TextMap = Field(default_factory=dict)
    storage_providers: dict[str, dict[str, dict[str, Any]]] = Field(default_factory=dict)
    clusters: dict[str, Cluster] = Field(default_factory=dict)
    owner: str = ""
    namespace: str = ""
    interlink_node_name: str = ""
    visibility: str = ""
    allowed_users: list[str] = Field(default_factory=list)
    isolation_level: str = ""
    bucket_list: list[str] = Field(default_factory=list)
    mount: MountConfig = Field(default_factory=MountConfig)
    volume: dict[str, Any] | None = None
    kserve: dict[str, Any] | None = None

    @field_validator("storage_providers", mode="before")
    @classmethod
    def _provider_types_lower_case(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        providers: dict[str, Any] = {}
        for key, entries in value.items():
            kind = str(key).lower()
            if isinstance(entries, dict):
                entries = {
                    provider_id: typed_provider(kind, str(provider_id), entry)
                    for provider_id, entry in entries.items()
                    if entry is not None
                }
            providers[kind] = entries
        return providers


class MinioDefault:
    """What the server says about its own ``minio.default`` provider in every service."""

    __slots__ = ("endpoint", "region", "verify")

    def __init__(self, *, endpoint: str, region: str, verify: bool) -> None:
        self.endpoint = endpoint
        self.region = region
        self.verify = verify

    def as_provider(self) -> dict[str, Any]:
        return {
            "endpoint": self.endpoint,
            "verify": self.verify,
            "access_key": HIDDEN,
            "secret_key": HIDDEN,
            "region": self.region,
        }


def parse_service(data: Any) -> Service:
    """Validate one service definition, turning pydantic's errors into one readable 400."""
    if not isinstance(data, dict):
        raise BadRequest("a service definition must be a JSON object (or a YAML mapping)")
    try:
        return Service.model_validate(data)
    except ValidationError as exc:
        raise BadRequest(describe_validation_error(exc)) from None


def describe_validation_error(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors(include_url=False, include_input=False):
        location = ".".join(str(item) for item in error["loc"]) or "body"
        parts.append(f"{location}: {error['msg']}")
    return "invalid service definition: " + "; ".join(parts)


def check_name_readable(name: str) -> None:
    """Upstream answers 400 on a read whose name is not a valid Kubernetes label value."""
    if len(name) > 63 or not _LABEL_VALUE.match(name):
        raise BadRequest(f"invalid service name {name!r}: not a valid Kubernetes label value")


def validate_name(name: str) -> None:
    if not 1 <= len(name) <= MAX_NAME_LENGTH:
        raise BadRequest(f"invalid service name {name!r}: must be 1 to {MAX_NAME_LENGTH} characters long")
    if not _DNS_LABEL.match(name):
        raise BadRequest(
            f"invalid service name {name!r}: use lower-case letters, digits and '-', starting and ending"
            " with a letter or digit (it names Kubernetes objects and buckets)"
        )


def _normalise_path(service_name: str, io: StorageIOConfig, *, kind: str) -> StorageIOConfig:
    ref = ProviderRef(io.storage_provider or "minio")
    path = io.path.strip().strip("/").strip()
    if not path:
        raise BadRequest(f"{kind} path cannot be empty")
    if ref.type in BUCKET_PROVIDER_TYPES or ref.type == "webdav":
        segments = path.split("/")
        if any(segment in ("", ".", "..") for segment in segments):
            raise BadRequest(f"invalid {kind} path {io.path!r}: empty, '.' or '..' segments are not allowed")
    if ref.type in BUCKET_PROVIDER_TYPES and "/" not in path:
        path = f"{service_name}/{path}"
    return io.model_copy(update={"storage_provider": str(ref), "path": path})


def _normalise_common(service: Service, *, minio: MinioDefault) -> Service:
    validate_name(service.name)
    if not service.image.strip():
        raise BadRequest("image cannot be empty")
    if not service.script.strip():
        raise BadRequest("script cannot be empty")
    memory = service.memory or DEFAULT_MEMORY
    cpu = service.cpu or DEFAULT_CPU
    check_memory("memory", memory)
    check_cpu("cpu", cpu)
    check_quantity("total_memory", service.total_memory)
    check_quantity("total_cpu", service.total_cpu)
    check_quantity("ephemeral_storage_request", service.ephemeral_storage_request)
    # As every Job will carry them (the service's own label among them).
    check_labels({**service.labels, SERVICE_LABEL: service.name})
    check_annotations(service.annotations)
    # The virtual node's name is the value of the Jobs' node selector (``backends.interlink``).
    check_label_value("interlink_node_name", service.interlink_node_name)
    log_level = service.log_level.strip().upper()
    if log_level not in LOG_LEVELS:
        log_level = "INFO"
    visibility = service.visibility.strip().lower() or "private"
    if visibility not in VISIBILITIES:
        raise BadRequest(f"invalid visibility {service.visibility!r} (valid: {', '.join(VISIBILITIES)})")
    inputs = [_normalise_path(service.name, io, kind="input") for io in service.input]
    outputs = [_normalise_path(service.name, io, kind="output") for io in service.output]
    providers = {kind: dict(entries) for kind, entries in service.storage_providers.items()}
    providers.setdefault("minio", {})[DEFAULT_PROVIDER_ID] = minio.as_provider()
    federation = service.federation
    if federation is not None:
        federation = {**federation}
        federation["topology"] = federation.get("topology") or "none"
        federation["group_id"] = federation.get("group_id") or service.name
    normalised = service.model_copy(
        update={
            "memory": memory,
            "cpu": cpu,
            "log_level": log_level,
            "visibility": visibility,
            "script": service.script.replace("\r\n", "\n"),
            "input": inputs,
            "output": outputs,
            "storage_providers": providers,
            "allowed_users": [user.strip() for user in service.allowed_users if user.strip()],
            "labels": {**service.labels, SERVICE_LABEL: service.name},
            "federation": federation,
        }
    )
    check_provider_references(normalised.input, normalised.output, normalised.storage_providers)
    # Topic names and the brokers' connection settings (``domain.kafka_inputs``): a 400 naming the field.
    kafka_inputs(
        normalised.name, [(io.storage_provider, io.path) for io in inputs], providers.get("kafka", {})
    )
    return normalised


def new_token() -> str:
    """32 random bytes as 64 hex characters, as upstream (``pkg/utils/token.go``)."""
    return secrets.token_hex(32)


def normalise_new(service: Service, *, owner: str, namespace: str, minio: MinioDefault) -> Service:
    """Defaults for a service being created: a fresh token, the caller as owner."""
    service = _normalise_common(service, minio=minio)
    return service.model_copy(update={"token": new_token(), "owner": owner, "namespace": namespace})


def normalise_update(service: Service, *, current: Service, minio: MinioDefault) -> Service:
    """Defaults for a replacement definition: token, owner and namespace are kept from ``current``.

    A secret sent back with an empty value (as the masked responses show it) keeps its stored value, so a
    client that round-trips a GET into a PUT does not wipe the service's secrets.
    """
    if service.volume != current.volume:
        raise BadRequest("volume updates are not supported after service creation")
    service = _normalise_common(service, minio=minio)
    kept = current.environment.secrets
    secrets_ = {
        key: (value if value else kept.get(key, "")) for key, value in service.environment.secrets.items()
    }
    environment = service.environment.model_copy(update={"secrets": secrets_})
    clusters = {
        cluster_id: Cluster.model_validate(
            credentials.kept(
                cluster.model_dump(),
                current.clusters[cluster_id].model_dump() if cluster_id in current.clusters else None,
                credentials.CLUSTER_SECRET_KEYS,
            )
        )
        for cluster_id, cluster in service.clusters.items()
    }
    return service.model_copy(
        update={
            "storage_providers": _keep_provider_secrets(service, current),
            "clusters": clusters,
            "token": current.token,
            "owner": current.owner,
            "namespace": current.namespace,
            "environment": environment,
        }
    )


def _keep_provider_secrets(service: Service, current: Service) -> dict[str, dict[str, dict[str, Any]]]:
    """Provider credentials sent back empty (as responses show them) keep their stored values."""
    return {
        kind: {
            provider_id: credentials.kept(
                entry,
                current.storage_providers.get(kind, {}).get(provider_id),
                credentials.PROVIDER_SECRET_KEYS,
            )
            for provider_id, entry in entries.items()
        }
        for kind, entries in service.storage_providers.items()
    }


# A service that needs network access from the local executor says so with this annotation.
LOCAL_NETWORK_ANNOTATION = "oscar-manager/network"


def wants_network(service: Service) -> bool:
    return service.annotations.get(LOCAL_NETWORK_ANNOTATION, "").lower() in ("true", "1", "yes", "enabled")
