"""The report email: structure, attachment and receipt, figures in both parts, status, escaping,
subject, DST days and size, built from a generated day and parsed back as a mail client would."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import random
import re
from dataclasses import dataclass
from datetime import UTC, datetime, time
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mailview import attachments, bodies, cells, follows, hour_columns, parse

from agent.config.model import ReportConfig
from agent.core.figures import PeriodStats
from agent.core.periods import Period, period_of
from agent.report.build import HTML_BUDGET, build_report, render_report, render_subject, status_of
from agent.report.summary import RuleProfile
from agent.report.types import ReportInput

BERLIN = ZoneInfo("Europe/Berlin")
DAY = datetime(2026, 11, 21, 12, 0, tzinfo=BERLIN)
HOSTILE = ("<script>alert(1)</script>", '"><img src=x onerror=alert(1)>')
RULES = (
    RuleProfile(
        "failed-logins",
        "Failed logins",
        ("event", "user.name"),
        lambda e: e.get("event") == "login.failed",
    ),
    RuleProfile(
        "upload-errors",
        "Uploads that failed",
        ("event", "user.name"),
        lambda e: e.get("event") == "upload.error",
    ),
    RuleProfile(
        "any-error", "Anything at level error", ("level",), lambda e: e.get("level") == "error"
    ),
)


FILE_KEY = "app:2049:131075"
FILE_RECEIPT: dict[str, Any] = {
    "source": "app",
    "path": "/var/log/app/events.json",
    "names": ["/var/log/app/events.json"],
    "dev": 2049,
    "ino": 131075,
    "fingerprint": "3fa1c2d4e5f60718",
    "fp_len": 256,
    "first_offset": 1_024,
    "last_offset": 48_213,
    "ranges": [[1_024, 48_213]],
    "bytes": 47_189,
    "lines": 200,
    "truncations": 0,
    "skipped": 0,
}


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
        files={FILE_KEY: dict(FILE_RECEIPT)},
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
        rules=RULES,
        source_problems=(),
        delivery_problems=(),
        sender="tailmail <tailmail@example.com>",
        message_id=f"<daily.{period.day.isoformat()}@web-1.example.com>",
    )
    return Day(dataclasses.replace(inp, **changes), content)


def incompressible_events(period: Period, count: int) -> list[dict[str, Any]]:
    rnd = random.Random(1)
    events = make_events(period, count)
    for e in events:
        e["blob"] = rnd.randbytes(300).hex()
    return events


def rule_counts(events: list[dict[str, Any]]) -> dict[str, int]:
    return {p.name: sum(1 for e in events if p.selects(e)) for p in RULES}


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
    assert f"  Lines: {lines}\n" in text
    assert follows(cells(html), "Lines", str(lines))
    assert follows(cells(html), "SHA-256", sha)
    for body in (text, html):
        assert sha in body
        assert "sha256sum daily-2026-11-21.jsonl" in body
        assert "one for each of the 60 selected events" in " ".join(body.split())


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
    assert str(day.inp.rotated_file) in cells(html)


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
    text, html = bodies(msg)
    for body in (text, html):
        assert "No events were selected in this period" in body
        assert "No rule selected any event." in body
        assert "Selected per hour" not in body
    for rule in RULES:  # the rules that ran are listed, with their zero
        assert re.search(rf"^{rule.name}\s+0$", text, re.M)
        assert follows(cells(html), rule.name, rule.description, "0")


def test_per_rule_and_per_hour_figures_are_in_both_parts(tmp_path: Path) -> None:
    """Each rule's count and each hour's count appear in the plain text and in the HTML."""
    day = make_day(tmp_path)
    text, html = bodies(parse(build_report(day.inp)))
    stats = day.inp.stats
    assert re.search(r"Events read\s+200\b", text) and re.search(r"Events selected\s+60\b", text)
    assert follows(cells(html), "200", "Events read", "60", "Events selected", "0")
    for rule in RULES:
        count = stats.per_rule[rule.name]
        assert re.search(rf"^{rule.name}\s+{count}\s+#+$", text, re.M), rule
        assert follows(cells(html), rule.name, rule.description, str(count)), rule
    columns = hour_columns(html)
    assert [hour for hour, _, _ in columns] == [f"2026-11-21T{h:02d}" for h in range(24)]
    for hour, (key, count, shown) in enumerate(columns):
        expected = stats.per_hour.get(key, 0)
        assert count == str(expected)
        assert shown == (str(expected) if expected else "")
        assert re.search(rf"^2026-11-21 {hour:02d}:00 CET\s+{expected}\b", text, re.M), key


def test_rules_in_force_that_selected_nothing_and_rules_gone_are_listed(tmp_path: Path) -> None:
    """A rule in force with no event is listed with 0; a count of a rule no longer in force says so."""
    quiet = RuleProfile("quiet-rule", "Never matches", ("x",), lambda e: False)
    day = make_day(tmp_path, rules=(*RULES, quiet))
    per_rule = {**day.inp.stats.per_rule, "old-rule": 3}
    inp = dataclasses.replace(day.inp, stats=dataclasses.replace(day.inp.stats, per_rule=per_rule))
    text, html = bodies(parse(build_report(inp)))
    assert re.search(r"^quiet-rule\s+0$", text, re.M)
    assert follows(cells(html), "quiet-rule", "Never matches", "0")
    assert re.search(r"^old-rule\s+3\s+#+\n    no longer in force$", text, re.M)
    assert follows(cells(html), "old-rule", "no longer in force", "3")
    assert text.index("quiet-rule") > text.index("old-rule"), "busy rules first"


def test_top_values_are_per_rule_from_the_stored_events(tmp_path: Path) -> None:
    """For each rule, the most frequent values of its fields, counted over its own events."""
    day = make_day(tmp_path)
    text, html = bodies(parse(build_report(day.inp)))
    events = make_events(berlin_period(), 60)
    logins = [e["user"]["name"] for e in events if e["event"] == "login.failed"]
    assert len(set(logins)) == 3
    block = text[text.index("Top values per rule") : text.index("Problems\n")]
    assert f"failed-logins ({len(logins)} events)" in block
    assert f"event = login.failed (in {len(logins)} of {len(logins)} events)" in block
    for name in set(logins):
        assert re.search(rf"^    {name}\s+{logins.count(name)}\s+#+$", block, re.M)
        assert follows(cells(html), name, str(logins.count(name)))
    # upload.error events are all alice's: one value, said in one line, not as a chart
    assert "user.name = alice (in 20 of 20 events)" in block
    assert "user.name = alice in 20 of 20 events" in cells(html)
    errors = sum(1 for e in events if e["level"] == "error")
    assert f"any-error ({errors} events)" in block


def test_a_field_whose_values_never_repeat_is_summed_up_not_listed(tmp_path: Path) -> None:
    """Unique values (sizes, ids) get one line saying how many there were, not five rows of 1."""
    events = make_events(berlin_period(), 30)
    for i, e in enumerate(events):
        e["event"], e["request_id"] = "login.failed", f"req-{i:04d}"
    rules = (RuleProfile("failed-logins", "", ("request_id",), lambda e: True),)
    day = make_day(tmp_path, events, rules=rules, stats={"per_rule": {"failed-logins": 30}})
    text, html = bodies(parse(build_report(day.inp)))
    for body in (text, html):
        assert "30 different values, none more than once." in body
        assert "req-0000" not in body


def test_top_values_say_when_stored_events_match_no_rule_in_force(tmp_path: Path) -> None:
    """Events stored by a rule since removed are counted as selected by no rule in force now."""
    day = make_day(tmp_path, rules=RULES[:1])
    text, html = bodies(parse(build_report(day.inp)))
    others = sum(1 for e in make_events(berlin_period(), 60) if e["event"] != "login.failed")
    for body in (text, html):
        assert f"{others} stored events are selected by no rule in force now" in " ".join(
            body.split()
        )


def test_counts_outside_the_period_are_shown_as_before_and_after(tmp_path: Path) -> None:
    """Events whose time lies outside the period are counted as before/after, not lost."""
    day = make_day(tmp_path)
    per_hour = {**day.inp.stats.per_hour, "2026-11-20T23": 4, "2026-11-22T00": 2}
    inp = dataclasses.replace(day.inp, stats=dataclasses.replace(day.inp.stats, per_hour=per_hour))
    text, html = bodies(parse(build_report(inp)))
    for body in (text, html):
        assert "Before the period: 4" in body
        assert "After the period: 2" in body


def test_hour_columns_show_big_counts_compactly_and_exactly_in_the_text(tmp_path: Path) -> None:
    """A count too wide for its column is shown as 1.2k/35k above it; the text part has it exact."""
    day = make_day(tmp_path)
    per_hour = {"2026-11-21T03": 1_234, "2026-11-21T04": 35_210, "2026-11-21T05": 999}
    inp = dataclasses.replace(day.inp, stats=dataclasses.replace(day.inp.stats, per_hour=per_hour))
    text, html = bodies(parse(build_report(inp)))
    shown = {hour: (count, label) for hour, count, label in hour_columns(html)}
    assert shown["2026-11-21T03"] == ("1,234", "1.2k")
    assert shown["2026-11-21T04"] == ("35,210", "35k")
    assert shown["2026-11-21T05"] == ("999", "999")
    assert re.search(r"^2026-11-21 04:00 CET\s+35,210\s+#{30}$", text, re.M)


@pytest.mark.parametrize(
    ("at", "columns", "labels"),
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
def test_dst_days_have_25_or_23_hours(
    tmp_path: Path, at: datetime, columns: int, labels: tuple[str, str]
) -> None:
    """Europe/Berlin's fall-back day charts 25 hours and its spring-forward day 23."""
    period = berlin_period(at)
    day = make_day(tmp_path, make_events(period, 80), period=period)
    text, html = bodies(parse(build_report(day.inp)))
    chart = hour_columns(html)
    assert len(chart) == columns
    hour_lines = re.findall(r"^\d{4}-\d\d-\d\d \d\d:00 CES?T\b.*$", text, re.M)
    assert len(hour_lines) == columns
    for label in labels:
        assert label in text
    total = sum(day.inp.stats.per_hour.values())
    assert sum(int(count.replace(",", "") or 0) for _, count, _ in chart) == total, (
        "the repeated local hour must not be counted twice"
    )
    if columns == 25:
        assert "02:00 happens twice" in html


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
    assert re.search(rf'<td id="status" bgcolor="{colour}" style="background:{colour};', html)
    assert why in html and why in " ".join(text.split())


