"""An SQS queue (AWS, or any SQS-compatible server) through aiobotocore: where S3 sends bucket notifications.

Open one with :meth:`SqsQueue.connect`, an async context manager owning the client. ``queue`` is the
queue's URL (``https://sqs.eu-west-1.amazonaws.com/123456789012/uploads``; the endpoint is taken from it)
or its name, looked up on ``endpoint`` (``""``: AWS in ``region``). Every botocore, aiobotocore and aiohttp
exception is converted to the errors of ``storage.base``: a queue that does not exist is ``QueueNotFound``,
one that does not answer ``StorageUnreachable``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar
from urllib.parse import urlsplit

import aiohttp
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore import UNSIGNED
from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotoConnectionError

from oscar_manager.storage.base import StorageError, StorageUnreachable
from oscar_manager.storage.egress import ConnectGuard
from oscar_manager.storage.queues import QueueMessage, QueueNotFound
from oscar_manager.storage.s3_client import guarded_session
from oscar_manager.storage.s3_errors import code, status

if TYPE_CHECKING:
    from types_aiobotocore_sqs.client import SQSClient

_T = TypeVar("_T")
_MISSING_CODES = {"AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist"}
_UNREACHABLE = (BotoConnectionError, HTTPClientError, asyncio.TimeoutError, aiohttp.ClientError, OSError)


def _is_url(queue: str) -> bool:
    return queue.startswith(("http://", "https://"))


def queue_endpoint(queue: str, endpoint: str) -> str:
    """The SQS endpoint of a queue given by URL (its scheme and host), else ``endpoint``."""
    if _is_url(queue):
        parts = urlsplit(queue)
        return f"{parts.scheme}://{parts.netloc}"
    return endpoint


class SqsQueue:
    def __init__(self, client: SQSClient, url: str) -> None:
        self._client = client
        self.url = url

    @classmethod
    @contextlib.asynccontextmanager
    async def connect(
        cls,
        *,
        queue: str,
        endpoint: str = "",
        access_key: str = "",
        secret_key: str = "",
        region: str = "us-east-1",
        verify: bool = True,
        connect_timeout: float = 30.0,
        guard: ConnectGuard | None = None,
    ) -> AsyncIterator[SqsQueue]:
        """``connect_timeout`` bounds connecting and each answer beyond a long poll's wait. Without keys the
        requests are unsigned: the manager's own AWS credentials are not a service's."""
        endpoint = queue_endpoint(queue, endpoint)
        where = endpoint or f"AWS SQS ({region})"
        options: dict[str, Any] = {
            "connect_timeout": connect_timeout,
            # A long poll holds the answer up to 20 s: the read timeout must outlast it.
            "read_timeout": connect_timeout + 20,
            "retries": {"total_max_attempts": 2, "mode": "standard"},
        }
        if guard is not None:
            options["http_session_cls"] = guarded_session(guard)
            options["proxies"] = {}
        if not access_key:
            options["signature_version"] = UNSIGNED
        async with contextlib.AsyncExitStack() as stack:
            try:
                client = await stack.enter_async_context(
                    get_session().create_client(
                        "sqs",
                        endpoint_url=endpoint or None,
                        region_name=region or "us-east-1",
                        aws_access_key_id=access_key or None,
                        aws_secret_access_key=secret_key or None,
                        verify=verify,
                        config=AioConfig(**options),
                    )
                )
            except (BotoCoreError, ValueError) as exc:
                raise StorageError(f"SQS at {where}: cannot create a client: {exc}") from None
            url = queue
            if not _is_url(queue):
                answer = await _call(where, f"find queue {queue!r}", client.get_queue_url(QueueName=queue))
                url = answer["QueueUrl"]
            yield cls(client, url)

    async def arn(self) -> str:
        """The queue's ARN (what a bucket notification names); also proves the queue is there."""
        answer = await self._call(
            "read the queue's attributes",
            self._client.get_queue_attributes(QueueUrl=self.url, AttributeNames=["QueueArn"]),
        )
        arn = answer.get("Attributes", {}).get("QueueArn")
        if not arn:
            raise StorageError(f"SQS queue {self.url}: its attributes name no QueueArn")
        return arn

    async def receive(self, *, wait: int = 20, limit: int = 10) -> list[QueueMessage]:
        """Up to ``limit`` messages, waiting up to ``wait`` seconds for the first (a long poll)."""
        request = self._client.receive_message(
            QueueUrl=self.url,
            WaitTimeSeconds=wait,
            MaxNumberOfMessages=limit,
            AttributeNames=["ApproximateReceiveCount"],
        )
        answer = await self._call("receive messages", request)
        return [
            QueueMessage(
                id=message.get("MessageId", ""),
                receipt=message.get("ReceiptHandle", ""),
                body=message.get("Body", ""),
                receive_count=int(message.get("Attributes", {}).get("ApproximateReceiveCount") or 1),
            )
            for message in answer.get("Messages", [])
        ]

    async def delete(self, message: QueueMessage) -> None:
        await self._call(
            "delete a message", self._client.delete_message(QueueUrl=self.url, ReceiptHandle=message.receipt)
        )

    async def send(self, body: str) -> None:
        """Post a message (tests, and the manager's own probes)."""
        await self._call("send a message", self._client.send_message(QueueUrl=self.url, MessageBody=body))

    async def _call(self, action: str, request: Awaitable[_T]) -> _T:
        return await _call(f"queue {self.url}", action, request)


async def _call(where: str, action: str, request: Awaitable[_T]) -> _T:
    try:
        return await request
    except (ClientError, BotoCoreError, *_UNREACHABLE) as exc:
        _fail(where, action, exc)


def _fail(where: str, action: str, exc: Exception) -> NoReturn:
    if isinstance(exc, ClientError):
        answered = code(exc)
        message = exc.response.get("Error", {}).get("Message") or answered or f"HTTP {status(exc)}"
        if answered in _MISSING_CODES:
            raise QueueNotFound(f"SQS {where}: cannot {action}: the queue does not exist") from None
        fault = StorageUnreachable if status(exc) in (500, 502, 503, 504) else StorageError
        raise fault(f"SQS {where}: cannot {action}: {answered}: {message}") from None
    if isinstance(exc, _UNREACHABLE):
        raise StorageUnreachable(f"SQS {where}: cannot {action}: {exc}") from None
    raise StorageError(f"SQS {where}: cannot {action}: {exc}") from None
