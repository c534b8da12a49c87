"""A file system's failure becomes the storage error that tells callers (and the retry logic) what to do."""

from __future__ import annotations

import errno
from typing import Any

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, ReadTimeoutError

from oscar_manager.storage.base import (
    STORE_FAULTS,
    StorageError,
    StorageFull,
    StorageUnavailable,
    StorageUnreachable,
    os_storage_error,
)
from oscar_manager.storage.s3_errors import S3Errors


@pytest.mark.parametrize(
    ("code", "kind", "status"),
    [
        (errno.ENOSPC, StorageFull, 507),
        (errno.EDQUOT, StorageFull, 507),
        (errno.EROFS, StorageUnavailable, 503),
        (errno.EACCES, StorageUnavailable, 503),
        (errno.EIO, StorageUnavailable, 503),
        (errno.EINVAL, StorageError, 502),
    ],
)
def test_os_errors_map_to_the_status_that_says_whose_fault_it_is(
    code: int, kind: type[StorageError], status: int
) -> None:
    error = os_storage_error("local storage: cannot store b/k", OSError(code, "reason"))
    assert type(error) is kind
    assert error.status_code == status
    assert error.message == "local storage: cannot store b/k: reason"


def _client_error(code: str, status: int) -> ClientError:
    answer: Any = {"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}}
    return ClientError(answer, "GetObject")


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (EndpointConnectionError(endpoint_url="http://127.0.0.1:1/b/k"), StorageUnreachable),
        (ReadTimeoutError(endpoint_url="http://127.0.0.1:1/b/k"), StorageUnreachable),
        (ConnectionRefusedError(111, "refused"), StorageUnreachable),
        (_client_error("XMinioServerNotInitialized", 503), StorageUnreachable),
        (_client_error("SlowDown", 503), StorageUnreachable),
        (_client_error("AccessDenied", 403), StorageError),
        (_client_error("InternalError", 500), StorageError),
    ],
)
def test_an_s3_store_that_does_not_answer_is_unreachable_and_its_jobs_are_retried(
    exc: Exception, kind: type[StorageError]
) -> None:
    """Unreachable (still 502 to clients) is a store fault a job is run again for; a refusal is not."""
    with pytest.raises(StorageError) as raised:
        S3Errors("http://127.0.0.1:1").fail("read b/k", exc, "b", "k")
    assert type(raised.value) is kind
    assert raised.value.status_code == 502
    assert isinstance(raised.value, STORE_FAULTS) is (kind is StorageUnreachable)
