"""The pipeline as the service drives it, for in-process tests: each period it closes gets its
report built and queued at once (the service's reporter does that in a worker thread)."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from datetime import datetime

from agent.config.model import Config, ReportConfig
from agent.deliver.outbox import Outbox
from agent.outputs.store import prune
from agent.pipeline.checkpoint import Rotation
from agent.pipeline.pipeline import Pipeline
from agent.rules.load import RuleBook
from agent.service.reporter import report_closed


class ReportingPipeline(Pipeline):
    def __init__(
        self, config: Config, rulebook: RuleBook, clock: Callable[[], float] = time.time
    ) -> None:
        self.outbox = Outbox(config.state_dir / "outbox")
        self.hostname = socket.gethostname()  # a test may set another: reports are built with it
        super().__init__(config, rulebook, clock=clock, id_taken=self.outbox.contains)

    def report(self) -> list[str]:
        """Queue the reports of the closed periods, then apply retention; the ids queued."""
        queued = report_closed(self.config, self, self.rulebook, self.outbox, self.hostname)[0]
        unsent = self.outbox.unsent_files() | {str(c.rotated) for c in self.closed}
        for report in self.config.reports:
            prune(report, unsent)
        return queued

    def open(self) -> None:
        super().open()
        self.report()

    def rotate_due(self) -> list[Rotation]:
        closed = super().rotate_due()
        self.report()
        return closed

    def rotate(self, report: ReportConfig, at: datetime | None = None) -> Rotation:
        closed = super().rotate(report, at)
        self.report()
        return closed
