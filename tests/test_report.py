"""The report email: structure, attachment and receipt, figures in both parts, status, escaping,
subject, DST days and size, built from a generated day and parsed back as a mail client would."""

from __future__ import annotations

import dataclasses
import email
import email.policy
import gzip
import hashlib
import random
import re
from dataclasses import dataclass
from datetime import UTC, datetime, time
from email.message import EmailMessage
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.config import ReportConfig
from agent.periods import Period, period_of
from agent.report import (
    MAX_DISTINCT,
    ReportInput,
    build_report,
    render_subject,
    status_of,
    summarize_file,
)
from agent.state import PeriodStats

BERLIN = ZoneInfo("Europe/Berlin")
DAY = datetime(2026, 11, 21, 12, 0, tzinfo=BERLIN)
HOSTILE = ("<script>alert(1)</script>", '"><img src=x onerror=alert(1)>')


@dataclass(frozen=True)
class Day:
    """A generated day: the report input and the store file's content it was built from."""

    inp: ReportInput
    content: bytes


def berlin_period(at: datetime = DAY) -> Period:
    return period_of(at, time(0, 0), BERLIN)


def make_events(period: Period, count: int, *, seed: int = 7) -> list[dict[str, Any]]:
    """`count` events spread over the period's hours, with a few known field values."""
    rnd = random.Random(seed)
    start = period.start.timestamp()
    span = period.end.timestamp() - start
    events = []
    for i in range(count):
        at = datetime.fromtimestamp(start + rnd.random() * span, UTC).astimezone(BERLIN)
        events.append(
            {
                "ts": at.isoformat(),
                "event": "login.failed" if i % 3 else "upload.error",
                "level": "error" if i % 4 == 0 else "warning",
                "user": {"name": ["alice", "bob", "carol"][i % 3 if i % 5 else 0]},
                "remote_ip": f"203.0.113.{i % 7}",
            }
        )
    return events


def make_day(
    tmp_path: Path,
    events: list[dict[str, Any]] | None = None,
    *,
    period: Period | None = None,
    report: dict[str, Any] | None = None,
    stats: dict[str, Any] | None = None,
    **changes: Any,
) -> Day:
    """Write the store file for `events` and fill PeriodStats consistently with it."""
    period = period or berlin_period()
    events = make_events(period, 60) if events is None else events
    content = b"".join(orjson.dumps(e) + b"\n" for e in events)
    rotated = tmp_path / "daily.jsonl.rotated"
    rotated.write_bytes(content)
    per_rule: dict[str, int] = {}
    per_hour: dict[str, int] = {}
    for e in events:
        for rule, hit in (
            ("failed-logins", e.get("event") == "login.failed"),
            ("upload-errors", e.get("event") == "upload.error"),
            ("any-error", e.get("level") == "error"),
        ):
            if hit:
                per_rule[rule] = per_rule.get(rule, 0) + 1
        hour = datetime.fromisoformat(e["ts"]).astimezone(BERLIN).strftime("%Y-%m-%dT%H")
        per_hour[hour] = per_hour.get(hour, 0) + 1
    figures = PeriodStats(
        start=period.start.isoformat(),
        read=len(events) + 140,
        selected=len(events),
        per_rule=per_rule,
        per_hour=per_hour,
        files={
            "k1": {
                "source": "app",
                "path": "/var/log/app/events.json",
                "first_offset": 0,
                "last_offset": 48_213,
            }
        },
    )
    figures = dataclasses.replace(figures, **(stats or {}))
    config = ReportConfig(
        name="daily",
        store=Path("/var/log/tailmail/daily.jsonl"),
        to=("ops@example.com", "Doe, Jane <jane@example.com>"),
        cc=("audit@example.com",),
        timezone=BERLIN,
    )
    config = dataclasses.replace(config, **(report or {}))
    inp = ReportInput(
        report=config,
        period=period,
        hostname="web-1.example.com",
        version="0.1.0",
        built_at=period.end.astimezone(BERLIN).replace(second=5),
        stats=figures,
        rotated_file=rotated if events else None,
        top_fields=("user.name", "event"),
        source_problems=(),
        delivery_problems=(),
        sender="tailmail <tailmail@example.com>",
        message_id=f"<daily.{period.day.isoformat()}@web-1.example.com>",
    )
    return Day(dataclasses.replace(inp, **changes), content)


