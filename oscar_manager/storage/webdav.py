"""WebDAV as a place for a job's outputs (``webdav.<id>`` providers: dCache's doors, Nextcloud, Apache
mod_dav...): a write-only ``ObjectSink``.

Each file is one ``PUT`` whose body is streamed from the file as it is read (chunked transfer encoding),
never held whole. Its folder is made first: ``MKCOL`` on the deepest level, and only when the server says a
parent is missing (409) on the level above, then back down; 405 means the folder is already there (RFC 4918
§9.3.1). So an existing path costs one request, and the levels a user may not touch (``/pnfs/...``) are
never asked for. No ``Expect: 100-continue`` is sent and redirects are not followed: a dCache door then
takes the data itself instead of redirecting the write to a pool, which a streamed body could not follow.

Credentials go as HTTP Basic. With a ``guard`` (the manager's own connections, ``storage.egress``) every
address is checked before it is connected, through the same connector as the S3 clients. A write the
server refuses is a ``StorageError`` naming the provider, the request and the server's answer: the job
fails with it. A server that cannot be reached, is full (507) or unavailable (503) is one of
``STORE_FAULTS``: accepted work is run again later, as for S3.
"""

from __future__ import annotations

import base64
import contextlib
from collections.abc import AsyncIterator
from http import HTTPStatus
from urllib.parse import quote

import aiohttp

from oscar_manager.storage.base import StorageError, StorageFull, StorageUnavailable, StorageUnreachable
from oscar_manager.storage.egress import ConnectGuard
from oscar_manager.storage.guarded_connector import GuardedConnector
from oscar_manager.storage.providers import WebDavSettings

# What the server's plain error answer may add to a message: enough to see why, never a whole page.
_BODY_SHOWN = 200


def _basic_auth(login: str, password: str) -> dict[str, str]:
    """The ``Authorization`` header of HTTP Basic (RFC 7617, UTF-8), or none without a login."""
    if not login:
        return {}
    token = base64.b64encode(f"{login}:{password}".encode()).decode("ascii")
    return {"Authorization": f"Basic {token}"}


class WebDavSink:
    """Writes files under a WebDAV server's base URL, over one HTTP session (see the module's docstring)."""

    def __init__(self, provider: str, settings: WebDavSettings, session: aiohttp.ClientSession) -> None:
        self.provider = provider
        self._base = settings.url.rstrip("/")
        self._session = session

    @classmethod
    @contextlib.asynccontextmanager
    async def connect(
        cls,
        provider: str,
        settings: WebDavSettings,
        *,
        timeout: float = 60.0,  # noqa: ASYNC109 - the session's, not this call's
        guard: ConnectGuard | None = None,
    ) -> AsyncIterator[WebDavSink]:
        """A sink for ``settings``, its session open until the block exits. ``timeout`` bounds connecting
        and each wait for the server (seconds), not a whole upload."""
        ssl: bool = settings.verify
        connector = GuardedConnector(guard, ssl=ssl) if guard is not None else aiohttp.TCPConnector(ssl=ssl)
        session = aiohttp.ClientSession(
            connector=connector,
            headers=_basic_auth(settings.login, settings.password),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=timeout, sock_read=timeout),
            trust_env=False,  # the guard checks what is connected: no proxy from the environment
        )
        async with session:
            yield cls(provider, settings, session)

    async def put_stream(self, bucket: str, key: str, chunks: AsyncIterator[bytes]) -> None:
        """Write ``bucket/key`` (the output path and the file's name), making its folders as needed."""
        path = f"{bucket}/{key}"
        folder = path.rpartition("/")[0]
        if folder:
            await self._ensure_folder(folder)
        status, reason, body = await self._request("PUT", path, data=chunks)
        if status not in (HTTPStatus.OK, HTTPStatus.CREATED, HTTPStatus.NO_CONTENT):
            raise self._refused("PUT", path, status, reason, body)

    async def _ensure_folder(self, folder: str) -> None:
        status, reason, body = await self._request("MKCOL", folder + "/")
        if status == HTTPStatus.CONFLICT and "/" in folder:  # a parent is missing: make it, then retry
            await self._ensure_folder(folder.rpartition("/")[0])
            status, reason, body = await self._request("MKCOL", folder + "/")
        if status not in (HTTPStatus.CREATED, HTTPStatus.METHOD_NOT_ALLOWED):
            raise self._refused("MKCOL", folder + "/", status, reason, body)

    async def _request(
        self, method: str, path: str, *, data: AsyncIterator[bytes] | None = None
    ) -> tuple[int, str, str]:
        url = f"{self._base}/{quote(path, safe='/')}"
        try:
            async with self._session.request(method, url, data=data, allow_redirects=False) as response:
                body = b""
                if response.status >= 300 and "html" not in response.content_type:  # no error pages
                    body = await response.content.read(_BODY_SHOWN)
                return response.status, response.reason or "", body.decode("utf-8", errors="replace")
        except aiohttp.ClientSSLError as exc:
            raise StorageError(
                f"WebDAV provider {self.provider!r}: TLS failed at {self._base}: {exc}"
            ) from None
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, TimeoutError) as exc:
            why = str(exc) or type(exc).__name__
            raise StorageUnreachable(
                f"WebDAV provider {self.provider!r}: {method} {url} got no answer: {why}"
            ) from None

    def _refused(self, method: str, path: str, status: int, reason: str, body: str) -> StorageError:
        detail = " ".join(body.split())
        url = f"{self._base}/{quote(path, safe='/')}"
        message = f"WebDAV provider {self.provider!r} refused {method} {url}: {status} {reason}".rstrip()
        if detail:
            message += f" ({detail})"
        if status == HTTPStatus.INSUFFICIENT_STORAGE:
            return StorageFull(message)
        if status == HTTPStatus.SERVICE_UNAVAILABLE:
            return StorageUnavailable(message)
        return StorageError(message)
