"""A layer blob read as its uncompressed tar, hashed as it is read: the digest a configuration's
``rootfs.diff_ids`` names (OCI image spec, config.md).

Decompressed here rather than by tarfile (``r|*``) so that the bytes hashed are exactly the bytes tarfile
parses, and so that what tarfile leaves unread after the end-of-archive blocks (zero blocks, record padding)
is read and counted too. Gzip (one member or several, as Go's reader and so Docker accept) or plain tar; a
layer compressed otherwise is refused by name. Streaming throughout: zlib gives at most ``_OUT`` bytes per
call, so a small blob of zeros never expands in memory, and is fed ``_IN`` bytes at a time, because what it
leaves unconsumed is copied at every call (fed a whole megabyte, a 200 MB layer took a second more).

What follows the archive's end is bounded (``AFTER_ARCHIVE``): a tar writer leaves there a zero block and
its record padding, some kilobytes; a blob of compressed zeros there would be hashed for hours, and the
unpack budget (what the root takes) does not count it.
"""

from __future__ import annotations

import hashlib
import io
import zlib
from typing import IO, Final

_HEAD: Final = 512  # bytes read first, to tell a compression by its magic number
_IN: Final = 64 << 10  # compressed bytes read from the blob at once
_OUT: Final = 256 << 10  # decompressed bytes at most per zlib call
AFTER_ARCHIVE: Final = 1 << 20  # bytes read at most after the archive's last member
GZIP_MAGIC: Final = b"\x1f\x8b"
_GZIP_WBITS: Final = 31  # zlib: a gzip header and trailer (its CRC-32 and length are checked)
_OTHER_COMPRESSIONS: Final = {
    b"BZh": "bzip2",
    b"\xfd7zXZ\x00": "xz",
    b"\x28\xb5\x2f\xfd": "zstd",
}


class UnreadableLayer(ValueError):
    """The blob is neither a plain tar nor gzip, or its gzip stream is corrupt or cut short."""


class UncompressedLayer(io.RawIOBase):
    """``read`` gives the layer's tar bytes; ``finish`` reads what is left and returns their digest. A file
    object for tarfile's stream mode (``r|``): readable, not seekable."""

    def __init__(self, source: IO[bytes]) -> None:
        super().__init__()
        self._source = source
        self._hash = hashlib.sha256()
        # Enough to tell the compression by; then what is read and not yet given to the decompressor.
        self._input = source.read(_HEAD)
        self._output = b""  # decompressed, from ``_offset`` on not yet read
        self._offset = 0
        self._gzip: zlib._Decompress | None = None
        if self._input.startswith(GZIP_MAGIC):
            self._gzip = zlib.decompressobj(_GZIP_WBITS)
        else:
            for magic, name in _OTHER_COMPRESSIONS.items():
                if self._input.startswith(magic):
                    raise UnreadableLayer(f"it is compressed with {name}, which is not supported here")

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1, /) -> bytes:
        """At most ``size`` bytes of the tar (all that is left when negative); empty only at its end."""
        if size < 0:
            return self.readall()
        if self._gzip is None:
            data = self._read_plain(size)
        else:
            if self._offset >= len(self._output):
                self._output, self._offset = self._inflate(), 0
            data = self._output[self._offset : self._offset + size]
            self._offset += len(data)
        self._hash.update(data)
        return data

    def finish(self) -> str:
        """Reads the rest of the stream (hashed too: what follows the archive's last member, at most
        ``AFTER_ARCHIVE`` bytes) and returns the tar's digest, ``sha256:<hex>``."""
        after = 0
        while piece := self.read(_OUT):
            after += len(piece)
            if after > AFTER_ARCHIVE:
                raise UnreadableLayer(f"more than {AFTER_ARCHIVE} bytes follow the end of its tar archive")
        return "sha256:" + self._hash.hexdigest()

    def _read_plain(self, size: int) -> bytes:
        if self._input:
            data, self._input = self._input[:size], self._input[size:]
            return data
        return self._source.read(size)

    def _inflate(self) -> bytes:
        """The next decompressed piece; empty at the end of the blob."""
        assert self._gzip is not None
        try:
            while True:
                if self._gzip.eof:
                    # A member ended: what follows is another member, or the end of the blob.
                    if not self._input:
                        self._input = self._source.read(_IN)
                    if not self._input:
                        return b""
                    self._gzip = zlib.decompressobj(_GZIP_WBITS)
                if not self._input:
                    self._input = self._source.read(_IN)
                    if not self._input:
                        raise UnreadableLayer("its gzip stream ends before its last member does")
                data = self._gzip.decompress(self._input, _OUT)
                # At a member's end the input left is unused_data (unconsumed_tail may repeat it).
                self._input = self._gzip.unused_data if self._gzip.eof else self._gzip.unconsumed_tail
                if data:
                    return data
        except zlib.error as exc:
            raise UnreadableLayer(f"its gzip stream is corrupt ({exc})") from None
