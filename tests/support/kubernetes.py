"""What a real API server would refuse: the official schema (kubernetes-validate, strict: unknown fields are
errors) plus the semantic checks the schema cannot express (names, quantities, Job restart policy)."""

from __future__ import annotations

import base64
import re
from typing import Any

import kubernetes_validate

KUBERNETES_VERSION = "1.32"
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
MAX_SECRET_BYTES = 1024 * 1024  # a Secret's data, all keys together
_QUANTITY = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+|[KMGTPE]i|[numkMGTPE])?$")


class Invalid(Exception):
    """The manifest would be refused; ``field`` names where (``spec.template.spec.containers[0]...``)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


def _path(parts: Any) -> str:
    return ".".join(str(part) for part in parts)


def _check_quantities(resources: dict[str, Any], where: str) -> None:
    for kind in ("limits", "requests"):
        for name, value in (resources.get(kind) or {}).items():
            if not _QUANTITY.match(str(value)):
                raise Invalid(f"{where}.resources.{kind}.{name}", f"{value!r} is not a quantity")


def validate(manifest: dict[str, Any]) -> None:
    """Raise ``Invalid`` for anything the API server would refuse (as far as it can be told offline)."""
    try:
        kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        raise Invalid(_path(exc.path), exc.message) from None
    metadata = manifest["metadata"]
    name = metadata.get("name", "")
    if len(name) > 253 or not _DNS_SUBDOMAIN.match(name):
        raise Invalid("metadata.name", f"{name!r} is not a DNS-1123 subdomain")
    for key, value in (metadata.get("labels") or {}).items():
        if len(str(value)) > 63 or not _LABEL_VALUE.match(str(value)):
            raise Invalid(f"metadata.labels.{key}", f"{value!r} is not a valid label value")
    if manifest["kind"] == "Secret":
        size = sum(len(base64.b64decode(value)) for value in (manifest.get("data") or {}).values())
        size += sum(len(value.encode()) for value in (manifest.get("stringData") or {}).values())
        if size > MAX_SECRET_BYTES:
            raise Invalid("data", f"Too long: must have at most {MAX_SECRET_BYTES} bytes")
    if manifest["kind"] == "Job":
        if len(name) > 63:
            raise Invalid("metadata.name", "a Job name must be a DNS label (at most 63 characters)")
        pod = manifest["spec"]["template"]["spec"]
        if pod.get("restartPolicy") not in ("Never", "OnFailure"):
            raise Invalid("spec.template.spec.restartPolicy", "a Job's pods must not restart Always")
        for group in ("initContainers", "containers"):
            for index, container in enumerate(pod.get(group) or []):
                _check_quantities(container.get("resources") or {}, f"spec.template.spec.{group}[{index}]")
