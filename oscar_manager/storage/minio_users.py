"""MinIO users, groups and canned policies through MinIO's admin API (miniopy-async's ``MinioAdmin``).

Every call is idempotent on MinIO's side (adding a user that exists sets its secret and enables it; adding
a member to a group it is in, or a policy that exists, changes nothing), so the manager's replicas may
make the same calls at once. Whatever goes wrong is :class:`MinioAdminUnavailable` (503): a user whose
identity cannot be made is told to come back, and nothing is recorded meanwhile.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any, cast

import aiohttp
from miniopy_async.credentials.providers import StaticProvider
from miniopy_async.error import MinioAdminException, MinioException
from miniopy_async.minioadmin import MinioAdmin

from oscar_manager.storage.base import StorageError
from oscar_manager.storage.minio import MinioEndpoint

# An admin call is small: one that takes longer than this has failed (the user is told to retry).
ADMIN_TIMEOUT = 10.0
_NO_SUCH_USER = "XMinioAdminNoSuchUser"
_TRANSPORT_ERRORS = (aiohttp.ClientError, OSError, TimeoutError)


class MinioAdminUnavailable(StorageError):
    """MinIO's admin API did not do what a user's identity needs (unreachable, or refused)."""

    status_code = 503


class MinioUsers:
    """Open with :meth:`connect`."""

    def __init__(self, endpoint: MinioEndpoint, session: aiohttp.ClientSession) -> None:
        host, secure = endpoint.parts()
        self._where = endpoint.url
        self._admin = MinioAdmin(
            host,
            credentials=StaticProvider(endpoint.access_key, endpoint.secret_key),
            secure=secure,
            cert_check=endpoint.verify,
            session=session,
        )

    @classmethod
    @contextlib.asynccontextmanager
    async def connect(cls, endpoint: MinioEndpoint) -> AsyncIterator[MinioUsers]:
        timeout = aiohttp.ClientTimeout(total=ADMIN_TIMEOUT)
        connector = aiohttp.TCPConnector(ssl=True if endpoint.verify else False)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            yield cls(endpoint, session)

    @contextlib.contextmanager
    def _translate(self, action: str) -> Iterator[None]:
        try:
            yield
        except MinioAdminException as exc:
            raise MinioAdminUnavailable(
                f"MinIO's admin API at {self._where} refused to {action}: {exc}"
            ) from None
        except (MinioException, ValueError) as exc:
            raise MinioAdminUnavailable(
                f"MinIO's admin API at {self._where}: cannot {action}: {exc}"
            ) from None
        except _TRANSPORT_ERRORS as exc:
            raise MinioAdminUnavailable(
                f"MinIO's admin API at {self._where} is unreachable: cannot {action}: "
                f"{exc or type(exc).__name__}"
            ) from None

    async def user(self, access_key: str) -> dict[str, Any] | None:
        """MinIO's record of user ``access_key`` (``status``, ``memberOf``...), None if there is none."""
        with self._translate(f"read user {access_key!r}"):
            try:
                answer = await self._admin.user_info(access_key)
            except MinioAdminException as exc:
                if _NO_SUCH_USER in str(exc):
                    return None
                raise
            info = json.loads(answer)
        return info if isinstance(info, dict) else {}

    async def put_user(self, access_key: str, secret_key: str) -> None:
        """Create user ``access_key``, or set its secret and enable it."""
        with self._translate(f"create user {access_key!r}"):
            await self._admin.user_add(access_key, secret_key)

    async def add_to_group(self, group: str, access_key: str) -> None:
        """Make ``access_key`` a member of ``group``, creating the group if need be."""
        with self._translate(f"add user {access_key!r} to group {group!r}"):
            # miniopy-async types ``members`` as a string, but sends it as JSON: MinIO wants a list.
            await self._admin.group_add(group, cast(str, [access_key]))

    async def set_group_policy(self, group: str, name: str, document: Mapping[str, Any]) -> None:
        """Store canned policy ``name`` as ``document`` (replacing it) and make it ``group``'s policy."""
        with self._translate(f"set policy {name!r} of group {group!r}"):
            # miniopy-async reads a policy only from a file: a private temporary one (mode 0600).
            with tempfile.NamedTemporaryFile("w", suffix=".json", prefix="oscar-policy-") as file:
                json.dump(document, file)
                file.flush()
                await self._admin.policy_add(name, file.name)
            await self._admin.policy_set(name, group=group)