def test_notices_are_listed_without_changing_a_green_status(tmp_path: Path) -> None:
    """A notice (a store made again, nothing lost) is shown in both parts; the status stays green."""
    notice = "the store /var/log/tailmail/daily.jsonl was deleted while in use; tailmail made it again from what it held: nothing was lost"
    day = make_day(tmp_path, notices=(notice, notice))
    msg = parse(build_report(day.inp))
    assert msg["X-Tailmail-Status"] == "green"
    text, html = bodies(msg)
    assert "1 notice below" in text
    for body in (text, html):
        flat = " ".join(body.split())
        assert "Notices" in flat
        assert flat.count("made it again from what it held") == 1, "the same notice once"


def test_unreadable_rotated_file_is_reported_red_not_lost(tmp_path: Path) -> None:
    """A rotated file that cannot be read still gives a report, red, saying why."""
    day = make_day(tmp_path, rotated_file=tmp_path / "gone.jsonl")
    msg = parse(build_report(day.inp))
    assert msg["X-Tailmail-Status"] == "red"
    assert attachments(msg) == []
    for body in bodies(msg):
        assert "could not be read" in body


def test_missing_store_file_is_red_and_listed_with_the_problems(tmp_path: Path) -> None:
    """Events selected but no store file at all: the status is red and the Problems section
    lists the same reason (it said "None in this period" under a red bar)."""
    day = make_day(tmp_path, rotated_file=None)
    msg = parse(build_report(day.inp))
    assert msg["X-Tailmail-Status"] == "red"
    for body in bodies(msg):
        flat = " ".join(body.split())
        assert "60 events were selected but the store file is missing" in flat
        assert "None in this period" not in flat
        problems = flat[flat.index("Problems") :]
        assert "the store file is missing" in problems