def parse(raw: bytes) -> EmailMessage:
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def bodies(msg: EmailMessage) -> tuple[str, str]:
    text, html = msg.get_body(("plain",)), msg.get_body(("html",))
    assert text is not None and html is not None
    # get_content() keeps the wire's CRLF; compare lines as a mail client shows them
    return _lines(text), _lines(html)


def _lines(part: Any) -> str:
    return str(part.get_content()).replace("\r\n", "\n")


def attachments(msg: EmailMessage) -> list[Any]:
    return list(msg.iter_attachments())


def incompressible_events(period: Period, count: int) -> list[dict[str, Any]]:
    rnd = random.Random(1)
    events = make_events(period, count)
    for e in events:
        e["blob"] = rnd.randbytes(300).hex()
    return events


def test_message_is_mixed_with_alternative_text_then_html_and_attachment(tmp_path: Path) -> None:
    """multipart/mixed holds multipart/alternative (text/plain, text/html) then the attachment."""
    msg = parse(build_report(make_day(tmp_path).inp))
    assert msg.get_content_type() == "multipart/mixed"
    assert [p.get_content_type() for p in msg.walk()] == [
        "multipart/mixed",
        "multipart/alternative",
        "text/plain",
        "text/html",
        "application/x-ndjson",
    ]


def test_headers_are_complete_and_single_line(tmp_path: Path) -> None:
    """From, To, Cc, Subject, Date, Message-ID and the X-Tailmail headers are set as configured."""
    day = make_day(tmp_path)
    raw = build_report(day.inp)
    msg = parse(raw)
    assert msg["From"] == "tailmail <tailmail@example.com>"
    assert msg["To"] == 'ops@example.com, "Doe, Jane" <jane@example.com>'
    assert [a.addr_spec for a in msg["To"].addresses] == ["ops@example.com", "jane@example.com"]
    assert msg["Cc"] == "audit@example.com"
    assert msg["Subject"] == "[web-1.example.com] 60 events selected on 2026-11-21"
    assert msg["Date"].datetime == day.inp.built_at
    assert msg["Message-ID"] == "<daily.2026-11-21@web-1.example.com>"
    assert msg["X-Tailmail-Report"] == "daily"
    assert msg["X-Tailmail-Period"] == "2026-11-21T00:00:00+01:00/2026-11-22T00:00:00+01:00"
    assert not re.search(rb"(?<!\r)\n", raw), "every line must end with CRLF"


def test_same_input_builds_the_same_bytes(tmp_path: Path) -> None:
    """The build is deterministic (no clock, no random boundaries): a rebuilt report is identical."""
    inp = make_day(tmp_path).inp
    assert build_report(inp) == build_report(inp)


def test_attachment_is_the_store_file_named_after_store_and_day(tmp_path: Path) -> None:
    """The attachment is the rotated file, byte for byte, as application/x-ndjson daily-DATE.jsonl."""
    day = make_day(tmp_path)
    [part] = attachments(parse(build_report(day.inp)))
    assert part.get_content_type() == "application/x-ndjson"
    assert part.get_filename() == "daily-2026-11-21.jsonl"
    assert part.get_content_disposition() == "attachment"
    assert part.get_content() == day.content


def test_receipt_gives_line_count_and_sha256_of_the_attachment(tmp_path: Path) -> None:
    """Both parts show the attachment's line count and SHA-256, which match what is attached."""
    day = make_day(tmp_path)
    msg = parse(build_report(day.inp))
    [part] = attachments(msg)
    data = part.get_content()
    sha, lines = hashlib.sha256(data).hexdigest(), data.count(b"\n")
    assert lines == 60
    text, html = bodies(msg)
    assert f"Lines: {lines}\n" in text
    assert re.search(rf">Lines</td><td[^>]*>{lines}</td>", html)
    for body in (text, html):
        assert sha in body
        assert "sha256sum daily-2026-11-21.jsonl" in body


