"""What the manager needs of a message queue that storage notifications arrive on (SQS: ``storage.sqs``).

Kept apart from the adapter, which loads aiobotocore: a manager whose services read no queue never does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from oscar_manager.storage.base import StorageError


class QueueNotFound(StorageError):
    """The queue a provider names does not exist (or is not visible to its credentials)."""

    status_code = 400


@dataclass(frozen=True, slots=True)
class QueueMessage:
    id: str
    receipt: str  # what deleting this delivery of it takes
    body: str
    receive_count: int  # deliveries so far, this one included


class MessageQueue(Protocol):
    url: str

    async def arn(self) -> str: ...

    async def receive(self, *, wait: int = 20, limit: int = 10) -> list[QueueMessage]: ...

    async def delete(self, message: QueueMessage) -> None: ...
