"""The Kubernetes backend's kubernetes-asyncio client: how it is opened, and how its failures read.

Every call the backend makes goes through one ``ApiClient`` (one connection pool, one TLS context), and
its exceptions become the manager's errors here, so no library exception leaves the backend.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp
from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException

from oscar_manager.backends.base import BackendUnavailable
from oscar_manager.backends.kube_answers import KubernetesError, invalid_fields, reason, retryable
from oscar_manager.errors import BadRequest

# Raised by aiohttp or the event loop underneath the client when the API server cannot be reached.
TRANSPORT_ERRORS = (aiohttp.ClientError, OSError, TimeoutError)


@contextlib.contextmanager
def answers(action: str) -> Any:
    """Kubernetes answers in the manager's terms: 5xx and lost connections are worth retrying; an invalid
    object is the request's fault (400, naming the field); any other refusal (RBAC...) is a 502."""
    try:
        yield
    except ApiException as exc:
        if retryable(exc):
            raise BackendUnavailable(f"Kubernetes could not {action}: {reason(exc)}") from None
        if exc.status == 422:
            fields = ", ".join(invalid_fields(exc)) or "unknown field"
            raise BadRequest(f"Kubernetes found {fields} invalid: cannot {action}: {reason(exc)}") from None
        raise KubernetesError(f"Kubernetes refused to {action}: {reason(exc)}") from None
    except TRANSPORT_ERRORS as exc:
        raise BackendUnavailable(f"Kubernetes API unreachable: cannot {action}: {exc}") from None


def in_cluster(kubeconfig: Path | None) -> bool:
    """Whether the manager talks to the cluster it runs in (as its pod's service account)."""
    return kubeconfig is None and bool(os.environ.get("KUBERNETES_SERVICE_HOST"))


async def new_api_client(kubeconfig: Path | None) -> client.ApiClient:
    """In a pod: its service account. Elsewhere: ``kubeconfig``, ``$KUBECONFIG`` or ``~/.kube/config``."""
    if in_cluster(kubeconfig):
        config.load_incluster_config()  # type: ignore[no-untyped-call]
        return client.ApiClient()
    return await config.new_client_from_config(config_file=str(kubeconfig) if kubeconfig else None)


def without_environment_lookups(api: client.ApiClient) -> None:
    """The client's aiohttp session trusts the environment, so every request reads ``~/.netrc`` and the
    proxy variables in a worker thread: two thread hops and a file read per Job created. The API server's
    address and credentials come from the kubeconfig (its ``proxy-url`` too), so a session on the same
    connector without those lookups replaces it."""
    rest = api.rest_client
    trusting = rest.pool_manager
    rest.pool_manager = aiohttp.ClientSession(
        # The library's read buffer too: watch events carrying big objects outgrow aiohttp's default.
        connector=trusting.connector,
        trust_env=False,
        read_bufsize=2**21,
    )
    trusting.detach()


async def create(
    api: client.ApiClient, collection: str, body: dict[str, Any], *, dry_run: str | None = None
) -> aiohttp.ClientResponse:
    """POST ``body`` (a plain dict) to ``collection`` (``/apis/batch/v1/namespaces/{ns}/jobs``...), as the
    generated ``create_namespaced_*`` do with ``_preload_content=False``: the same headers, credentials
    (a bearer token refreshed by the client's hook; client certificates are the connector's), proxy and
    TLS server name. The generated methods first walk the body to "sanitise" it for JSON, which for a
    plain dict changes nothing and cost more CPU than anything else in creating a Job. The caller reads
    and releases the answer."""
    headers = {**api.default_headers, "Accept": "application/json", "Content-Type": "application/json"}
    if api.cookie:
        headers["Cookie"] = api.cookie
    query: list[tuple[str, str]] = [] if dry_run is None else [("dryRun", dry_run)]
    await api.update_params_for_auth(headers, query, ["BearerToken"])
    rest = api.rest_client
    url = f"{api.configuration.host}{quote(collection)}"
    if query:
        url += "?" + urlencode(query)
    extra: dict[str, Any] = {}
    if rest.proxy:
        extra["proxy"] = rest.proxy
    if rest.proxy_headers:
        extra["proxy_headers"] = rest.proxy_headers
    if rest.server_hostname:
        extra["server_hostname"] = rest.server_hostname
    answer: aiohttp.ClientResponse = await rest.pool_manager.request(
        "POST",
        url,
        data=json.dumps(body),
        headers=headers,
        timeout=aiohttp.ClientTimeout(),  # none, as the generated methods' default
        **extra,
    )
    return answer
