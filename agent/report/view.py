"""What a report shows: its figures -> the rows, bars and sentences its two templates render.

Here are the decisions of presentation: the order of sections, what is capped and how the rest
is counted, how values are cleaned for the body (controls shown as escapes, long values cut and
saying so). Pure: data in, data out.
"""

from __future__ import annotations

import os
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, timedelta
from functools import cache
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import jinja2

from agent.core.figures import PeriodStats
from agent.core.periods import Period
from agent.core.text import (
    clean,
    duration,
    figure,
    line_count,
    local_time,
    more,
    size_text,
)
from agent.report.summary import MAX_DISTINCT, FieldValues, FileSummary, RuleProfile
from agent.report.types import Receipt, ReportInput, Status

if TYPE_CHECKING:
    from agent.report.types import Receipt, ReportInput

# Caps on what is listed; the report always says how many more there were.
MAX_RULES = 40
MAX_HOURS = 48
MAX_REASONS = 15  # skip reasons listed
MAX_EXAMPLES = 3  # first examples shown per skip reason
MAX_ALL_EXAMPLES = 15  # and in all
MAX_LISTED = 10  # source problems, delivery problems, notices, files
MAX_RERUN = 20  # rules run again on the stored events to find those no rule selects now


@dataclass(frozen=True, slots=True)
class Caps:
    """How much of the top values to show: lowered step by step if the HTML would be too big."""

    rules: int = 8  # rules whose top values are shown, the busiest first
    fields: int = 4  # per rule
    values: int = 5  # per field
    examples: bool = True  # examples of skipped lines


LEVELS = (Caps(), Caps(5, 3, 3), Caps(3, 2, 3), Caps(0, 0, 0, examples=False))
SHOW_CHARS = 120  # an event value or sample shown in the body
VALUE_CHARS = 80  # a top value
BAR_CHARS = 30  # the longest bar of the plain-text part
CHART_PX = 72  # the tallest column of the HTML hour chart

_COLOURS: dict[str, tuple[str, str]] = {  # status -> (background, text)
    "green": ("#1e7b34", "#ffffff"),
    "amber": ("#f2b600", "#1f1f1f"),
    "red": ("#c62828", "#ffffff"),
}


def profiled(inp: ReportInput, caps: Caps) -> tuple[RuleProfile, ...]:
    """The rules to run again on the stored events: the busiest `caps.rules` with their fields,
    and the others too (without fields) while there are few, to count the events no rule in
    force selects now. Running every rule on every stored line would make a report of a
    thousand rules slow to build."""
    counts = inp.stats.per_rule
    ranked = sorted(inp.rules, key=lambda p: (-counts.get(p.name, 0), p.name))
    chosen = {p.name for p in ranked[: caps.rules] if counts.get(p.name, 0) > 0}
    every = len(ranked) <= MAX_RERUN
    return tuple(
        replace(p, fields=p.fields[: caps.fields] if p.name in chosen else ())
        for p in ranked
        if every or p.name in chosen
    )


# --- what the templates show -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Bar:
    label: str
    count: str
    pct: int  # of the longest bar, 0-100
    hashes: str  # the plain-text bar
    note: str = ""
    key: str = ""  # hour rows: the local hour, "YYYY-MM-DDTHH"
    sub: str = ""  # a line under the label: a rule's description


@dataclass(frozen=True, slots=True)
class _Column:
    """One hour of the HTML chart: a column of table cells."""

    key: str  # the local hour, "YYYY-MM-DDTHH"
    hour: str  # "00".."23", under the column
    count: str  # exact: the column's title
    shown: str  # above the column: "" for none, "1.2k" when long
    height: int  # of the bar, px; 0: no bar
    repeat: bool  # the second of a local hour that happens twice (the day clocks go back)


@dataclass(frozen=True, slots=True)
class _FieldView:
    field: str
    present: str  # "in 38 of 40 events"
    values: tuple[_Bar, ...]
    single: str  # the one value all its events have (a bar chart would say nothing), else ""
    note: str


@dataclass(frozen=True, slots=True)
class _RuleTop:
    rule: str
    events: str
    fields: tuple[_FieldView, ...]
    more: str


@dataclass(frozen=True, slots=True)
class _Reason:
    reason: str
    count: str
    examples: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class _File:
    source: str
    path: str
    identity: str  # device, inode, fingerprint
    ranges: tuple[str, ...]  # "bytes 0 to 48,213", one more after each truncation
    amount: str  # "47.1 KiB (48,213 bytes) in 600 lines, 2 skipped"
    history: str  # renames and truncations seen in the period, or ""


