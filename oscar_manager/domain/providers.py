"""Storage provider entries of a service, typed as the upstream Go types decode them (``storage.go``)."""

from __future__ import annotations

from typing import Any

from oscar_manager.domain.gomodel import go_text
from oscar_manager.domain.kafka_inputs import KAFKA_FIELDS

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
