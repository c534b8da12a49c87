"""A file system's failure becomes the storage error that tells callers (and the retry logic) what to do."""

from __future__ import annotations

import errno

import pytest

from oscar_manager.storage.base import StorageError, StorageFull, StorageUnavailable, os_storage_error


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
