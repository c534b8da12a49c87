"""The deployment material under ``deploy/``, loaded for tests: Kubernetes manifests and the compose file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
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


def compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    return document
