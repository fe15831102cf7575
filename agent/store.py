"""A report's store: the selected lines of the current period, appended to one file.

The store only ever grows by whole batches, and its size is committed in the checkpoint after
the bytes are fsynced. On start anything beyond the committed size was written by a run that
died before committing it: those lines will be read and stored again, so the tail is cut first.
"""

from __future__ import annotations

import os
import re
from datetime import date
from pathlib import Path

import structlog

from agent.config import ReportConfig
from agent.state import fsync_dir

log = structlog.get_logger("tailmail.store")


class ReportStore:
    """Owns one report's store file while the agent runs."""

    def __init__(self, config: ReportConfig, committed: int | None) -> None:
        self.config = config
        self.path = config.store
        self.path.parent.mkdir(parents=True, exist_ok=True)
        created = not self.path.exists()
        self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)
        if created:
            # A new file's name lives in the directory: without this fsync a power cut can lose
            # the store's directory entry even after its data and the checkpoint were synced.
            fsync_dir(self.path.parent)
        size = os.fstat(self.fd).st_size
        if committed is None:
            committed = size  # first sight of this store: what it holds belongs to the period
        if size > committed:
            log.info("store.trimmed", report=config.name, uncommitted_bytes=size - committed)
            os.ftruncate(self.fd, committed)
            os.fsync(self.fd)
        elif size < committed:
            log.warning(
                "store.shorter_than_committed", report=config.name, size=size, committed=committed
            )
            committed = size
        self.size = committed
        self.pending: list[bytes] = []
        self._unsynced = False
        self._damaged = False  # a write failed part-way: cut back to `size` before the next one

    def add(self, lines: list[bytes]) -> None:
        self.pending.extend(lines)

    def write(self) -> None:
        """Append the pending lines; they are durable only after the next flush. On error they
        stay pending, and the part that was written is cut off before the next attempt."""
        if not self.pending:
            return
        if self._damaged:
            os.ftruncate(self.fd, self.size)
            self._damaged = False
        data = b"\n".join(self.pending) + b"\n"
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self.fd, view) :]
        except OSError:
            self._damaged = True
            raise
        self.size += len(data)
        self.pending.clear()
        self._unsynced = True

    def flush(self) -> None:
        """Write the pending lines and make them durable; on error keep them pending."""
        self.write()
        if self._unsynced:
            # The store's bytes must be on disk before the checkpoint that counts them is.
            os.fdatasync(self.fd)
            self._unsynced = False

    def close(self) -> None:
        os.close(self.fd)


def rotated_path(config: ReportConfig, day: date) -> Path:
    """`daily.jsonl` -> `daily-2026-11-21.jsonl`; later ones that day get `.2`, `.3`, ...

    The number follows the highest one on disk for that day, never a lower one that pruning
    freed: the names must sort in the order the periods happened.
    """
    store = config.store
    taken = [n for d, n, _ in _rotated(config) if d == day.isoformat()]
    n = max(taken, default=0) + 1
    tag = day.isoformat() if n == 1 else f"{day.isoformat()}.{n}"
    return store.with_name(f"{store.stem}-{tag}{store.suffix}")


def rotated_files(config: ReportConfig) -> list[Path]:
    """The rotated files of a report that are still on disk, newest first."""
    return [path for _, _, path in sorted(_rotated(config), reverse=True)]


def _rotated(config: ReportConfig) -> list[tuple[str, int, Path]]:
    """(day, number, path) of each rotated file of the report, compressed or not."""
    store = config.store
    if not store.parent.is_dir():
        return []
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
    for path in store.parent.iterdir():
        if m := name.fullmatch(path.name):
            found.append((m[1], int(m[2] or 1), path))
    return found


def prune(config: ReportConfig, protected: set[str]) -> list[Path]:
    """Delete rotated files beyond `keep`, never one whose report is not yet sent."""
    removed = []
    for path in rotated_files(config)[config.keep :]:
        base = str(path)[:-3] if path.name.endswith(".gz") else str(path)
        if base in protected or str(path) in protected:
            continue
        path.unlink(missing_ok=True)
        removed.append(path)
        log.info("store.pruned", report=config.name, path=str(path))
    return removed


def compress(path: Path) -> Path:
    """gzip a rotated file beside itself; the original goes only once the copy is durable."""
    import gzip  # at rotation only: gzip and shutil (with bz2 and lzma) cost 4 ms at every start
    import shutil

    target = path.with_name(path.name + ".gz")
    tmp = path.with_name(f".{path.name}.gz.tmp")
    with path.open("rb") as src, tmp.open("wb") as raw:
        with gzip.GzipFile(filename=path.name, mode="wb", fileobj=raw, mtime=0) as gz:
            shutil.copyfileobj(src, gz, 1 << 20)
        raw.flush()
        os.fsync(raw.fileno())
    os.replace(tmp, target)
    fsync_dir(path.parent)
    path.unlink()
    return target
