"""The S3 face's listener: a second uvicorn server in the manager's own process and event loop.

Started and stopped with the app (``app.py``'s lifespan) rather than with ``uvicorn.Server.serve``, which
would take over the process's signal handlers from the main server. The socket is bound here first, so a
port in use stops the manager at start with a message that names the setting.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator

import uvicorn
from starlette.types import ASGIApp

from oscar_manager.api.s3.context import S3Face
from oscar_manager.api.s3.face import S3App
from oscar_manager.operations import Database
from oscar_manager.settings import Settings
from oscar_manager.storage.base import ObjectStore
from oscar_manager.storage.local import LocalObjectStore
from oscar_manager.storage.s3face.multipart import MultipartUploads

log = logging.getLogger(__name__)


def _bind(host: str, port: int) -> socket.socket:
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise RuntimeError(f"the S3 face cannot listen on {host}:{port}: {exc}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise RuntimeError(
            f"the S3 face cannot listen on {host}:{port}: {exc.strerror or exc} "
            "(choose another OSCAR_S3_PORT, or 0 to turn it off)"
        ) from None
    return sock


@contextlib.asynccontextmanager
async def serving(app: ASGIApp, *, host: str, port: int) -> AsyncIterator[None]:
    sock = _bind(host, port)
    config = uvicorn.Config(
        app, lifespan="off", log_config=None, timeout_keep_alive=30, timeout_graceful_shutdown=5
    )
    config.load()
    server = uvicorn.Server(config)
    server.lifespan = config.lifespan_class(config)
    try:
        await server.startup(sockets=[sock])
        loop = asyncio.create_task(server.main_loop(), name="s3-face")
        log.info("S3 face of the local buckets on %s:%d", host, port)
        try:
            yield
        finally:
            server.should_exit = True
            await loop
            await server.shutdown(sockets=[sock])
    finally:
        sock.close()


@contextlib.asynccontextmanager
async def s3_face(settings: Settings, store: ObjectStore, database: Database) -> AsyncIterator[None]:
    """Serve the local buckets over S3 while the manager runs, when the settings ask for it."""
    if not settings.serves_s3 or not isinstance(store, LocalObjectStore):
        yield
        return
    face = S3Face(
        store=store,
        uploads=MultipartUploads(settings.s3_uploads_dir),
        database=database,
        # The admin's own credentials: /system/config hands them to the admin alone.
        access_key=settings.oscar_username,
        secret_key=settings.oscar_password,
        cors_origins=tuple(settings.oscar_cors_origins),
        manager_port=settings.oscar_service_port,
        max_body_bytes=settings.oscar_max_body_bytes,
    )
    async with serving(S3App(face), host=settings.oscar_host, port=settings.oscar_s3_port):
        yield
