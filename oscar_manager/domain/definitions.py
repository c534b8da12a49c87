"""Turn a request body into service definitions: one JSON service, or an FDL document (JSON or YAML).

An FDL document is what oscar-cli and the dashboard keep on disk::

    functions:
      oscar:
      - <cluster-id>: {name: ..., image: ..., script: ...}
    storage_providers: {...}   # merged into every service
    clusters: {...}

Both are parsed by ``domain.documents``, within its limits (depth, integer length, no YAML aliases).
"""

from __future__ import annotations

import json
from typing import Any

import yaml

from oscar_manager.domain.documents import parse_json, parse_yaml
from oscar_manager.errors import BadRequest


def load_document(body: bytes) -> Any:
    """Parse a body as JSON, or failing that as YAML; raise a 400 that says why neither worked."""
    if not body.strip():
        raise BadRequest("empty request body: expected a service definition (JSON) or an FDL document (YAML)")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest(f"request body is not UTF-8 text: {exc}") from None
    try:
        return parse_json(text)
    except json.JSONDecodeError as json_error:
        looks_like_json = text.lstrip()[:1] in ("{", "[")
        try:
            document = parse_yaml(text)
        except yaml.YAMLError as yaml_error:
            if looks_like_json:
                raise BadRequest(f"malformed JSON: {json_error}") from None
            raise BadRequest(f"malformed YAML: {yaml_error}") from None
        if looks_like_json and not isinstance(document, dict):
            raise BadRequest(f"malformed JSON: {json_error}") from None
        return document


def service_definitions(document: Any) -> list[dict[str, Any]]:
    """The service definitions in a parsed body: the body itself, or each entry of ``functions.oscar``."""
    if not isinstance(document, dict):
        raise BadRequest(
            "expected a service definition (a JSON object) or an FDL document with functions.oscar"
        )
    if "functions" not in document:
        return [document]
    functions = document["functions"]
    oscar = functions.get("oscar") if isinstance(functions, dict) else None
    if not isinstance(oscar, list) or not oscar:
        raise BadRequest("FDL document: functions.oscar must be a non-empty list of {<cluster-id>: service}")
    shared_providers = document.get("storage_providers") or {}
    shared_clusters = document.get("clusters") or {}
    if not isinstance(shared_providers, dict) or not isinstance(shared_clusters, dict):
        raise BadRequest("FDL document: storage_providers and clusters must be mappings")
    definitions = []
    for position, entry in enumerate(oscar):
        if not isinstance(entry, dict) or len(entry) != 1:
            raise BadRequest(
                f"FDL document: functions.oscar[{position}] must be a mapping {{<cluster-id>: service}}"
            )
        ((cluster_id, service),) = entry.items()
        if not isinstance(service, dict):
            raise BadRequest(
                f"FDL document: functions.oscar[{position}].{cluster_id} must be a service mapping"
            )
        merged = dict(service)
        merged.setdefault("cluster_id", str(cluster_id))
        if shared_providers:
            merged["storage_providers"] = _merge_providers(shared_providers, merged.get("storage_providers"))
        if shared_clusters:
            merged["clusters"] = {**shared_clusters, **(merged.get("clusters") or {})}
        definitions.append(merged)
    return definitions


def _merge_providers(shared: dict[str, Any], own: Any) -> dict[str, Any]:
    """The service's own provider entries win over the document's shared ones."""
    if not isinstance(own, dict):
        return dict(shared)
    merged = {
        kind: dict(entries) if isinstance(entries, dict) else entries for kind, entries in shared.items()
    }
    for kind, entries in own.items():
        if isinstance(entries, dict) and isinstance(merged.get(kind), dict):
            merged[kind] = {**merged[kind], **entries}
        else:
            merged[kind] = entries
    return merged
