"""What MinIO's users, groups and policies do, which the bucket rules (``operations.bucket_access``) build
on, through the manager's own adapter (``storage.minio_users``) against the real MinIO of the tests.

- A bucket-level action (ListBucket, GetBucketLocation, ListBucketMultipartUploads) is checked against the
  resource ``<bucket>/``: the bare ``arn:aws:s3:::<bucket>`` grants it, and so does ``<bucket>/*``; a
  prefix (``<bucket>/in/*``) does not, even to list that prefix (prefixes are the ``s3:prefix``
  condition's business). So ListObjects does not need the bare ARN in MinIO; the rules give it anyway (as
  AWS needs), and bucket-level actions on it alone.
- A group may be empty, but a policy attaches only to a group that exists; removing a group with members
  is refused, and takes its policy mapping along; a policy still attached cannot be removed.
- A group change naming a user MinIO does not have fails whole; deleting a user drops it from its groups.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import botocore.exceptions
import pytest
from miniopy_async.minioadmin import MinioAdmin

from oscar_manager.domain.bucket_policies import BUCKET_ACTIONS, policy
from oscar_manager.storage.minio import MinioEndpoint
from oscar_manager.storage.minio_errors import NoSuchMinioUser
from oscar_manager.storage.minio_users import MinioUsers
from tests.support.minio import MinioServer, boto3_client
from tests.support.storage_users import minio_admin

pytestmark = pytest.mark.asyncio


@pytest.fixture
async def users(minio_server: MinioServer) -> AsyncIterator[MinioUsers]:
    endpoint = MinioEndpoint(
        url=minio_server.endpoint,
        access_key=minio_server.access_key,
        secret_key=minio_server.secret_key,
        region="us-east-1",
        verify=False,
    )
    async with MinioUsers.connect(endpoint) as adapter:
        yield adapter


@pytest.fixture
async def admin_api(minio_server: MinioServer) -> AsyncIterator[MinioAdmin]:
    async with minio_admin(minio_server) as admin:
        yield admin


def unique(kind: str) -> str:
    return f"{kind}-{uuid.uuid4().hex[:10]}"


def code(call: Any, **kwargs: Any) -> str:
    try:
        call(**kwargs)
    except botocore.exceptions.ClientError as exc:
        return str(exc.response["Error"]["Code"])
    return "OK"


@pytest.mark.parametrize(
    ("resource", "lists"),
    [("{b}", "OK"), ("{b}/*", "OK"), ("{b}/in/*", "AccessDenied"), ("{b}-other", "AccessDenied")],
)
async def test_bucket_level_actions_match_the_bucket_or_all_its_objects_never_a_prefix(
    users: MinioUsers, minio_server: MinioServer, resource: str, lists: str
) -> None:
    bucket = unique("facts")
    root = boto3_client(minio_server.endpoint, minio_server.access_key, minio_server.secret_key)
    root.create_bucket(Bucket=bucket)
    root.put_object(Bucket=bucket, Key="in/a.txt", Body=b"a")
    user, secret = unique("user"), uuid.uuid4().hex
    await users.put_user(user, secret)
    arn = "arn:aws:s3:::" + resource.format(b=bucket)
    statement = {"Effect": "Allow", "Action": list(BUCKET_ACTIONS), "Resource": [arn]}
    await users.add_members(group := unique("g"), [user])
    await users.set_group_policy(group, group, policy([statement]))
    s3 = boto3_client(minio_server.endpoint, user, secret)
    assert code(s3.list_objects_v2, Bucket=bucket) == lists
    assert code(s3.list_objects_v2, Bucket=bucket, Prefix="in/") == lists
    assert code(s3.get_bucket_location, Bucket=bucket) == lists
    assert code(s3.list_multipart_uploads, Bucket=bucket) == lists
    assert code(s3.get_object, Bucket=bucket, Key="in/a.txt") == "AccessDenied"  # objects: not granted


async def test_a_group_made_exactly_so_and_removed_with_its_policy(
    users: MinioUsers, admin_api: MinioAdmin
) -> None:
    one, two, bystander = unique("user"), unique("user"), unique("user")
    for user in (one, two, bystander):
        await users.put_user(user, uuid.uuid4().hex)
    group = unique("g")
    assert await users.group_members(group) is None
    await users.add_members(group, [one, two])
    await users.remove_members(group, [two, bystander])  # one not in it: no error
    assert await users.group_members(group) == frozenset({one})
    document = policy([{"Effect": "Allow", "Action": ["s3:GetObject"], "Resource": ["arn:aws:s3:::x/*"]}])
    await users.set_group_policy(group, group, document)
    assert json.loads(await admin_api.group_info(group))["policy"] == group
    # Attached by hand to a user as well: removing the policy detaches it from both.
    await admin_api.policy_set(group, user=two)
    await users.remove_group(group)
    assert await users.group_members(group) is None
    await users.remove_policy(group)
    assert group not in await users.policies()
    await users.remove_group(group)  # none: no error
    await users.remove_policy(group)


async def test_the_all_users_policy_attaches_to_a_group_made_empty_for_it(users: MinioUsers) -> None:
    group = unique("everyone")
    document = policy(
        [{"Effect": "Allow", "Action": ["s3:ListAllMyBuckets"], "Resource": ["arn:aws:s3:::*"]}]
    )
    await users.set_group_policy(group, group, document)
    assert await users.group_members(group) == frozenset()
    assert group in await users.groups()
    info = await users.group(group)
    assert info is not None
    assert info["policy"] == group


async def test_a_missing_user_fails_the_whole_group_change_and_a_deleted_one_leaves_its_groups(
    users: MinioUsers, admin_api: MinioAdmin
) -> None:
    here, gone = unique("user"), unique("user")
    for user in (here, gone):
        await users.put_user(user, uuid.uuid4().hex)
    group = unique("g")
    with pytest.raises(NoSuchMinioUser):
        await users.add_members(group, [here, unique("ghost")])
    assert await users.group_members(group) is None  # not even the user who exists
    await users.add_members(group, [here, gone])
    await admin_api.user_remove(gone)
    assert await users.group_members(group) == frozenset({here})
    info = await users.user(here)
    assert info is not None
    assert group in info["memberOf"]
