"""Storage providers of a service: the references its inputs and outputs make (``<type>[.<id>]``), which
types each may use and what each use needs, and the entries of ``storage_providers``, typed as the upstream
Go types decode them (``storage.go``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from oscar_manager.domain.gomodel import go_text
from oscar_manager.domain.kafka_inputs import KAFKA_FIELDS
from oscar_manager.errors import BadRequest

DEFAULT_PROVIDER_ID = "default"
# Types a service may read events from, and types it may write to (upstream ``createBuckets``).
INPUT_PROVIDER_TYPES = frozenset({"minio", "s3", "webdav", "rucio", "kafka"})
OUTPUT_PROVIDER_TYPES = frozenset({"minio", "s3", "onedata", "webdav"})
BUCKET_PROVIDER_TYPES = frozenset({"minio", "s3"})
# A WebDAV output is written by the manager or the job: it must name a server declared in the service's
# ``storage_providers`` (there is no ``webdav.default``). Other ``<type>.default`` references need no entry.
DECLARED_OUTPUT_TYPES = frozenset({"webdav"})

# The fields of each upstream storage provider type (and ours, ``kafka``): strings, but ``verify``
# (MinIO's, WebDAV's and Kafka's).
_PROVIDER_FIELDS: dict[str, tuple[str, ...]] = {
    "minio": ("endpoint", "access_key", "secret_key", "region"),
    # ``queue``: ours, not upstream's: the SQS queue an input on the provider reads (``domain.s3_inputs``).
    "s3": ("access_key", "secret_key", "region", "queue"),
    "onedata": ("oneprovider_host", "token", "space"),
    "webdav": ("hostname", "login", "password"),
    "kafka": KAFKA_FIELDS,
    "rucio": ("host", "account", "rse", "refresh_token", "auth_host", "oidc_audience", "token_endpoint"),
}

_VERIFY_TYPES = frozenset({"minio", "webdav", "kafka"})


def typed_provider(kind: str, provider_id: str, entry: Any) -> dict[str, Any]:
    """One provider entry with its known fields spelt and typed as the Go types decode them (keys matched
    case-insensitively, numbers as text), so that a credential is always where masking looks for it and
    every Go client can read the service back. Other keys are kept as sent."""
    where = f"storage_providers.{kind}.{provider_id}"
    if not isinstance(entry, dict):
        raise ValueError(f"{where} must be a mapping")
    known = {name.lower(): name for name in _PROVIDER_FIELDS.get(kind, ())}
    if kind in _VERIFY_TYPES:
        known["verify"] = "verify"
    typed: dict[str, Any] = {}
    for key, value in entry.items():
        name = known.get(str(key).lower(), str(key))
        if name in typed and name != key:
            continue  # an exact spelling wins over a case-folded one, as in GoModel
        if name == "verify":
            value = False if value is None else value  # Go's zero value for JSON null
            if not isinstance(value, bool):
                raise ValueError(f"{where}.verify must be true or false")
        elif name in known.values():
            value = "" if value is None else go_text(value)
            if not isinstance(value, str):
                raise ValueError(f"{where}.{name} must be a string")
        typed[name] = value
    return typed


class ProviderRef:
    """A parsed ``<type>[.<id>]`` storage provider reference."""

    __slots__ = ("id", "type")

    def __init__(self, reference: str) -> None:
        kind, _, ident = reference.strip().partition(".")
        self.type = kind.lower()
        self.id = ident or DEFAULT_PROVIDER_ID

    def __str__(self) -> str:
        return f"{self.type}.{self.id}"


class ProviderUse(Protocol):
    """An input or output of a service, as far as its provider is concerned."""

    @property
    def storage_provider(self) -> str: ...


def check_provider_references(
    inputs: Sequence[ProviderUse], outputs: Sequence[ProviderUse], declared: Mapping[str, Mapping[str, Any]]
) -> None:
    """Each input and output names a provider type it may use, declared where it must be, with what that
    use needs (a WebDAV output its server, an S3 input its queue); else a 400."""
    for kind, entries, allowed in (
        ("input", inputs, INPUT_PROVIDER_TYPES),
        ("output", outputs, OUTPUT_PROVIDER_TYPES),
    ):
        for io in entries:
            ref = ProviderRef(io.storage_provider)
            if ref.type not in allowed:
                names = ", ".join(sorted(allowed))
                raise BadRequest(
                    f"unrecognized {kind} storage provider {io.storage_provider!r} (valid: {names})"
                )
            must_declare = ref.id != DEFAULT_PROVIDER_ID or (
                kind == "output" and ref.type in DECLARED_OUTPUT_TYPES
            )
            if must_declare and ref.id not in declared.get(ref.type, {}):
                raise BadRequest(
                    f"{kind} storage provider {io.storage_provider!r} is not declared in storage_providers"
                )
            if kind == "output" and ref.type == "webdav" and not declared[ref.type][ref.id].get("hostname"):
                raise BadRequest(f"storage_providers.webdav.{ref.id}.hostname: the WebDAV server is required")
            if (
                kind == "input"
                and ref.type == "s3"
                and not declared.get("s3", {}).get(ref.id, {}).get("queue")
            ):
                # Amazon S3 reports new objects only to a queue (or topic): without one, nothing would run.
                raise BadRequest(
                    f"storage_providers.s3.{ref.id}.queue is required for an input on {io.storage_provider!r}"
                    " (the SQS queue, by URL or name, that the bucket's notifications go to)"
                )
