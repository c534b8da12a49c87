"""A bucket's notification rules that send new objects under input folders to an SQS queue.

The manager owns the queue configurations whose ``Id`` starts with ``oscar-`` and name its queue; every
other configuration of the bucket (other queues, topics, functions, EventBridge) is kept as it is. S3
refuses two rules of one event type whose prefixes overlap, so folders inside another folder are left
to the outer folder's rule (the intake routes each object to the services that hold it).
"""

from __future__ import annotations

import hashlib
import logging
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from oscar_manager.storage.base import StorageError
from oscar_manager.storage.s3_errors import S3Errors, code

if TYPE_CHECKING:
    from oscar_manager.storage.s3 import S3ObjectStore

log = logging.getLogger(__name__)

RULE_ID_PREFIX = "oscar-"
_ACCESS_CODES = {"AccessDenied", "403", "NotImplemented", "MethodNotAllowed"}


def outermost(prefixes: set[str]) -> list[str]:
    """The prefixes not inside another (``""`` holds them all)."""
    return sorted(p for p in prefixes if not any(o != p and p.startswith(o) for o in prefixes))


def _rule_id(queue_arn: str, prefix: str) -> str:
    return RULE_ID_PREFIX + hashlib.sha256(f"{queue_arn}\n{prefix}".encode()).hexdigest()[:24]


def _ours(rule: Any, queue_arn: str) -> bool:
    return str(rule.get("Id", "")).startswith(RULE_ID_PREFIX) and rule.get("QueueArn") == queue_arn


async def set_queue_rules(store: S3ObjectStore, bucket: str, *, queue_arn: str, prefixes: set[str]) -> bool:
    """Make ``bucket`` send ObjectCreated events under ``prefixes`` to ``queue_arn`` (none: remove the
    manager's rules for that queue). False when the credentials may not read or write the bucket's
    notification rules: the queue is then expected to be fed already (set up by the bucket's owner)."""
    client = store.client
    where = f"S3 storage at {store.where}"
    try:
        current: dict[str, Any] = dict(await client.get_bucket_notification_configuration(Bucket=bucket))
    except Exception as exc:
        return _refused(exc, bucket, where, "read")
    current.pop("ResponseMetadata", None)
    kept = [rule for rule in current.get("QueueConfigurations", []) if not _ours(rule, queue_arn)]
    wanted = [
        {
            "Id": _rule_id(queue_arn, prefix),
            "QueueArn": queue_arn,
            "Events": ["s3:ObjectCreated:*"],
            **({"Filter": {"Key": {"FilterRules": [{"Name": "prefix", "Value": prefix}]}}} if prefix else {}),
        }
        for prefix in outermost(prefixes)
    ]
    existing = [rule for rule in current.get("QueueConfigurations", []) if _ours(rule, queue_arn)]
    if sorted(str(r.get("Id")) for r in existing) == sorted(str(r["Id"]) for r in wanted):
        return True
    configuration = {**current, "QueueConfigurations": kept + wanted}
    try:
        await client.put_bucket_notification_configuration(
            Bucket=bucket,
            NotificationConfiguration=configuration,  # type: ignore[arg-type]
        )
    except Exception as exc:
        return _refused(exc, bucket, where, "write")
    return True


def _refused(exc: Exception, bucket: str, where: str, verb: str) -> bool:
    """False for a refusal of the credentials; every other failure raised as a ``StorageError``."""
    if isinstance(exc, ClientError) and code(exc) in _ACCESS_CODES:
        log.warning(
            "%s: may not %s the notification rules of bucket %s (%s): the queue must be fed already",
            where,
            verb,
            bucket,
            code(exc),
        )
        return False
    if isinstance(exc, ClientError):
        message = exc.response.get("Error", {}).get("Message") or code(exc)
        raise StorageError(
            f"{where}: refused the notification rules of bucket {bucket!r}: {code(exc)}: {message}"
        ) from None
    S3Errors(where.removeprefix("S3 storage at ")).fail(
        f"{verb} the notification rules of {bucket!r}", exc, bucket, None
    )
