"""The bodies the OSCAR dashboard sends, as its code builds them (grycap/oscar-dashboard
``Topbar/components/CreateUpdateButton.tsx``: create; the service as read, edited and sent back: update),
against the deviations the README lists: name rules, quantities checked at create, secrets never shown."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from oscar_manager.settings import Settings
from tests.support.app import app_client

pytestmark = pytest.mark.asyncio

AXIOS = {"Accept": "application/json, text/plain, */*"}


def created_by_the_form(name: str, **changes: Any) -> dict[str, Any]:
    """``createServiceModel``: the form's fields under the names the dashboard sends (some its own)."""
    body: dict[str, Any] = {
        "cpu": "0.2",
        "image": "ghcr.io/grycap/cowsay",
        "imageRules": [None],
        "imagePullSecrets": [],
        "input": [{"storage_provider": "minio.default", "path": f"{name}/in", "suffix": [], "prefix": []}],
        "limitsMemory": "256",
        "log_level": "INFO",
        "memory": "256Mi",
        "name": name,
        "output": [{"storage_provider": "minio.default", "path": f"{name}/out", "suffix": [], "prefix": []}],
        "script": "#!/bin/sh\ncat $INPUT_FILE_PATH\n",
        "environment": {"variables": {"A": "1"}, "secrets": {"TOKEN": "s3cr3t"}},
        "visibility": "private",
        "allowed_users": [],
        "valid": True,
    }
    body.update(changes)
    return body


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with app_client(settings) as http:
        yield http


async def test_create_edit_and_send_back(client: httpx.AsyncClient) -> None:
    assert (
        await client.post("/system/services", json=created_by_the_form("dash"), headers=AXIOS)
    ).status_code == 201
    read = (await client.get("/system/services/dash", headers=AXIOS)).json()
    assert read["environment"]["secrets"] == {"TOKEN": ""}  # the form shows an empty password field

    # The edit form sends the service as read, with the user's edits and its own defaults merged in.
    edited = {**read, "memory": "512Mi", "total_memory": "0", "total_cpu": "0", "rescheduler_threshold": ""}
    assert (await client.put("/system/services", json=edited, headers=AXIOS)).status_code == 204
    again = (await client.get("/system/services/dash")).json()
    assert again["memory"] == "512Mi"
    assert again["token"] == read["token"]
    assert again["environment"]["variables"] == {"A": "1"}
    assert again["environment"]["secrets"] == {"TOKEN": ""}  # still stored, not wiped by the round trip


async def test_names_the_dashboard_generates_are_accepted(client: httpx.AsyncClient) -> None:
    # ``<kind>-<generateReadableName(6)>-<genRandomString(8).toLowerCase()>``, the longest kind it has.
    name = "filebrowser-bacedi-x7k2m9q4"
    answer = await client.post("/system/services", json=created_by_the_form(name), headers=AXIOS)
    assert answer.status_code == 201, answer.text


async def test_refusals_read_as_sentences(client: httpx.AsyncClient) -> None:
    """What the dashboard puts after "Failed to create service: " (``response.data``)."""
    bad_name = await client.post("/system/services", json=created_by_the_form("My_Service"), headers=AXIOS)
    assert bad_name.status_code == 400
    assert bad_name.headers["content-type"] == "text/plain; charset=utf-8"
    assert "My_Service" in bad_name.text
    bad_memory = await client.post(
        "/system/services", json=created_by_the_form("mem", memory="lots"), headers=AXIOS
    )
    assert bad_memory.status_code == 400
    assert "invalid memory 'lots'" in bad_memory.text
