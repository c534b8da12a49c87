"""How large a service's Jobs can grow, against what a cluster stores: pure, no I/O.

etcd keeps no object over its ``--max-request-bytes`` (1.5 MiB by default; a larger Job fails after the
API server has validated it, with a misleading 422) and the API server takes no request body over 3 MiB.
A Job carries its service's definition (environment variables, labels, annotations, twice: on the Job
and on its pod template), the API server's record of its fields (managedFields) and its event: inline
in ``EVENT`` up to ``EVENT_ENV_MAX_BYTES``, or else in Secrets the Job owns, of which the Job itself
carries only a projected volume naming each part (``manifests.body_secrets``). So the largest Job of a
service is its Job for an empty event plus the larger of those two shares, and that is known when the
service is created or updated: a service whose Jobs could not all be stored is refused then (413),
instead of every invocation failing after its 201. (Its ConfigMap, limited to 1 MiB of data, the API
server checks itself: a 422, the service's 400.)
"""

from __future__ import annotations

import json
from typing import Any

from oscar_manager.backends import manifests
from oscar_manager.domain.service import Service
from oscar_manager.errors import PayloadTooLarge
from oscar_manager.supervisor import body_parts
from oscar_manager.supervisor.stage import EVENT_ENV_MAX_BYTES

KiB = 1024
# etcd's default --max-request-bytes, and what of it the API server's additions to a created Job take
# besides its managedFields (estimated apart): defaults, status, uid... a few KiB; kept generous.
ETCD_MAX_BYTES = 1536 * KiB
SERVER_ADDITIONS = 64 * KiB
# The API server's maxRequestBodyBytes.
REQUEST_MAX_BYTES = 3 * 1024 * KiB
# JSON writes a control character of a body as ``\\u00XX``: at most six bytes sent for one stored.
_JSON_ESCAPE = 6
# The longest Job name (a DNS label), so the estimate holds for every job id.
_LONGEST_JOB_ID = "j" * 63


def _json_bytes(obj: Any, *, ascii_only: bool) -> int:
    return len(json.dumps(obj, ensure_ascii=ascii_only, separators=(",", ":")).encode())


def _field_set(obj: Any) -> Any:
    """About the managedFields the API server records with the object: the set of its fields (every
    key; list items by their ``name``), values left out. It grows with the number of fields, not with
    their values: a thousand small environment variables cost more there than in the object."""
    if isinstance(obj, dict):
        return {key: _field_set(value) for key, value in obj.items()}
    if isinstance(obj, list):
        return [
            {"name": item["name"], **_field_set(item)} if isinstance(item, dict) and "name" in item else {}
            for item in obj
        ]
    return ""


def job_sizes(service: Service, cluster: manifests.ClusterConfig, *, body_bytes: int) -> tuple[int, int]:
    """(about what etcd would store, the request's size) of the largest Job ``service`` can have for a
    body of up to ``body_bytes``: its sync-run Job (a few more variables) for an empty event, plus the
    larger of the event's two ways into it. The stored size is the JSON's (UTF-8, as in etcd's protobuf,
    which is the smaller) and its managedFields'."""
    job = manifests.job(
        service,
        job_id=_LONGEST_JOB_ID,
        event=b"",
        cluster=cluster,
        sync_deadline=2**31 - 1,
        any_bucket=True,
        sync_max_response=2**63 - 1,
    )
    inline = (EVENT_ENV_MAX_BYTES, _JSON_ESCAPE * EVENT_ENV_MAX_BYTES)
    # The parts' volume, its mount and the two variables describing the parts (digest and count).
    parts = _json_bytes(manifests.body_volume(_LONGEST_JOB_ID, _parts(body_bytes)), ascii_only=True) + 512
    stored = _json_bytes(job, ascii_only=False) + _json_bytes(_field_set(job), ascii_only=False)
    stored += max(inline[0], parts)
    sent = _json_bytes(job, ascii_only=True) + max(inline[1], parts)
    return stored, sent


def _parts(body_bytes: int) -> int:
    return max(-(-body_bytes // body_parts.PART_BYTES), 1)


def check_job_size(service: Service, cluster: manifests.ClusterConfig, *, body_bytes: int) -> None:
    """Refuse (413) a service some of whose Jobs, for bodies of up to ``body_bytes``, would be too large
    for etcd or for the API server."""
    stored, sent = job_sizes(service, cluster, body_bytes=body_bytes)
    if stored > ETCD_MAX_BYTES - SERVER_ADDITIONS or sent > REQUEST_MAX_BYTES:
        raise PayloadTooLarge(
            f"service {service.name!r} is too large for Kubernetes: its Jobs would be about"
            f" {stored // KiB} KiB, over the {(ETCD_MAX_BYTES - SERVER_ADDITIONS) // KiB} KiB a Job may"
            " take in etcd (environment variables, labels and annotations count, the annotations twice):"
            " keep large values in the service's script or buckets instead"
        )