def test_big_file_is_attached_gzipped(tmp_path: Path) -> None:
    """Over max_attachment_bytes the file is attached gzipped; the receipt is of the content."""
    probe = make_day(tmp_path)
    day = make_day(tmp_path, report={"max_attachment_bytes": len(probe.content) - 1})
    msg = parse(build_report(day.inp))
    [part] = attachments(msg)
    assert part.get_content_type() == "application/gzip"
    assert part.get_filename() == "daily-2026-11-21.jsonl.gz"
    assert gzip.decompress(part.get_content()) == day.content
    sha = hashlib.sha256(day.content).hexdigest()
    for body in bodies(msg):
        assert sha in body
        assert "gunzip -c daily-2026-11-21.jsonl.gz | sha256sum" in body


def test_file_too_big_even_gzipped_is_not_attached_and_the_mail_says_where(tmp_path: Path) -> None:
    """Still over the limit compressed: no attachment; both parts name the file's path and size."""
    events = incompressible_events(berlin_period(), 200)
    day = make_day(tmp_path, events, report={"max_attachment_bytes": 4096})
    msg = parse(build_report(day.inp))
    assert attachments(msg) == []
    assert day.inp.rotated_file is not None
    size = f"{len(day.content):,} bytes"
    for body in bodies(msg):
        flat = " ".join(body.split())
        assert "Not attached" in flat
        assert size in flat
        assert f"sha256sum {day.inp.rotated_file}" in body
        assert hashlib.sha256(day.content).hexdigest() in body
    text, html = bodies(msg)
    assert f"\n  {day.inp.rotated_file}\n" in text, "the path stands whole on its own line"
    assert f">{day.inp.rotated_file}</p>" in html


def test_attach_false_sends_no_attachment_but_says_where_the_file_is(tmp_path: Path) -> None:
    """With attach: false the figures still come, with the file's path instead of the file."""
    day = make_day(tmp_path, report={"attach": False})
    msg = parse(build_report(day.inp))
    assert attachments(msg) == []
    text, html = bodies(msg)
    for body in (text, html):
        assert "attach: false" in body
        assert str(day.inp.rotated_file) in body


def test_empty_period_says_so_without_attachment(tmp_path: Path) -> None:
    """A period with no selected event gets a mail that plainly says so, with no attachment."""
    day = make_day(tmp_path, [], stats={"read": 500})
    msg = parse(build_report(day.inp))
    assert msg["Subject"] == "[web-1.example.com] 0 events selected on 2026-11-21"
    assert [p.get_content_type() for p in msg.walk()] == [
        "multipart/mixed",
        "multipart/alternative",
        "text/plain",
        "text/html",
    ]
    for body in bodies(msg):
        assert "No events were selected in this period" in body
        assert "No rule selected any event." in body


def test_per_rule_and_per_hour_figures_are_in_both_parts(tmp_path: Path) -> None:
    """Each rule's count and each hour's count appear in the plain text and in the HTML."""
    day = make_day(tmp_path)
    text, html = bodies(parse(build_report(day.inp)))
    stats = day.inp.stats
    assert re.search(r"Events read\s+200\b", text) and re.search(r"Events selected\s+60\b", text)
    for rule, count in stats.per_rule.items():
        assert re.search(rf"^{rule}\s+{count}\s+#+$", text, re.M), rule
        assert re.search(rf">{rule}</td><td[^>]*>{count}</td>", html), rule
    rows = dict(re.findall(r'<tr data-hour="([^"]+)">.*?<td[^>]*>([\d,]*)</td>', html))
    assert len(rows) == 24
    for hour in range(24):
        key = f"2026-11-21T{hour:02d}"
        count = stats.per_hour.get(key, 0)
        assert rows[key] == str(count)
        assert re.search(rf"^2026-11-21 {hour:02d}:00 CET\s+{count}\b", text, re.M), key


def test_top_values_are_shown_with_counts(tmp_path: Path) -> None:
    """The most frequent values of the top fields are listed with their counts in both parts."""
    day = make_day(tmp_path)
    text, html = bodies(parse(build_report(day.inp)))
    names = [e["user"]["name"] for e in make_events(berlin_period(), 60)]
    for name in ("alice", "bob", "carol"):
        assert re.search(rf"^  {name}\s+{names.count(name)}\s+#+$", text, re.M)
        assert re.search(rf">{name}</td><td[^>]*>{names.count(name)}</td>", html)
    assert "user.name (in 60 of 60 events)" in text


