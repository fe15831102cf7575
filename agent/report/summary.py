"""A period's store file -> what its report says about it, in one streaming pass.

The line count and SHA-256 of the file (the attachment's receipt), and for each rule the most
frequent values of its telling fields, found by evaluating the rules again on the stored lines
(the store holds lines, not which rule chose them). Pure apart from reading the file it is
given: the rules come in as functions.

The value counters are the only memory that grows with the file: at most MAX_DISTINCT keys per
counter, and MAX_DISTINCT_TOTAL over all of them, each at most MAX_VALUE_CHARS long. A value
first seen after its counter is full is not counted (the report says how many events that
concerned); the counts shown are exact for the values shown.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, tzinfo
from functools import partial
from pathlib import Path
from typing import Any

import orjson

from agent.config.model import ReportConfig, SourceConfig
from agent.rules import MISSING, Rule, TimeOf, getter
from agent.tail.eventtime import event_time

MAX_DISTINCT = 10_000
MAX_DISTINCT_TOTAL = 50_000
MAX_VALUE_CHARS = 200
TOP = 5  # values listed per field
CHUNK = 1 << 20

Selects = Callable[[dict[str, Any]], bool]


@dataclass(frozen=True, slots=True)
class RuleProfile:
    """A rule as its report sees it: names, whose values to count, and how to recognise its
    events in the store."""

    name: str
    description: str
    fields: tuple[str, ...]  # whose most frequent values to show; () for none
    selects: Selects  # whether the rule selects a stored event


@dataclass(frozen=True, slots=True)
class FieldValues:
    field: str
    present: int  # events of the rule that have the field
    values: tuple[tuple[str, int], ...]  # (value as shown, count), most frequent first
    distinct: int  # distinct values counted
    uncounted: int  # events whose value came after the counter was full


@dataclass(frozen=True, slots=True)
class RuleValues:
    rule: str
    events: int  # stored events the rule selects
    fields: tuple[FieldValues, ...]


@dataclass(frozen=True, slots=True)
class FileSummary:
    lines: int
    size: int
    sha256: str  # hex, of the bytes read
    rules: tuple[RuleValues, ...]  # in the order of the profiles given
    unmatched: int  # stored events none of the rules selects now (rules changed in the period)


def rule_profiles(
    report: ReportConfig,
    rules: Sequence[Rule],
    sources: Sequence[SourceConfig],
    local_tz: tzinfo,
) -> tuple[RuleProfile, ...]:
    """The rules that feed `report`, with the fields to profile: the report's `top_fields`, or
    by default the fields each rule's condition reads."""
    profiles = []
    for rule in rules:
        if not rule.enabled or (rule.reports is not None and report.name not in rule.reports):
            continue
        fields = report.top_fields if report.top_fields is not None else rule.fields
        # The time fields of the sources the rule reads, for its `when` window.
        time_fields = tuple(
            dict.fromkeys(
                s.time_field
                for s in sources
                if s.time_field and (rule.sources is None or s.name in rule.sources)
            )
        )
        at = _time_of(time_fields, local_tz)
        profiles.append(
            RuleProfile(rule.name, rule.description, fields, partial(rule.selects, at=at))
        )
    return tuple(profiles)


def _time_of(time_fields: tuple[str, ...], local_tz: tzinfo) -> TimeOf:
    """A stored event's time: from the first of `time_fields` that holds one. None when none
    does: the event was timed by its arrival, which the stored line does not carry."""

    def at(event: dict[str, Any]) -> datetime | None:
        for name in time_fields:
            t = event_time(event.get(name), local_tz)
            if t is not None:
                return t
        return None

    return at


def summarize_file(
    path: Path, profiles: Sequence[RuleProfile], limit: int | None = None, top: int = TOP
) -> FileSummary:
    """Count, hash and profile the first `limit` bytes (default: all) of a store file."""
    counters = sum(len(p.fields) for p in profiles)
    cap = min(MAX_DISTINCT, MAX_DISTINCT_TOTAL // counters) if counters else 0
    rules = [_RuleCount(p) for p in profiles]
    digest = hashlib.sha256()
    lines = size = unmatched = 0
    with path.open("rb") as fh:
        for line in _lines(fh, limit):
            digest.update(line)
            size += len(line)
            lines += 1
            if not rules:
                continue
            try:
                event = orjson.loads(line)
            except orjson.JSONDecodeError:
                event = None
            if not isinstance(event, dict):
                unmatched += 1
                continue
            hit = False
            for rule in rules:
                if rule.selects(event):
                    hit = True
                    rule.add(event, cap)
            unmatched += not hit
    return FileSummary(
        lines=lines,
        size=size,
        sha256=digest.hexdigest(),
        rules=tuple(r.result(top) for r in rules),
        unmatched=unmatched,
    )


def _lines(fh: Any, limit: int | None) -> Any:
    if limit is None:
        yield from fh
        return
    left = limit
    carry = b""
    while left > 0:
        data = fh.read(min(CHUNK, left))
        if not data:
            break
        left -= len(data)
        parts = (carry + data).split(b"\n")
        carry = parts.pop()
        for part in parts:
            yield part + b"\n"
    if carry:
        yield carry


class _RuleCount:
    __slots__ = ("events", "fields", "name", "selects")

    def __init__(self, profile: RuleProfile) -> None:
        self.name = profile.name
        self.selects = profile.selects
        self.events = 0
        self.fields = [_FieldCount(f) for f in dict.fromkeys(profile.fields)]

    def add(self, event: dict[str, Any], cap: int) -> None:
        self.events += 1
        for field in self.fields:
            field.add(event, cap)

    def result(self, top: int) -> RuleValues:
        return RuleValues(self.name, self.events, tuple(f.result(top) for f in self.fields))


class _FieldCount:
    __slots__ = ("counter", "get", "name", "present", "uncounted")

    def __init__(self, name: str) -> None:
        self.name = name
        self.get = getter(name)  # the rules' own reader: the report counts what they test
        self.counter: Counter[tuple[bool, str]] = Counter()
        self.present = 0
        self.uncounted = 0

    def add(self, event: dict[str, Any], cap: int) -> None:
        value = self.get(event)
        if value is MISSING:
            return
        self.present += 1
        key = _value_key(value)
        counter = self.counter
        if key in counter or len(counter) < cap:
            counter[key] += 1
        else:
            self.uncounted += 1

    def result(self, top: int) -> FieldValues:
        # most_common orders equal counts by first appearance: stable for one file
        values = tuple((_value_text(k), n) for k, n in self.counter.most_common(top))
        return FieldValues(self.name, self.present, values, len(self.counter), self.uncounted)


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
