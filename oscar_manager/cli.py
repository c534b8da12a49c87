"""``oscar-manager serve | migrate | openapi``."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

import uvicorn

from oscar_manager import datadir
from oscar_manager.registry import migrations, single_process
from oscar_manager.settings import Settings

DEFAULT_OPENAPI_PATH = Path("openapi/openapi.json")


def _prepare_data_dir(settings: Settings) -> None:
    datadir.prepare(settings, set_umask=True)


def migrate(settings: Settings) -> None:
    _prepare_data_dir(settings)
    migrations.upgrade(settings.database_url)


def _exit_cleanly(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def serve(settings: Settings) -> None:
    _prepare_data_dir(settings)
    try:
        # Held until the process ends: before migrating, so a refused second process changes nothing.
        lock = single_process.hold_sqlite_file(settings.database_url)
    except single_process.DatabaseInUse as refusal:
        raise SystemExit(f"oscar-manager: {refusal}") from None
    migrations.upgrade(settings.database_url)
    # Imported here, not at the top: the app loads most of the package, which a refused process skips.
    from oscar_manager.app import create_app

    app = create_app(settings)
    # uvicorn re-raises SIGTERM once its graceful shutdown is done, which would end the process "killed by
    # SIGTERM": this handler (the one uvicorn restores) makes a completed shutdown exit 0 instead, and a
    # SIGTERM arriving before uvicorn takes the signals still stops the process.
    signal.signal(signal.SIGTERM, _exit_cleanly)
    uvicorn.run(
        app,
        host=settings.oscar_host,
        port=settings.oscar_service_port,
        timeout_keep_alive=30,
        # On SIGTERM uvicorn stops accepting connections, then lets requests in flight (a sync /run, an
        # upload) finish for this long before cutting them and running the app's shutdown; without it, it
        # would wait for them forever, and Kubernetes would SIGKILL the pod mid-shutdown.
        timeout_graceful_shutdown=settings.oscar_graceful_shutdown_timeout,
        log_level="info",
        # Not uvloop: its subprocess spawn forks the whole server per script (about 9 ms, blocking the loop)
        # and it can close a pipe's descriptor twice (MagicStack/uvloop#763).
        loop="asyncio",
    )
    if lock is not None:
        os.close(lock)


def openapi_document() -> str:
    """The OpenAPI document of the app as built with default settings, stably formatted."""
    from oscar_manager.app import create_app

    app = create_app(Settings())
    return json.dumps(app.openapi(), indent=2, sort_keys=True) + "\n"


def write_openapi(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(openapi_document())


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="oscar-manager", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("serve", help="apply pending migrations and run the API server")
    commands.add_parser("migrate", help="apply pending database migrations and exit")
    export = commands.add_parser("openapi", help="write the OpenAPI document")
    export.add_argument("--output", "-o", type=Path, default=DEFAULT_OPENAPI_PATH)
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command == "openapi":
        write_openapi(args.output)
        print(f"wrote {args.output}", file=sys.stderr)
        return
    settings = Settings()
    if args.command == "migrate":
        migrate(settings)
    else:
        serve(settings)