@dataclass(frozen=True, slots=True)
class _View:
    title: str
    preview: str
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
    columns: tuple[_Column, ...]
    hours_peak: str
    hours_before: str
    hours_after: str
    hours_repeat: str
    top: tuple[_RuleTop, ...]
    top_more: str
    top_unmatched: str
    reasons: tuple[_Reason, ...]
    reasons_more: str
    source_problems: tuple[str, ...]
    delivery_problems: tuple[str, ...]
    possible_losses: tuple[str, ...]
    notices: tuple[str, ...]
    problems_more: str
    files: tuple[_File, ...]
    files_more: str
    receipt: Receipt | None
    built: str
    message_id: str


def build_view(
    inp: ReportInput,
    status: Status,
    reason: str,
    summary: FileSummary | None,
    receipt: Receipt | None,
    file_problem: str | None,
    caps: Caps,
) -> _View:
    stats, tz = inp.stats, inp.report.timezone
    hours, before, after = _hour_bars(inp.period, tz, stats.per_hour)
    shown_hours = hours if any(stats.per_hour.values()) else ()
    columns = _columns(shown_hours)
    peak = max(shown_hours, key=lambda b: _int(b.count), default=None)
    top, top_more, unmatched = _top(inp, summary, caps)
    sources = [clean(p, 200) for p in (*inp.source_problems, *inp.store_problems)]
    if file_problem:
        sources.append(clean(file_problem, 400))
    deliveries = [clean(p, 200) for p in inp.delivery_problems]
    losses = [clean(p, 400) for p in inp.possible_losses]
    notices = [clean(p, 300) for p in dict.fromkeys(inp.notices)]
    hidden = sum(max(0, len(x) - MAX_LISTED) for x in (sources, deliveries, losses, notices))
    files = list(stats.files.items())  # in the order they were first read
    colour, ink = _COLOURS[status]
    start, end = inp.period.start.astimezone(tz), inp.period.end.astimezone(tz)
    rules, rules_more = _rule_bars(inp)
    return _View(
        title=clean(f"tailmail report {inp.report.name} on {inp.hostname}", 200),
        preview=clean(inp.preview, 400),
        status=status,
        status_word={"green": "OK", "amber": "WARNING", "red": "PROBLEM"}[status],
        reason=reason,
        colour=colour,
        ink=ink,
        report=clean(inp.report.name, 80),
        host=clean(inp.hostname, 80),
        version=clean(inp.version, 40),
        # the length from the UTC instants: local wall times would say 24 hours on a DST day
        period=f"{local_time(start)} to {local_time(end)} ({duration(inp.period.end - inp.period.start)})",
        timezone=clean(tz.key, 60),
        read=figure(stats.read),
        selected=figure(stats.selected),
        skipped=figure(stats.skipped_total),
        empty=stats.selected == 0 and (summary is None or summary.lines == 0),
        rules=rules,
        rules_more=rules_more,
        hours=shown_hours,
        columns=columns,
        hours_peak=f"busiest hour {peak.label}: {peak.count}" if peak and _int(peak.count) else "",
        hours_before=figure(before) if before else "",
        hours_after=figure(after) if after else "",
        hours_repeat=next(
            (
                f"{b.label[11:16]} happens twice; its events are counted in the first"
                for b in shown_hours
                if b.note
            ),
            "",
        ),
        top=top,
        top_more=top_more,
        top_unmatched=unmatched,
        reasons=_reasons(stats, caps),
        reasons_more=more(len(stats.skipped) - MAX_REASONS, "reasons not shown"),
        source_problems=tuple(sources[:MAX_LISTED]),
        delivery_problems=tuple(deliveries[:MAX_LISTED]),
        possible_losses=tuple(losses[:MAX_LISTED]),
        notices=tuple(notices[:MAX_LISTED]),
        problems_more=more(hidden, "problems not shown"),
        files=tuple(_file(key, info) for key, info in files[:MAX_LISTED]),
        files_more=more(len(files) - MAX_LISTED, "files not shown"),
        receipt=receipt,
        built=f"{inp.built_at.astimezone(tz):%Y-%m-%d %H:%M:%S %Z}",
        message_id=clean(inp.message_id, 200),
    )


