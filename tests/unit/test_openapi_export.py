from __future__ import annotations

import json
from pathlib import Path

from oscar_manager.cli import DEFAULT_OPENAPI_PATH, main, openapi_document

REPO = Path(__file__).resolve().parents[2]


def test_committed_openapi_is_current() -> None:
    committed = (REPO / DEFAULT_OPENAPI_PATH).read_text()
    assert committed == openapi_document(), "openapi/openapi.json is stale: run `oscar-manager openapi`"


def test_openapi_command_writes_the_document(tmp_path: Path) -> None:
    target = tmp_path / "spec" / "openapi.json"
    main(["openapi", "--output", str(target)])
    spec = json.loads(target.read_text())
    assert spec["info"]["title"] == "OSCAR Manager"
    assert "/system/services" in spec["paths"]
