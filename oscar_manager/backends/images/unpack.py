"""Layers applied onto a root file system, as the OCI image spec says, without ever leaving that root.

Every path is walked from the root's descriptor one component at a time with ``O_NOFOLLOW``: a symbolic
link a layer planted is never followed by the manager (a member under it is refused), so nothing can be
written outside the root, whatever the order of members. Members with an absolute path or a ``..`` are
refused, and so are hard links to what is not inside the root. Whiteouts (``.wh.<name>``) remove what lower
layers made, opaque markers (``.wh..wh..opq``) empty a folder of them. Set-user and set-group bits are
dropped (the sandbox sets no_new_privs anyway); device nodes are skipped (the sandbox has its own /dev).

Python's tarfile reads the archive (streamed, decompressed and hashed by ``layer_stream``: ``apply``
returns the layer's diff_id); its ``data`` filter is not used, because it resolves paths on the real file
system by name, which is what this module must not do.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import IO, Final

from oscar_manager.backends.images.errors import ImageRefused, ImageTooLarge
from oscar_manager.backends.images.layer_stream import UncompressedLayer, UnreadableLayer

WHITEOUT: Final = ".wh."
OPAQUE: Final = ".wh..wh..opq"
ENTRY_COST: Final = 512  # bytes counted per member, so a flood of empty files is bounded too
_DIR_FLAGS: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# Mount points the sandbox needs as real folders (a layer's symlink there would be followed by bwrap).
MOUNT_POINTS: Final = ("tmp", "dev", "proc", "run", "etc")
BOUND_FILES: Final = ("etc/resolv.conf", "etc/hosts")
CHUNK: Final = 1 << 20


class UnsafeLayer(ImageRefused):
    """A layer member that would write outside the root, or through a link."""


@dataclass
class Budget:
    """Bytes the unpacked root may take (the cache's room for it)."""

    limit: int
    used: int = 0

    def take(self, amount: int, *, image: str) -> None:
        self.used += amount
        if self.used > self.limit:
            raise ImageTooLarge(
                f"image {image}: unpacked it is over {self.used} bytes, more than the {self.limit} bytes"
                " the image cache has room for (OSCAR_IMAGE_CACHE_BYTES)"
            )


def split_name(name: str, *, image: str) -> tuple[str, ...]:
    """A member's path as components; refuses absolute paths and ``..``."""
    if name.startswith("/"):
        raise UnsafeLayer(f"image {image}: a layer member has an absolute path ({name!r}): refused")
    parts = tuple(part for part in name.split("/") if part not in ("", "."))
    if ".." in parts:
        raise UnsafeLayer(f"image {image}: a layer member's path goes up with '..' ({name!r}): refused")
    return parts


@dataclass
class _DirAttrs:
    mode: int
    uid: int
    gid: int
    mtime: float


@dataclass
class RootWriter:
    """Applies layers in order onto the folder open as ``root_fd`` (which the caller keeps)."""

    root_fd: int
    image: str
    budget: Budget
    owners: bool = field(default_factory=lambda: os.geteuid() == 0)  # chown as the layer says (root only)
    _dirs: dict[tuple[str, ...], _DirAttrs] = field(default_factory=dict)

    # --- walking -----------------------------------------------------------------------------------

    @contextmanager
    def _folder(self, parts: tuple[str, ...], *, create: bool) -> Iterator[int | None]:
        """The folder at ``parts`` opened without following any link; None when missing and not
        created. A component that is a link or not a folder is refused."""
        fd = os.dup(self.root_fd)
        try:
            for index, part in enumerate(parts):
                try:
                    child = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        yield None
                        return
                    os.mkdir(part, 0o755, dir_fd=fd)
                    child = os.open(part, _DIR_FLAGS, dir_fd=fd)
                    os.fchmod(child, 0o755)  # whatever the manager's umask
                except OSError as exc:
                    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                        where = "/".join(parts[: index + 1])
                        raise UnsafeLayer(
                            f"image {self.image}: a layer writes through {where!r}, which is a link or not"
                            " a folder: refused"
                        ) from None
                    raise
                os.close(fd)
                fd = child
            yield fd
        finally:
            os.close(fd)

    @staticmethod
    def _remove(dir_fd: int, name: str) -> None:
        try:
            info = os.lstat(name, dir_fd=dir_fd)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(info.st_mode):
            shutil.rmtree(name, dir_fd=dir_fd)  # fd-based, never follows links
        else:
            os.unlink(name, dir_fd=dir_fd)

    # --- layers ------------------------------------------------------------------------------------

    def apply(self, stream: IO[bytes]) -> str:
        """One layer (a tar stream, gzip-compressed or not); returns its diff_id, the digest of the
        uncompressed tar (all of it, to the end of the stream)."""
        added: set[tuple[str, ...]] = set()
        try:
            tar = UncompressedLayer(stream)
            with tarfile.open(fileobj=tar, mode="r|") as archive:
                for member in archive:
                    self._member(archive, member, added)
            return tar.finish()
        except UnreadableLayer as exc:
            raise ImageRefused(f"image {self.image}: a layer cannot be read: {exc}") from None
        except tarfile.TarError as exc:
            raise ImageRefused(f"image {self.image}: a layer is not a readable tar archive: {exc}") from None

    def _member(self, archive: tarfile.TarFile, member: tarfile.TarInfo, added: set[tuple[str, ...]]) -> None:
        parts = split_name(member.name, image=self.image)
        if not parts:
            return  # the root itself: it keeps its own attributes
        parent, base = parts[:-1], parts[-1]
        self.budget.take(ENTRY_COST, image=self.image)
        if base == OPAQUE:
            with self._folder(parent, create=True) as fd:
                assert fd is not None
                for name in os.listdir(fd):
                    if (*parent, name) not in added:
                        self._remove(fd, name)
            return
        if base.startswith(WHITEOUT):
            hidden = base[len(WHITEOUT) :]
            if hidden in ("", ".", ".."):
                raise UnsafeLayer(f"image {self.image}: invalid whiteout {member.name!r}")
            with self._folder(parent, create=False) as fd:
                if fd is not None:
                    self._remove(fd, hidden)
            return
        added.add(parts)
        with self._folder(parent, create=True) as fd:
            assert fd is not None
            if member.isdir():
                self._directory(fd, parts, member)
            elif member.isreg():
                self._file(fd, base, member, archive)
            elif member.issym():
                self._remove(fd, base)
                os.symlink(member.linkname, base, dir_fd=fd)
                self._own(base, member, dir_fd=fd)
            elif member.islnk():
                self._hard_link(fd, parts, member)
            elif member.isfifo():
                self._remove(fd, base)
                os.mkfifo(base, _mode(member.mode), dir_fd=fd)
                self._own(base, member, dir_fd=fd)
            # Character and block devices: skipped (the sandbox mounts its own /dev).

    def _directory(self, fd: int, parts: tuple[str, ...], member: tarfile.TarInfo) -> None:
        base = parts[-1]
        try:
            existing = os.lstat(base, dir_fd=fd)
        except FileNotFoundError:
            existing = None
        if existing is not None and not stat.S_ISDIR(existing.st_mode):
            self._remove(fd, base)
            existing = None
        if existing is None:
            os.mkdir(base, 0o755, dir_fd=fd)
        # Applied once every layer is in: a folder closed to writing must still receive its files.
        self._dirs[parts] = _DirAttrs(_mode(member.mode), member.uid, member.gid, member.mtime)

    def _file(self, fd: int, base: str, member: tarfile.TarInfo, archive: tarfile.TarFile) -> None:
        self.budget.take(member.size, image=self.image)
        self._remove(fd, base)
        source = archive.extractfile(member)
        assert source is not None
        out = os.open(
            base, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=fd
        )
        with open(out, "wb", closefd=True) as target:
            shutil.copyfileobj(source, target, CHUNK)
            target.flush()
            if self.owners:
                os.fchown(out, member.uid, member.gid)
            os.fchmod(out, _mode(member.mode))
            os.utime(out, (member.mtime, member.mtime))

    def _hard_link(self, fd: int, parts: tuple[str, ...], member: tarfile.TarInfo) -> None:
        target = split_name(member.linkname, image=self.image)
        base = parts[-1]
        if target == parts:
            return
        if not target:
            raise UnsafeLayer(f"image {self.image}: hard link {member.name!r} to the root: refused")
        with self._folder(target[:-1], create=False) as source_fd:
            if source_fd is None:
                raise UnsafeLayer(
                    f"image {self.image}: hard link {member.name!r} to a missing {member.linkname!r}"
                )
            try:
                info = os.lstat(target[-1], dir_fd=source_fd)
            except FileNotFoundError:
                raise UnsafeLayer(
                    f"image {self.image}: hard link {member.name!r} to a missing {member.linkname!r}"
                ) from None
            if stat.S_ISDIR(info.st_mode):
                raise UnsafeLayer(f"image {self.image}: hard link {member.name!r} to a folder: refused")
            self._remove(fd, base)
            os.link(target[-1], base, src_dir_fd=source_fd, dst_dir_fd=fd, follow_symlinks=False)

    def _own(self, name: str, member: tarfile.TarInfo, *, dir_fd: int) -> None:
        if self.owners:
            os.chown(name, member.uid, member.gid, dir_fd=dir_fd, follow_symlinks=False)

    # --- the end -----------------------------------------------------------------------------------

    def finish(self, *, working_dir: str = "") -> None:
        """Folder attributes (deepest first), then the mount points the sandbox needs made real, and the
        image's working directory (a runtime creates it when the image lacks it)."""
        for parts in sorted(self._dirs, key=len, reverse=True):
            attrs = self._dirs[parts]
            try:
                with self._folder(parts, create=False) as fd:
                    if fd is None:
                        continue
                    if self.owners:
                        os.fchown(fd, attrs.uid, attrs.gid)
                    os.fchmod(fd, attrs.mode)
                    os.utime(fd, (attrs.mtime, attrs.mtime))
            except UnsafeLayer:
                continue  # replaced by a link or a file in a later layer: nothing of it to set
        for name in MOUNT_POINTS:
            self._real_folder(name)
        for path in BOUND_FILES:
            folder, _, name = path.rpartition("/")
            with self._folder((folder,), create=True) as fd:
                assert fd is not None
                try:
                    info = os.lstat(name, dir_fd=fd)
                    if stat.S_ISREG(info.st_mode):
                        continue
                except FileNotFoundError:
                    pass
                self._remove(fd, name)
                made = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644, dir_fd=fd)
                os.fchmod(made, 0o644)
                os.close(made)
        if working_dir:
            try:
                with self._folder(split_name(working_dir.lstrip("/"), image=self.image), create=True):
                    pass
            except UnsafeLayer:
                pass  # through a link of the image: left to the sandbox, which resolves it inside the image

    def _real_folder(self, name: str) -> None:
        try:
            info = os.lstat(name, dir_fd=self.root_fd)
            if stat.S_ISDIR(info.st_mode):
                return
            self._remove(self.root_fd, name)
        except FileNotFoundError:
            pass
        os.mkdir(name, 0o755, dir_fd=self.root_fd)
        made = os.open(name, _DIR_FLAGS, dir_fd=self.root_fd)
        os.fchmod(made, 0o755)
        os.close(made)


def _mode(mode: int) -> int:
    """Permission bits and the sticky bit; never set-user or set-group."""
    return mode & 0o1777