def _rule_bars(inp: ReportInput) -> tuple[tuple[_Bar, ...], str]:
    """Selected per rule, the busiest first; then the rules in force that selected nothing."""
    counts = inp.stats.per_rule
    described = {p.name: p.description for p in inp.rules}
    items = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    items += sorted((name, 0) for name in described if counts.get(name, 0) == 0)
    shown, rest = items[:MAX_RULES], items[MAX_RULES:]
    top = max((n for _, n in shown), default=0)
    bars = []
    for name, count in shown:
        if name in described:
            sub = clean(described[name], SHOW_CHARS)
        else:
            sub = "no longer in force" if inp.rules else ""
        bars.append(replace(_bar(clean(name, SHOW_CHARS), count, top), sub=sub))
    more = ""
    if rest:
        more = f"... and {figure(len(rest))} more rules ({figure(sum(n for _, n in rest))} in all)"
    return tuple(bars), more


def _top(
    inp: ReportInput, summary: FileSummary | None, caps: Caps
) -> tuple[tuple[_RuleTop, ...], str, str]:
    """Per busy rule, the most frequent values of its fields, from the stored events."""
    if summary is None or not summary.lines:
        return (), "", ""
    busier = sum(1 for p in inp.rules if inp.stats.per_rule.get(p.name, 0) > 0 and p.fields)
    if caps.rules == 0:
        left_out = "The top values per rule are in the plain-text part of this email: they are left out here to keep it small."
        return (), left_out if busier else "", ""
    values = {r.rule: r for r in summary.rules}
    wanted = {p.name: p.fields for p in inp.rules}
    busy = [p.name for p in profiled(inp, caps) if p.fields and p.name in values]
    tops = []
    for name in busy:
        counted = values[name]
        fields = tuple(
            _field_view(fv, counted.events, caps) for fv in counted.fields[: caps.fields]
        )
        hidden = more(len(dict.fromkeys(wanted[name])) - len(fields), "fields not shown")
        tops.append(_RuleTop(clean(name, SHOW_CHARS), figure(counted.events), fields, hidden))
    top_more = more(busier - len(tops), "rules not shown")
    unmatched = ""
    if summary.unmatched and inp.rules and len(inp.rules) <= MAX_RERUN:
        unmatched = (
            f"{figure(summary.unmatched)} stored events are selected by no rule in force now "
            "(the rules changed during the period)."
        )
    return tuple(tops), top_more, unmatched


def _field_view(fv: FieldValues, events: int, caps: Caps) -> _FieldView:
    name = clean(fv.field, 80)
    present = f"in {figure(fv.present)} of {figure(events)} events"
    note = (
        f"Only the first {figure(MAX_DISTINCT)} distinct values were counted; "
        f"{figure(fv.uncounted)} events with later values are not in these counts."
        if fv.uncounted
        else ""
    )
    if fv.distinct == 1 and not fv.uncounted:
        return _FieldView(name, present, (), clean(fv.values[0][0], VALUE_CHARS), note)
    if fv.values and fv.values[0][1] == 1:
        # Every value occurs once (sizes, ids): five of them would tell nothing.
        at_least = "at least " if fv.uncounted else ""
        unique = f"{at_least}{figure(fv.distinct)} different values, none more than once."
        return _FieldView(name, present, (), "", _join(unique, note))
    shown = fv.values[: caps.values]
    top = max((n for _, n in shown), default=0)
    bars = tuple(_bar(clean(value, VALUE_CHARS), n, top) for value, n in shown)
    if fv.distinct > len(shown):
        rest = fv.present - fv.uncounted - sum(n for _, n in shown)
        note = _join(
            f"{figure(fv.distinct - len(shown))} other values: {figure(rest)} events", note
        )
    return _FieldView(name, present, bars, "", note)


def _reasons(stats: PeriodStats, caps: Caps) -> tuple[_Reason, ...]:
    ranked = sorted(stats.skipped.items(), key=lambda kv: (-kv[1], kv[0]))[:MAX_REASONS]
    examples: dict[str, list[str]] = {r: [] for r, _ in ranked}
    budget = MAX_ALL_EXAMPLES if caps.examples else 0
    for problem in stats.problems:
        shown = examples.get(str(problem.get("reason", "")))
        if shown is not None and len(shown) < MAX_EXAMPLES and budget > 0:
            shown.append(_example(problem))
            budget -= 1
    return tuple(_Reason(clean(r, 80), figure(c), tuple(examples[r])) for r, c in ranked)


