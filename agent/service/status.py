"""One status snapshot, for `tailmail status`, the control socket and systemd's STATUS.

A running service builds it from what it holds in memory (`of_service`), and answers `status`
over the control socket with it; without a service (or when its socket cannot be reached) it is
read from the state directory (`of_state`), creating nothing and needing no secret. `lines`
renders it for a terminal, `summary` in one line for STATUS.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import msgspec

from agent.config.model import Config, ReportConfig
from agent.core.errors import StateDamaged
from agent.core.figures import PeriodStats
from agent.core.periods import period_from
from agent.core.text import display_path
from agent.deliver.outbox import Outbox
from agent.pipeline.checkpoint import Checkpoint, Rotation, load_checkpoint
from agent.tail.state import FileState

SHOW_PROBLEMS = 5
_PROBLEM_KINDS = {
    "source": "problem",
    "store": "problem",
    "possible_loss": "possible loss",
    "notice": "notice",
}


@dataclass(frozen=True, slots=True)
class FileStatus:
    path: str  # shown: escapes for names that are not UTF-8
    offset: int
    behind: int | None  # None: the file is gone


@dataclass(frozen=True, slots=True)
class SourceStatus:
    name: str
    path: str  # the configured path or glob
    skipped: int  # bad lines this period
    files: list[FileStatus] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class ReportStatus:
    name: str
    start: str  # the period, local, "YYYY-MM-DD HH:MM ZONE"; "" before a first period
    end: str
    selected: int
    read: int
    skipped: int
    last_sent: str  # "PERIOD at TIME", or ""
    problems: list[tuple[str, str]] = field(default_factory=list)  # (kind, sentence)
    waiting: list[str] = field(default_factory=list)  # closed periods whose report is not built


@dataclass(frozen=True, slots=True)
class Snapshot:
    running: bool
    pid: str
    live: bool  # from the running service itself (else read from the state directory)
    trouble: list[str] = field(default_factory=list)  # what is wrong now (live only)
    state: list[str] = field(default_factory=list)  # about the state directory itself
    sources: list[SourceStatus] = field(default_factory=list)
    reports: list[ReportStatus] = field(default_factory=list)
    deliveries: dict[str, int] = field(default_factory=dict)  # recent history, by event
    outbox: dict[str, int] = field(default_factory=dict)  # queued, deferred, failed, damaged
    behind: int = 0  # bytes of the source files not read yet


def _problems(problems: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """The period's problems other than bad lines (those are counted), each once, the first
    few: as the report will show them."""
    shown = dict.fromkeys(
        (_PROBLEM_KINDS[str(p.get("kind"))], str(p.get("text", "")))
        for p in problems
        if p.get("kind") in _PROBLEM_KINDS
    )
    listed = list(shown)[:SHOW_PROBLEMS]
    if len(shown) > SHOW_PROBLEMS:
        listed.append(("and", f"{len(shown) - SHOW_PROBLEMS} more (see the report)"))
    return listed


def _local(at: datetime, report: ReportConfig) -> str:
    return at.astimezone(report.timezone).strftime("%Y-%m-%d %H:%M %Z")


def _report(
    report: ReportConfig, stats: PeriodStats | None, outbox: Outbox, closed: list[Rotation]
) -> ReportStatus:
    last = outbox.last_delivered(report.name)
    sent = f"{last.get('period')} at {last.get('at')}" if last else ""
    waiting = [
        f"{c.outbox_id}: its report is not queued yet"
        + (f" ({c.attempts} failed build(s): {c.error})" if c.error else "")
        for c in closed
        if c.report == report.name
    ]
    if stats is None:
        return ReportStatus(report.name, "", "", 0, 0, 0, sent, waiting=waiting)
    period = period_from(datetime.fromisoformat(stats.start), report.rotate_at, report.timezone)
    return ReportStatus(
        name=report.name,
        start=_local(period.start, report),
        end=_local(period.end, report),
        selected=stats.selected,
        read=stats.read,
        skipped=stats.skipped_total,
        last_sent=sent,
        problems=_problems(stats.problems),
        waiting=waiting,
    )


def _sources(
    config: Config, files: list[FileState], receipts: dict[str, Any]
) -> list[SourceStatus]:
    result = []
    for source in config.sources:
        shown = []
        for f in (f for f in files if f.source == source.name):
            try:
                behind: int | None = max(0, os.stat(f.path).st_size - f.offset)
            except OSError:
                behind = None
            shown.append(FileStatus(display_path(f.path), f.offset, behind))
        skipped = sum(
            r.get("skipped", 0) for r in receipts.values() if r.get("source") == source.name
        )
        result.append(SourceStatus(source.name, source.path, skipped, shown))
    return result


def _outbox(outbox: Outbox) -> tuple[dict[str, int], dict[str, int]]:
    return outbox.counters(), outbox.counts(time.time())


def of_state(config: Config, running: bool, pid: str) -> Snapshot:
    """The snapshot read from the state directory, read-only."""
    state: list[str] = []
    try:
        checkpoint = load_checkpoint(config.state_dir)
    except StateDamaged as exc:
        state.append(str(exc))
        checkpoint = Checkpoint()
    if checkpoint.recovered:
        state.append(f"{checkpoint.recovered}; the service goes back to the previous checkpoint")
    outbox = Outbox(config.state_dir / "outbox", readonly=True)
    receipts = next(iter(checkpoint.reports.values())).stats.files if checkpoint.reports else {}
    sources = _sources(config, list(checkpoint.files.values()), receipts)
    deliveries, counts = _outbox(outbox)
    return Snapshot(
        running=running,
        pid=pid,
        live=False,
        state=state,
        sources=sources,
        reports=[
            _report(
                r,
                checkpoint.reports[r.name].stats if r.name in checkpoint.reports else None,
                outbox,
                checkpoint.closed,
            )
            for r in config.reports
        ],
        deliveries=deliveries,
        outbox=counts,
        behind=sum(f.behind or 0 for s in sources for f in s.files),
    )


def of_service(
    config: Config,
    checkpoint: Checkpoint,
    files: list[FileState],
    outbox: Outbox,
    trouble: list[str],
    behind: int,
) -> Snapshot:
    """The snapshot of a running service, from what it holds: the files it has open now."""
    receipts = next(iter(checkpoint.reports.values())).stats.files if checkpoint.reports else {}
    deliveries, counts = _outbox(outbox)
    return Snapshot(
        running=True,
        pid=str(os.getpid()),
        live=True,
        trouble=trouble,
        sources=_sources(config, files, receipts),
        reports=[
            _report(
                r,
                checkpoint.reports[r.name].stats if r.name in checkpoint.reports else None,
                outbox,
                checkpoint.closed,
            )
            for r in config.reports
        ],
        deliveries=deliveries,
        outbox=counts,
        behind=behind,
    )


def to_builtins(snapshot: Snapshot) -> Any:
    return msgspec.to_builtins(snapshot)


def from_builtins(data: Any) -> Snapshot:
    """A snapshot sent by the service (raises ValueError if it is not one)."""
    try:
        return msgspec.convert(data, Snapshot)
    except msgspec.ValidationError as exc:
        raise ValueError(str(exc)) from None


def lines(snapshot: Snapshot) -> list[str]:
    """The snapshot for a terminal, a line each."""
    out = [
        f"service: {'running (pid ' + snapshot.pid + ')' if snapshot.running else 'not running'}"
    ]
    out += [f"  now: {t}" for t in snapshot.trouble]
    out += [f"state: {s}" for s in snapshot.state]
    out.append("sources:")
    for source in snapshot.sources:
        if source.skipped:
            out.append(f"  {source.name}: {source.skipped} bad line(s) skipped this period")
        if not source.files:
            out.append(f"  {source.name}: {source.path}: no file read yet")
        for f in source.files:
            behind = "file gone" if f.behind is None else f"{f.behind} bytes behind"
            out.append(f"  {source.name}: {f.path}: offset {f.offset}, {behind}")
    out.append("reports:")
    for report in snapshot.reports:
        sent = report.last_sent or "none yet"
        if not report.start:
            out.append(f"  {report.name}: no period started yet; last report sent: {sent}")
        else:
            out.append(
                f"  {report.name}: period {report.start} .. {report.end}; {report.selected} "
                f"event(s) stored of {report.read} read, {report.skipped} skipped; last report "
                f"sent: {sent}"
            )
        out += [f"    {kind}: {text}" for kind, text in report.problems]
        out += [f"    waiting: {w}" for w in report.waiting]
    out.append(
        "deliveries (recent history): "
        + ", ".join(f"{name.removeprefix('smtp.')} {n}" for name, n in snapshot.deliveries.items())
    )
    counts = snapshot.outbox
    damaged = f" ({counts['damaged']} damaged)" if counts.get("damaged") else ""
    out.append(
        f"outbox: {counts.get('queued', 0)} queued, {counts.get('deferred', 0)} deferred, "
        f"{counts.get('failed', 0)} failed{damaged}"
    )
    return out


def summary(snapshot: Snapshot) -> str:
    """One line for systemd's STATUS."""
    counts = snapshot.outbox
    text = (
        f"{snapshot.behind} bytes behind; outbox {counts.get('queued', 0)} queued, "
        f"{counts.get('failed', 0)} failed"
    )
    if snapshot.trouble:
        text += f"; {snapshot.trouble[0]}"
    return text


def gather(config: Config) -> Snapshot:
    """The snapshot for `tailmail status`: the running service's own, or the state's."""
    import asyncio

    from agent.service.control import StateLock, request

    if not config.state_dir.exists():
        return Snapshot(
            running=False,
            pid="",
            live=False,
            state=[f"state_dir {config.state_dir} does not exist yet: the service has not run"],
        )
    lock = StateLock(config.state_dir)
    try:
        running = not lock.try_acquire()
        holder = lock.holder()
    finally:
        lock.close()
    if running:
        try:
            reply = asyncio.run(request(config.state_dir, {"cmd": "status"}, within=5.0))
            return from_builtins(reply["snapshot"])
        except (OSError, TimeoutError, ValueError, KeyError, TypeError):
            pass  # an older service, or one that does not answer: what the state says
    return of_state(config, running, holder)
