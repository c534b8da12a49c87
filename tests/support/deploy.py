"""The deployment material under ``deploy/``, loaded for tests: Kubernetes manifests and the compose file."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from oscar_manager.settings import Settings
from tests.support.components import unavailable

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
# The overlay for several replicas on PostgreSQL (its base is KUBERNETES).
KUBERNETES_HA = DEPLOY / "kubernetes-ha"
COMPOSE_FILE = DEPLOY / "docker-compose.yml"
# Not a Kubernetes object: kustomize's own file, checked separately.
KUSTOMIZATION = "kustomization.yaml"


def manifest_files() -> list[Path]:
    """Every YAML file of Kubernetes objects under deploy/kubernetes (so a new file is covered at once)."""
    files = [*KUBERNETES.rglob("*.yaml"), *KUBERNETES.rglob("*.yml")]
    return sorted(path for path in files if path.name != KUSTOMIZATION)


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def all_objects(*, examples: bool = True) -> list[dict[str, Any]]:
    """The objects of every manifest file; ``examples=False`` leaves out ``*.example.yaml``."""
    return [
        doc
        for path in manifest_files()
        if examples or not path.name.endswith(".example.yaml")
        for doc in documents(path)
    ]


def find(kind: str, name: str, *, examples: bool = False) -> dict[str, Any]:
    found = [
        doc
        for doc in all_objects(examples=examples)
        if doc["kind"] == kind and doc["metadata"]["name"] == name
    ]
    assert len(found) == 1, f"{len(found)} {kind} objects named {name!r} under {KUBERNETES}"
    return found[0]


def of_kind(kind: str, *, examples: bool = False) -> list[dict[str, Any]]:
    return [doc for doc in all_objects(examples=examples) if doc["kind"] == kind]


def kustomize(directory: Path) -> list[dict[str, Any]]:
    """The objects ``kubectl apply -k <directory>`` would apply, rendered by kustomize itself (``kubectl
    kustomize``, or a standalone ``kustomize build``)."""
    if kubectl := shutil.which("kubectl"):
        command = [kubectl, "kustomize", str(directory)]
    elif standalone := shutil.which("kustomize"):
        command = [standalone, "build", str(directory)]
    else:
        unavailable("neither kubectl nor kustomize is installed: cannot render a kustomization")
    rendered = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert rendered.returncode == 0, rendered.stderr
    return [doc for doc in yaml.safe_load_all(rendered.stdout) if doc is not None]


def compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    return document


_VARIABLE = re.compile(r"\$\$|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?-)(?P<default>[^}]*))?\}")


def interpolate(value: Any, env: Mapping[str, str]) -> Any:
    """Compose's variable substitution (``${VAR}``, ``${VAR:-default}``, ``${VAR-default}``, ``$$``) over
    a parsed document, with ``env`` as the shell environment / ``.env`` file."""
    if isinstance(value, dict):
        return {key: interpolate(item, env) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, env) for item in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, op, default = match["name"], match["op"], match["default"] or ""
        if op == ":-":
            return env.get(name) or default
        if op == "-":
            return env.get(name, default)
        assert name in env, f"${{{name}}} has no default and is not set"
        return env[name]

    return _VARIABLE.sub(substitute, value)


def compose_resolved(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The compose file as ``docker compose`` would see it with ``env`` (default: nothing set)."""
    resolved: dict[str, Any] = interpolate(compose(), env or {})
    return resolved


def settings_fields() -> set[str]:
    """The environment names the manager's settings read (case-insensitive: upper-cased here)."""
    names = set()
    for name, info in Settings.model_fields.items():
        names.add(name.upper())
        for alias in (info.alias, info.validation_alias):
            if isinstance(alias, str):
                names.add(alias.upper())
    return names
