"""A service definition on its way out: to clients (``public_view``) and to its jobs (``job_view``).

Clients decode services with the upstream Go types: oscar-cli with ``github.com/grycap/oscar/v3`` v3.3.0
(``expose.api_port`` an ``int``, ``expose.nodePort`` an ``int32``), the dashboard with what v4.1.2 sends
(lists, left out when empty). So the public view leaves out every key that v4.1.2's ``encoding/json`` leaves
out (``omitempty`` on an empty value): an unexposed service then reads in both generations. An exposed
service's ports are lists, as upstream v4 sends them, which v3 clients cannot read (nor can they against
upstream). ``tests/integration/api/test_go_conformance.py`` decodes the answers with the Go types.
"""

from __future__ import annotations

from typing import Any

from oscar_manager.domain import credentials
from oscar_manager.domain.providers import DEFAULT_PROVIDER_ID
from oscar_manager.domain.service import Service, VolumeStatus

# Keys with ``omitempty`` in upstream v4.1.2's ``pkg/types`` (service.go, storage.go), by where they sit.
_OMIT_EMPTY_TOP = ("script", "image_pull_secrets", "storage_providers", "clusters", "namespace")
_OMIT_EMPTY_EXPOSE = ("api_port", "nodePort", "auth_type", "probe_mode")
_OMIT_EMPTY_STORAGE_IO = ("suffix", "prefix", "options")


def _dump(service: Service) -> dict[str, Any]:
    """The definition with ``environment.secrets`` values out (those reach a job through its environment)
    and the clusters' passwords out (nothing but the manager that federates would use them)."""
    data = service.model_dump(mode="json", by_alias=True)
    data["environment"]["secrets"] = {key: credentials.MASKED for key in service.environment.secrets}
    data["clusters"] = {
        cluster_id: credentials.masked(entry, credentials.CLUSTER_SECRET_KEYS)
        for cluster_id, entry in data["clusters"].items()
    }
    for optional in ("federation", "replicas", "delegation", "rescheduler_threshold", "volume", "kserve"):
        if data.get(optional) is None:
            data.pop(optional, None)
    return data


def job_view(service: Service) -> dict[str, Any]:
    """The definition a job's supervisor reads: storage credentials in, secret values out."""
    return _dump(service)


def public_view(service: Service, *, reveal_credentials: bool = False) -> dict[str, Any]:
    """The JSON clients get. The credentials of declared storage providers only to who may change the
    service (its owner, an admin): oscar-python's storage client and oscar-cli's file commands for a
    ``minio.<id>``/``s3.<id>`` provider read them from here; a public service would otherwise show them to
    every user. ``minio.default`` is the server's own and always shows its keys as ``hidden``."""
    data = _dump(service)
    if not reveal_credentials:
        data["storage_providers"] = _masked_providers(data["storage_providers"])
    data["volume_status"] = VolumeStatus().model_dump(mode="json")
    return _omit_empty(data)


def public_views(service: Service) -> tuple[dict[str, Any], dict[str, Any]]:
    """``public_view`` for who may only see the service, and for who may change it, from one dump: the
    same object twice when they are the same (no declared provider has credentials to mask)."""
    data = _dump(service)
    data["volume_status"] = VolumeStatus().model_dump(mode="json")
    revealed = _omit_empty(data)
    masked = _masked_providers(data["storage_providers"])
    if masked == data["storage_providers"]:
        return revealed, revealed
    return _omit_empty({**data, "storage_providers": masked}), revealed


def _masked_providers(providers: dict[str, Any]) -> dict[str, Any]:
    return {
        kind: {
            provider_id: credentials.masked(entry, credentials.PROVIDER_SECRET_KEYS)
            if isinstance(entry, dict) and (kind, provider_id) != ("minio", DEFAULT_PROVIDER_ID)
            else entry
            for provider_id, entry in entries.items()
        }
        for kind, entries in providers.items()
    }


def _empty(value: Any) -> bool:
    return value in ("", None) or value == [] or value == {}


def _without_empty(data: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    return {key: value for key, value in data.items() if not (key in keys and _empty(value))}


def _omit_empty(data: dict[str, Any]) -> dict[str, Any]:
    """Leave out what Go's ``omitempty`` leaves out of an upstream v4.1.2 service."""
    shaped = dict(data)
    shaped["storage_providers"] = {
        kind: entries for kind, entries in data["storage_providers"].items() if not _empty(entries)
    }
    shaped = _without_empty(shaped, _OMIT_EMPTY_TOP)
    shaped["expose"] = _without_empty(data["expose"], _OMIT_EMPTY_EXPOSE)
    for kind in ("input", "output"):
        shaped[kind] = [_without_empty(io, _OMIT_EMPTY_STORAGE_IO) for io in data[kind]]
    shaped["mount"] = _without_empty(data["mount"], _OMIT_EMPTY_STORAGE_IO)
    return shaped
