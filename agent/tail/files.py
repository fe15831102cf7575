"""Following source files: which files a source means now, and reading them in large batches.

A file is known by device and inode, confirmed by a fingerprint (SHA-256 of its first bytes):
an inode that was freed and reused for a new file has other first bytes, so it is read from
the start instead of from the old file's offset. A file is held open until it has been read to
its end and has stopped growing, so a writer that keeps writing to a renamed file loses nothing.

The fingerprint also recognises a copy (copytruncate, `events.json` -> `events.json.1`, when the
source's path matches both): a file first seen with the first bytes of a file being read waits,
and once the original is truncated the copy continues at the original's old position.

A file that replaced another is read only once the one it replaced has been read as far as its
writer got before writing to the new one: the file that took the path of a renamed (or deleted)
one, and the truncated original's new content after the copy that continues its old content.
The link is kept in the checkpoint (`FileState.successor`, on the older file), so it holds across
a restart; a new file found at the path the checkpoint recorded for a file now elsewhere is
linked to it as well (rotation while the agent was stopped).
"""

from __future__ import annotations

import bisect
import glob
import hashlib
import os
import resource
import stat
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import structlog

from agent.config.model import SourceConfig
from agent.tail.lines import Chunk, LineSplitter
from agent.tail.state import FileState

FP_BYTES = 256  # fingerprint length: about one event line
# logrotate's compressed rotations (`events.json.2.gz`) also match `events.json*`; they hold
# lines already read from the file they were, and are not text.
COMPRESSED = (".gz", ".bz2", ".xz", ".zst", ".lz4", ".zip", ".Z")
READ_BYTES = 1 << 20  # one read: large enough that a syscall is cheap per line
# A file that left the source's path (renamed, deleted, symlink re-pointed) is let go once read to
# its end and quiet this long: an application keeps writing to its old file until it reopens.
RELEASE_QUIET_SECONDS = 60.0
# Descriptors a scan leaves free for the stores, the checkpoint, sockets and inotify: a glob that
# matches more files than the limit allows must not leave the agent unable to commit what it read.
FD_RESERVE = 64
TOO_MANY = "not opened: too many open files (raise LimitNOFILE)"

log = structlog.get_logger("tailmail.sources")


def _head(fd: int) -> bytes:
    return os.pread(fd, FP_BYTES, 0)


def _fingerprint(head: bytes) -> tuple[str, int]:
    return hashlib.sha256(head).hexdigest(), len(head)


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


def _descriptors_left() -> int | None:
    """How many more source files this process may open, keeping FD_RESERVE free; None: no limit
    known. Counted once per scan that opens files, not per file."""
    try:
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        used = len(os.listdir("/proc/self/fd"))
    except (OSError, ValueError):
        return None
    if soft == resource.RLIM_INFINITY:
        return None
    return soft - used - FD_RESERVE