def test_possible_losses_are_amber_and_listed(tmp_path: Path) -> None:
    """A possible loss that cannot be known (copytruncate's window) makes the report amber and
    is listed under its own heading, in both parts."""
    loss = "source app: /var/log/app/events.json was rotated by copytruncate: lines written between its copy and its truncate, if there were any, are lost"
    day = make_day(tmp_path, possible_losses=(loss,))
    msg = parse(build_report(day.inp))
    assert msg["X-Tailmail-Status"] == "amber"
    for body in bodies(msg):
        flat = " ".join(body.split())
        assert "Possible losses" in flat and "if there were any, are lost" in flat
        assert "None in this period" not in flat


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
    assert 'app: /var/log/app/events.json at byte 2,048: {"broken": 2' in cells(html)


def test_completeness_receipt_names_each_file_by_identity_with_its_byte_ranges(
    tmp_path: Path,
) -> None:
    """Per source file: device, inode, fingerprint, path, byte ranges, renames, truncations, skips."""
    rotated = {
        **FILE_RECEIPT,
        "path": "/var/log/app/events.json.1",
        "names": ["/var/log/app/events.json", "/var/log/app/events.json.1"],
        "ranges": [[1_024, 90_000], [0, 4_096]],
        "truncations": 1,
        "skipped": 2,
    }
    fresh = {
        **FILE_RECEIPT,
        "path": "/var/log/app/events.json",
        "names": ["/var/log/app/events.json"],
        "ino": 131080,
        "fingerprint": "0011223344556677",
        "ranges": [[0, 20_000]],
        "bytes": 20_000,
        "lines": 80,
    }
    files = {FILE_KEY: rotated, "app:2049:131080": fresh}
    day = make_day(tmp_path, stats={"files": files})
    text, html = bodies(parse(build_report(day.inp)))
    receipt = text[text.index("Completeness receipt") :]
    assert "  app: /var/log/app/events.json.1\n" in receipt
    assert (
        "device 8:1, inode 131075; fingerprint 3fa1c2d4e5f60718 (SHA-256 of the first 256 bytes)"
        in " ".join(receipt.split())
    )
    assert "    bytes 1,024 to 90,000\n    after the truncation, bytes 0 to 4,096\n" in receipt
    assert "46.1 KiB (47,189 bytes) in 200 lines, 2 skipped" in receipt
    assert (
        "renamed: /var/log/app/events.json -> /var/log/app/events.json.1; truncated once"
        in " ".join(receipt.split())
    )
    assert "device 8:1, inode 131080" in receipt and "bytes 0 to 20,000" in receipt
    visible = cells(html)
    assert (
        "bytes 1,024 to 90,000; after the truncation, bytes 0 to 4,096 · 46.1 KiB (47,189 bytes) in 200 lines, 2 skipped"
        in visible
    )
    assert (
        "renamed: /var/log/app/events.json -&gt; /var/log/app/events.json.1; truncated once" in html
    )


