"""The report email: a period's figures and rotated store file -> one RFC 5322 message.

Pure apart from reading the rotated file it is given: no clock (the build time is passed in), no
network, no randomness (the MIME boundaries are derived from the content), so the same input
builds the same bytes and a report rebuilt after a crash is the report queued before it.

Everything that comes from events or configuration is cleaned before it reaches the message:
control characters are shown as escapes in the body, long values are cut (and say so), lists are
capped (and say how many more), header values lose CR, LF and NUL, and the HTML is autoescaped.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import re
import shlex
import textwrap
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.errors import HeaderParseError
from email.headerregistry import Address
from email.message import MIMEPart
from email.policy import SMTP
from email.utils import format_datetime
from functools import cache
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo

import jinja2
import orjson

from agent.config import DEFAULT_SUBJECT, ReportConfig
from agent.periods import Period
from agent.state import PeriodStats

# The value counters are the only memory that grows with the file: at most MAX_DISTINCT keys
# per field, each at most MAX_VALUE_CHARS long. A value first seen after its field reached the
# cap is not counted (the report says how many events that concerned); the counts shown are
# exact for the values shown.
MAX_DISTINCT = 10_000
MAX_VALUE_CHARS = 200
# Caps that keep the HTML part well under 100 KB whatever the configuration and the events.
MAX_RULES = 40
MAX_FIELDS = 8
MAX_HOURS = 48
MAX_REASONS = 15  # skip reasons listed
MAX_EXAMPLES = 3  # first examples shown per skip reason
MAX_ALL_EXAMPLES = 15  # and in all
MAX_LISTED = 10  # source problems, delivery problems, files read
SHOW_CHARS = 120  # an event value or sample shown in the body
BAR_CHARS = 30  # the longest bar of the plain-text part
CHUNK = 1 << 20

Status = Literal["green", "amber", "red"]
_COLOURS: dict[str, tuple[str, str]] = {  # status -> (background, text)
    "green": ("#1e7b34", "#ffffff"),
    "amber": ("#f2b600", "#1f1f1f"),
    "red": ("#c62828", "#ffffff"),
}


@dataclass(frozen=True, slots=True)
class ReportInput:
    report: ReportConfig
    period: Period
    hostname: str
    version: str
    built_at: datetime  # aware
    stats: PeriodStats
    # the period's rotated store file (uncompressed JSON lines); None: nothing was stored
    rotated_file: Path | None
    top_fields: tuple[str, ...]  # fields whose most frequent values to show
    source_problems: tuple[str, ...]  # e.g. "source app: /var/log/app/events.json is missing"
    delivery_problems: tuple[str, ...]  # earlier deliveries that failed since the last report
    sender: str  # From:
    message_id: str  # "<...@...>", deterministic per report and period


@dataclass(frozen=True, slots=True)
class FileSummary:
    lines: int
    size: int
    sha256: str  # hex, of the file's bytes
    top_values: dict[str, list[tuple[str, int]]]  # field -> [(value as shown, count)], most first
    present: dict[str, int]  # field -> events that have it
    uncounted: dict[str, int]  # field -> events whose value came after the distinct-value cap


_MISSING = object()


def summarize_file(path: Path, fields: Sequence[str], top: int = 5) -> FileSummary:
    """Count, hash and profile a store file in one streaming pass.

    Memory is constant in the file's size apart from the value counters, which hold at most
    MAX_DISTINCT values of at most MAX_VALUE_CHARS characters per field.
    """
    paths = {f: f.split(".") for f in fields}
    counters: dict[str, Counter[tuple[bool, str]]] = {f: Counter() for f in fields}
    present = dict.fromkeys(fields, 0)
    uncounted = dict.fromkeys(fields, 0)
    digest = hashlib.sha256()
    lines = size = 0
    with path.open("rb") as fh:
        for line in fh:
            digest.update(line)
            size += len(line)
            lines += 1
            if not fields:
                continue
            try:
                event = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            for name, parts in paths.items():
                value = _lookup(event, parts)
                if value is _MISSING:
                    continue
                present[name] += 1
                key = _value_key(value)
                counter = counters[name]
                if key in counter or len(counter) < MAX_DISTINCT:
                    counter[key] += 1
                else:
                    uncounted[name] += 1
    return FileSummary(
        lines=lines,
        size=size,
        sha256=digest.hexdigest(),
        top_values={
            f: [(_value_text(k), n) for k, n in c.most_common(top)] for f, c in counters.items()
        },
        present=present,
        uncounted=uncounted,
    )


def _lookup(event: Any, parts: list[str]) -> Any:
    """A dotted field path as the rules read it: `user.name`, `items.0`."""
    value = event
    for part in parts:
        if isinstance(value, dict):
            if part not in value:
                return _MISSING
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return _MISSING
    return value


def _value_key(value: Any) -> tuple[bool, str]:
    """(is a string, text): the string "10" and the number 10 are different values."""
    if isinstance(value, str):
        return True, value[:MAX_VALUE_CHARS]
    try:
        return False, orjson.dumps(value).decode()[:MAX_VALUE_CHARS]
    except (TypeError, orjson.JSONEncodeError):
        return False, repr(value)[:MAX_VALUE_CHARS]


def _value_text(key: tuple[bool, str]) -> str:
    """A string plainly, unless it would read as another value (`10`, `null`, ``): then quoted."""
    is_string, text = key
    if not is_string:
        return text
    try:
        looks_like_json = not isinstance(orjson.loads(text), str)
    except orjson.JSONDecodeError:
        looks_like_json = text == "" or text != text.strip()
    return orjson.dumps(text).decode() if looks_like_json else text


def status_of(inp: ReportInput) -> tuple[str, str]:
    """("green" | "amber" | "red", the one-line reason) from the figures and problems given."""
    return _status(inp, None)


def _status(inp: ReportInput, file_problem: str | None) -> tuple[Status, str]:
    stats = inp.stats
    red: list[str] = []
    if inp.source_problems:
        first = _clean(inp.source_problems[0], SHOW_CHARS)
        more = len(inp.source_problems) - 1
        red.append(first + (f" (and {_n(more)} more source problems)" if more else ""))
    if inp.delivery_problems:
        n = len(inp.delivery_problems)
        red.append(f"{_n(n)} earlier report {'delivery' if n == 1 else 'deliveries'} failed")
    if file_problem:
        red.append(file_problem)
    elif inp.rotated_file is None and stats.selected > 0:
        red.append(f"{_n(stats.selected)} events were selected but the store file is missing")
    skipped = stats.skipped_total
    if red:
        also = f"; also {_lines(skipped)} skipped" if skipped else ""
        return "red", _one_line("; ".join(red) + also)
    if skipped:
        reasons = sorted(stats.skipped.items(), key=lambda kv: (-kv[1], kv[0]))
        shown = ", ".join(f"{_clean(r, 40)} {_n(c)}" for r, c in reasons[:3])
        etc = ", ..." if len(reasons) > 3 else ""
        return "amber", _one_line(f"{_lines(skipped)} skipped ({shown}{etc})")
    return "green", (
        f"{_n(stats.read)} events read, {_n(stats.selected)} selected, "
        "no line skipped, no source or delivery problem."
    )


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
    return _one_line(text)


def build_report(inp: ReportInput) -> bytes:
    """The whole report message, as bytes with CRLF line ends, ready to queue."""
    fields = inp.top_fields[:MAX_FIELDS]
    summary: FileSummary | None = None
    file_problem: str | None = None
    if inp.rotated_file is not None:
        where = _clean(str(inp.rotated_file), 300)
        try:
            summary = summarize_file(inp.rotated_file, fields)
        except OSError as exc:
            file_problem = f"the store file {where} could not be read: {exc.strerror or exc}"
        else:
            if summary.lines == 0 and inp.stats.selected > 0:
                file_problem = f"{_n(inp.stats.selected)} events were selected but the store file {where} is empty"
    status, reason = _status(inp, file_problem)
    attachment, receipt = _attachment(inp, summary)
    view = _view(inp, status, reason, summary, receipt, file_problem)
    text = _environment(html=False).get_template("report.txt.j2").render(r=view)
    html = _environment(html=True).get_template("report.html.j2").render(r=view)
    return _message(inp, status, text, html, attachment)


# --- the attachment -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Attachment:
    data: bytes
    subtype: str  # of application/
    filename: str


@dataclass(frozen=True, slots=True)
class _Receipt:
    note: str  # what became of the file, one paragraph
    location: str  # the file's path when it is not attached, else ""
    lines: str
    sha256: str
    checks: tuple[str, ...]  # shell commands that verify the receipt
    warning: str  # the figures and the file disagree, or ""


def attachment_name(report: ReportConfig, period: Period) -> str:
    """`{store stem}-{YYYY-MM-DD}{store suffix}`: daily.jsonl -> daily-2026-11-21.jsonl."""
    store = report.store
    return _one_line(f"{store.stem}-{period.day.isoformat()}{store.suffix}")


def _attachment(
    inp: ReportInput, summary: FileSummary | None
) -> tuple[_Attachment | None, _Receipt | None]:
    if inp.rotated_file is None or summary is None or summary.lines == 0:
        return None, None
    report, path = inp.report, inp.rotated_file
    name = attachment_name(report, inp.period)
    where = f"It is on {_clean(inp.hostname, 80)} at the path below"
    where += " (with .gz added once it is compressed)." if report.compress == "gzip" else "."
    limit = report.max_attachment_bytes
    attachment: _Attachment | None = None
    try:
        if not report.attach:
            note = f"Not attached (attach: false); the file is {_size(summary.size)}. {where}"
        elif summary.size <= limit:
            attachment = _Attachment(path.read_bytes(), "x-ndjson", name)
            note = f"Attached: {name}, application/x-ndjson, {_size(summary.size)}."
        elif (packed := _gzip_within(path, name, limit)) is not None:
            attachment = _Attachment(packed, "gzip", name + ".gz")
            note = (
                f"Attached compressed: {name}.gz, application/gzip, {_size(len(packed))}. "
                f"Uncompressed it is {_size(summary.size)}, more than max_attachment_bytes "
                f"({_size(limit)})."
            )
        else:
            note = (
                f"Not attached: the file is {_size(summary.size)}, more than "
                f"max_attachment_bytes ({_size(limit)}) even compressed. {where}"
            )
    except OSError as exc:
        attachment = None
        note = f"Not attached: the file could not be read ({exc.strerror or exc}). {where}"
    # Paths and commands are shown whole on lines of their own, so they can be copied.
    location = "" if attachment else _clean(str(path), 1000)
    target = shlex.quote(attachment.filename if attachment else location)
    if attachment is not None and attachment.subtype == "gzip":
        checks = (f"gunzip -c {target} | sha256sum", f"gunzip -c {target} | wc -l")
    else:
        checks = (f"sha256sum {target}", f"wc -l {target}")
    warning = ""
    if summary.lines != inp.stats.selected:
        warning = (
            f"The figures count {_n(inp.stats.selected)} selected events but the file holds "
            f"{_n(summary.lines)} lines."
        )
    receipt = _Receipt(
        note=note,
        location=location,
        lines=_n(summary.lines),
        sha256=summary.sha256,
        checks=checks,
        warning=warning,
    )
    return attachment, receipt


def _gzip_within(path: Path, name: str, limit: int) -> bytes | None:
    """The file gzipped (deterministically: no timestamp), or None once it exceeds `limit`."""
    buf = io.BytesIO()
    with (
        path.open("rb") as src,
        gzip.GzipFile(filename=name, mode="wb", fileobj=buf, compresslevel=6, mtime=0) as gz,
    ):
        while chunk := src.read(CHUNK):
            gz.write(chunk)
            if buf.tell() > limit:
                return None
    return buf.getvalue() if buf.tell() <= limit else None


# --- what the templates show -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Bar:
    label: str
    count: str
    pct: int  # of the longest bar, 0-100
    hashes: str  # the plain-text bar
    note: str = ""
    key: str = ""  # hour rows: the local hour, "YYYY-MM-DDTHH"


@dataclass(frozen=True, slots=True)
class _FieldValues:
    field: str
    present: str
    values: tuple[_Bar, ...]
    note: str


@dataclass(frozen=True, slots=True)
class _Reason:
    reason: str
    count: str
    examples: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class _View:
    title: str
    status: str
    status_word: str
    reason: str
    colour: str
    ink: str
    report: str
    host: str
    version: str
    period: str
    timezone: str
    read: str
    selected: str
    skipped: str
    empty: bool
    rules: tuple[_Bar, ...]
    rules_more: str
    hours: tuple[_Bar, ...]
    hours_before: str
    hours_after: str
    fields: tuple[_FieldValues, ...]
    fields_more: str
    reasons: tuple[_Reason, ...]
    reasons_more: str
    source_problems: tuple[str, ...]
    delivery_problems: tuple[str, ...]
    problems_more: str
    files: tuple[str, ...]
    files_more: str
    receipt: _Receipt | None
    built: str
    message_id: str


def _view(
    inp: ReportInput,
    status: Status,
    reason: str,
    summary: FileSummary | None,
    receipt: _Receipt | None,
    file_problem: str | None,
) -> _View:
    stats, tz = inp.stats, inp.report.timezone
    rules, rules_more = _bars(
        sorted(stats.per_rule.items(), key=lambda kv: (-kv[1], kv[0])), MAX_RULES, "rules"
    )
    hours, before, after = _hour_bars(inp.period, tz, stats.per_hour)
    fields: list[_FieldValues] = []
    if summary is not None and summary.lines:
        for name in inp.top_fields[:MAX_FIELDS]:
            values, _ = _bars(summary.top_values.get(name, []), MAX_RULES, "values")
            uncounted = summary.uncounted.get(name, 0)
            note = (
                f"Only the first {_n(MAX_DISTINCT)} distinct values were counted; "
                f"{_n(uncounted)} events with later values are not in these counts."
                if uncounted
                else ""
            )
            present = f"in {_n(summary.present.get(name, 0))} of {_n(summary.lines)} events"
            fields.append(_FieldValues(_clean(name, 80), present, values, note))
    fields_more = _more(len(inp.top_fields) - MAX_FIELDS, "fields not shown")
    ranked = sorted(stats.skipped.items(), key=lambda kv: (-kv[1], kv[0]))[:MAX_REASONS]
    examples: dict[str, list[str]] = {r: [] for r, _ in ranked}
    budget = MAX_ALL_EXAMPLES
    for problem in stats.problems:
        shown = examples.get(str(problem.get("reason", "")))
        if shown is not None and len(shown) < MAX_EXAMPLES and budget > 0:
            shown.append(_example(problem))
            budget -= 1
    reasons = tuple(_Reason(_clean(r, 80), _n(c), tuple(examples[r])) for r, c in ranked)
    sources = [_clean(p, 200) for p in inp.source_problems]
    if file_problem:
        sources.append(_clean(file_problem, 400))
    deliveries = [_clean(p, 200) for p in inp.delivery_problems]
    hidden = max(0, len(sources) - MAX_LISTED) + max(0, len(deliveries) - MAX_LISTED)
    files = [_file_line(f) for f in list(stats.files.values())[:MAX_LISTED]]
    colour, ink = _COLOURS[status]
    start, end = inp.period.start.astimezone(tz), inp.period.end.astimezone(tz)
    return _View(
        title=_clean(f"tailmail report {inp.report.name} on {inp.hostname}", 200),
        status=status,
        status_word={"green": "OK", "amber": "WARNING", "red": "PROBLEM"}[status],
        reason=reason,
        colour=colour,
        ink=ink,
        report=_clean(inp.report.name, 80),
        host=_clean(inp.hostname, 80),
        version=_clean(inp.version, 40),
        # the length from the UTC instants: local wall times would say 24 hours on a DST day
        period=f"{_local(start)} to {_local(end)} ({_duration(inp.period.end - inp.period.start)})",
        timezone=_clean(tz.key, 60),
        read=_n(stats.read),
        selected=_n(stats.selected),
        skipped=_n(stats.skipped_total),
        empty=stats.selected == 0 and (summary is None or summary.lines == 0),
        rules=rules,
        rules_more=rules_more,
        hours=hours if any(stats.per_hour.values()) else (),
        hours_before=_n(before) if before else "",
        hours_after=_n(after) if after else "",
        fields=tuple(fields),
        fields_more=fields_more,
        reasons=reasons,
        reasons_more=_more(len(stats.skipped) - MAX_REASONS, "reasons not shown"),
        source_problems=tuple(sources[:MAX_LISTED]),
        delivery_problems=tuple(deliveries[:MAX_LISTED]),
        problems_more=_more(hidden, "problems not shown"),
        files=tuple(files),
        files_more=_more(len(stats.files) - MAX_LISTED, "files not shown"),
        receipt=receipt,
        built=f"{inp.built_at.astimezone(tz):%Y-%m-%d %H:%M:%S %Z}",
        message_id=_clean(inp.message_id, 200),
    )


def _bars(items: Sequence[tuple[str, int]], limit: int, what: str) -> tuple[tuple[_Bar, ...], str]:
    shown = list(items[:limit])
    top = max((n for _, n in shown), default=0)
    bars = tuple(_bar(_clean(label, SHOW_CHARS), n, top) for label, n in shown)
    rest = items[limit:]
    more = ""
    if rest:
        more = f"... and {_n(len(rest))} more {what} ({_n(sum(n for _, n in rest))} in all)"
    return bars, more


def _bar(label: str, count: int, top: int, note: str = "", key: str = "") -> _Bar:
    pct = 0 if top <= 0 or count <= 0 else max(1, round(count * 100 / top))
    hashes = "" if pct == 0 else "#" * max(1, round(pct * BAR_CHARS / 100))
    return _Bar(label, _n(count), pct, hashes, note, key)


def _hour_bars(
    period: Period, tz: ZoneInfo, per_hour: Mapping[str, int]
) -> tuple[tuple[_Bar, ...], int, int]:
    """One row per hour of the period, in local time: 23 or 25 rows on a DST day.

    On the day clocks go back, one local hour happens twice but has one key in the figures;
    its count is shown on the first of its two rows.
    """
    local = period.start.astimezone(tz).replace(minute=0, second=0, microsecond=0)
    instant = local.astimezone(UTC)
    hours: list[tuple[str, str]] = []
    while instant < period.end and len(hours) < MAX_HOURS:
        at = instant.astimezone(tz)
        hours.append((at.strftime("%Y-%m-%dT%H"), f"{at:%Y-%m-%d %H:%M %Z}"))
        instant += timedelta(hours=1)
    keys = {key for key, _ in hours}
    before = after = 0
    for key, n in per_hour.items():
        if key in keys:
            continue
        if hours and key < hours[0][0]:
            before += n
        else:
            after += n
    top = max((per_hour.get(key, 0) for key in keys), default=0)
    rows: list[_Bar] = []
    seen: set[str] = set()
    for key, label in hours:
        if key in seen:
            rows.append(_Bar(label, "", 0, "", "the local hour repeats: counted above", key))
        else:
            rows.append(_bar(label, per_hour.get(key, 0), top, key=key))
        seen.add(key)
    return tuple(rows), before, after


def _example(problem: Mapping[str, Any]) -> str:
    offset = problem.get("offset")
    at = f"byte {offset:,}" if isinstance(offset, int) else f"offset {offset}"
    source = _clean(str(problem.get("source", "?")), 60)
    path = _clean(str(problem.get("path", "?")), SHOW_CHARS)
    sample = _clean(str(problem.get("sample", "")), SHOW_CHARS)
    return f"{source}: {path} at {at}: {sample}"


def _file_line(info: Mapping[str, Any]) -> str:
    first, last = info.get("first_offset"), info.get("last_offset")
    span = (
        f"bytes {first:,} to {last:,}"
        if isinstance(first, int) and isinstance(last, int)
        else f"bytes {first} to {last}"
    )
    source = _clean(str(info.get("source", "?")), 60)
    return f"{source}: {_clean(str(info.get('path', '?')), 200)}, {span}"


# --- the message ----------------------------------------------------------------------------


def _message(
    inp: ReportInput, status: Status, text: str, html: str, attachment: _Attachment | None
) -> bytes:
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
    msg["Message-ID"] = _one_line(inp.message_id)
    msg["Auto-Submitted"] = "auto-generated"  # RFC 3834: no vacation replies to the agent
    msg["X-Tailmail-Report"] = _one_line(report.name)
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
    return msg.as_bytes()


_NAME_ADDR = re.compile(r"^(.*?)\s*<([^<>]*)>\s*$")


def _address_header(msg: MIMEPart, name: str, values: Sequence[str]) -> None:
    """Set an address header from `Name <a@b>` / `a@b` strings, quoting names as needed."""
    cleaned = [_one_line(v) for v in values]
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


# --- templates and text helpers -------------------------------------------------------------


@cache
def _environment(html: bool) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("agent", "templates"),
        autoescape=html,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["fit"] = _fit
    env.filters["wrap"] = _wrap
    env.filters["row"] = _row
    return env


def _fit(text: str, width: int, right: bool = False) -> str:
    """Exactly `width` characters: cut with an ellipsis, or padded."""
    if len(text) > width:
        text = text[: width - 1] + "\u2026"
    return text.rjust(width) if right else text.ljust(width)


def _row(bar: _Bar, width: int, indent: int = 0) -> str:
    """A plain-text bar chart row: label, count, bar (or note), at most 78 columns."""
    return (
        f"{' ' * indent}{_fit(bar.label, width)} {bar.count:>9}  {bar.note or bar.hashes}".rstrip()
    )


def _wrap(text: str, indent: int = 0, first: str = "", width: int = 78) -> str:
    """Wrapped to `width` columns after the prefix `first`, continuation lines indented."""
    return textwrap.fill(
        text,
        width=width,
        initial_indent=first,
        subsequent_indent=" " * indent,
        break_long_words=True,
        break_on_hyphens=False,
    )


# Characters str.splitlines() breaks on: the email package refuses any of them in a header.
_BREAKS = re.compile("[\r\n\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]+")
_CONTROLS = re.compile("[\x00-\x08\x0e-\x1f\x7f]")
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _escape(m: re.Match[str]) -> str:
    code = ord(m.group())
    return f"\\x{code:02x}" if code < 256 else f"\\u{code:04x}"


def _one_line(text: str) -> str:
    """A header-safe value: line breaks become one space, NUL and other controls go."""
    return _CONTROLS.sub("", _BREAKS.sub(" ", text)).strip()


def _clean(text: str, limit: int) -> str:
    """Event or config text fit for the body: controls shown as escapes, cut at `limit`."""
    shown = _UNPRINTABLE.sub(_escape, text)
    if len(shown) > limit:
        return f"{shown[:limit]}... ({_n(len(shown) - limit)} more characters)"
    return shown


def _n(count: int) -> str:
    return f"{count:,}"


def _lines(count: int) -> str:
    return f"{_n(count)} line{'s' if count != 1 else ''}"


def _more(count: int, what: str) -> str:
    return f"... and {_n(count)} more {what}" if count > 0 else ""


def _size(size: int) -> str:
    """`812 bytes`, `12.3 KiB (12,594 bytes)`: readable, and exact for checking."""
    if size < 1024:
        return f"{size:,} bytes"
    value = float(size)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if value < 1024 or unit == "TiB":
            break
    return f"{value:.1f} {unit} ({size:,} bytes)"


def _local(at: datetime) -> str:
    return f"{at:%Y-%m-%d %H:%M %Z}"


def _duration(delta: timedelta) -> str:
    minutes = round(delta.total_seconds() / 60)
    hours, rest = divmod(minutes, 60)
    if rest == 0:
        return f"{hours} hour{'s' if hours != 1 else ''}"
    return f"{hours} h {rest} min"
