"""The report's data: what goes in (a period's figures and file), what comes out.

In a module of its own so that the builder and the view both use it and neither imports back.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Literal

from agent.config.model import ReportConfig
from agent.core.figures import PeriodStats
from agent.core.periods import Period
from agent.report.summary import RuleProfile

Status = Literal["green", "amber", "red"]


@dataclass(frozen=True, slots=True)
class ReportInput:
    report: ReportConfig
    period: Period
    hostname: str
    version: str
    built_at: datetime  # aware
    stats: PeriodStats
    # the period's store file (uncompressed JSON lines); None: nothing was stored
    rotated_file: Path | None
    rules: tuple[RuleProfile, ...]  # the rules feeding the report now: descriptions, top values
    source_problems: tuple[str, ...]  # e.g. "source app: /var/log/app/events.json is missing"
    delivery_problems: tuple[str, ...]  # earlier deliveries that failed since the last report
    sender: str  # From:
    message_id: str  # "<...@...>", deterministic per report and period
    notices: tuple[str, ...] = ()  # worth knowing, not a problem (a store made again)
    # e.g. "the store /var/log/tailmail/daily.jsonl belongs to uid 1000": red, like sources
    store_problems: tuple[str, ...] = ()
    # what may have been lost and cannot be known (copytruncate's blind window): amber
    possible_losses: tuple[str, ...] = ()
    rotated_bytes: int | None = None  # read only this much of rotated_file (a store in use)
    preview: str = ""  # set by `report preview`: a sentence saying what the preview is


@dataclass(frozen=True, slots=True)
class Rendered:
    """A built report: its status, its two bodies and the whole message."""

    status: Status
    reason: str
    subject: str
    text: str
    html: str
    message: bytes  # CRLF line ends, ready to queue
    attached: str  # the attachment's file name, or ""


@dataclass(frozen=True, slots=True)
class Receipt:
    note: str  # what became of the file, one paragraph
    location: str  # the file's path when it is not attached, else ""
    lines: str
    sha256: str
    checks: tuple[str, ...]  # shell commands that verify the receipt
    agrees: str  # the figures and the file agree: one sentence, or ""
    warning: str  # the figures and the file disagree, or ""
