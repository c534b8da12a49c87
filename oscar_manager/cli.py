"""``oscar-manager serve | migrate | openapi``."""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

import uvicorn

from oscar_manager import datadir
from oscar_manager.registry import single_process
from oscar_manager.settings import Settings

DEFAULT_OPENAPI_PATH = Path("openapi/openapi.json")


def _prepare_data_dir(settings: Settings) -> None:
    datadir.prepare(settings, set_umask=True)


def _upgrade(settings: Settings) -> None:
    from oscar_manager.registry import migrations  # Alembic and Mako: see _upgrade_in_child

    migrations.upgrade(settings.database_url)


def migrate(settings: Settings) -> None:
    _prepare_data_dir(settings)
    _upgrade(settings)


def _upgrade_in_child(settings: Settings) -> None:
    """Migrate in a forked child: Alembic and Mako (about 11 MB) would otherwise stay in the server's
    memory for good after a few milliseconds' use. Forked before any thread or event loop exists; the
    child inherits the umask, the logging set up here and the SQLite lock's descriptor (the lock stays
    the parent's: it goes only when every copy is closed), and prints its traceback should it fail."""
    child = multiprocessing.get_context("fork").Process(
        target=_upgrade, args=(settings,), name="oscar-manager-migrate"
    )
    child.start()
    child.join()
    if child.exitcode != 0:
        raise SystemExit(f"the database migration failed (exit code {child.exitcode}); nothing was served")


def _exit_cleanly(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def serve(settings: Settings) -> None:
    _prepare_data_dir(settings)
    try:
        # Held until the process ends: before migrating, so a refused second process changes nothing.
        lock = single_process.hold_sqlite_file(settings.database_url)
    except single_process.DatabaseInUse as refusal:
        raise SystemExit(f"oscar-manager: {refusal}") from None
    _upgrade_in_child(settings)
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
        # Websockets (exposed services' proxy) on the websockets library's current implementation: the
        # default is its deprecated legacy one. It also passes on an instance's refusal of an upgrade.
        ws="websockets-sansio",
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