class Heads:
    """The first bytes of a source's settled files, sorted, so that a new file is compared only
    with the files it could be a copy of: those whose first bytes and its own agree as far as
    both go. Comparing it with every file made thousands of files cost millions of reads.

    A file is listed under the first bytes it had when last read (its fingerprint); a copy of
    it begins with those bytes, or, when the file was shorter then, those bytes begin the copy.
    """

    __slots__ = ("_lengths", "_of", "_short", "_sorted")

    def __init__(self) -> None:
        self._sorted: list[tuple[bytes, str]] = []
        self._of: dict[str, bytes] = {}  # key -> its first bytes as listed
        self._short: dict[bytes, set[str]] = {}  # first bytes shorter than FP_BYTES (small files)
        self._lengths: Counter[int] = Counter()  # of those: the only prefixes worth looking up

    def __len__(self) -> int:
        return len(self._of)

    def put(self, key: str, head: bytes) -> None:
        old = self._of.get(key)
        if old == head:
            return
        if old is not None:
            self.remove(key)
        self._of[key] = head
        bisect.insort(self._sorted, (head, key))
        if len(head) < FP_BYTES:
            self._short.setdefault(head, set()).add(key)
            self._lengths[len(head)] += 1

    def remove(self, key: str) -> None:
        head = self._of.pop(key, None)
        if head is None:
            return
        del self._sorted[bisect.bisect_left(self._sorted, (head, key))]
        if len(head) < FP_BYTES:
            keys = self._short[head]
            keys.discard(key)
            if not keys:
                del self._short[head]
            self._lengths[len(head)] -= 1
            if not self._lengths[len(head)]:
                del self._lengths[len(head)]

    def clear(self) -> None:
        self._sorted.clear()
        self._of.clear()
        self._short.clear()
        self._lengths.clear()

    def matching(self, head: bytes) -> Iterator[str]:
        """The files whose first bytes start with `head`, or begin it. Lazily, since the caller
        stops at the first copy it confirms; and robust to entries changing in between (a
        truncation found on the way re-lists that file)."""
        entries = self._sorted
        i = bisect.bisect_left(entries, (head,))
        while i < len(entries) and entries[i][0].startswith(head):
            entry = entries[i]
            yield entry[1]
            i = bisect.bisect_right(entries, entry)
        for n in [n for n in self._lengths if n < len(head)]:
            yield from list(self._short.get(head[:n], ()))


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
    # Opened at offset 0 as a file never seen before: it may be a copy of a file being read
    # (copytruncate). Not read, and not checkpointed, until `_settle` has decided.
    unsettled: bool = False
    copy_of: str = ""  # the file it was found to copy, once (for the log)
    head: bytes = b""  # the bytes the fingerprint was taken of: a copy is compared with them
    seen_size: int = 0  # the size at the last look: what a truncation may have taken unread
    seen_mtime: int = -1  # and its modification time then (ns): unchanged, nothing to look at
    grew_at: float = field(default_factory=time.monotonic)  # when it last gave us bytes
    real_of: str = ""  # the path `real_dir` was resolved for
    real_dir: Path = Path()  # the directory it really is in (through symlinks)
    # The file it replaced (see the module's docstring), read first: its key, and its size when
    # this one was first seen with bytes to read (all its writer wrote there before this one).
    after: str = ""
    after_size: int = -1
    # Truncated at a position a copy may continue: its new content waits until this scan has
    # run (and found the copy, or not), so that the copy's lines come first.
    copy_due: int = 0

    @property
    def behind(self) -> int:
        try:
            return max(0, os.fstat(self.fd).st_size - self.state.offset)
        except OSError:
            return 0


