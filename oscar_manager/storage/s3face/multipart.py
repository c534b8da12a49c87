"""Multipart uploads of the S3 face: parts wait in a folder of the data directory (never under a bucket,
so no watcher sees them) until CompleteMultipartUpload streams them, in order, into one ``put_stream`` of
the local store. The object therefore appears whole, once, as any other upload."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import re
import secrets
import shutil
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import BinaryIO

from oscar_manager.storage.base import os_storage_error
from oscar_manager.storage.blocking import run_blocking
from oscar_manager.storage.local_files import COPY_CHUNK
from oscar_manager.storage.s3face.errors import S3Error

MAX_PARTS = 10_000
MIN_PART_BYTES = 5 * 1024 * 1024  # S3's least size of every part but the last
_UPLOAD_ID = re.compile(r"[0-9a-f]{32}")
_ETAG = re.compile(r"[0-9a-f]{32}")


def _no_such_upload() -> S3Error:
    return S3Error("NoSuchUpload", "the upload does not exist or was completed or aborted", status=404)


class MultipartUploads:
    def __init__(self, root: Path) -> None:
        self._root = root

    def _folder(self, upload_id: str, bucket: str, key: str) -> Path:
        if not _UPLOAD_ID.fullmatch(upload_id):
            raise _no_such_upload()
        folder = self._root / upload_id
        try:
            target = json.loads((folder / "target").read_text())
        except (OSError, ValueError):
            raise _no_such_upload() from None
        if target != {"bucket": bucket, "key": key}:
            raise _no_such_upload()
        return folder

    async def create(self, bucket: str, key: str) -> str:
        upload_id = secrets.token_hex(16)

        def create() -> None:
            folder = self._root / upload_id
            try:
                folder.mkdir(parents=True)
                (folder / "target").write_text(json.dumps({"bucket": bucket, "key": key}))
            except OSError as exc:
                raise os_storage_error("cannot start a multipart upload", exc) from None

        await run_blocking(create)
        return upload_id

    async def put_part(
        self, upload_id: str, bucket: str, key: str, number: int, chunks: AsyncIterator[bytes]
    ) -> str:
        """Store one part (replacing an earlier one of the same number); its ETag, the MD5 of its bytes."""
        if not 1 <= number <= MAX_PARTS:
            raise S3Error("InvalidArgument", f"part numbers go from 1 to {MAX_PARTS}")
        folder = await run_blocking(lambda: self._folder(upload_id, bucket, key))
        staged = folder / f".{number}.{secrets.token_hex(6)}"
        digest = hashlib.md5(usedforsecurity=False)
        try:
            out = await run_blocking(lambda: staged.open("xb"))
        except OSError as exc:
            raise os_storage_error(f"cannot store part {number}", exc) from None
        try:
            pending = bytearray()
            async for chunk in chunks:
                digest.update(chunk)
                pending += chunk
                if len(pending) >= COPY_CHUNK:
                    await run_blocking(functools.partial(out.write, bytes(pending)))
                    pending.clear()
            await run_blocking(functools.partial(out.write, bytes(pending)))
            await run_blocking(out.close)
            etag = digest.hexdigest()
            await run_blocking(lambda: os.replace(staged, folder / f"{number}.{etag}"))
        except OSError as exc:
            raise os_storage_error(f"cannot store part {number}", exc) from None
        finally:
            with contextlib.suppress(OSError):  # a failed write's buffer cannot be flushed either
                out.close()
            with contextlib.suppress(FileNotFoundError):
                staged.unlink()
        return etag

    async def parts(
        self, upload_id: str, bucket: str, key: str, wanted: Sequence[tuple[int, str]]
    ) -> list[Path]:
        """The files of the parts a CompleteMultipartUpload names, checked as S3 checks them."""
        folder = await run_blocking(lambda: self._folder(upload_id, bucket, key))
        numbers = [number for number, _ in wanted]
        if numbers != sorted(set(numbers)):
            raise S3Error("InvalidPartOrder", "the parts must be listed in ascending order, once each")
        files = []
        for index, (number, etag) in enumerate(wanted):
            path = folder / f"{number}.{etag}"
            try:
                if not _ETAG.fullmatch(etag):  # it names a file: nothing but an MD5 may reach the path
                    raise ValueError(etag)
                size = (await run_blocking(path.stat)).st_size
            except (OSError, ValueError):
                raise S3Error("InvalidPart", f"part {number} with ETag {etag!r} was not uploaded") from None
            if size < MIN_PART_BYTES and index < len(wanted) - 1:
                raise S3Error("EntityTooSmall", f"part {number} is smaller than 5 MiB and not the last")
            files.append(path)
        return files

    async def abort(self, upload_id: str, bucket: str, key: str) -> None:
        folder = await run_blocking(lambda: self._folder(upload_id, bucket, key))
        await run_blocking(lambda: shutil.rmtree(folder, ignore_errors=True))


def _open_binary(path: Path) -> BinaryIO:
    return path.open("rb")


async def concatenated(files: Sequence[Path]) -> AsyncIterator[bytes]:
    """The parts' bytes one after the other, a chunk at a time."""
    for path in files:
        handle = await run_blocking(functools.partial(_open_binary, path))
        try:
            while data := await run_blocking(functools.partial(handle.read, COPY_CHUNK)):
                yield data
        finally:
            handle.close()
