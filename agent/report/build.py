"""The report email: a period's figures and store file -> one RFC 5322 message.

Pure apart from reading the store file it is given: no clock (the build time is passed in), no
network, no randomness (the MIME boundaries are derived from the content), so the same input
builds the same bytes and a report rebuilt after a crash is the report queued before it.

Everything that comes from events or configuration is cleaned before it reaches the message
(see reportview): header values lose CR, LF and NUL, and the HTML is autoescaped. The HTML is
made for mail clients: tables for layout, inline styles, no script, image or web font, and it is
kept under HTML_BUDGET bytes whatever the events (the top values are shortened to fit).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import re
import shlex
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from email.errors import HeaderParseError
from email.headerregistry import Address
from email.message import MIMEPart
from email.policy import SMTP
from email.utils import format_datetime
from pathlib import Path
from typing import Any

from agent.config.model import DEFAULT_SUBJECT, ReportConfig
from agent.core.figures import PeriodStats
from agent.core.periods import Period
from agent.core.text import clean, figure, line_count, one_line, size_text
from agent.report.summary import FileSummary, RuleProfile, summarize_file
from agent.report.types import Receipt, Rendered, ReportInput, Status
from agent.report.view import LEVELS, SHOW_CHARS, build_view, environment, profiled

HTML_BUDGET = 95_000  # bytes of the HTML part: mail clients clip long messages (Gmail at 102 KB)
CHUNK = 1 << 20


def report_input(
    report: ReportConfig,
    period: Period,
    stats: PeriodStats,
    rotated_file: Path | None,
    *,
    rules: tuple[RuleProfile, ...],
    delivery_events: Iterable[Mapping[str, Any]],
    hostname: str,
    version: str,
    built_at: datetime,
    sender: str,
    message_id: str,
    rotated_bytes: int | None = None,
    preview: str = "",
) -> ReportInput:
    """The input of a period's report from its figures and the outbox's delivery problems."""
    kinds: dict[str, list[str]] = {"source": [], "store": [], "possible_loss": [], "notice": []}
    for problem in stats.problems:
        if problem.get("kind") in kinds:
            kinds[str(problem["kind"])].append(str(problem.get("text", "")))
    deliveries = tuple(
        f"{p.get('period', '?')}: {p.get('text') or p.get('error') or p.get('event', 'failed')}"
        for p in delivery_events
    )
    return ReportInput(
        report=report,
        period=period,
        hostname=hostname,
        version=version,
        built_at=built_at,
        stats=stats,
        rotated_file=rotated_file,
        rules=rules,
        source_problems=tuple(kinds["source"]),
        delivery_problems=deliveries,
        sender=sender,
        message_id=message_id,
        notices=tuple(dict.fromkeys(kinds["notice"])),
        store_problems=tuple(dict.fromkeys(kinds["store"])),
        possible_losses=tuple(dict.fromkeys(kinds["possible_loss"])),
        rotated_bytes=rotated_bytes,
        preview=preview,
    )


def status_of(inp: ReportInput) -> tuple[str, str]:
    """("green" | "amber" | "red", the one-line reason) from the figures and problems given."""
    return _status(inp, None)


def _status(inp: ReportInput, file_problem: str | None) -> tuple[Status, str]:
    stats = inp.stats
    red: list[str] = []
    for problems, what in ((inp.source_problems, "source"), (inp.store_problems, "store")):
        if problems:
            first = clean(problems[0], SHOW_CHARS)
            more = len(problems) - 1
            red.append(first + (f" (and {figure(more)} more {what} problems)" if more else ""))
    if inp.delivery_problems:
        n = len(inp.delivery_problems)
        red.append(f"{figure(n)} earlier report {'delivery' if n == 1 else 'deliveries'} failed")
    file_problem = file_problem or _missing_store(inp)
    if file_problem:
        red.append(file_problem)
    skipped = stats.skipped_total
    if red:
        also = f"; also {line_count(skipped)} skipped" if skipped else ""
        return "red", one_line("; ".join(red) + also)
    amber: list[str] = []
    if skipped:
        reasons = sorted(stats.skipped.items(), key=lambda kv: (-kv[1], kv[0]))
        shown = ", ".join(f"{clean(r, 40)} {figure(c)}" for r, c in reasons[:3])
        etc = ", ..." if len(reasons) > 3 else ""
        amber.append(f"{line_count(skipped)} skipped ({shown}{etc})")
    if inp.possible_losses:
        n = len(inp.possible_losses)
        amber.append(
            f"{figure(n)} truncation{'s' if n != 1 else ''} of a source file (copytruncate): "
            "lines written in the instant before may be lost, which no program can see"
        )
    if amber:
        return "amber", one_line("; ".join(amber))
    count = len(set(inp.notices))
    notices = f"; {figure(count)} notice{'s' if count != 1 else ''} below" if count else ""
    return "green", (
        f"{figure(stats.read)} events read, {figure(stats.selected)} selected, "
        f"no line skipped, no source or delivery problem{notices}."
    )


def _missing_store(inp: ReportInput) -> str | None:
    """Events were selected but there is no file to show them: said in the status and listed
    with the problems, never one without the other."""
    if inp.rotated_file is None and inp.stats.selected > 0:
        return f"{figure(inp.stats.selected)} events were selected but the store file is missing"
    return None


class _Placeholders(dict[str, object]):
    def __missing__(self, key: str) -> object:
        return "{" + key + "}"


def render_subject(report: ReportConfig, values: Mapping[str, object]) -> str:
    """The report's subject with {hostname} {selected} {date} {report} {read} {skipped} filled.

    An unknown placeholder stays as written; a subject that cannot be formatted at all (a stray
    brace, which `check` rejects) falls back to the default subject rather than losing the mail.
    """
    try:
        text = report.subject.format_map(_Placeholders(values))
    except (ValueError, IndexError, KeyError, AttributeError, TypeError):
        text = DEFAULT_SUBJECT.format_map(_Placeholders(values))
    return one_line(text)


def build_report(inp: ReportInput) -> bytes:
    """The whole report message, as bytes with CRLF line ends, ready to queue."""
    return render_report(inp).message


def render_report(inp: ReportInput) -> Rendered:
    """The report: one pass over the store file, then both parts, the HTML as detailed as fits
    HTML_BUDGET, and the message around them."""
    profiles = profiled(inp, LEVELS[0])
    summary: FileSummary | None = None
    file_problem: str | None = None
    if inp.rotated_file is not None:
        where = clean(str(inp.rotated_file), 300)
        try:
            summary = summarize_file(inp.rotated_file, profiles, inp.rotated_bytes)
        except OSError as exc:
            file_problem = f"the store file {where} could not be read: {exc.strerror or exc}"
        else:
            if summary.lines == 0 and inp.stats.selected > 0:
                file_problem = f"{figure(inp.stats.selected)} events were selected but the store file {where} is empty"
    file_problem = file_problem or _missing_store(inp)
    status, reason = _status(inp, file_problem)
    attachment, receipt = _attachment(inp, summary)
    text = html = ""
    for caps in LEVELS:  # the first that fits: the full report, unless the events are unusual
        view = build_view(inp, status, reason, summary, receipt, file_problem, caps)
        html = environment(html=True).get_template("report.html.j2").render(r=view)
        if len(html.encode()) <= HTML_BUDGET:
            break
    # The plain text has no size problem: it always gets the full detail.
    view = build_view(inp, status, reason, summary, receipt, file_problem, LEVELS[0])
    text = environment(html=False).get_template("report.txt.j2").render(r=view)
    subject, message = _message(inp, status, text, html, attachment)
    return Rendered(
        status, reason, subject, text, html, message, attachment.filename if attachment else ""
    )


# --- the attachment and the receipt ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Attachment:
    data: bytes
    subtype: str  # of application/
    filename: str


def attachment_name(report: ReportConfig, period: Period) -> str:
    """`{store stem}-{YYYY-MM-DD}{store suffix}`: daily.jsonl -> daily-2026-11-21.jsonl."""
    store = report.store
    return one_line(f"{store.stem}-{period.day.isoformat()}{store.suffix}")


def _attachment(
    inp: ReportInput, summary: FileSummary | None
) -> tuple[_Attachment | None, Receipt | None]:
    if inp.rotated_file is None or summary is None or summary.lines == 0:
        return None, None
    report, path = inp.report, inp.rotated_file
    name = attachment_name(report, inp.period)
    where = f"It is on {clean(inp.hostname, 80)} at the path below"
    where += " (with .gz added once it is compressed)." if report.compress == "gzip" else "."
    if inp.preview:
        where = f"It is on {clean(inp.hostname, 80)} at the path below (the store, still open)."
    limit = report.max_attachment_bytes
    attachment: _Attachment | None = None
    try:
        if not report.attach:
            note = f"Not attached (attach: false); the file is {size_text(summary.size)}. {where}"
        elif summary.size <= limit:
            attachment = _Attachment(_read(path, summary.size), "x-ndjson", name)
            note = f"Attached: {name}, application/x-ndjson, {size_text(summary.size)}."
        elif (packed := _gzip_within(path, summary.size, name, limit)) is not None:
            attachment = _Attachment(packed, "gzip", name + ".gz")
            note = (
                f"Attached compressed: {name}.gz, application/gzip, {size_text(len(packed))}. "
                f"Uncompressed it is {size_text(summary.size)}, more than max_attachment_bytes "
                f"({size_text(limit)})."
            )
        else:
            note = (
                f"Not attached: the file is {size_text(summary.size)}, more than "
                f"max_attachment_bytes ({size_text(limit)}) even compressed. {where}"
            )
    except OSError as exc:
        attachment = None
        note = f"Not attached: the file could not be read ({exc.strerror or exc}). {where}"
    # Paths and commands are shown whole on lines of their own, so they can be copied.
    location = "" if attachment else clean(str(path), 1000)
    target = shlex.quote(attachment.filename if attachment else location)
    if attachment is not None and attachment.subtype == "gzip":
        checks = (f"gunzip -c {target} | sha256sum", f"gunzip -c {target} | wc -l")
    else:
        checks = (f"sha256sum {target}", f"wc -l {target}")
    agrees = warning = ""
    if summary.lines != inp.stats.selected:
        warning = (
            f"The figures count {figure(inp.stats.selected)} selected events but the file holds "
            f"{figure(summary.lines)} lines."
        )
    else:
        agrees = (
            f"The file holds {figure(summary.lines)} lines: one for each of the "
            f"{figure(inp.stats.selected)} selected events."
        )
    receipt = Receipt(
        note=note,
        location=location,
        lines=figure(summary.lines),
        sha256=summary.sha256,
        checks=checks,
        agrees=agrees,
        warning=warning,
    )
    return attachment, receipt


def _read(path: Path, size: int) -> bytes:
    """The first `size` bytes: what was summarized, even if a store in use grew since."""
    with path.open("rb") as fh:
        return fh.read(size)


def _gzip_within(path: Path, size: int, name: str, limit: int) -> bytes | None:
    """The first `size` bytes gzipped (deterministically: no timestamp), or None once the result
    exceeds `limit`."""
    buf = io.BytesIO()
    left = size
    with (
        path.open("rb") as src,
        gzip.GzipFile(filename=name, mode="wb", fileobj=buf, compresslevel=6, mtime=0) as gz,
    ):
        while left > 0 and (chunk := src.read(min(CHUNK, left))):
            left -= len(chunk)
            gz.write(chunk)
            if buf.tell() > limit:
                return None
    return buf.getvalue() if buf.tell() <= limit else None


# --- the message ----------------------------------------------------------------------------


def _message(
    inp: ReportInput, status: Status, text: str, html: str, attachment: _Attachment | None
) -> tuple[str, bytes]:
    stats, report, period, tz = inp.stats, inp.report, inp.period, inp.report.timezone
    subject = render_subject(
        report,
        {
            "hostname": inp.hostname,
            "selected": stats.selected,
            "date": period.day.isoformat(),
            "report": report.name,
            "read": stats.read,
            "skipped": stats.skipped_total,
        },
    )
    # MIMEPart, not EmailMessage, throughout: EmailMessage.set_content adds MIME-Version to parts.
    msg = MIMEPart(policy=SMTP)
    _address_header(msg, "From", (inp.sender,))
    _address_header(msg, "To", report.to)
    if report.cc:
        _address_header(msg, "Cc", report.cc)
    msg["Subject"] = subject
    msg["Date"] = format_datetime(inp.built_at.astimezone(tz))
    msg["Message-ID"] = one_line(inp.message_id)
    msg["Auto-Submitted"] = "auto-generated"  # RFC 3834: no vacation replies to the agent
    msg["X-Tailmail-Report"] = one_line(report.name)
    start, end = period.start.astimezone(tz), period.end.astimezone(tz)
    msg["X-Tailmail-Period"] = (
        f"{start.isoformat(timespec='seconds')}/{end.isoformat(timespec='seconds')}"
    )
    msg["X-Tailmail-Status"] = status
    msg["MIME-Version"] = "1.0"
    msg["Content-Type"] = "multipart/mixed"

    alternative = MIMEPart(policy=SMTP)
    alternative["Content-Type"] = "multipart/alternative"
    for body, subtype in ((text, "plain"), (html, "html")):
        part = MIMEPart(policy=SMTP)
        # quoted-printable keeps the message 7-bit: no reliance on the server's 8BITMIME
        part.set_content(body, subtype=subtype, charset="utf-8", cte="quoted-printable")
        alternative.attach(part)
    msg.attach(alternative)
    digest = hashlib.sha256(text.encode() + html.encode() + inp.message_id.encode())
    if attachment is not None:
        part = MIMEPart(policy=SMTP)
        part.set_content(
            attachment.data,
            maintype="application",
            subtype=attachment.subtype,
            disposition="attachment",
            filename=attachment.filename,
        )
        msg.attach(part)
        digest.update(hashlib.sha256(attachment.data).digest())
    # Boundaries from the content: reproducible, and "=_" occurs in neither base64 nor
    # quoted-printable text, so a boundary can never appear inside a part.
    token = digest.hexdigest()
    msg.set_boundary(f"=_tailmail_{token[:24]}")
    alternative.set_boundary(f"=_tailmail_{token[24:48]}")
    return subject, msg.as_bytes()


_NAME_ADDR = re.compile(r"^(.*?)\s*<([^<>]*)>\s*$")


def _address_header(msg: MIMEPart, name: str, values: Sequence[str]) -> None:
    """Set an address header from `Name <a@b>` / `a@b` strings, quoting names as needed."""
    cleaned = [one_line(v) for v in values]
    try:
        addresses = []
        for value in cleaned:
            m = _NAME_ADDR.match(value)
            display, spec = (
                (m.group(1).strip().strip('"'), m.group(2).strip()) if m else ("", value)
            )
            addresses.append(Address(display_name=display, addr_spec=spec))
    except (ValueError, IndexError, HeaderParseError):
        msg[name] = ", ".join(cleaned)  # the email package records the defect; the mail still goes
        return
    msg[name] = addresses
