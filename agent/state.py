"""The agent's durable state: one checkpoint file, replaced atomically.

The checkpoint holds, in one document, the read position of every source file, each report
store's committed size and the running figures of each report's current period. Keeping them in
one file means one rename commits them together: the offsets never say more (or less) than the
store and the figures hold.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

CHECKPOINT = "checkpoint.json"
MAX_PROBLEMS = 50  # examples of problems kept per period; the counts are always complete
MAX_RANGES = 8  # byte ranges kept per file and period (a new one starts after each truncation)
MAX_NAMES = 4  # names kept per file and period: the first, and the latest after renames


def write_atomic(path: Path, data: bytes) -> None:
    """Replace `path` with `data` so that a crash leaves either the old or the new content."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        # The data must be on disk before the rename makes it visible: otherwise a power cut can
        # leave a renamed but empty file, and the old content would be gone too.
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def fsync_dir(directory: Path) -> None:
    """Make a rename or a new file in `directory` durable (the entry lives in the directory)."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(slots=True)
class FileState:
    """Where reading stands in one source file, which is known by identity, not by name."""

    source: str
    path: str
    dev: int
    ino: int
    fingerprint: str  # hex sha256 of the first `fp_len` bytes
    fp_len: int
    offset: int  # bytes consumed: everything before it is stored (or deliberately skipped)
    skipping: bool = False  # inside an over-long line: discard up to the next newline
    seen: int = 0  # the size last seen: after a truncation, what was there but not yet read
    # The key of the file that replaced this one (took its path, or is its truncated original's
    # new content): not read until this one is, as far as its writer got (see sources.py).
    successor: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source, "path": self.path, "dev": self.dev, "ino": self.ino,
            "fingerprint": self.fingerprint, "fp_len": self.fp_len, "offset": self.offset,
            "skipping": self.skipping, "seen": self.seen,
            "successor": self.successor,
        }  # fmt: skip

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FileState:
        return cls(
            source=d["source"], path=d["path"], dev=d["dev"], ino=d["ino"],
            fingerprint=d["fingerprint"], fp_len=d["fp_len"], offset=d["offset"],
            skipping=d.get("skipping", False), seen=d.get("seen", 0),
            successor=d.get("successor", ""),
        )  # fmt: skip


@dataclass(slots=True)
class PeriodStats:
    """The running figures of one report's current period; they become the report."""

    start: str  # ISO 8601, UTC
    read: int = 0
    selected: int = 0
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> count
    per_rule: dict[str, int] = field(default_factory=dict)
    per_hour: dict[str, int] = field(default_factory=dict)  # "YYYY-MM-DDTHH" local -> count
    problems: list[dict[str, Any]] = field(default_factory=list)  # first examples, capped
    files: dict[str, dict[str, Any]] = field(default_factory=dict)  # file key -> receipt line
    lost_bytes: int = 0  # taken by truncations before they could be read (copytruncate)

    @property
    def skipped_total(self) -> int:
        return sum(self.skipped.values())

    def add_problem(self, problem: dict[str, Any]) -> None:
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(problem)

    def note_read(
        self, key: str, state: FileState, start: int, end: int, lines: int, skipped: int
    ) -> None:
        """Account one read of a source file (bytes `start`..`end`) for the completeness receipt.

        Called once per read, never per line. The receipt names the file by identity (device,
        inode, fingerprint) and keeps the byte ranges consumed in the period: reads follow each
        other, so a range only grows, and a read that does not start where the last ended (the
        file was truncated, and is read again from 0) opens a new one. Since the figures are
        committed with the offsets, a file's first range in a period starts exactly where its
        last range in the previous period ended.
        """
        if end <= start and not lines:
            return  # only part of a line so far: nothing consumed
        receipt = self.files.get(key)
        if receipt is None:
            receipt = self.files[key] = {
                "source": state.source, "path": state.path, "names": [state.path],
                "dev": state.dev, "ino": state.ino, "first_offset": start, "last_offset": end,
                "ranges": [[start, end]], "bytes": 0, "lines": 0, "truncations": 0,
                "skipped": 0,
            }  # fmt: skip
        else:
            if "ranges" not in receipt:  # written by an older version: rebuilt from what it has
                first, last = receipt.get("first_offset", start), receipt.get("last_offset", start)
                receipt["ranges"] = [[first, last]]
                receipt.setdefault("bytes", last - first)
            ranges = receipt["ranges"]
            if start == ranges[-1][1]:
                ranges[-1][1] = end
            else:
                if start < ranges[-1][1]:
                    receipt["truncations"] = receipt.get("truncations", 0) + 1
                if len(ranges) >= MAX_RANGES:
                    receipt["ranges_dropped"] = receipt.get("ranges_dropped", 0) + 1
                    del ranges[-1]
                ranges.append([start, end])
            self.note_name(key, state.path)
            receipt["last_offset"] = end
        receipt["fingerprint"] = state.fingerprint[:16]
        receipt["fp_len"] = state.fp_len
        receipt["bytes"] = receipt.get("bytes", 0) + (end - start)
        receipt["lines"] = receipt.get("lines", 0) + lines
        if skipped:
            receipt["skipped"] = receipt.get("skipped", 0) + skipped

    def note_name(self, key: str, path: str) -> None:
        """A file read in the period is now called `path`: renamed (rename-and-create rotation)."""
        receipt = self.files.get(key)
        if receipt is None:
            return
        names = receipt.setdefault("names", [receipt.get("path", path)])
        if names[-1] != path:
            receipt["renames"] = receipt.get("renames", 0) + 1
            names[MAX_NAMES - 1 :] = []
            names.append(path)
        receipt["path"] = path

    def to_dict(self) -> dict[str, Any]:
        return {
            "start": self.start, "read": self.read, "selected": self.selected,
            "skipped": self.skipped, "per_rule": self.per_rule, "per_hour": self.per_hour,
            "problems": self.problems, "files": self.files, "lost_bytes": self.lost_bytes,
        }  # fmt: skip

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PeriodStats:
        return cls(
            start=d["start"], read=d.get("read", 0), selected=d.get("selected", 0),
            skipped=dict(d.get("skipped", {})), per_rule=dict(d.get("per_rule", {})),
            per_hour=dict(d.get("per_hour", {})), problems=list(d.get("problems", [])),
            files=dict(d.get("files", {})), lost_bytes=d.get("lost_bytes", 0),
        )  # fmt: skip


