"""Following source files: which files a source means now, and reading them in large batches.

A file is known by device and inode, confirmed by a fingerprint (SHA-256 of its first bytes):
an inode that was freed and reused for a new file has other first bytes, so it is read from
the start instead of from the old file's offset. A file is held open until it has been read to
its end and has stopped growing, so a writer that keeps writing to a renamed file loses nothing.
"""

from __future__ import annotations

import glob
import hashlib
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from agent.config import SourceConfig
from agent.decode import Chunk, LineSplitter
from agent.state import FileState

FP_BYTES = 256  # fingerprint length: about one event line
READ_BYTES = 1 << 20  # one read: large enough that a syscall is cheap per line

log = structlog.get_logger("tailmail.sources")


def _fingerprint(fd: int, length: int) -> tuple[str, int]:
    data = os.pread(fd, length, 0)
    return hashlib.sha256(data).hexdigest(), len(data)


def _last_line_end(fd: int, size: int) -> int:
    """Offset just after the last newline: where `start_at: end` starts, so that a line being
    written at that moment is read whole once it is finished, not as a broken fragment."""
    pos = size
    while pos > 0:
        step = min(READ_BYTES, pos)
        data = os.pread(fd, step, pos - step)
        nl = data.rfind(b"\n")
        if nl >= 0:
            return pos - step + nl + 1
        pos -= step
    return 0


@dataclass(slots=True)
class Tailed:
    """One open source file."""

    key: str
    state: FileState
    fd: int
    splitter: LineSplitter
    matched: bool = True  # still matched by the source's path at the last scan
    idle_scans: int = 0  # scans in a row that found it unmatched, at its end and not growing
    truncations: int = 0
    at_end: bool = False

    @property
    def behind(self) -> int:
        try:
            return max(0, os.fstat(self.fd).st_size - self.state.offset)
        except OSError:
            return 0


