"""Which keys of a service definition hold credentials, and the one rule for sending them back.

Responses show a credential as an empty string; a definition sent back (a GET turned into a PUT by the
dashboard, oscar-cli or a script) with an empty value keeps the stored one, and a new value replaces it.
``environment.secrets`` follows the same rule in ``service.normalise_update``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

MASKED = ""

# Storage provider fields that are credentials, by the upstream provider types (``pkg/types/storage.go``):
# MinIO/S3 ``secret_key``, WebDAV ``password``, Onedata ``token``, Rucio ``refresh_token``; Kafka's
# ``sasl_password`` (``domain.kafka_inputs``).
PROVIDER_SECRET_KEYS = ("secret_key", "password", "token", "refresh_token", "sasl_password")
# ``clusters.<id>``: oscar-cli's ``apply`` stores the password of every target cluster's user there (for
# the admin, the admin's own password). Nothing reads it back from a service: oscar-cli takes it from its
# own configuration, and jobs never use it.
CLUSTER_SECRET_KEYS = ("auth_password",)


def masked(entry: Mapping[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    """``entry`` with every non-empty credential among ``keys`` shown as ``MASKED``."""
    return {
        key: (MASKED if key in keys and isinstance(value, str) and value else value)
        for key, value in entry.items()
    }


def kept(sent: Mapping[str, Any], stored: Mapping[str, Any] | None, keys: tuple[str, ...]) -> dict[str, Any]:
    """``sent`` with each credential it sends back masked replaced by the stored value."""
    if not stored:
        return dict(sent)
    restored = {key: stored[key] for key in keys if sent.get(key) == MASKED and stored.get(key)}
    return {**sent, **restored}