def test_receipt_of_an_older_checkpoint_is_shown_from_what_it_has(tmp_path: Path) -> None:
    """Receipts written before identities and ranges were kept still give path, range, inode."""
    old = {
        "source": "app",
        "path": "/var/log/app/events.json",
        "first_offset": 0,
        "last_offset": 500,
        "fingerprint": "abcd",
        "truncations": 0,
    }
    day = make_day(tmp_path, stats={"files": {"app:2049:77": old}})
    text, _ = bodies(parse(build_report(day.inp)))
    assert "device 8:1, inode 77; fingerprint abcd" in text
    assert "bytes 0 to 500" in text and "500 bytes, 0 skipped" in text


def test_a_period_without_reads_says_so_in_the_receipt(tmp_path: Path) -> None:
    """No file gave a line: the receipt says so rather than showing nothing."""
    day = make_day(tmp_path, [], stats={"files": {}})
    for body in bodies(parse(build_report(day.inp))):
        assert "No source file gave a line in this period." in body


def test_preview_says_so_and_reads_only_the_committed_bytes(tmp_path: Path) -> None:
    """A preview of a store still being written shows a banner and only its committed prefix."""
    day = make_day(tmp_path)
    assert day.inp.rotated_file is not None
    with day.inp.rotated_file.open("ab") as fh:
        fh.write(b'{"uncommitted": true}\n{"half": ')
    inp = dataclasses.replace(
        day.inp, rotated_bytes=len(day.content), preview="The period so far, as of noon."
    )
    msg = parse(build_report(inp))
    [part] = attachments(msg)
    assert part.get_content() == day.content
    text, html = bodies(msg)
    assert "PREVIEW. The period so far, as of noon." in text
    assert "Preview. The period so far, as of noon." in cells(html)
    assert hashlib.sha256(day.content).hexdigest() in text


def test_hostile_event_values_are_escaped_in_html(tmp_path: Path) -> None:
    """Markup in event values, samples, problems, rules and paths reaches the HTML only as text."""
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
    hostile_rule = RuleProfile(
        "<u>rule</u>", "<marquee>desc</marquee>", ("user.name",), lambda e: True
    )
    day = make_day(
        tmp_path,
        events,
        stats={
            "skipped": {"<i>bad</i>": 1},
            "problems": [problem],
            "per_rule": {"<u>rule</u>": 30},
            "files": {"k": {**FILE_RECEIPT, "path": "/x/<b>.json", "names": ["/x/<b>.json"]}},
        },
        rules=(hostile_rule,),
        source_problems=(HOSTILE[0],),
        delivery_problems=(HOSTILE[1],),
        notices=("<blink>notice</blink>",),
        hostname="<h1>host</h1>",
    )
    text, html = bodies(parse(build_report(day.inp)))
    for tag in ("<script", "<img", "<b>", "<i>", "<u>", "<marquee", "<blink", "<h1>host"):
        assert tag not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&#34;&gt;&lt;img src=x onerror=alert(1)&gt;" in html
    assert HOSTILE[0] in cells(html) and "<u>rule</u>" in cells(html)
    assert HOSTILE[0] in text and HOSTILE[1] in text  # plain text shows them as they are


