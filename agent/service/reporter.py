"""Reports of closed periods: built off the reading path, queued in the outbox, never lost.

The pipeline closes a period cheaply (its store renamed, the closed period in the checkpoint).
Here its report is built in a worker thread, since reading a store of 100 MB and re-running the
rules on it takes seconds, and queued in the outbox under the period's id (idempotent: a period
whose id the outbox knows is only marked reported). A build that fails, whatever the reason, is
logged with its traceback, counted with the period (shown by `status`, STATUS and the next
report) and retried with backoff; tailing, delivery and the other reports go on.

`report_closed` does the same synchronously, for `tailmail rotate` when no service runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from typing import Any

import structlog

from agent import __version__
from agent.config.model import Config, ReportConfig
from agent.core.periods import Period, system_timezone
from agent.deliver.outbox import Outbox
from agent.pipeline.checkpoint import Rotation
from agent.pipeline.pipeline import Pipeline
from agent.report.summary import RuleProfile, rule_profiles
from agent.rules.load import RuleBook

log = structlog.get_logger("tailmail.reporter")

RETRY_FIRST = 10.0  # seconds before a failed build is tried again; doubling...
RETRY_MAX = 3600.0  # ...up to an hour


@dataclass(frozen=True, slots=True)
class ReportJob:
    """Everything a report's build needs, gathered on the event loop: the thread that builds
    it reads nothing that the loop may change meanwhile (only the closed period's own file)."""

    report: ReportConfig
    rotation: Rotation
    rules: tuple[RuleProfile, ...]
    delivery_events: tuple[dict[str, Any], ...]
    hostname: str
    built_at: datetime
    sender: str

    @property
    def meta(self) -> dict[str, Any]:
        rotation = self.rotation
        return {
            "report": self.report.name,
            "period": rotation.day.isoformat(),
            "period_start": rotation.start.astimezone(UTC).isoformat(),
            "period_end": rotation.end.astimezone(UTC).isoformat(),
            "recipients": [*self.report.to, *self.report.cc],
            "rotated_file": str(rotation.rotated),
            "compress": self.report.compress,
        }


def job_for(
    config: Config,
    rotation: Rotation,
    rulebook: RuleBook,
    outbox: Outbox,
    pending: tuple[Rotation, ...],
    local_tz: tzinfo,
    now: datetime,
    hostname: str,
) -> ReportJob:
    """The job of one closed period; `pending` are the closed periods still waiting (those of
    the same report whose build failed are problems of this one)."""
    report = config.report(rotation.report)
    events = [dict(e) for e in outbox.problems_since_last_delivery(report.name)]
    for other in pending:
        if other.report == report.name and other.error and other.outbox_id != rotation.outbox_id:
            events.append(
                {
                    "period": other.day.isoformat(),
                    "text": f"the report {other.outbox_id} could not be built after "
                    f"{other.attempts} attempt(s): {other.error}; tailmail keeps trying",
                }
            )
    return ReportJob(
        report=report,
        rotation=rotation,
        rules=rule_profiles(report, rulebook.rules, config.sources, local_tz),
        delivery_events=tuple(events),
        hostname=hostname,
        built_at=now,
        sender=config.smtp.from_addr,
    )


def build_message(job: ReportJob) -> bytes:
    """The report message of a closed period (pure apart from reading its rotated file)."""
    # Imported at the first report: jinja2 and the templates are not needed to start.
    from agent.report.build import build_report, report_input

    rotation = job.rotation
    rotated = rotation.rotated
    return build_report(
        report_input(
            job.report,
            Period(rotation.start, rotation.end, rotation.day),
            rotation.stats,
            rotated if rotated.exists() and rotated.stat().st_size else None,
            rules=job.rules,
            delivery_events=job.delivery_events,
            hostname=job.hostname,
            version=__version__,
            built_at=job.built_at,
            sender=job.sender,
            message_id=f"<tailmail.{rotation.outbox_id}@{job.hostname}>",
        )
    )


def queue(outbox: Outbox, pipeline: Pipeline, job: ReportJob, message: bytes) -> None:
    """Queue a built report, then forget its closed period (in that order: a crash in between
    finds the id in the outbox and only forgets the period)."""
    rotation = job.rotation
    outbox.put(rotation.outbox_id, message, job.meta)
    pipeline.reported(rotation.outbox_id)
    log.info(
        "report.queued",
        report=rotation.report,
        period=rotation.day.isoformat(),
        selected=rotation.stats.selected,
        id=rotation.outbox_id,
    )


def _failure(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def report_closed(
    config: Config,
    pipeline: Pipeline,
    rulebook: RuleBook,
    outbox: Outbox,
    hostname: str | None = None,
) -> tuple[list[str], dict[str, str]]:
    """Build and queue the report of every closed period now, synchronously (`rotate` without
    a service); (ids queued, {id: why it could not be built}). Failures stay closed periods:
    the service builds them when it next runs."""
    queued: list[str] = []
    failed: dict[str, str] = {}
    for rotation in pipeline.closed:
        if outbox.contains(rotation.outbox_id):
            pipeline.reported(rotation.outbox_id)
            queued.append(rotation.outbox_id)
            continue
        job = job_for(
            config,
            rotation,
            rulebook,
            outbox,
            pipeline.closed,
            pipeline.local_tz,
            pipeline.now(),
            hostname or socket.gethostname(),
        )
        try:
            message = build_message(job)
        except Exception as exc:
            log.error("report.build_failed", id=rotation.outbox_id, exc_info=True)
            failed[rotation.outbox_id] = _failure(exc)
            pipeline.report_failed(rotation.outbox_id, _failure(exc))
            continue
        queue(outbox, pipeline, job, message)
        queued.append(rotation.outbox_id)
    return queued, failed


class Reporter:
    """The service's task that reports closed periods; one build at a time, oldest first."""

    def __init__(
        self,
        config: Config,
        pipeline: Pipeline,
        rulebook: RuleBook,
        outbox: Outbox,
        on_queued: Callable[[], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.pipeline = pipeline
        self.rulebook = rulebook
        self.outbox = outbox
        self.on_queued = on_queued
        self.clock = clock
        self.local_tz = system_timezone()
        self.hostname = socket.gethostname()
        self._wakeup = asyncio.Event()
        self._done = asyncio.Event()  # set after each pass: waiters look again
        self._retry_at: dict[str, float] = {}  # id -> when its build may be tried again
        self._delay: dict[str, float] = {}  # id -> the backoff after its last failure
        self.trouble: dict[str, str] = {}  # id -> why its report could not be built

    def wake(self) -> None:
        """A period was closed (or the outbox changed): look now."""
        self._wakeup.set()

    async def run(self) -> None:
        while True:
            self._wakeup.clear()
            delay = await self.report_due()
            self._done.set()
            self._done = asyncio.Event()
            if delay is None:
                await self._wakeup.wait()
                continue
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wakeup.wait()

    async def report_due(self) -> float | None:
        """Report every closed period whose build is due; seconds until the next retry."""
        waits: list[float] = []
        for rotation in self.pipeline.closed:
            retry_at = self._retry_at.get(rotation.outbox_id, 0.0)
            if retry_at > self.clock():
                waits.append(retry_at - self.clock())
                continue
            try:
                retry_in = await self._report(rotation)
            except OSError as exc:
                # The outbox or the checkpoint cannot be written (disk full): the period stays
                # closed, and is tried again; the tail loop says the same about its commits.
                log.error("report.queue_failed", id=rotation.outbox_id, error=str(exc))
                retry_in = self._backoff(rotation.outbox_id, f"cannot queue it: {exc}")
            if retry_in is not None:
                waits.append(retry_in)
        return min(waits) if waits else None

    async def _report(self, rotation: Rotation) -> float | None:
        """Build and queue one report; None, or seconds until its build is tried again."""
        if self.outbox.contains(rotation.outbox_id):
            self.pipeline.reported(rotation.outbox_id)  # queued before a crash or by `rotate`
            self._settled(rotation.outbox_id)
            return None
        job = job_for(
            self.config,
            rotation,
            self.rulebook,
            self.outbox,
            self.pipeline.closed,
            self.local_tz,
            self.pipeline.now(),
            self.hostname,
        )
        try:
            message = await asyncio.to_thread(build_message, job)
        except Exception as exc:
            log.error(
                "report.build_failed",
                report=rotation.report,
                period=rotation.day.isoformat(),
                id=rotation.outbox_id,
                error=_failure(exc),
                traceback="".join(traceback.format_exception(exc)),
            )
            self.pipeline.report_failed(rotation.outbox_id, _failure(exc))
            return self._backoff(rotation.outbox_id, _failure(exc))
        queue(self.outbox, self.pipeline, job, message)
        self._settled(rotation.outbox_id)
        self.on_queued()
        return None

    def _backoff(self, outbox_id: str, why: str) -> float:
        delay = min(self._delay.get(outbox_id, RETRY_FIRST / 2) * 2, RETRY_MAX)
        self._delay[outbox_id] = delay
        self._retry_at[outbox_id] = self.clock() + delay
        self.trouble[outbox_id] = why
        return delay

    def _settled(self, outbox_id: str) -> None:
        for table in (self._retry_at, self._delay, self.trouble):
            table.pop(outbox_id, None)

    async def wait_reported(self, ids: list[str]) -> dict[str, str]:
        """Wait until the reports of `ids` are queued or have failed once; {id: why not}."""
        self.wake()
        while True:
            closed = {c.outbox_id for c in self.pipeline.closed}
            waiting = [i for i in ids if i in closed and i not in self.trouble]
            if not waiting:
                return {i: self.trouble[i] for i in ids if i in closed and i in self.trouble}
            await self._done.wait()

    def pending_files(self) -> set[str]:
        """The rotated files of closed periods: retention keeps them until they are reported."""
        return {str(c.rotated) for c in self.pipeline.closed}