def _bar(label: str, count: int, top: int, note: str = "", key: str = "") -> _Bar:
    pct = 0 if top <= 0 or count <= 0 else max(1, round(count * 100 / top))
    hashes = "" if pct == 0 else "#" * max(1, round(pct * BAR_CHARS / 100))
    return _Bar(label, figure(count), pct, hashes, note, key)


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


def _columns(rows: Sequence[_Bar]) -> tuple[_Column, ...]:
    """The hour rows as columns for the HTML chart."""
    top = max((_int(b.count) for b in rows), default=0)
    columns = []
    for b in rows:
        count = _int(b.count)
        height = 0 if count == 0 or top == 0 else max(2, round(count * CHART_PX / top))
        columns.append(
            _Column(b.key, b.key[11:13], b.count, _compact(count), height, repeat=bool(b.note))
        )
    return tuple(columns)


def _compact(count: int) -> str:
    """A count in at most four characters, to stand above a narrow column: 7, 950, 1.2k, 35k."""
    if count <= 0:
        return ""
    if count < 1000:
        return str(count)
    for unit, size in (("M", 1_000_000), ("k", 1000)):
        if count >= size:
            value = count / size
            return f"{value:.1f}{unit}" if value < 9.95 else f"{round(value)}{unit}"
    return str(count)


def _int(count: str) -> int:
    return int(count.replace(",", "")) if count else 0


def _example(problem: Mapping[str, Any]) -> str:
    offset = problem.get("offset")
    at = f"byte {offset:,}" if isinstance(offset, int) else f"offset {offset}"
    source = clean(str(problem.get("source", "?")), 60)
    path = clean(str(problem.get("path", "?")), SHOW_CHARS)
    sample = clean(str(problem.get("sample", "")), SHOW_CHARS)
    return f"{source}: {path} at {at}: {sample}"


def _file(key: str, info: Mapping[str, Any]) -> _File:
    """One source file's line of the completeness receipt."""
    dev, ino = info.get("dev"), info.get("ino")
    if not isinstance(dev, int) or not isinstance(ino, int):  # written by an older version
        parts = key.rsplit(":", 2)
        dev, ino = (
            (int(parts[1]), int(parts[2]))
            if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit()
            else (None, None)
        )
    identity = []
    if dev is not None and ino is not None:
        identity.append(f"device {os.major(dev)}:{os.minor(dev)}, inode {ino}")
    fingerprint = str(info.get("fingerprint", ""))
    if fingerprint:
        fp_len = info.get("fp_len")
        of = (
            f"SHA-256 of the first {fp_len:,} bytes"
            if isinstance(fp_len, int)
            else "SHA-256 of the first bytes"
        )
        identity.append(f"fingerprint {clean(fingerprint, 64)} ({of})")
    ranges = info.get("ranges")
    if not isinstance(ranges, list) or not ranges:
        ranges = [[info.get("first_offset"), info.get("last_offset")]]
    shown = []
    previous_end: Any = None
    for start, end in ranges:
        after = isinstance(previous_end, int) and isinstance(start, int) and start < previous_end
        shown.append(
            f"{'after the truncation, ' if after else ''}bytes {_num(start)} to {_num(end)}"
        )
        previous_end = end
    if info.get("ranges_dropped"):
        shown.insert(-1, f"... {figure(info['ranges_dropped'])} more ranges ...")
    size = info.get("bytes")
    if not isinstance(size, int):
        size = sum(e - s for s, e in ranges if isinstance(s, int) and isinstance(e, int))
    amount = size_text(size)
    if isinstance(info.get("lines"), int):
        amount += f" in {line_count(info['lines'])}"
    amount += f", {figure(int(info.get('skipped') or 0))} skipped"
    history = []
    names = [clean(str(n), 200) for n in info.get("names", [])]
    if len(names) > 1:
        history.append("renamed: " + " -> ".join(names))
    truncations = int(info.get("truncations") or 0)
    if truncations:
        history.append(
            f"truncated {'once' if truncations == 1 else figure(truncations) + ' times'}"
        )
    return _File(
        source=clean(str(info.get("source", "?")), 60),
        path=clean(str(info.get("path", "?")), 300),
        identity="; ".join(identity),
        ranges=tuple(shown),
        amount=amount,
        history="; ".join(history),
    )


def _num(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else "?"


def _join(*parts: str) -> str:
    return " ".join(p for p in parts if p)


# --- templates and text helpers -------------------------------------------------------------


@cache
def environment(html: bool) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("agent.report", "templates"),
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