def test_event_values_cannot_inject_headers_or_break_the_body(tmp_path: Path) -> None:
    """CR, LF, NUL and MIME boundaries in event values stay inside the body, shown as escapes."""
    events = make_events(berlin_period(), 20)
    for e in events:
        e["user"]["name"] = "x\r\nBcc: victim@example.com\r\n\r\n--=_tailmail_\x00"
    day = make_day(tmp_path, events)
    raw = build_report(day.inp)
    msg = parse(raw)
    assert msg["Bcc"] is None
    assert not re.search(rb"^Bcc:", raw, re.M)
    assert [p.get_content_type() for p in msg.walk()][-1] == "application/x-ndjson"
    assert attachments(msg)[0].get_content() == day.content
    text, html = bodies(msg)
    shown = "x\\x0d\\x0aBcc: victim@example.com\\x0d\\x0a\\x0d\\x0a--=_tailmail_\\x00"
    assert shown in " ".join(text.split()) and shown in html


def test_html_has_no_scripts_or_external_resources(tmp_path: Path) -> None:
    """The HTML is self-contained: no script, no style sheet, no remote image or font."""
    _, html = bodies(parse(build_report(make_day(tmp_path).inp)))
    assert not re.search(r"<(script|style|link|img|iframe|object|svg|form)\b", html, re.I)
    assert not re.search(r"(src|href|background)\s*=|url\(|@import|@font-face", html, re.I)
    assert not re.search(r"\son\w+\s*=", html, re.I), "no event handler attributes"


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
    long_rule = RuleProfile("a-very-long-rule-name-" * 5, "d" * 300, ("user.name",), lambda e: True)
    day = make_day(
        tmp_path,
        events,
        rules=(long_rule,),
        stats={
            "per_rule": {long_rule.name: 40},
            "files": {"k": {**FILE_RECEIPT, "path": "/very/long/path" * 20}},
        },
        source_problems=("source app: " + "/very/long/path" * 20 + " is missing",),
        notices=("n" * 400,),
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
    fields = tuple(f"f{k}" for k in range(12))
    rules = tuple(
        RuleProfile(f"rule-{i:03d}-" + "n" * 60, "d" * 200, fields, lambda e: True)
        for i in range(300)
    )
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
        rules=rules,
        stats={
            "per_rule": {r.name: 300 - i for i, r in enumerate(rules)},
            "skipped": {f"reason-{i}": 5 for i in range(20)},
            "problems": problems,
            "files": {f"k{i}": {**FILE_RECEIPT, "path": "/p" * 150} for i in range(30)},
        },
        source_problems=tuple("source app: " + "x" * 500 for _ in range(40)),
        delivery_problems=tuple("delivery: " + "y" * 500 for _ in range(40)),
        notices=tuple(f"notice {i}: " + "z" * 500 for i in range(40)),
    )
    text, html = bodies(parse(build_report(day.inp)))
    assert len(html.encode()) <= HTML_BUDGET < 100_000
    for body in (text, html):
        assert "... and 260 more rules" in body
        assert "... and 90 more problems not shown" in body
        assert "... and 20 more files not shown" in body
    assert "... and 292 more rules not shown" in text  # of 300 busy rules, 8 get top values
    assert "The top values per rule are in the plain-text part of this email" in html


def test_html_over_budget_shows_fewer_top_values_but_the_text_keeps_them(tmp_path: Path) -> None:
    """Values that escape to four times their length would overflow the budget: the HTML lists
    fewer of them (and fits), the plain text still lists them all."""
    events = make_events(berlin_period(), 200)
    for i, e in enumerate(events):
        e.update({f"f{k}": f"{i % 5}" + "<&>" * 40 for k in range(4)})
    fields = tuple(f"f{k}" for k in range(4))
    rules = tuple(RuleProfile(f"rule-{i}", "<&>" * 40, fields, lambda e: True) for i in range(8))
    day = make_day(tmp_path, events, rules=rules, stats={"per_rule": {r.name: 200 for r in rules}})
    rendered = render_report(day.inp)
    assert len(rendered.html.encode()) <= HTML_BUDGET
    assert rendered.html.count("in 200 of 200 events") < 8 * 4
    assert rendered.text.count("in 200 of 200 events") == 8 * 4
    assert re.search(r"\.\.\. and [3-7] more rules not shown", rendered.html)
