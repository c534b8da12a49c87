"""MinIO users, groups and canned policies through MinIO's admin API (miniopy-async's ``MinioAdmin``).

Every call is idempotent on MinIO's side (adding a user that exists sets its secret and enables it; adding
a member to a group it is in, or a policy that exists, changes nothing), so the manager's replicas may
make the same calls at once. Whatever goes wrong is :class:`MinioAdminUnavailable` (503): a user whose
identity cannot be made is told to come back, and nothing is recorded meanwhile.

What this MinIO does, found against the real server: a group may exist with no members (an empty member
list makes one), but a policy is attached only to a group that exists; removing a group refuses while it
has members, and takes its policy mapping with it; removing a policy still attached to a user or group is
refused (``XMinioIAMPolicyInUse``), one that does not exist is not an error; a group change naming a user that
does not exist fails whole (``XMinioAdminNoSuchUser``), and deleting a user drops it from its groups.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from typing import Any, cast

import aiohttp
from miniopy_async.credentials.providers import StaticProvider
from miniopy_async.error import MinioAdminException, MinioException
from miniopy_async.minioadmin import MinioAdmin

from oscar_manager.domain.bucket_policies import same_policy
from oscar_manager.storage.minio import MinioEndpoint
from oscar_manager.storage.minio_errors import MinioAdminUnavailable, NoSuchMinioUser

# An admin call is small: one that takes longer than this has failed (the user is told to retry).
ADMIN_TIMEOUT = 10.0
_NO_SUCH_USER = "XMinioAdminNoSuchUser"
_NO_SUCH_GROUP = "XMinioAdminNoSuchGroup"
_POLICY_IN_USE = "XMinioIAMPolicyInUse"
_NO_SUCH_POLICY = "XMinioAdminNoSuchPolicy"
_TRANSPORT_ERRORS = (aiohttp.ClientError, OSError, TimeoutError)


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
        await self.add_members(group, [access_key])

    async def group(self, name: str) -> dict[str, Any] | None:
        """MinIO's record of group ``name`` (``members``, ``policy``, ``status``), None if there is none."""
        with self._translate(f"read group {name!r}"):
            try:
                answer = await self._admin.group_info(name)
            except MinioAdminException as exc:
                if _NO_SUCH_GROUP in str(exc):
                    return None
                raise
            info = json.loads(answer)
        return info if isinstance(info, dict) else {}

    async def group_members(self, name: str) -> frozenset[str] | None:
        """The access keys in group ``name``, None if there is no such group."""
        info = await self.group(name)
        return None if info is None else frozenset(info.get("members") or ())

    async def add_members(self, group: str, access_keys: Iterable[str]) -> None:
        """Add ``access_keys`` to ``group``, creating the group (empty if there are none)."""
        keys = sorted(access_keys)
        with self._missing_user(f"add {_few(keys)} to group {group!r}"):
            # miniopy-async types ``members`` as a string, but sends it as JSON: MinIO wants a list.
            await self._admin.group_add(group, cast(str, keys))

    async def remove_members(self, group: str, access_keys: Iterable[str]) -> None:
        """Take ``access_keys`` out of ``group`` (ones not in it are no error)."""
        keys = sorted(access_keys)
        if not keys:
            return  # without members, MinIO's call removes the group itself
        with self._missing_user(f"remove {_few(keys)} from group {group!r}"):
            await self._admin.group_remove(group, cast(str, keys))

    async def remove_group(self, name: str) -> None:
        """Remove group ``name`` (its members first: MinIO keeps a group that has any); none is no error."""
        members = await self.group_members(name)
        if members is None:
            return
        await self.remove_members(name, members)
        with self._translate(f"remove group {name!r}"):
            try:
                await self._admin.group_remove(name)
            except MinioAdminException as exc:
                if _NO_SUCH_GROUP not in str(exc):  # removed meanwhile (another replica): as wanted
                    raise

    async def groups(self) -> list[str]:
        with self._translate("list groups"):
            names = json.loads(await self._admin.group_list())
        return [str(name) for name in names or ()]

    async def policy(self, name: str) -> dict[str, Any] | None:
        """Canned policy ``name`` as MinIO stores it, None if there is none."""
        with self._translate(f"read policy {name!r}"):
            try:
                answer = await self._admin.policy_info(name)
            except MinioAdminException as exc:
                if _NO_SUCH_POLICY in str(exc):
                    return None
                raise
            document = json.loads(answer)
        return document if isinstance(document, dict) else {}

    async def put_policy(self, name: str, document: Mapping[str, Any]) -> None:
        """Store canned policy ``name`` as ``document``, replacing it."""
        with self._translate(f"write policy {name!r}"):
            # miniopy-async reads a policy only from a file: a private temporary one (mode 0600).
            with tempfile.NamedTemporaryFile("w", suffix=".json", prefix="oscar-policy-") as file:
                json.dump(document, file)
                file.flush()
                await self._admin.policy_add(name, file.name)

    async def remove_policy(self, name: str) -> None:
        """Remove canned policy ``name``, detached first from whatever holds it; none is no error."""
        with self._translate(f"remove policy {name!r}"):
            try:
                await self._admin.policy_remove(name)
                return
            except MinioAdminException as exc:
                if _POLICY_IN_USE not in str(exc):
                    raise
            # Attached by hand to users or groups (MinIO refuses to remove it then): detached from each.
            answer = json.loads(await self._admin.get_policy_entities([], [], [name]))
            for mapping in answer.get("policyMappings") or ():
                for user in mapping.get("users") or ():
                    await self._admin.detach_policy([name], user=user)
                for group in mapping.get("groups") or ():
                    await self._admin.detach_policy([name], group=group)
            await self._admin.policy_remove(name)

    async def policies(self) -> list[str]:
        with self._translate("list policies"):
            documents = json.loads(await self._admin.policy_list())
        return [str(name) for name in documents or {}]

    async def set_group_policy(self, group: str, name: str, document: Mapping[str, Any]) -> None:
        """Make canned policy ``name`` say ``document`` and be ``group``'s only policy, creating the group
        (empty) if there is none: MinIO attaches policies only to groups that exist. Read before written
        (two quick reads against two writes of some 10 ms each), so a change that leaves them as they
        are costs little."""
        stored = await self.policy(name)
        if stored is None or not same_policy(stored, document):
            await self.put_policy(name, document)
        info = await self.group(group)
        if info is not None and info.get("policy") == name:
            return
        with self._translate(f"attach policy {name!r} to group {group!r}"):
            if info is None:
                await self._admin.group_add(group, cast(str, []))
            await self._admin.policy_set(name, group=group)

    @contextlib.contextmanager
    def _missing_user(self, action: str) -> Iterator[None]:
        with self._translate(action):
            try:
                yield
            except MinioAdminException as exc:
                if _NO_SUCH_USER in str(exc):
                    raise NoSuchMinioUser(
                        f"MinIO's admin API at {self._where} cannot {action}: MinIO has no such user"
                    ) from None
                raise


def _few(keys: list[str]) -> str:
    """Access keys for a message: a bucket may have a thousand members."""
    shown = ", ".join(repr(key) for key in keys[:3])
    more = f" and {len(keys) - 3} more" if len(keys) > 3 else ""
    return f"user(s) {shown}{more}" if keys else "no user"