def test_counts_outside_the_period_are_shown_as_before_and_after(tmp_path: Path) -> None:
    """Events whose time lies outside the period are counted as before/after, not lost."""
    day = make_day(tmp_path)
    per_hour = {**day.inp.stats.per_hour, "2026-11-20T23": 4, "2026-11-22T00": 2}
    inp = dataclasses.replace(day.inp, stats=dataclasses.replace(day.inp.stats, per_hour=per_hour))
    text, html = bodies(parse(build_report(inp)))
    for body in (text, html):
        assert "Before the period: 4" in body
        assert "After the period: 2" in body


@pytest.mark.parametrize(
    ("at", "rows", "labels"),
    [
        (
            datetime(2026, 10, 25, 12, tzinfo=BERLIN),
            25,
            ("2026-10-25 02:00 CEST", "2026-10-25 02:00 CET"),
        ),
        (
            datetime(2026, 3, 29, 12, tzinfo=BERLIN),
            23,
            ("2026-03-29 01:00 CET", "2026-03-29 03:00 CEST"),
        ),
    ],
)
def test_dst_days_have_25_or_23_hour_rows(
    tmp_path: Path, at: datetime, rows: int, labels: tuple[str, str]
) -> None:
    """Europe/Berlin's fall-back day renders 25 hour rows and its spring-forward day 23."""
    period = berlin_period(at)
    day = make_day(tmp_path, make_events(period, 80), period=period)
    text, html = bodies(parse(build_report(day.inp)))
    assert len(re.findall(r"<tr data-hour=", html)) == rows
    hour_lines = re.findall(r"^\d{4}-\d\d-\d\d \d\d:00 CES?T\b.*$", text, re.M)
    assert len(hour_lines) == rows
    for label in labels:
        assert label in text and label in html
    total = sum(day.inp.stats.per_hour.values())
    shown = sum(int(m) for m in re.findall(r'data-hour="[^"]+">.*?<td[^>]*>(\d+)</td>', html))
    assert shown == total, "the repeated local hour must not be counted twice"


@pytest.mark.parametrize(
    ("changes", "status", "colour", "why"),
    [
        ({}, "green", "#1e7b34", "no line skipped, no source or delivery problem"),
        (
            {"stats": {"skipped": {"malformed JSON": 3, "too long": 1}}},
            "amber",
            "#f2b600",
            "4 lines skipped",
        ),
        (
            {"source_problems": ("source app: /var/log/app/events.json is missing",)},
            "red",
            "#c62828",
            "is missing",
        ),
        (
            {"delivery_problems": ("report daily 2026-11-20: 550 mailbox unavailable",)},
            "red",
            "#c62828",
            "1 earlier report delivery failed",
        ),
    ],
)
def test_status_colour_and_reason(
    tmp_path: Path, changes: dict[str, Any], status: str, colour: str, why: str
) -> None:
    """Green when all is well, amber for skipped lines, red for source or delivery problems."""
    day = make_day(tmp_path, **changes)
    assert status_of(day.inp)[0] == status and why in status_of(day.inp)[1]
    msg = parse(build_report(day.inp))
    text, html = bodies(msg)
    assert msg["X-Tailmail-Status"] == status
    assert f"background:{colour}" in html
    assert why in html and why in " ".join(text.split())


def test_unreadable_rotated_file_is_reported_red_not_lost(tmp_path: Path) -> None:
    """A rotated file that cannot be read still gives a report, red, saying why."""
    day = make_day(tmp_path, rotated_file=tmp_path / "gone.jsonl")
    msg = parse(build_report(day.inp))
    assert msg["X-Tailmail-Status"] == "red"
    assert attachments(msg) == []
    for body in bodies(msg):
        assert "could not be read" in body


def test_empty_store_file_despite_selected_events_is_red(tmp_path: Path) -> None:
    """Figures that count selected events the store file does not hold are a red problem."""
    day = make_day(tmp_path)
    assert day.inp.rotated_file is not None
    day.inp.rotated_file.write_bytes(b"")
    msg = parse(build_report(day.inp))
    assert msg["X-Tailmail-Status"] == "red"
    assert attachments(msg) == []
    for body in bodies(msg):
        assert "60 events were selected but the store file" in " ".join(body.split())


