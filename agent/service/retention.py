"""Retention: rotated files whose reports were sent are compressed, and `keep` applied; a file
whose report is not sent yet (queued, failed, or not even built) is never touched."""

from __future__ import annotations

import structlog

from agent.config.model import Config, ReportConfig
from agent.outputs.store import compress, prune, rotated_files

log = structlog.get_logger("tailmail.retention")


def tidy(config: Config, unsent: set[str], only: ReportConfig | None = None) -> None:
    """Compress the rotated files of sent reports, then apply `keep`; `unsent` are the files
    of reports not sent yet (as paths)."""
    for report in config.reports:
        if only is not None and report is not only:
            continue
        if report.compress == "gzip":
            for path in rotated_files(report):
                if path.suffix != ".gz" and str(path) not in unsent:
                    try:
                        compress(path)
                    except OSError as exc:
                        log.error("store.compress_failed", path=str(path), error=str(exc))
        prune(report, unsent)
