"""deploy/docker-compose.yml: the references between its services that a real ``docker compose up`` would
only reveal by failing (a webhook posting nowhere, a password that differs, a service started before the
one it needs is healthy), checked with nothing set in the environment and with every variable overridden."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import pytest
from sqlalchemy.engine import make_url

from oscar_manager.events.minio_webhook import WEBHOOK_PATH
from oscar_manager.settings import BackendKind, Settings
from tests.support.deploy import (
    COMPOSE_FILE,
    compose,
    compose_resolved,
    find,
    interpolate,
    settings_fields,
)

OVERRIDES = {
    "POSTGRES_PASSWORD": "pg-override",
    "MINIO_ROOT_USER": "user-override",
    "MINIO_ROOT_PASSWORD": "minio-override",
    "OSCAR_WEBHOOK_TOKEN": "token-override",
    "OSCAR_PASSWORD": "admin-override",
}


@pytest.fixture(params=[{}, OVERRIDES], ids=["defaults", "overridden"])
def stack(request: pytest.FixtureRequest) -> dict[str, Any]:
    services: dict[str, Any] = compose_resolved(request.param)["services"]
    return services


def env(service: dict[str, Any]) -> dict[str, str]:
    environment = service.get("environment") or {}
    assert isinstance(environment, dict), "environment as a mapping"
    return {name: str(value) for name, value in environment.items()}


def manager_settings(stack: dict[str, Any]) -> Settings:
    return Settings.model_validate({name.lower(): value for name, value in env(stack["manager"]).items()})


def test_the_stack_is_postgres_minio_and_the_manager_on_the_local_backend(stack: dict[str, Any]) -> None:
    assert set(stack) == {"postgres", "minio", "manager"}
    assert stack["postgres"]["image"] == "postgres:16"
    assert stack["minio"]["image"].split(":")[0] == "minio/minio"
    settings = manager_settings(stack)
    assert settings.oscar_backend == BackendKind.LOCAL
    assert settings.oscar_host == "0.0.0.0"  # noqa: S104 - reachable from the other containers


def test_every_manager_variable_is_a_setting(stack: dict[str, Any]) -> None:
    assert set(env(stack["manager"])) - settings_fields() == set()


def test_minios_webhook_target_posts_to_the_managers_event_path_with_its_token(stack: dict[str, Any]) -> None:
    settings = manager_settings(stack)
    minio = env(stack["minio"])
    target = settings.oscar_minio_webhook_target  # MinIO's variable suffix is the target's name, case and all
    assert minio[f"MINIO_NOTIFY_WEBHOOK_ENABLE_{target}"] == "on"
    endpoint = urlsplit(minio[f"MINIO_NOTIFY_WEBHOOK_ENDPOINT_{target}"])
    assert endpoint.hostname == "manager"
    assert endpoint.hostname in stack
    assert endpoint.port == settings.oscar_service_port
    assert endpoint.path == WEBHOOK_PATH
    # What the manager would register if MinIO lacked the target: the same endpoint.
    assert endpoint.geturl() == settings.oscar_minio_webhook_url.rstrip("/") + WEBHOOK_PATH
    assert minio[f"MINIO_NOTIFY_WEBHOOK_AUTH_TOKEN_{target}"] == settings.oscar_minio_webhook_token != ""
    # Events that arrive while the manager is down wait on a volume, not in memory.
    queue = minio[f"MINIO_NOTIFY_WEBHOOK_QUEUE_DIR_{target}"]
    assert queue in mounts(stack["minio"])
    webhook_variables = {name for name in minio if name.startswith("MINIO_NOTIFY_WEBHOOK_")}
    assert all(name.endswith(f"_{target}") for name in webhook_variables)


def test_the_database_url_names_the_postgres_service_and_its_credentials(stack: dict[str, Any]) -> None:
    url = make_url(manager_settings(stack).oscar_database_url)
    postgres = env(stack["postgres"])
    assert url.drivername == "postgresql+asyncpg"
    assert url.host in stack
    assert stack[url.host]["image"].startswith("postgres:")
    assert url.port == 5432
    assert (url.username, url.password, url.database) == (
        postgres["POSTGRES_USER"],
        postgres["POSTGRES_PASSWORD"],
        postgres["POSTGRES_DB"],
    )


def test_the_manager_uses_minios_root_credentials_at_its_service_name(stack: dict[str, Any]) -> None:
    settings = manager_settings(stack)
    minio = env(stack["minio"])
    endpoint = urlsplit(settings.minio_endpoint)
    assert endpoint.hostname == "minio"
    assert endpoint.hostname in stack
    assert endpoint.port == 9000
    assert settings.minio_access_key == minio["MINIO_ROOT_USER"]
    assert settings.minio_secret_key == minio["MINIO_ROOT_PASSWORD"]


def test_overrides_reach_every_place_that_must_agree() -> None:
    resolved = compose_resolved(OVERRIDES)["services"]
    assert env(resolved["postgres"])["POSTGRES_PASSWORD"] == "pg-override"
    assert manager_settings(resolved).oscar_password == "admin-override"
    assert manager_settings(resolved).oscar_minio_webhook_token == "token-override"
    # And the defaults differ from one another's role (no token reused as a password).
    defaults = env(compose_resolved()["services"]["manager"])
    secrets = [defaults[name] for name in ("OSCAR_PASSWORD", "MINIO_SECRET_KEY", "OSCAR_MINIO_WEBHOOK_TOKEN")]
    assert len(set(secrets)) == len(secrets)


def test_dependencies_wait_for_healthchecks(stack: dict[str, Any]) -> None:
    depends = stack["manager"]["depends_on"]
    assert set(depends) == {"postgres", "minio"}
    for name, condition in depends.items():
        assert condition == {"condition": "service_healthy"}
        check = stack[name]["healthcheck"]["test"]
        assert check[0] in ("CMD", "CMD-SHELL")
        assert len(check) > 1
    assert "pg_isready" in " ".join(stack["postgres"]["healthcheck"]["test"])
    manager_check = " ".join(stack["manager"]["healthcheck"]["test"])
    assert f"127.0.0.1:{manager_settings(stack).oscar_service_port}/health" in manager_check


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """Container path -> named volume (short syntax ``volume:/path``)."""
    return {entry.split(":")[1]: entry.split(":")[0] for entry in service.get("volumes") or []}


def test_state_lives_on_declared_volumes(stack: dict[str, Any]) -> None:
    declared = set(compose()["volumes"])
    for service in stack.values():
        assert set(mounts(service).values()) <= declared
    assert str(manager_settings(stack).oscar_data_dir) in mounts(stack["manager"])
    assert "/var/lib/postgresql/data" in mounts(stack["postgres"])
    data_dir = stack["minio"]["command"][1]
    assert data_dir in mounts(stack["minio"])


def test_the_manager_is_built_from_the_repository_and_published_on_its_port(stack: dict[str, Any]) -> None:
    build = stack["manager"]["build"]
    context = (COMPOSE_FILE.parent / build["context"]).resolve()
    assert (context / build.get("dockerfile", "Dockerfile")).is_file()
    assert (context / "pyproject.toml").is_file()  # the repository root, not deploy/
    # The image the Kubernetes Deployment runs, and the one jobs take the supervisor from by default.
    image = stack["manager"]["image"]
    deployment = find("Deployment", "oscar-manager")
    assert image == deployment["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image == Settings.model_fields["oscar_manager_image"].default
    port = manager_settings(stack).oscar_service_port
    assert f"{port}:{port}" in stack["manager"]["ports"]


def test_every_variable_has_a_default_so_up_works_with_nothing_set() -> None:
    text = COMPOSE_FILE.read_text()
    assert "${" in text
    compose_resolved({})  # raises on a ${VAR} without a default
    with pytest.raises(AssertionError, match="NOT_SET"):
        interpolate("${NOT_SET}", {})
    assert interpolate("a$$b${X:-d}${Y-e}", {"Y": ""}) == "a$bd"
