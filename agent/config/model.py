"""The configuration as the agent uses it: frozen objects, each value checked (see load.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import time
from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo

from agent.core.periods import system_timezone

DEFAULT_CONFIG = Path("/etc/tailmail/config.yaml")


DEFAULT_SUBJECT = "[{hostname}] {selected} events selected on {date}"


SUBJECT_FIELDS = frozenset({"hostname", "selected", "date", "report", "read", "skipped"})


MiB = 1024 * 1024


Security = Literal["starttls", "ssl", "none"]


@dataclass(frozen=True, slots=True)
class SourceConfig:
    name: str
    path: str  # absolute file path or glob
    start_at: Literal["end", "beginning"] = "end"
    time_field: str | None = None
    max_line_bytes: int = MiB


@dataclass(frozen=True, slots=True)
class ReportConfig:
    name: str
    store: Path
    to: tuple[str, ...]
    rotate_at: time = time(0, 0)
    timezone: ZoneInfo = field(default_factory=system_timezone)
    keep: int = 30
    compress: Literal["none", "gzip"] = "gzip"
    cc: tuple[str, ...] = ()
    subject: str = DEFAULT_SUBJECT
    send_empty: bool = True
    attach: bool = True
    max_attachment_bytes: int = 10 * MiB
    top_fields: tuple[str, ...] | None = None  # None: the fields the rules' conditions use
    # where `store` is written in the config, for messages about it (not part of its value)
    store_line: int = field(default=0, compare=False)


@dataclass(frozen=True, slots=True)
class SmtpConfig:
    host: str
    from_addr: str
    port: int = 587
    security: Security = "starttls"
    verify_tls: bool = True
    ca_file: Path | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    timeout: float = 30.0
    max_per_hour: int = 100
    retry_for: float = 5 * 86400.0
    retry_initial: float = 300.0
    retry_max: float = 3600.0
    allow_plaintext_auth: bool = False


@dataclass(frozen=True, slots=True)
class LogConfig:
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"


@dataclass(frozen=True, slots=True)
class Config:
    path: Path
    state_dir: Path
    rules_dir: Path
    sources: tuple[SourceConfig, ...]
    reports: tuple[ReportConfig, ...]
    smtp: SmtpConfig
    log: LogConfig = LogConfig()
    # where `state_dir` is written (or the top), for messages about it (not part of its value)
    state_dir_line: int = field(default=0, compare=False)

    def report(self, name: str) -> ReportConfig:
        for report in self.reports:
            if report.name == name:
                return report
        raise KeyError(name)
