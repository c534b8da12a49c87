"""What a real API server would refuse: the official schema (kubernetes-validate, strict: unknown fields are
errors) plus the semantic checks the schema cannot express (names, label and annotation keys and values,
quantities, environment variable names, Job restart policy)."""

from __future__ import annotations

import base64
import re
from typing import Any

import kubernetes_validate

KUBERNETES_VERSION = "1.32"
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
MAX_SECRET_BYTES = 1024 * 1024  # a Secret's data, all keys together
MAX_ANNOTATION_BYTES = 256 * 1024
_QUALIFIED_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
# Kubernetes 1.34 and later (RelaxedEnvironmentVariableValidation): printable ASCII but '='.
_ENV_NAME = re.compile(r"^[ -<>-~]+$")
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


def _qualified_name(key: str) -> bool:
    """apimachinery's IsQualifiedName: ``[DNS-subdomain prefix/]name``, the name at most 63 characters."""
    parts = key.split("/")
    if len(parts) > 2 or (len(parts) == 2 and not (len(parts[0]) <= 253 and _DNS_SUBDOMAIN.match(parts[0]))):
        return False
    return len(parts[-1]) <= 63 and bool(_QUALIFIED_NAME.match(parts[-1]))


def _check_metadata(metadata: dict[str, Any], where: str) -> None:
    """Labels (keys qualified names, values label values) and annotations (keys qualified names once
    lower-cased, 256 KiB of keys and values at most), as the API server's ValidateObjectMeta."""
    for key, value in (metadata.get("labels") or {}).items():
        if not _qualified_name(key):
            raise Invalid(f"{where}.labels", f"Invalid value: {key!r}: not a qualified name")
        if len(str(value)) > 63 or not _LABEL_VALUE.match(str(value)):
            raise Invalid(f"{where}.labels.{key}", f"{value!r} is not a valid label value")
    annotations = metadata.get("annotations") or {}
    for key in annotations:
        if not _qualified_name(key.lower()):
            raise Invalid(f"{where}.annotations", f"Invalid value: {key!r}: not a qualified name")
    if sum(len(k.encode()) + len(v.encode()) for k, v in annotations.items()) > MAX_ANNOTATION_BYTES:
        raise Invalid(f"{where}.annotations", f"Too long: must have at most {MAX_ANNOTATION_BYTES} bytes")


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
    _check_metadata(metadata, "metadata")
    if manifest["kind"] == "ConfigMap":
        # As ValidateConfigMap: the values of data, all keys together (the manager sends no binaryData).
        if sum(len(value.encode()) for value in (manifest.get("data") or {}).values()) > MAX_SECRET_BYTES:
            raise Invalid("[]", f"Too long: must have at most {MAX_SECRET_BYTES} bytes")
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
        _check_metadata(manifest["spec"]["template"].get("metadata") or {}, "spec.template.metadata")
        for group in ("initContainers", "containers"):
            for index, container in enumerate(pod.get(group) or []):
                where = f"spec.template.spec.{group}[{index}]"
                _check_quantities(container.get("resources") or {}, where)
                for number, variable in enumerate(container.get("env") or []):
                    if not _ENV_NAME.match(variable["name"]):
                        raise Invalid(
                            f"{where}.env[{number}].name",
                            f"Invalid value: {variable['name']!r}: a valid environment variable name must"
                            " consist only of printable ASCII characters other than '='",
                        )