@dataclass(slots=True)
class ReportState:
    store_size: int  # committed bytes of the store: anything beyond is cut on start
    stats: PeriodStats
    # Set while a rotation is in progress, so a crash in the middle is finished on start.
    rotating: dict[str, Any] | None = None
    last_sent: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "store_size": self.store_size, "stats": self.stats.to_dict(),
            "rotating": self.rotating, "last_sent": self.last_sent,
        }  # fmt: skip

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ReportState:
        return cls(
            store_size=d["store_size"], stats=PeriodStats.from_dict(d["stats"]),
            rotating=d.get("rotating"), last_sent=d.get("last_sent"),
        )  # fmt: skip


@dataclass(slots=True)
class Checkpoint:
    files: dict[str, FileState] = field(default_factory=dict)
    reports: dict[str, ReportState] = field(default_factory=dict)
    started_before: bool = False  # start_at applies only to files present at the very first start
    # Positions of truncated files whose copy may still turn up (see sources.Retired), so a
    # crash between seeing the truncation and finding the copy does not read the copy twice.
    retired: list[dict[str, Any]] = field(default_factory=list)

    def to_bytes(self) -> bytes:
        return orjson.dumps(
            {
                "version": 1,
                "started_before": self.started_before,
                "files": {k: v.to_dict() for k, v in self.files.items()},
                "reports": {k: v.to_dict() for k, v in self.reports.items()},
                "retired": self.retired,
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> Checkpoint:
        d = orjson.loads(data)
        return cls(
            files={k: FileState.from_dict(v) for k, v in d.get("files", {}).items()},
            reports={k: ReportState.from_dict(v) for k, v in d.get("reports", {}).items()},
            started_before=d.get("started_before", False),
            retired=list(d.get("retired", [])),
        )


def load_checkpoint(state_dir: Path) -> Checkpoint:
    """Read the checkpoint; a missing one is a first start."""
    try:
        data = (state_dir / CHECKPOINT).read_bytes()
    except FileNotFoundError:
        return Checkpoint()
    return Checkpoint.from_bytes(data)


def save_checkpoint(state_dir: Path, checkpoint: Checkpoint) -> None:
    write_atomic(state_dir / CHECKPOINT, checkpoint.to_bytes())
