"""A report's store: the selected lines of the current period, appended to one file.

The store only ever grows by whole batches, and its size is committed in the checkpoint after
the bytes are fsynced. On start anything beyond the committed size was written by a run that
died before committing it: those lines will be read and stored again, so the tail is cut first.

The store is the agent's own file (see agent.fs): a symlink, another user's file or a hard link
planted at its name is refused, never written. One that disappears while in use (deleted by
hand) is made again from the descriptor the agent still holds, so nothing is lost.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import stat
from datetime import date
from pathlib import Path

import structlog

from agent.config.model import ReportConfig
from agent.core.errors import UnsafeFile
from agent.core.fs import (
    check_own,
    create_new,
    directory,
    fsync_dir,
    make_dirs,
    open_append,
    open_read,
    refuse,
    write_all,
)

log = structlog.get_logger("tailmail.store")
COPY_BYTES = 1 << 20


class ReportStore:
    """Owns one report's store file while the agent runs: the first kind of Output.

    The file is opened on first use, and again after a refusal: a store that cannot be opened
    (a planted symlink, a full disk) holds its lines in memory and raises from `write` and
    `flush`, so the checkpoint never counts lines that are not on disk, and the service retries.
    """

    def __init__(self, config: ReportConfig, committed: int | None) -> None:
        self.config = config
        self.path = config.store
        self.committed = committed  # None: first sight of this store, take what it holds
        self.fd = -1
        self.identity = (0, 0)
        self.size = committed or 0
        # What the period's report must say about the file, taken by the pipeline (notices()).
        self._notices: list[tuple[str, str]] = []
        self.pending: list[bytes] = []
        self._unsynced = False
        self._damaged = False  # a write failed part-way: cut back to `size` before the next one

    def open(self) -> None:
        """Open (or create) the file, cutting off what a crash left beyond the committed size."""
        if self.fd >= 0:
            return
        make_dirs(self.path.parent)
        fd, created = open_append(self.path, os.O_RDWR)
        try:
            if created:
                # A new file's name lives in the directory: without this fsync a power cut can
                # lose the store's directory entry even after its data and the checkpoint were
                # synced.
                fsync_dir(self.path.parent)
            st = os.fstat(fd)
            size = st.st_size
            committed = size if self.committed is None else self.committed
            if size > committed:
                log.info(
                    "store.trimmed", report=self.config.name, uncommitted_bytes=size - committed
                )
                os.ftruncate(fd, committed)
                os.fsync(fd)
            elif size < committed:
                log.warning(
                    "store.shorter_than_committed",
                    report=self.config.name,
                    size=size,
                    committed=committed,
                )
                self._notices.append(
                    (
                        "store",
                        f"the store {self.path} was {committed - size:,} bytes shorter than "
                        "tailmail had committed (cut or replaced while tailmail was stopped): the "
                        "events in those bytes are lost",
                    )
                )
                committed = size
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd
        self.identity = (st.st_dev, st.st_ino)
        self.size = self.committed = committed

    @property
    def name(self) -> str:
        return self.config.name

    def notices(self) -> list[tuple[str, str]]:
        """(kind, sentence) for the period's problems, each given once."""
        taken, self._notices = self._notices, []
        return taken

    def accept(self, lines: list[bytes]) -> None:
        self.pending.extend(lines)

    def write(self) -> None:
        """Append the pending lines; they are durable only after the next flush. On error they
        stay pending, and the part that was written is cut off before the next attempt."""
        if not self.pending:
            return
        self.open()
        if self._damaged:
            os.ftruncate(self.fd, self.size)
            self._damaged = False
        data = b"\n".join(self.pending) + b"\n"
        try:
            write_all(self.fd, data)
        except OSError:
            self._damaged = True
            raise
        self.size += len(data)
        self.pending.clear()
        self._unsynced = True

    def flush(self) -> None:
        """Write the pending lines and make them durable; on error keep them pending.

        Before the checkpoint counts the bytes, the name must still lead to them: a store
        deleted by hand is made again from what this descriptor holds; another file put in its
        place is refused (UnsafeFile), and nothing is committed until it is moved away.
        """
        self.write()
        if self.fd < 0:
            self.open()
        self._check_name()
        if self._unsynced:
            # The store's bytes must be on disk before the checkpoint that counts them is.
            os.fdatasync(self.fd)
            self._unsynced = False

    def _check_name(self) -> None:
        try:
            st = os.stat(self.path, follow_symlinks=False)
        except FileNotFoundError:
            self._recreate()
            return
        if (st.st_dev, st.st_ino) != self.identity:
            raise UnsafeFile(
                errno.EEXIST,
                f"the store {self.path} was replaced by another file while in use; tailmail keeps "
                "the period's events and stops reading until that file is moved away (it then "
                "makes the store again from what it holds)",
            )

    def _recreate(self) -> None:
        """The store's name is gone: write what this descriptor holds to a new file of that name."""
        make_dirs(self.path.parent)
        with directory(self.path.parent) as dir_fd:
            tmp = f".{self.path.name}.recreate.tmp"
            new = create_new(dir_fd, tmp, self.path.parent / tmp, os.O_RDWR)
            try:
                offset = 0
                while offset < self.size:
                    data = os.pread(self.fd, min(COPY_BYTES, self.size - offset), offset)
                    if not data:
                        break
                    write_all(new, data)
                    offset += len(data)
                os.fsync(new)
                # A link, unlike a rename, fails when the name was taken meanwhile.
                try:
                    os.link(tmp, self.path.name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
                except FileExistsError:
                    raise UnsafeFile(
                        errno.EEXIST,
                        f"the store {self.path} was replaced by another file while in use",
                    ) from None
                os.unlink(tmp, dir_fd=dir_fd)
                os.fsync(dir_fd)
            except BaseException:
                os.close(new)
                raise
        os.close(self.fd)
        fcntl.fcntl(new, fcntl.F_SETFL, fcntl.fcntl(new, fcntl.F_GETFL) | os.O_APPEND)
        self.fd = new
        st = os.fstat(new)
        self.identity = (st.st_dev, st.st_ino)
        self._notices.append(
            (
                "notice",
                f"the store {self.path} was deleted while in use; tailmail made it again from "
                "what it held: nothing was lost",
            )
        )
        self._unsynced = False
        log.warning(
            "store.recreated",
            report=self.config.name,
            path=str(self.path),
            bytes=self.size,
            hint="the store was deleted while in use; it was made again from what tailmail held",
        )

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def open_store(config: ReportConfig, committed: int | None) -> ReportStore:
    """A store with its file open (raises what opening raises)."""
    store = ReportStore(config, committed)
    store.open()
    return store


def rotate_store(config: ReportConfig, rotated: Path, size: int) -> None:
    """The period's store becomes `rotated`, holding exactly its `size` committed bytes; a
    period with no store file gets an empty one. Safe to repeat: done once `rotated` exists.

    By descriptor and without following links: a file planted at the store's name since it was
    closed is refused (UnsafeFile), not cut or renamed.
    """
    if os.path.lexists(rotated):
        return
    store = config.store
    make_dirs(store.parent)
    with directory(store.parent) as dir_fd:
        try:
            fd = os.open(
                store.name,
                os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                dir_fd=dir_fd,
            )
        except FileNotFoundError:
            os.close(create_new(dir_fd, rotated.name, rotated))
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENXIO):
                raise refuse(store, exc) from None
            raise
        else:
            try:
                check_own(os.fstat(fd), store)
                # The period holds exactly the committed bytes the intent recorded.
                os.ftruncate(fd, size)
            finally:
                os.close(fd)
            os.replace(store.name, rotated.name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        # The rename must be durable before the report that names the file is queued and the
        # intent cleared: after a power cut the file must be where the outbox says.
        os.fsync(dir_fd)


def rotated_path(config: ReportConfig, day: date) -> Path:
    """`daily.jsonl` -> `daily-2026-11-21.jsonl`; later ones that day get `.2`, `.3`, ...

    The number follows the highest one on disk for that day, never a lower one that pruning
    freed: the names must sort in the order the periods happened. Names taken by files that are
    not ours count as taken too: the rotation never renames over them.
    """
    store = config.store
    taken = [n for d, n, _ in _rotated(config, ours_only=False) if d == day.isoformat()]
    n = max(taken, default=0) + 1
    tag = day.isoformat() if n == 1 else f"{day.isoformat()}.{n}"
    return store.with_name(f"{store.stem}-{tag}{store.suffix}")


def rotated_files(config: ReportConfig) -> list[Path]:
    """The rotated files of a report that are still on disk, newest first.

    Only regular files of the agent's own: a symlink or another user's file planted under such a
    name is never compressed (which would copy what it leads to) or deleted.
    """
    return [path for _, _, path in sorted(_rotated(config), reverse=True)]


def _rotated(config: ReportConfig, ours_only: bool = True) -> list[tuple[str, int, Path]]:
    """(day, number, path) of each rotated file of the report, compressed or not."""
    store = config.store
    # Exactly the names `rotated_path` gives: a looser `daily-*` would also take the files of a
    # report stored beside it as `daily-security.jsonl` (its live store too), and prune them.
    # Ordered by the period in the name, not by mtime, which compressing a file renews.
    name = re.compile(
        re.escape(store.stem)
        + r"-(\d{4}-\d{2}-\d{2})(?:\.(\d+))?"
        + re.escape(store.suffix)
        + r"(?:\.gz)?"
    )
    found = []
    uid = os.geteuid()
    try:
        entries = list(os.scandir(store.parent))
    except OSError:
        return []
    for entry in entries:
        m = name.fullmatch(entry.name)
        if not m:
            continue
        if ours_only:
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if not stat.S_ISREG(st.st_mode) or st.st_uid != uid:
                continue
        found.append((m[1], int(m[2] or 1), store.parent / entry.name))
    return found


def prune(config: ReportConfig, protected: set[str]) -> list[Path]:
    """Delete rotated files beyond `keep`, never one whose report is not yet sent."""
    removed = []
    for path in rotated_files(config)[config.keep :]:
        base = str(path)[:-3] if path.name.endswith(".gz") else str(path)
        if base in protected or str(path) in protected:
            continue
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            log.error("store.prune_failed", report=config.name, path=str(path), error=str(exc))
            continue
        removed.append(path)
        log.info("store.pruned", report=config.name, path=str(path))
    return removed


def compress(path: Path) -> Path:
    """gzip a rotated file beside itself; the original goes only once the copy is durable.

    The copy is made under a temporary name created exclusively, without following links, and
    the original is read without following one either.
    """
    import gzip  # at rotation only: gzip and shutil (with bz2 and lzma) cost 4 ms at every start
    import shutil

    target = path.with_name(path.name + ".gz")
    tmp = f".{path.name}.gz.tmp"
    src_fd = open_read(path)
    with os.fdopen(src_fd, "rb") as src, directory(path.parent) as dir_fd:
        check_own(os.fstat(src_fd), path)
        raw_fd = create_new(dir_fd, tmp, path.parent / tmp)
        with os.fdopen(raw_fd, "wb") as raw:
            with gzip.GzipFile(filename=path.name, mode="wb", fileobj=raw, mtime=0) as gz:
                shutil.copyfileobj(src, gz, COPY_BYTES)
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, target.name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        os.fsync(dir_fd)
        os.unlink(path.name, dir_fd=dir_fd)
    return target
