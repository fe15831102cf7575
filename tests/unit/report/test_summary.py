"""The store file's summary: count and hash, per-rule top values from the rules run again, caps."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from agent.config.model import ReportConfig, SourceConfig
from agent.report.summary import MAX_DISTINCT, RuleProfile, rule_profiles, summarize_file
from agent.rules import load_rules_path


def everything(*fields: str) -> RuleProfile:
    return RuleProfile("all", "", fields, lambda e: True)


def write_lines(path: Path, events: list[Any]) -> Path:
    path.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in events))
    return path


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
    summary = summarize_file(path, [everything("n", "missing")])
    assert summary.lines == 6
    assert summary.size == path.stat().st_size
    assert summary.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    [rule] = summary.rules
    n, missing = rule.fields
    assert n.values == (("10", 2), ('"10"', 1), ("null", 1), ('{"a":[1,2]}', 1))
    assert (n.present, n.distinct, missing.present, missing.values) == (5, 4, 0, ())


def test_values_are_counted_per_rule_over_the_events_each_rule_selects(tmp_path: Path) -> None:
    """Each rule counts the values of its own events; events no rule selects are counted apart."""
    events = [{"kind": "login", "user": u} for u in ("ann", "bob", "ann")] + [
        {"kind": "upload", "user": "cy"},
        {"kind": "other", "user": "dee"},
        [1, 2],
    ]
    path = write_lines(tmp_path / "s.jsonl", events)
    logins = RuleProfile("logins", "", ("user",), lambda e: e.get("kind") == "login")
    uploads = RuleProfile("uploads", "", ("user",), lambda e: e.get("kind") == "upload")
    summary = summarize_file(path, [logins, uploads])
    assert [(r.rule, r.events) for r in summary.rules] == [("logins", 3), ("uploads", 1)]
    assert summary.rules[0].fields[0].values == (("ann", 2), ("bob", 1))
    assert summary.rules[1].fields[0].values == (("cy", 1),)
    assert summary.unmatched == 2, "the 'other' event and the non-object line"


def test_limit_reads_only_the_first_bytes(tmp_path: Path) -> None:
    """With a limit (a store still being written) only that prefix is counted and hashed."""
    path = write_lines(tmp_path / "s.jsonl", [{"i": i} for i in range(10)])
    data = path.read_bytes()
    limit = data.index(b"\n", 30) + 1
    summary = summarize_file(path, [everything("i")], limit=limit)
    assert summary.size == limit
    assert summary.lines == data[:limit].count(b"\n")
    assert summary.sha256 == hashlib.sha256(data[:limit]).hexdigest()
    assert summary.rules[0].events == summary.lines


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
    summary = summarize_file(path, [everything("id", "k")])
    ids, k = summary.rules[0].fields
    assert (ids.uncounted, k.uncounted) == (7, 0)
    assert k.values == (("common", MAX_DISTINCT + 7),)
    assert ("late", 7) not in ids.values


def test_the_distinct_cap_is_shared_between_many_counters(tmp_path: Path) -> None:
    """Many rules times many fields share one budget of distinct values: memory stays bounded."""
    path = write_lines(tmp_path / "s.jsonl", [{"a": i, "b": i} for i in range(3000)])
    profiles = [RuleProfile(f"r{i}", "", ("a", "b"), lambda e: True) for i in range(20)]
    summary = summarize_file(path, profiles)
    for rule in summary.rules:
        for field in rule.fields:
            assert field.distinct == 1250, "50,000 distinct values shared by 40 counters"
            assert field.uncounted == 3000 - 1250


def rules_dir(tmp_path: Path, text: str) -> list[Any]:
    (tmp_path / "rules.d").mkdir(exist_ok=True)
    (tmp_path / "rules.d" / "r.yaml").write_text(text)
    rules, problems = load_rules_path(tmp_path / "rules.d", ["app", "web"], ["daily", "other"])
    assert problems == []
    return rules


def test_rule_profiles_default_to_the_fields_of_each_rule_and_obey_top_fields(
    tmp_path: Path,
) -> None:
    """By default a rule's fields are those its condition reads; `top_fields` replaces them."""
    rules = rules_dir(
        tmp_path,
        """rules:
  - name: logins
    description: Failed logins
    match: {all: [{event: {startswith: login.}}, {not: {remote_ip: {cidr: 10.0.0.0/8}}}]}
  - name: elsewhere
    reports: [other]
    match: {level: error}
  - name: off
    enabled: false
    match: {level: error}
""",
    )
    report = ReportConfig(name="daily", store=tmp_path / "d.jsonl", to=("a@example.com",))
    sources = [SourceConfig("app", "/x")]
    [profile] = rule_profiles(report, rules, sources, UTC)
    assert (profile.name, profile.description) == ("logins", "Failed logins")
    assert profile.fields == ("event", "remote_ip")
    top = ReportConfig(
        name="daily", store=tmp_path / "d.jsonl", to=("a@example.com",), top_fields=("user",)
    )
    assert [p.fields for p in rule_profiles(top, rules, sources, UTC)] == [("user",)]


def test_a_rule_with_a_when_window_selects_by_the_time_field_of_its_sources(
    tmp_path: Path,
) -> None:
    """The window is checked on the event time of the rule's sources; without a time the stored
    event counts (it was timed by its arrival, which the line does not carry)."""
    rules = rules_dir(
        tmp_path,
        """name: office
sources: [web]
match: {level: error}
when: {hours: "08:00-18:00", timezone: UTC}
""",
    )
    report = ReportConfig(name="daily", store=tmp_path / "d.jsonl", to=("a@example.com",))
    sources = [
        SourceConfig("app", "/a", time_field="ts"),
        SourceConfig("web", "/w", time_field="at"),
    ]
    [profile] = rule_profiles(report, rules, sources, UTC)

    def at(hour: int) -> str:
        return datetime(2026, 11, 21, hour, tzinfo=UTC).isoformat()

    assert profile.selects({"level": "error", "at": at(9)})
    assert not profile.selects({"level": "error", "at": at(20)})
    assert profile.selects({"level": "error", "ts": at(20)}), "ts is not the web source's field"
    assert not profile.selects({"level": "info", "at": at(9)})


def test_top_fields_read_a_path_as_the_rules_do_a_list_position_is_ascii_digits(
    tmp_path: Path,
) -> None:
    """`items.²` names a key, never a list position: on a list it finds nothing (it raised ValueError and stopped every rotation), on an object it finds the key."""
    rules = rules_dir(tmp_path, "name: x\nmatch: {event: x}\n")
    report = ReportConfig(
        name="daily",
        store=tmp_path / "d.jsonl",
        to=("a@example.com",),
        top_fields=("items.²", "items.1"),
    )
    path = write_lines(
        tmp_path / "s.jsonl",
        [{"event": "x", "items": [1, 2]}, {"event": "x", "items": {"²": "sq", "1": "one"}}],
    )
    summary = summarize_file(path, rule_profiles(report, rules, [SourceConfig("app", "/a")], UTC))
    [rule] = summary.rules
    squared, second = rule.fields
    assert rule.events == 2
    assert (squared.present, squared.values) == (1, (("sq", 1),))
    assert (second.present, second.values) == (2, (("2", 1), ("one", 1)))
