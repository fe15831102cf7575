"""The agent's durable state: one checkpoint file, replaced atomically.

The checkpoint holds, in one document, the read position of every source file, each report
store's committed size and the running figures of each report's current period. Keeping them in
one file means one rename commits them together: the offsets never say more (or less) than the
store and the figures hold.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Annotated, Any, NotRequired, TypedDict

import msgspec
import orjson

from agent.core.errors import StateDamaged, write_error
from agent.core.figures import PeriodStats
from agent.core.fs import fsync_dir, write_atomic
from agent.tail.state import FileState

__all__ = ["fsync_dir", "write_atomic"]  # used from here by older callers

CHECKPOINT = "checkpoint.json"
PREVIOUS = "checkpoint.prev.json"  # the one committed before: used when the current is damaged
DAMAGED = "checkpoint.damaged.json"  # a damaged checkpoint, kept for a look, once replaced
VERSION = 1


@dataclass(slots=True)
class Rotation:
    """A period being closed, then closed and waiting for its report.

    Its intent is committed before the store is renamed, so a crash in the middle is finished
    on start; once the store is renamed it moves to `Checkpoint.closed` until its report is
    queued (the reporter builds it outside the reading path, and retries when that fails).
    """

    report: str
    rotated: Path  # where the period's store goes
    start: datetime  # aware, UTC
    end: datetime
    day: date  # the period's local first day
    stats: PeriodStats  # the period's figures, frozen at its end
    size: int  # the store's committed bytes: what the rotated file holds
    outbox_id: str
    attempts: int = 0  # builds of its report that failed
    error: str = ""  # why the last one failed

    def to_dict(self) -> dict[str, Any]:
        return {
            "report": self.report, "rotated": str(self.rotated), "start": _iso(self.start),
            "end": _iso(self.end), "day": self.day.isoformat(), "stats": self.stats.to_dict(),
            "size": self.size, "outbox_id": self.outbox_id, "attempts": self.attempts,
            "error": self.error,
        }  # fmt: skip

    @classmethod
    def from_dict(cls, d: dict[str, Any], report: str = "") -> Rotation:
        _instant(d["stats"]["start"])
        return cls(
            report=d.get("report", report), rotated=Path(d["rotated"]),
            start=_instant(d["start"]), end=_instant(d["end"]),
            day=date.fromisoformat(d["day"]), stats=PeriodStats.from_dict(d["stats"]),
            size=d["size"], outbox_id=d["outbox_id"], attempts=d.get("attempts", 0),
            error=d.get("error", ""),
        )  # fmt: skip


@dataclass(slots=True)
class ReportState:
    store_size: int  # committed bytes of the store: anything beyond is cut on start
    stats: PeriodStats
    # Set while a rotation is in progress, so a crash in the middle is finished on start.
    rotating: Rotation | None = None
    last_sent: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "store_size": self.store_size, "stats": self.stats.to_dict(),
            "rotating": self.rotating.to_dict() if self.rotating is not None else None,
            "last_sent": self.last_sent,
        }  # fmt: skip

    @classmethod
    def from_dict(cls, d: dict[str, Any], name: str = "") -> ReportState:
        rotating = d.get("rotating")
        return cls(
            store_size=d["store_size"], stats=PeriodStats.from_dict(d["stats"]),
            rotating=Rotation.from_dict(rotating, name) if rotating is not None else None,
            last_sent=d.get("last_sent"),
        )  # fmt: skip


@dataclass(slots=True)
class Checkpoint:
    files: dict[str, FileState] = field(default_factory=dict)
    reports: dict[str, ReportState] = field(default_factory=dict)
    started_before: bool = False  # start_at applies only to files present at the very first start
    # Positions of truncated files whose copy may still turn up (see sources.Retired), so a
    # crash between seeing the truncation and finding the copy does not read the copy twice.
    retired: list[dict[str, Any]] = field(default_factory=list)
    # Periods closed (their store renamed) whose report is not queued yet, oldest first.
    closed: list[Rotation] = field(default_factory=list)
    # Set by load_checkpoint when the current checkpoint was damaged and the previous one is
    # used instead: what was wrong, for the log and the reports.
    recovered: str | None = None

    def to_bytes(self) -> bytes:
        return orjson.dumps(
            {
                "version": VERSION,
                "started_before": self.started_before,
                "files": {k: v.to_dict() for k, v in self.files.items()},
                "reports": {k: v.to_dict() for k, v in self.reports.items()},
                "retired": self.retired,
                "closed": [c.to_dict() for c in self.closed],
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> Checkpoint:
        """Parse and check a checkpoint; raise ValueError saying what is wrong and where."""
        d: Any  # a _CheckpointDoc: its shape is checked, its values are read as plain data
        try:
            d = _CHECKPOINT_DECODER.decode(data)
        except msgspec.ValidationError as exc:
            raise ValueError(f"unexpected content: {exc}") from None
        except msgspec.DecodeError as exc:
            raise ValueError(f"not valid JSON: {exc}") from None
        if d.get("version", 1) > VERSION:
            raise ValueError(
                f"written by a newer tailmail (format {d['version']}; this one reads {VERSION})"
            )
        try:
            for report in d.get("reports", {}).values():
                _instant(report["stats"]["start"])  # a period must start at a usable instant
            return cls(
                files={k: FileState.from_dict(v) for k, v in d.get("files", {}).items()},
                reports={k: ReportState.from_dict(v, k) for k, v in d.get("reports", {}).items()},
                started_before=d.get("started_before", False),
                retired=[dict(r) for r in d.get("retired", [])],
                closed=[Rotation.from_dict(c) for c in d.get("closed", [])],
            )
        except ValueError as exc:  # a time or date that does not parse, or is out of range
            raise ValueError(f"unexpected content: {exc}") from None


def _iso(dt: datetime) -> str:
    return dt.astimezone(UTC).isoformat()


def _instant(text: str) -> datetime:
    """An aware instant from the checkpoint, within the years any computation here can take."""
    dt = datetime.fromisoformat(text)
    if dt.tzinfo is None or not 1970 <= dt.year <= 9000:
        raise ValueError(f"{text!r} is not a time tailmail writes")
    return dt.astimezone(UTC)


# The checkpoint's shape, checked before any of it is used: a damaged file is a clear message,
# never a KeyError or TypeError deep in the pipeline. Unknown keys are dropped.
_Count = Annotated[int, msgspec.Meta(ge=0)]
_Hex = Annotated[str, msgspec.Meta(pattern=r"^([0-9a-f]{2})*\Z")]


class _FileDoc(TypedDict):
    source: str
    path: str
    path_bytes: NotRequired[_Hex]
    dev: _Count
    ino: _Count
    fingerprint: Annotated[str, msgspec.Meta(pattern=r"^([0-9a-f]{64})?\Z")]
    fp_len: Annotated[int, msgspec.Meta(ge=0, le=1 << 20)]
    offset: _Count
    skipping: NotRequired[bool]
    seen: NotRequired[_Count]
    successor: NotRequired[str]


class _ReceiptDoc(TypedDict, total=False):
    source: str
    path: str
    names: list[str]
    dev: _Count
    ino: _Count
    first_offset: _Count
    last_offset: _Count
    ranges: list[Annotated[list[_Count], msgspec.Meta(min_length=2, max_length=2)]]
    bytes: int
    lines: _Count
    truncations: _Count
    skipped: _Count
    fingerprint: str
    fp_len: _Count
    renames: _Count
    ranges_dropped: _Count


class _ProblemDoc(TypedDict, total=False):
    kind: str
    text: str
    source: str
    path: str
    offset: _Count
    reason: str
    sample: str


class _StatsDoc(TypedDict):
    start: str
    read: NotRequired[_Count]
    selected: NotRequired[_Count]
    skipped: NotRequired[dict[str, _Count]]
    per_rule: NotRequired[dict[str, _Count]]
    per_hour: NotRequired[dict[str, _Count]]
    problems: NotRequired[list[_ProblemDoc]]
    files: NotRequired[dict[str, _ReceiptDoc]]
    lost_bytes: NotRequired[_Count]


class _RotationDoc(TypedDict):
    report: NotRequired[str]
    attempts: NotRequired[_Count]
    error: NotRequired[str]
    rotated: Annotated[str, msgspec.Meta(min_length=2)]
    start: str
    end: str
    day: str
    stats: _StatsDoc
    size: _Count
    outbox_id: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}\Z")]


class _ReportDoc(TypedDict):
    store_size: Annotated[int, msgspec.Meta(ge=-1)]
    stats: _StatsDoc
    rotating: NotRequired[_RotationDoc | None]
    last_sent: NotRequired[str | None]


class _RetiredDoc(TypedDict):
    state: _FileDoc
    head: NotRequired[_Hex]


class _CheckpointDoc(TypedDict):
    version: NotRequired[Annotated[int, msgspec.Meta(ge=1)]]
    started_before: NotRequired[bool]
    files: NotRequired[dict[str, _FileDoc]]
    reports: NotRequired[dict[str, _ReportDoc]]
    retired: NotRequired[list[_RetiredDoc]]
    closed: NotRequired[list[_RotationDoc]]


_CHECKPOINT_DECODER = msgspec.json.Decoder(_CheckpointDoc)


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
    except PermissionError as exc:
        raise StateDamaged(
            f"{path}: cannot read it: {exc.strerror}; the state directory must belong to the "
            "user tailmail runs as (chown -R that user the state_dir)"
        ) from None


def load_checkpoint(state_dir: Path, repair: bool = False) -> Checkpoint:
    """Read the checkpoint; a missing one is a first start.

    When the current checkpoint is damaged (truncated, not JSON, the wrong shape), the previous
    one is used: offsets and store sizes are committed together, so the stores are cut back to
    it and the lines since are read again, each stored once. With `repair` (the service), the
    damaged file is moved aside so that the next commit does not make it the previous one.
    Raises StateDamaged when neither can be used.
    """
    current, previous = state_dir / CHECKPOINT, state_dir / PREVIOUS
    data = _read(current)
    if data is None:
        # A commit moves the current checkpoint to the previous name, then the new one in: a
        # crash in between leaves only the previous, which is the last one committed.
        older = _read(previous)
        return Checkpoint() if older is None else _parse(previous, older)
    try:
        return Checkpoint.from_bytes(data)
    except ValueError as exc:
        damage = f"{current} is damaged ({exc})"
    older = _read(previous)
    if older is None:
        raise StateDamaged(
            f"{damage}, and there is no previous checkpoint ({previous}) to go back to. Move it "
            "aside to start again as on the first run (start_at decides where reading begins; "
            "what the stores hold stays), or restore the state directory from a backup"
        )
    try:
        checkpoint = Checkpoint.from_bytes(older)
    except ValueError as exc:
        raise StateDamaged(
            f"{damage}, and so is the previous one, {previous} ({exc}). Move both aside to "
            "start again as on the first run (start_at decides where reading begins; what the "
            "stores hold stays), or restore the state directory from a backup"
        ) from None
    checkpoint.recovered = damage
    if repair:
        os.replace(current, state_dir / DAMAGED)
        fsync_dir(state_dir)
    return checkpoint


def _parse(path: Path, data: bytes) -> Checkpoint:
    try:
        return Checkpoint.from_bytes(data)
    except ValueError as exc:
        raise StateDamaged(
            f"{path} is damaged ({exc}). Move it aside to start again as on the first run, or "
            "restore the state directory from a backup"
        ) from None


def save_checkpoint(state_dir: Path, checkpoint: Checkpoint) -> None:
    """Commit: the new checkpoint replaces the current one, which becomes the previous.
    Raises WriteError."""
    try:
        write_atomic(state_dir / CHECKPOINT, checkpoint.to_bytes(), previous=PREVIOUS)
    except OSError as exc:
        raise write_error(exc) from exc