def test_problems_list_skipped_lines_with_examples_and_source_problems(tmp_path: Path) -> None:
    """Skipped lines by reason with their first examples and where they were, in both parts."""
    problems = [
        {
            "source": "app",
            "path": "/var/log/app/events.json",
            "offset": 1024 * i,
            "reason": "malformed JSON",
            "sample": f'{{"broken": {i}',
        }
        for i in range(5)
    ]
    day = make_day(
        tmp_path,
        stats={"skipped": {"malformed JSON": 5}, "problems": problems},
        source_problems=("source audit: /var/log/audit/x.json is unreadable: permission denied",),
    )
    text, html = bodies(parse(build_report(day.inp)))
    assert "malformed JSON: 5" in text
    assert "app: /var/log/app/events.json at byte 2,048:" in text
    assert "at byte 4,096" not in text, "only the first examples are shown"
    assert "permission denied" in text and "permission denied" in html
    assert "/var/log/app/events.json at byte 2,048: {&#34;broken&#34;: 2" in html


def test_hostile_event_values_are_escaped_in_html(tmp_path: Path) -> None:
    """Markup in event values, samples and problems reaches the HTML only as escaped text."""
    events = make_events(berlin_period(), 30)
    for i, e in enumerate(events):
        e["user"]["name"] = HOSTILE[i % 2]
        e["event"] = HOSTILE[(i + 1) % 2]
    problem = {
        "source": "app",
        "path": "/x/<b>.json",
        "offset": 1,
        "reason": "<i>bad</i>",
        "sample": HOSTILE[1],
    }
    day = make_day(
        tmp_path,
        events,
        stats={"skipped": {"<i>bad</i>": 1}, "problems": [problem]},
        source_problems=(HOSTILE[0],),
        delivery_problems=(HOSTILE[1],),
    )
    text, html = bodies(parse(build_report(day.inp)))
    for tag in ("<script", "<img", "<b>", "<i>"):
        assert tag not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&#34;&gt;&lt;img src=x onerror=alert(1)&gt;" in html
    assert HOSTILE[0] in text and HOSTILE[1] in text  # plain text shows them as they are


def test_html_has_no_scripts_or_external_resources(tmp_path: Path) -> None:
    """The HTML is self-contained: no script, no style sheet, no remote image or font."""
    _, html = bodies(parse(build_report(make_day(tmp_path).inp)))
    assert not re.search(r"<(script|style|link|img|iframe|object)\b", html, re.I)
    assert not re.search(r"(src|href)\s*=|url\(|@import", html, re.I)


def test_subject_fills_every_placeholder() -> None:
    """{hostname} {selected} {date} {report} {read} {skipped} are all filled in the subject."""
    report = ReportConfig(
        name="daily",
        store=Path("/s.jsonl"),
        to=("a@example.com",),
        subject="{report}@{hostname}: {selected}/{read} on {date}, {skipped} skipped",
    )
    values = {
        "hostname": "h1",
        "selected": 5,
        "date": "2026-11-21",
        "report": "daily",
        "read": 9,
        "skipped": 2,
    }
    assert render_subject(report, values) == "daily@h1: 5/9 on 2026-11-21, 2 skipped"


def test_subject_loses_cr_lf_and_nul_so_no_header_can_be_injected(tmp_path: Path) -> None:
    """CR, LF and NUL from the subject template or the host name never reach the headers."""
    day = make_day(
        tmp_path,
        report={"subject": "report\r\nBcc: victim@example.com\r\n{hostname}"},
        hostname="evil\r\nX-Injected: yes\x00",
    )
    raw = build_report(day.inp)
    msg = parse(raw)
    assert msg["Subject"] == "report Bcc: victim@example.com evil X-Injected: yes"
    assert msg["Bcc"] is None and msg["X-Injected"] is None
    assert b"\x00" not in raw
    assert not re.search(rb"^(Bcc|X-Injected):", raw, re.M)


def test_subject_with_a_stray_brace_falls_back_to_the_default() -> None:
    """An unformattable subject (which `check` rejects) still gives a subject, never an error."""
    report = ReportConfig(
        name="daily", store=Path("/s.jsonl"), to=("a@example.com",), subject="{oops"
    )
    values = {
        "hostname": "h",
        "selected": 1,
        "date": "2026-11-21",
        "report": "daily",
        "read": 1,
        "skipped": 0,
    }
    assert render_subject(report, values) == "[h] 1 events selected on 2026-11-21"