@dataclass(slots=True)
class SourceTailer:
    """Owns the open files of one source and their read positions."""

    config: SourceConfig
    known: dict[str, FileState]  # from the checkpoint: files seen before
    first_start: bool  # no checkpoint yet: start_at applies to the files found now
    files: dict[str, Tailed] = field(default_factory=dict)
    missing: bool = False
    unreadable: dict[str, str] = field(default_factory=dict)  # path -> error

    def paths(self) -> list[str]:
        pattern = self.config.path
        if glob.has_magic(pattern):
            return sorted(glob.glob(pattern))
        return [pattern] if os.path.exists(pattern) else []

    def scan(self) -> None:
        """Match the source's path again: pick up new files, notice renamed and removed ones."""
        seen: set[str] = set()
        unreadable: dict[str, str] = {}
        for path in self.paths():
            try:
                st = os.stat(path)
            except OSError:
                continue
            if not stat.S_ISREG(st.st_mode):
                continue
            key = f"{self.config.name}:{st.st_dev}:{st.st_ino}"
            seen.add(key)
            tailed = self.files.get(key)
            if tailed is not None:
                tailed.state.path = path
                tailed.matched = True
                tailed.idle_scans = 0
                continue
            try:
                self._open(key, path)
            except OSError as exc:
                unreadable[path] = exc.strerror or str(exc)
        for path, error in unreadable.items():
            if path not in self.unreadable:
                log.error("source.unreadable", source=self.config.name, path=path, error=error)
        self.unreadable = unreadable
        self._release_unmatched(seen)
        missing = not self.files and not unreadable
        if missing and not self.missing:
            log.warning("source.missing", source=self.config.name, path=self.config.path)
        self.missing = missing
        self.first_start = False

    def _open(self, key: str, path: str) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            st = os.fstat(fd)
            if f"{self.config.name}:{st.st_dev}:{st.st_ino}" != key:
                raise FileNotFoundError(0, "replaced while opening")
            known = self.known.get(key)
            fp, fp_len = _fingerprint(fd, FP_BYTES)
            if known is not None and _same_content(fd, known):
                state = known
                state.path = path
                if st.st_size < state.offset:
                    log.warning(
                        "source.truncated",
                        source=self.config.name,
                        path=path,
                        offset=state.offset,
                        size=st.st_size,
                    )
                    state.offset, state.skipping = 0, False
                # Settle the fingerprint if the file has grown since it was short.
                state.fingerprint, state.fp_len = fp, fp_len
                log.info("source.resumed", source=self.config.name, path=path, offset=state.offset)
            else:
                if self.first_start and self.config.start_at == "end":
                    offset = _last_line_end(fd, st.st_size)
                else:
                    offset = 0
                state = FileState(
                    source=self.config.name, path=path, dev=st.st_dev, ino=st.st_ino,
                    fingerprint=fp, fp_len=fp_len, offset=offset,
                )  # fmt: skip
                log.info("source.opened", source=self.config.name, path=path, offset=offset)
        except BaseException:
            os.close(fd)
            raise
        self.known[key] = state
        splitter = LineSplitter(self.config.max_line_bytes, state.offset, state.skipping)
        self.files[key] = Tailed(key, state, fd, splitter)

    def _release_unmatched(self, seen: set[str]) -> None:
        for key, tailed in list(self.files.items()):
            if key in seen:
                continue
            tailed.matched = False
            # Let go only of a file read to its end that did not grow for a whole scan interval:
            # a writer may still be finishing its last lines after a rename.
            if tailed.at_end and tailed.behind == 0:
                tailed.idle_scans += 1
            else:
                tailed.idle_scans = 0
            if tailed.idle_scans >= 2:
                log.info("source.released", source=self.config.name, path=tailed.state.path)
                os.close(tailed.fd)
                del self.files[key]
        for key in list(self.known):
            if key not in self.files:
                del self.known[key]

    def read(self, tailed: Tailed, limit: int = READ_BYTES) -> Chunk | None:
        """Read the next batch of one file; None at its end."""
        splitter = tailed.splitter
        pos = splitter.read_pos
        data = os.pread(tailed.fd, limit, pos)
        if not data:
            size = os.fstat(tailed.fd).st_size
            if size < pos:
                self._truncated(tailed, size)
                return self.read(tailed, limit)
            tailed.at_end = True
            return None
        tailed.at_end = False
        state = tailed.state
        if state.fp_len < FP_BYTES and pos + len(data) > state.fp_len:
            state.fingerprint, state.fp_len = _fingerprint(tailed.fd, FP_BYTES)
        return splitter.feed(data)

    def _truncated(self, tailed: Tailed, size: int) -> None:
        """copytruncate: the file was cut shorter than what we read; its new content starts at 0."""
        log.warning(
            "source.truncated", source=self.config.name, path=tailed.state.path,
            offset=tailed.splitter.read_pos, size=size,
        )  # fmt: skip
        tailed.truncations += 1
        tailed.splitter = LineSplitter(self.config.max_line_bytes)
        tailed.state.offset = 0
        tailed.state.skipping = False
        tailed.state.fingerprint, tailed.state.fp_len = _fingerprint(tailed.fd, FP_BYTES)

    def sync_states(self) -> None:
        """Copy the splitters' consumed offsets into the states that the checkpoint saves."""
        for tailed in self.files.values():
            tailed.state.offset = tailed.splitter.offset
            tailed.state.skipping = tailed.splitter.skipping

    def close(self) -> None:
        for tailed in self.files.values():
            os.close(tailed.fd)
        self.files.clear()

    def watch_dirs(self) -> set[Path]:
        """Directories whose changes concern this source (the deepest one without wildcards)."""
        parts = Path(self.config.path).parts
        fixed: list[str] = []
        for part in parts[:-1]:
            if glob.has_magic(part):
                break
            fixed.append(part)
        return {Path(*fixed)} if fixed else {Path("/")}


def _same_content(fd: int, known: FileState) -> bool:
    data = os.pread(fd, known.fp_len, 0)
    return len(data) == known.fp_len and hashlib.sha256(data).hexdigest() == known.fingerprint
