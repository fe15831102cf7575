"""The running figures of one report's period: lines read, selected, skipped, per rule, per hour,
the problems seen, and a receipt per source file read. They become the report.

Pure data, changed once per read of a file (never per line) and committed with the offsets that
produced them, so that figures and offsets never disagree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from agent.core.text import display_path


class FileIdentity(Protocol):
    """What a receipt records of the file a read came from (tail's FileState is one)."""

    @property
    def source(self) -> str: ...
    @property
    def path(self) -> str: ...
    @property
    def dev(self) -> int: ...
    @property
    def ino(self) -> int: ...
    @property
    def fingerprint(self) -> str: ...
    @property
    def fp_len(self) -> int: ...


MAX_PROBLEMS = 50  # examples of problems kept per period; the counts are always complete


MAX_RANGES = 8  # byte ranges kept per file and period (a new one starts after each truncation)


MAX_NAMES = 4  # names kept per file and period: the first, and the latest after renames


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
        self, key: str, state: FileIdentity, start: int, end: int, lines: int, skipped: int
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
            shown = display_path(state.path)
            receipt = self.files[key] = {
                "source": state.source, "path": shown, "names": [shown],
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
        path = display_path(path)
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