@settings(max_examples=200, deadline=None)
@given(subject=st.text(), hostname=st.text())
def test_rendered_subject_is_always_one_header_safe_line(subject: str, hostname: str) -> None:
    """Whatever the subject and host name, the result has no line break, NUL or control."""
    report = ReportConfig(
        name="daily", store=Path("/s.jsonl"), to=("a@example.com",), subject=subject
    )
    values = {
        "hostname": hostname,
        "selected": 1,
        "date": "2026-11-21",
        "report": "daily",
        "read": 1,
        "skipped": 0,
    }
    result = render_subject(report, values)
    assert len(result.splitlines()) <= 1
    assert not re.search("[\x00-\x08\x0a-\x1f\x7f]", result)


def test_plain_text_fits_80_columns(tmp_path: Path) -> None:
    """Every line of the plain-text part is at most 80 characters, even with long values."""
    events = make_events(berlin_period(), 40)
    for e in events:
        e["user"]["name"] = "x" * 300
    day = make_day(
        tmp_path,
        events,
        stats={"per_rule": {"a-very-long-rule-name-" * 5: 40}},
        source_problems=("source app: " + "/very/long/path" * 20 + " is missing",),
    )
    text, _ = bodies(parse(build_report(day.inp)))
    too_long = [line for line in text.splitlines() if len(line) > 80]
    assert too_long == []


def test_html_stays_small_with_many_rules_values_and_problems(tmp_path: Path) -> None:
    """Hundreds of rules, long values and many problems: the HTML stays under 100 KB and says how many more."""
    period = berlin_period()
    events = make_events(period, 300)
    for i, e in enumerate(events):
        e.update({f"f{k}": f"{k}-{i % 9}-" + "v" * 400 for k in range(12)})
    rules = {f"rule-{i:03d}-" + "n" * 60: 300 - i for i in range(300)}
    problems = [
        {
            "source": "app",
            "path": "/var/log/app/" + "p" * 200,
            "offset": i,
            "reason": f"reason-{i % 20}",
            "sample": "s" * 2000,
        }
        for i in range(50)
    ]
    day = make_day(
        tmp_path,
        events,
        stats={
            "per_rule": rules,
            "skipped": {f"reason-{i}": 5 for i in range(20)},
            "problems": problems,
        },
        top_fields=tuple(f"f{k}" for k in range(12)),
        source_problems=tuple("source app: " + "x" * 500 for _ in range(40)),
        delivery_problems=tuple("delivery: " + "y" * 500 for _ in range(40)),
    )
    text, html = bodies(parse(build_report(day.inp)))
    assert len(html.encode()) < 100_000
    for body in (text, html):
        assert "... and 260 more rules" in body
        assert "... and 4 more fields not shown" in body
        assert "... and 60 more problems not shown" in body


def test_summarize_file_counts_hashes_and_tells_strings_from_numbers(tmp_path: Path) -> None:
    """Lines, size and SHA-256 are of the file's bytes; "10" and 10 are different values."""
    lines = [
        b'{"n": 10}',
        b'{"n": "10"}',
        b'{"n": 10}',
        b'{"n": null}',
        b'{"n": {"a": [1, 2]}}',
        b'{"m": 1}',
    ]
    path = tmp_path / "s.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    summary = summarize_file(path, ["n", "missing"])
    assert summary.lines == 6
    assert summary.size == path.stat().st_size
    assert summary.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert summary.top_values["n"] == [("10", 2), ('"10"', 1), ("null", 1), ('{"a":[1,2]}', 1)]
    assert summary.present == {"n": 5, "missing": 0}
    assert summary.top_values["missing"] == []


def test_summarize_file_caps_distinct_values_and_says_how_many_were_not_counted(
    tmp_path: Path,
) -> None:
    """After MAX_DISTINCT distinct values a field counts no new ones; the shown counts stay exact."""
    path = tmp_path / "s.jsonl"
    with path.open("wb") as fh:
        for i in range(MAX_DISTINCT):
            fh.write(orjson.dumps({"id": f"id-{i}", "k": "common"}) + b"\n")
        for _ in range(7):
            fh.write(orjson.dumps({"id": "late", "k": "common"}) + b"\n")
    summary = summarize_file(path, ["id", "k"])
    assert summary.uncounted == {"id": 7, "k": 0}
    assert summary.top_values["k"] == [("common", MAX_DISTINCT + 7)]
    assert ("late", 7) not in summary.top_values["id"]