@dataclass(frozen=True, slots=True)
class Retired:
    """Where reading stood in a file whose content was then replaced (truncated, inode reused)."""

    scan: int  # the scan count when it was retired: it is kept until one more scan has run
    state: FileState  # the old fingerprint, the offset consumed and the size last seen
    head: bytes  # the old first bytes when known (b"" when only the checkpoint's hash is)

    def to_dict(self) -> dict[str, Any]:
        return {"state": self.state.to_dict(), "head": self.head.hex()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Retired:
        # Loaded at start: kept through the first scan, which finds a copy made meanwhile.
        return cls(0, FileState.from_dict(d["state"]), bytes.fromhex(d.get("head", "")))

    @property
    def key(self) -> str:
        """The key of the file whose content was replaced: its new content waits for the copy."""
        return f"{self.state.source}:{self.state.dev}:{self.state.ino}"

    def copied_by(self, head: bytes) -> bool:
        """Whether a file starting with `head` is a copy of the old content.

        A copy taken before the original grew past it can be shorter than the old fingerprint:
        its bytes are compared with the old first bytes, as far as both go.
        """
        if self.head:
            n = min(len(head), len(self.head))
            return n > 0 and head[:n] == self.head[:n]
        fp_len = self.state.fp_len
        return len(head) >= fp_len and _fingerprint(head[:fp_len])[0] == self.state.fingerprint


@dataclass(slots=True)
class SourceTailer:
    """Owns the open files of one source and their read positions."""

    config: SourceConfig
    known: dict[str, FileState]  # from the checkpoint: files seen before
    first_start: bool  # no checkpoint yet: start_at applies to the files found now
    files: dict[str, Tailed] = field(default_factory=dict)
    missing: bool = False
    unreadable: dict[str, str] = field(default_factory=dict)  # path -> error
    # Positions of files whose content was replaced (truncated, inode reused): a copy of the old
    # content found up to the next scan continues from there.
    retired: list[Retired] = field(default_factory=list)
    scans: int = 0
    # Bytes a truncation took before they could be read (copytruncate's window, or a copy the
    # path does not match): drained by the pipeline into the report's problems.
    losses: list[dict[str, Any]] = field(default_factory=list)
    release_quiet: float = RELEASE_QUIET_SECONDS
    heads: Heads = field(default_factory=Heads)  # the settled open files by their first bytes
    # Which file each path led to at the last look (at start: the checkpoint's paths), kept
    # while that file is open: a new file found there replaced it.
    at: dict[str, str] = field(default_factory=dict)
    # A truncation was seen outside a scan: the copy that continues it is looked for at once.
    scan_wanted: bool = False

    def __post_init__(self) -> None:
        self.at = {state.path: key for key, state in self.known.items()}

    def paths(self) -> list[str]:
        pattern = self.config.path
        if glob.has_magic(pattern):
            return sorted(glob.glob(pattern))
        return [pattern] if os.path.exists(pattern) else []

    def scan(self) -> None:
        """Match the source's path again: pick up new files, notice renamed and removed ones."""
        seen: set[str] = set()
        unreadable: dict[str, str] = {}
        self.scans += 1
        self.scan_wanted = False
        for expired in [r for r in self.retired if r.scan < self.scans - 1]:
            self._expire(expired)
        self.retired = [r for r in self.retired if r.scan >= self.scans - 1]
        found: dict[str, str] = {}  # path -> key
        opened: list[tuple[Tailed, bool]] = []
        room: int | None = -1  # descriptors left for new files; -1: not counted yet
        for path in self.paths():
            if path.endswith(COMPRESSED):
                continue
            try:
                st = os.stat(path)
            except OSError:
                continue
            if not stat.S_ISREG(st.st_mode):
                continue
            key = f"{self.config.name}:{st.st_dev}:{st.st_ino}"
            seen.add(key)
            found[path] = key
            tailed = self.files.get(key)
            if tailed is not None:
                tailed.state.path = path
                tailed.matched = True
                tailed.idle_scans = 0
                continue
            if room == -1:
                room = _descriptors_left()
            if room is not None and room <= 0:
                unreadable[path] = TOO_MANY
                continue
            try:
                opened.append(self._open(key, path))
            except OSError as exc:
                unreadable[path] = exc.strerror or str(exc)
                continue
            if room is not None:
                room -= 1
        self._log_unreadable(unreadable)
        self.unreadable = unreadable
        # Decide about new files now, once every known file has been looked at: a copy found in
        # this scan claims the position its original left (retired just before, or in this scan).
        for tailed in list(self.files.values()):
            if tailed.unsettled:
                self._settle(tailed)
        self._link(opened, found)
        self._release_unmatched(seen)
        missing = not self.files and not unreadable
        if missing and not self.missing:
            log.warning("source.missing", source=self.config.name, path=self.config.path)
        self.missing = missing
        self.first_start = False

    def _log_unreadable(self, unreadable: dict[str, str]) -> None:
        refused = 0
        for path, error in unreadable.items():
            if path in self.unreadable:
                continue
            if error == TOO_MANY:
                refused += 1  # possibly thousands of paths: one line says it
                continue
            log.error("source.unreadable", source=self.config.name, path=path, error=error)
        if refused:
            log.error(
                "source.too_many_files",
                source=self.config.name,
                not_opened=refused,
                limit=_nofile(),
                hint="raise LimitNOFILE (systemctl edit tailmail) or match fewer files",
            )

    def _link(self, opened: list[tuple[Tailed, bool]], found: dict[str, str]) -> None:
        """Note which new file replaced which open one, so that the older is read first."""
        for tailed, new in opened:
            if not new and tailed.state.successor:
                # Resumed after a restart: the link it had is taken up again.
                successor = self.files.get(tailed.state.successor)
                if successor is None or not self._follow(successor, tailed):
                    tailed.state.successor = ""
            elif new and not tailed.after:
                previous = self.files.get(self.at.get(tailed.state.path, ""))
                if previous is not None and previous is not tailed:
                    self._follow(tailed, previous)
        self.at.update(found)
        for path in [p for p, key in self.at.items() if key not in self.files]:
            del self.at[path]

    def _follow(self, tailed: Tailed, previous: Tailed) -> bool:
        """Read `tailed` only after `previous`, as far as its writer got before `tailed`'s
        first bytes; whether linked (never into a loop, never after a file that may be a copy
        and might not be read at all)."""
        if previous.unsettled:
            return False
        if tailed.after == previous.key:
            return True
        step: Tailed | None = previous
        for _ in range(len(self.files)):
            if step is None or not step.after:
                break
            if step.after == tailed.key:
                return False
            step = self.files.get(step.after)
        old = self.files.get(tailed.after)
        if old is not None and old.state.successor == tailed.key:
            old.state.successor = ""
        tailed.after, tailed.after_size = previous.key, -1
        previous.state.successor = tailed.key
        log.info(
            "source.read_after",
            source=self.config.name,
            path=tailed.state.path,
            after=previous.state.path,
        )
        return True

    def _held_back(self, tailed: Tailed) -> bool:
        """Whether `tailed` must wait for the file it replaced to be read as far as its writer
        got before writing to `tailed`. That size is taken once `tailed` is seen with bytes to
        read: a writer switches files, it does not write to both at once, so every byte it
        wrote to the old file before those is there by then."""
        previous = self.files.get(tailed.after)
        if previous is not None and not previous.unsettled:
            try:
                if tailed.after_size < 0:
                    if os.fstat(tailed.fd).st_size <= tailed.splitter.read_pos:
                        tailed.at_end = True
                        return True  # nothing to read yet
                    tailed.after_size = os.fstat(previous.fd).st_size
                size = os.fstat(previous.fd).st_size
            except OSError:
                size = 0
            # Not beyond its size now: a file cut shorter meanwhile must not stall this one.
            if previous.splitter.read_pos < min(tailed.after_size, size):
                return True
            if previous.state.successor == tailed.key:
                previous.state.successor = ""
        tailed.after, tailed.after_size = "", -1
        return False

    def _open(self, key: str, path: str) -> tuple[Tailed, bool]:
        """Open a file not open yet; also whether it is new (not continued from a position)."""
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            st = os.fstat(fd)
            if f"{self.config.name}:{st.st_dev}:{st.st_ino}" != key:
                raise FileNotFoundError(0, "replaced while opening")
            known = self.known.get(key)
            head = _head(fd)
            fp, fp_len = _fingerprint(head)
            unsettled = False
            if known is not None and not _same_content(fd, known):
                # Other first bytes under a known inode (reuse, or copytruncate while we were
                # stopped): a copy of the old content may still turn up and continue from here.
                self._retire(known, known.offset, known.skipping, b"", known.seen)
                del self.known[key]
                known = None
            if known is not None:
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
                unsettled = offset == 0
                state = FileState(
                    source=self.config.name, path=path, dev=st.st_dev, ino=st.st_ino,
                    fingerprint=fp, fp_len=fp_len, offset=offset,
                )  # fmt: skip
                log.info("source.opened", source=self.config.name, path=path, offset=offset)
        except BaseException:
            os.close(fd)
            raise
        if not unsettled:
            self.known[key] = state
            self.heads.put(key, head)
        splitter = LineSplitter(self.config.max_line_bytes, state.offset, state.skipping)
        tailed = self.files[key] = Tailed(key, state, fd, splitter, unsettled=unsettled, head=head)
        return tailed, known is None

    def _retire(
        self, state: FileState, offset: int, skipping: bool, head: bytes, seen: int
    ) -> None:
        if offset > 0 and state.fp_len > 0:
            old = replace(state, offset=offset, skipping=skipping, seen=max(seen, offset))
            self.retired.append(Retired(self.scans, old, head))

    def _expire(self, retired: Retired) -> None:
        """No copy of a truncated file turned up: what it held beyond our position is gone."""
        old = retired.state
        if old.seen > old.offset:
            self._lost(
                old.path,
                old.seen - old.offset,
                "truncated before it was read, and no copy of it matches the path",
            )
        else:
            # Nothing was seen beyond our position, but the file may have grown after our last
            # look and before the truncate: a possible loss, said as one.
            self._lost(
                old.path,
                0,
                "truncated, and no copy of it matches the source's path (copytruncate to a name "
                "the path does not match, or a truncate by hand): lines written after tailmail "
                "last read it, if there were any, are lost; tailmail saw none go but cannot know",
            )

    def _lost(self, path: str, size: int, why: str) -> None:
        event = "source.lost" if size else "source.may_have_lost"
        log.warning(event, source=self.config.name, path=path, bytes=size, why=why)
        self.losses.append({"source": self.config.name, "path": path, "bytes": size, "why": why})

    def _settle(self, tailed: Tailed) -> bool:
        """Whether a file first seen at offset 0 may be read now, and from where.

        While its first bytes are the start of a file being read, it is (or may be, while being
        written) a copy of that file, and waits: reading it would store those lines twice. Once
        the original is truncated, a copy continues where the original was left.
        """
        head = _head(tailed.fd)
        if not head and self.heads:
            return False  # empty: it may become a copy of any file; nothing to compare yet
        for key in self.heads.matching(head) if head else ():
            other = self.files.get(key)
            if other is None or other is tailed:
                continue
            self._check_truncated(other)  # a truncated original retires its position first
            if _head(other.fd).startswith(head):
                if len(head) == FP_BYTES and not tailed.copy_of:
                    tailed.copy_of = other.state.path
                    log.info(
                        "source.copy_waiting", source=self.config.name,
                        path=tailed.state.path, original=other.state.path,
                    )  # fmt: skip
                return False
        state = tailed.state
        # Fingerprint what is there now: the file may have been empty or half-written when opened.
        tailed.head = head
        state.fingerprint, state.fp_len = _fingerprint(head)
        claimed: Retired | None = None
        for i, retired in enumerate(self.retired):
            if retired.copied_by(head):
                del self.retired[i]
                old = retired.state
                size = os.fstat(tailed.fd).st_size
                # A copy shorter than the old position holds nothing that was not read already.
                state.offset, state.skipping = (
                    (old.offset, old.skipping) if old.offset <= size else (size, False)
                )
                # Bytes seen in the original but neither read nor in the copy were written between
                # the copy and the truncate: the one window no reader can see. Even when none was
                # seen, some may have been (the agent does not watch every instant): say so.
                lost = max(0, old.seen - max(old.offset, size))
                self._lost(
                    old.path,
                    lost,
                    "written between copytruncate's copy and its truncate"
                    if lost
                    else "rotated by copytruncate: lines written between its copy and its "
                    "truncate, if there were any, are lost (no program can read them); tailmail "
                    "saw none go but cannot know. logrotate without copytruncate (its create "
                    "method) loses nothing",
                )
                tailed.splitter = LineSplitter(
                    self.config.max_line_bytes, state.offset, state.skipping
                )
                log.info(
                    "source.copy_continued",
                    source=self.config.name,
                    path=state.path,
                    offset=state.offset,
                    original=old.path,
                )
                claimed = retired
                break
        tailed.unsettled = False
        self.known[tailed.key] = state
        self.heads.put(tailed.key, head)
        original = self.files.get(claimed.key) if claimed is not None else None
        if original is not None and original is not tailed:
            # The original's new content comes after the rest of its old content.
            original.copy_due = 0
            self._follow(original, tailed)
        return True

    def _check_truncated(self, tailed: Tailed, st: os.stat_result | None = None) -> None:
        """copytruncate: shorter than what we read, or other first bytes (rewritten past our
        position before we looked again): the file's new content starts at 0."""
        pos = tailed.splitter.read_pos
        if pos == 0:
            return
        if st is None:
            st = os.fstat(tailed.fd)
        size = st.st_size
        if size < pos or not _same_content(tailed.fd, tailed.state):
            self._truncated(tailed, size)
        else:
            tailed.seen_size, tailed.seen_mtime = size, st.st_mtime_ns

    def _release_unmatched(self, seen: set[str]) -> None:
        for key, tailed in list(self.files.items()):
            if key in seen:
                continue
            tailed.matched = False
            if tailed.unsettled and not self._settle(tailed):
                # A copy of a file still being read, gone from the path: it holds nothing more.
                self._close(key)
                continue
            # Let go only of a file read to its end that did not grow for a whole scan interval:
            # a writer may still be finishing its last lines after a rename. Measured from the
            # read position, not the consumed offset: a last line that never gets its newline
            # must not keep a deleted file open for ever.
            if tailed.at_end and os.fstat(tailed.fd).st_size <= tailed.splitter.read_pos:
                tailed.idle_scans += 1
            else:
                tailed.idle_scans = 0
            # Scans come in bursts (every rename in the directory triggers one), so two scans
            # alone can be a millisecond apart: the writer must also have been quiet a while.
            quiet = time.monotonic() - tailed.grew_at >= self.release_quiet
            if tailed.idle_scans >= 2 and quiet:
                log.info("source.released", source=self.config.name, path=tailed.state.path)
                self._close(key)
        for key in list(self.known):
            # A file seen but not opened (unreadable for now) keeps its position: dropping it
            # would make it be read again from 0 once it is readable.
            if key not in self.files and key not in seen:
                del self.known[key]

    def _close(self, key: str) -> None:
        self.heads.remove(key)
        os.close(self.files.pop(key).fd)

    def read(self, tailed: Tailed, limit: int = READ_BYTES) -> Chunk | None:
        """Read the next batch of one file; None at its end (or while it may be a copy, or
        while the file it replaced has bytes to be read first)."""
        if tailed.unsettled and not self._settle(tailed):
            tailed.at_end = True
            return None
        st = None
        pos = tailed.splitter.read_pos
        if pos:
            st = os.fstat(tailed.fd)
            if st.st_size == pos == tailed.seen_size and st.st_mtime_ns == tailed.seen_mtime:
                # Read to its end and not written since the last look: nothing to read, nor a
                # truncation to look for. One call per idle file, of thousands, on every wake-up.
                tailed.at_end = True
                return None
        # Checked before every read, not only at the end: new content written past our position
        # after a truncate would otherwise be read from the middle, its start lost.
        self._check_truncated(tailed, st)
        if tailed.copy_due > self.scans:
            return None  # truncated: the copy that continues its old content is looked for first
        if tailed.after and self._held_back(tailed):
            return None
        splitter = tailed.splitter
        pos = splitter.read_pos
        data = os.pread(tailed.fd, limit, pos)
        if not data:
            tailed.at_end = True
            return None
        tailed.at_end = False
        tailed.grew_at = time.monotonic()
        state = tailed.state
        # Re-take the fingerprint when it grows, and at the first read: one taken when the file
        # was opened describes content that a truncate before this read may have replaced.
        if pos == 0 or (state.fp_len < FP_BYTES and pos + len(data) > state.fp_len):
            tailed.head = _head(tailed.fd)
            state.fingerprint, state.fp_len = _fingerprint(tailed.head)
            self.heads.put(tailed.key, tailed.head)
        return splitter.feed(data)

    def _truncated(self, tailed: Tailed, size: int) -> None:
        """copytruncate: the file was cut shorter than what we read; its new content starts at 0."""
        log.warning(
            "source.truncated", source=self.config.name, path=tailed.state.path,
            offset=tailed.splitter.read_pos, size=size,
        )  # fmt: skip
        tailed.truncations += 1
        before = len(self.retired)
        self._retire(
            tailed.state,
            tailed.splitter.offset,
            tailed.splitter.skipping,
            tailed.head,
            tailed.seen_size,
        )
        if len(self.retired) > before:
            # A copy of the old content may be there already (copytruncate copies first): the
            # next scan, wanted now, finds it before the new content is read.
            tailed.copy_due = self.scans + 1
            self.scan_wanted = True
        tailed.seen_size = size
        tailed.splitter = LineSplitter(self.config.max_line_bytes)
        tailed.state.offset = 0
        tailed.state.skipping = False
        tailed.head = _head(tailed.fd)
        tailed.state.fingerprint, tailed.state.fp_len = _fingerprint(tailed.head)
        self.heads.put(tailed.key, tailed.head)

    def sync_states(self) -> None:
        """Copy the splitters' consumed offsets into the states that the checkpoint saves."""
        for tailed in self.files.values():
            tailed.state.offset = tailed.splitter.offset
            tailed.state.skipping = tailed.splitter.skipping
            tailed.state.seen = tailed.seen_size

    def close(self) -> None:
        for tailed in self.files.values():
            os.close(tailed.fd)
        self.files.clear()
        self.heads.clear()

    def watch_dirs(self) -> dict[Path, bool]:
        """Directories whose changes concern this source, each with whether to watch below it.

        The deepest directory of the path without wildcards (recursively when the wildcards are
        in directory names), and the directories of the files it reads through symlinks
        (`/var/log/containers/*` links into `/var/log/pods/...`, where the writes happen).
        """
        path = Path(self.config.path)
        fixed: list[str] = []
        for part in path.parts[:-1]:
            if glob.has_magic(part):
                break
            fixed.append(part)
        base = Path(*fixed) if fixed else Path("/")
        dirs = {base: base != path.parent}
        for tailed in self.files.values():
            if tailed.real_of != tailed.state.path:
                # Resolved once per name, not on every scan: thousands of files, several
                # lstat calls each.
                tailed.real_of = tailed.state.path
                tailed.real_dir = Path(os.path.realpath(tailed.state.path)).parent
            real = tailed.real_dir
            if real != base and not (dirs[base] and base in real.parents):
                dirs.setdefault(real, False)
        return dirs


def _nofile() -> int:
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _same_content(fd: int, known: FileState) -> bool:
    data = os.pread(fd, known.fp_len, 0)
    return len(data) == known.fp_len and hashlib.sha256(data).hexdigest() == known.fingerprint
