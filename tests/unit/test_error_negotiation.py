"""Which callers get an error's JSON form: only those whose Accept weighs JSON above text (issue 13)."""

from __future__ import annotations

import pytest

from oscar_manager.api.error_answers import error_name, prefers_json

TEXT = [
    pytest.param(None, id="Go's client: no Accept"),
    pytest.param("", id="empty"),
    pytest.param("*/*", id="requests, curl, fetch"),
    pytest.param("application/json, text/plain, */*", id="axios (the dashboard)"),
    pytest.param("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8", id="a browser tab"),
    pytest.param("text/plain", id="text only"),
    pytest.param("text/plain, application/json", id="both, text first"),
    pytest.param("application/json;q=0.5, text/*;q=0.5", id="equal weights"),
    pytest.param("application/json;q=0.4, */*;q=0.5", id="JSON weighed below the rest"),
    pytest.param("application/json;q=bogus", id="unreadable weight"),
    pytest.param("nonsense, ,;q=1", id="unparsable ranges"),
    pytest.param("application/xml", id="neither"),
]
JSON = [
    pytest.param("application/json", id="JSON only"),
    pytest.param("Application/JSON", id="case-insensitive"),
    pytest.param("application/json, */*;q=0.1", id="JSON, anything else less"),
    pytest.param("application/json, text/plain;q=0.9", id="text weighed less"),
    pytest.param("application/*", id="any application type"),
    pytest.param("text/plain;q=0, */*", id="text refused"),
    pytest.param("application/json; charset=utf-8", id="with a parameter"),
]


@pytest.mark.parametrize("accept", TEXT)
def test_text(accept: str | None) -> None:
    assert not prefers_json(accept)


@pytest.mark.parametrize("accept", JSON)
def test_json(accept: str) -> None:
    assert prefers_json(accept)


@pytest.mark.parametrize(
    ("status", "name"),
    [(404, "NotFound"), (405, "MethodNotAllowed"), (400, "BadRequest"), (599, "Error")],
)
def test_names_of_starlette_answers(status: int, name: str) -> None:
    assert error_name(status) == name
