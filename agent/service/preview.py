"""`tailmail report preview`: tomorrow's mail today, without rotating, sending or writing state.

Two sources of figures:

- The current period. The checkpoint, which the service replaces by atomic rename, holds the
  period's figures and the size of the store they count; the store is read up to that size.
  That is a consistent view while the service runs, taken without its lock and without writing
  anything. A rotation between reading the checkpoint and reading the store is noticed (the
  store is shorter, or another file) and the preview starts again.
- A sample file of JSON lines, run through a real pipeline (the same reading, rules, figures and
  report) in a temporary directory that is removed afterwards.
"""

from __future__ import annotations

import glob
import os
import socket
import tempfile
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from agent import __version__
from agent.config.model import Config, ReportConfig, SourceConfig
from agent.core.figures import PeriodStats
from agent.core.periods import Period, period_from, system_timezone
from agent.deliver.outbox import FAILED_DIR, Outbox
from agent.pipeline.checkpoint import load_checkpoint
from agent.report.build import render_report, report_input
from agent.report.summary import rule_profiles
from agent.report.types import Rendered
from agent.rules.load import RuleBook
from agent.tail.eventtime import event_time

ATTEMPTS = 5  # a rotation in between makes the preview start again; five in a row is not chance


class NoPeriod(Exception):
    """There is no current period to preview (the service has not run with this report)."""


class BadSample(Exception):
    """The sample file cannot be read: a usage error."""


def _local(at: datetime, report: ReportConfig) -> str:
    return f"{at.astimezone(report.timezone):%Y-%m-%d %H:%M %Z}"


def preview_current(config: Config, report: ReportConfig, rulebook: RuleBook) -> Rendered:
    """The report of the current period as it stands now, read-only."""
    for _ in range(ATTEMPTS):
        checkpoint = load_checkpoint(config.state_dir)
        rs = checkpoint.reports.get(report.name)
        if rs is None:
            raise NoPeriod(
                f"report {report.name} has no current period in {config.state_dir}: the service "
                "has not run with it yet. Try --sample FILE to preview it from a file of events"
            )
        size = max(0, rs.store_size)  # -1: not reconciled yet (nothing committed)
        rendered = _current(config, report, rulebook, rs.stats, size)
        if rendered is not None:
            return rendered
        time.sleep(0.05)  # the service rotated the store meanwhile: read its new state
    raise NoPeriod(
        f"the store {report.store} kept changing under the preview (rotations?); try again"
    )


def _current(
    config: Config, report: ReportConfig, rulebook: RuleBook, stats: PeriodStats, size: int
) -> Rendered | None:
    """The preview, or None if the store is not the one the checkpoint counted any more."""
    before = _identity(report.store)
    if size > 0 and (before is None or before[2] < size):
        return None
    period = period_from(datetime.fromisoformat(stats.start), report.rotate_at, report.timezone)
    now = datetime.now(UTC)
    hostname = socket.gethostname()
    rendered = render_report(
        report_input(
            report,
            period,
            stats,
            report.store if size > 0 else None,
            rules=rule_profiles(report, rulebook.rules, config.sources, system_timezone()),
            delivery_events=_delivery_problems(config, report),
            hostname=hostname,
            version=__version__,
            built_at=now,
            sender=config.smtp.from_addr,
            message_id=f"<tailmail.preview.{report.name}@{hostname}>",
            rotated_bytes=size,
            preview=(
                f"The period so far, as of {_local(now, report)}. The report is built and sent "
                f"when the period ends, at {_local(period.end, report)}; nothing was rotated or "
                "sent for this preview."
            ),
        )
    )
    after = _identity(report.store)
    if size > 0 and (after is None or before is None or after[:2] != before[:2]):
        return None  # rotated while it was read: the bytes read may be another period's
    return rendered


def _identity(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_size


def _delivery_problems(config: Config, report: ReportConfig) -> list[dict[str, Any]]:
    """Failed deliveries since the last report, from the outbox, without creating it."""
    root = config.state_dir / "outbox"
    if not (root / FAILED_DIR).is_dir():
        return []
    return Outbox(root, readonly=True).problems_since_last_delivery(report.name)


def preview_sample(
    config: Config, report: ReportConfig, rulebook: RuleBook, source: SourceConfig, sample: Path
) -> Rendered:
    """The report a period holding exactly the lines of `sample` would get.

    The sample is read as a file of `source` by a pipeline in a temporary directory; its period
    is the one around the middle of the sample's event times (the current one if none has a
    time), so the hour chart shows the sample's day.
    """
    from agent.pipeline.pipeline import Pipeline  # the service's machinery: only this mode needs it

    sample = sample.absolute()
    try:
        with sample.open("rb") as fh:
            middle = _middle_time(fh, source.time_field)
            size = fh.seek(0, os.SEEK_END)
            unfinished = size > 0 and os.pread(fh.fileno(), 1, size - 1) != b"\n"
    except OSError as exc:
        raise BadSample(f"--sample {sample}: cannot read it: {exc.strerror or exc}") from None
    if not sample.is_file():
        raise BadSample(f"--sample {sample}: not a regular file")
    at = middle or datetime.now(UTC)
    with tempfile.TemporaryDirectory(prefix="tailmail-preview-") as tmp:
        work = Path(tmp)
        store = work / "store" / report.store.name
        scratch = replace(
            config,
            state_dir=work / "state",
            sources=(replace(source, path=glob.escape(str(sample)), start_at="beginning"),),
            reports=(replace(report, store=store),),
        )
        pipeline = Pipeline(scratch, rulebook, clock=at.timestamp)
        try:
            pipeline.open()
            while pipeline.pump():
                pass
            rs = pipeline.checkpoint.reports[report.name]
            stats = rs.stats
            period: Period = pipeline.period(report)
            size = rs.store_size
        finally:
            pipeline.close()
        now = datetime.now(UTC)
        hostname = socket.gethostname()
        return render_report(
            report_input(
                report,
                period,
                stats,
                store if size > 0 else None,
                rules=rule_profiles(report, rulebook.rules, scratch.sources, system_timezone()),
                delivery_events=(),
                hostname=hostname,
                version=__version__,
                built_at=now,
                sender=config.smtp.from_addr,
                message_id=f"<tailmail.preview.{report.name}@{hostname}>",
                preview=(
                    f"Built from the sample file {sample} as events of source {source.name}, "
                    f"with the rules of {config.rules_dir}; nothing was rotated or sent, and "
                    "the service's state was not read."
                    + (
                        " Its last line has no newline: it is not counted (the agent waits "
                        "for a line's newline)."
                        if unfinished
                        else ""
                    )
                ),
            )
        )


def _middle_time(fh: Iterable[bytes], time_field: str | None) -> datetime | None:
    """The middle of a JSON-lines file's event times, to the hour (None without times).

    Counted per hour, so memory stays small whatever the size of the sample.
    """
    if time_field is None:
        return None
    local = system_timezone()
    hours: Counter[int] = Counter()
    for line in fh:
        try:
            event = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if isinstance(event, dict):
            at = event_time(event.get(time_field), local)
            if at is not None:
                hours[int(at.timestamp() // 3600)] += 1
    total = sum(hours.values())
    seen = 0
    for hour in sorted(hours):
        seen += hours[hour]
        if 2 * seen >= total:
            return datetime.fromtimestamp(hour * 3600 + 1800, UTC)
    return None
