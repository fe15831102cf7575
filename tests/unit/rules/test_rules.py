"""Tests for agent.rules: rule keys and routing, rule files and their mistakes, RuleBook reloads."""

from __future__ import annotations

import os
import textwrap
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hostile import HOSTILE

from agent.config.yamlfile import Problem, parse_yaml
from agent.rules import (
    MAX_RULE_FILE_BYTES,
    Rule,
    RuleBook,
    check_rules,
    load_rule_file,
    load_rules_path,
    parse_rules,
    read_bounded,
)

# Where the loader looks up its reader and parser, for tests that stand in for them.
READER = "agent.rules.load.read_bounded"
PARSER = "agent.rules.load.parse_yaml"

SOURCES = ("app", "web")
REPORTS = ("daily", "security")


def text_of(yaml_text: str) -> str:
    return textwrap.dedent(yaml_text).lstrip("\n")


def parse(
    yaml_text: str, file: str = "r.yaml", names: bool = True
) -> tuple[list[Rule], list[Problem]]:
    data, problems = parse_yaml(text_of(yaml_text), file)
    assert problems == []
    return parse_rules(
        data,
        file,
        Path(file).stem,
        source_names=SOURCES if names else None,
        report_names=REPORTS if names else None,
    )


def rule(yaml_text: str) -> Rule:
    rules, problems = parse(yaml_text)
    assert problems == []
    assert len(rules) == 1
    return rules[0]


def problems_of(yaml_text: str) -> list[str]:
    return [str(p) for p in parse(yaml_text)[1]]


def write(directory: Path, name: str, yaml_text: str) -> Path:
    path = directory / name
    path.write_text(text_of(yaml_text), encoding="utf-8")
    return path


# --- rule keys and routing -----------------------------------------------------------------------


def test_rule_defaults() -> None:
    """A minimal rule: named after the file, enabled, all sources and reports, no when."""
    r = rule("match: {level: error}")
    assert (r.name, r.description, r.file, r.line) == ("r", "", "r.yaml", 1)
    assert r.enabled and r.sources is None and r.reports is None and r.when is None


def test_rule_with_every_key() -> None:
    """Every key is read: name, description, enabled, sources, reports, match, when."""
    r = rule(
        """
        # leading comment
        name: failed-logins
        description: Failed logins
        enabled: false
        sources: [app, web]
        reports: daily
        match: {event: login.failed}
        when: {days: [mon]}
        """
    )
    assert r.name == "failed-logins" and r.description == "Failed logins" and r.line == 2
    assert not r.enabled
    assert r.sources == frozenset(SOURCES) and r.reports == frozenset({"daily"})
    assert r.when is not None


def test_selects_is_the_condition_and_the_window_at_the_event_time_read_only_when_needed() -> None:
    """Rule.selects holds when the condition does and the window holds at `at(event)`, which is called only for a rule with a window whose condition held; an unknown time (None) lets the window hold."""
    calls: list[dict[str, Any]] = []

    def at(times: dict[str, datetime | None]) -> Callable[[dict[str, Any]], datetime | None]:
        def read(event: dict[str, Any]) -> datetime | None:
            calls.append(event)
            return times[event["t"]]

        return read

    office = rule('match: {level: error}\nwhen: {hours: "08:00-18:00", timezone: UTC}')
    times = at(
        {
            "in": datetime(2026, 11, 20, 9, tzinfo=UTC),
            "out": datetime(2026, 11, 20, 20, tzinfo=UTC),
            "unknown": None,
        }
    )
    assert office.selects({"level": "error", "t": "in"}, times)
    assert not office.selects({"level": "error", "t": "out"}, times)
    assert office.selects({"level": "error", "t": "unknown"}, times)
    assert len(calls) == 3
    assert not office.selects({"level": "info", "t": "in"}, times)
    assert rule("match: {level: error}").selects({"level": "error", "t": "out"}, times)
    assert len(calls) == 3, "no time is read when the condition fails or there is no window"


def test_rules_list_keeps_order_and_lines() -> None:
    """`rules:` holds several named rules, in file order, each with its own line."""
    rules, problems = parse(
        """
        rules:
          - name: one
            match: {a: 1}
          - name: two
            match: {b: 2}
        """
    )
    assert problems == []
    assert [(r.name, r.line) for r in rules] == [("one", 2), ("two", 4)]


def test_single_rule_in_list_takes_file_stem() -> None:
    """A `rules:` list of one unnamed rule takes the file's stem as its name."""
    rules, problems = parse("rules:\n  - match: {a: 1}\n", file="/etc/x/web-errors.yml")
    assert problems == [] and rules[0].name == "web-errors"


def test_routing_names_are_not_checked_without_configured_names() -> None:
    """parse_rules checks sources/reports only when the configured names are given."""
    rules, problems = parse("sources: [elsewhere]\nmatch: {a: 1}\n", names=False)
    assert problems == [] and rules[0].sources == frozenset({"elsewhere"})


# --- load errors, each with FILE:LINE ------------------------------------------------------------

LOAD_ERRORS = [
    ("unknown-rule-key", "match: {a: 1}\nmatches: {a: 1}\n", 2, "unknown key 'matches'"),
    ("missing-match", "# c\nname: x\n", 2, "missing required key 'match'"),
    ("empty-match", "name: x\nmatch:\n", 2, "match is empty"),
    ("name-invalid", "name: failed logins\nmatch: {a: 1}\n", 1, "may use only letters"),
    ("name-list", "# c\nname: [a]\nmatch: {a: 1}\n", 2, "name must be a string"),
    ("enabled-string", "match: {a: 1}\nenabled: yes\n", 2, "enabled must be true or false"),
    ("description-list", "match: {a: 1}\ndescription: [a]\n", 2, "description must be text"),
    ("unknown-source", "match: {a: 1}\nsources:\n  - app\n  - apps\n", 4, "unknown source 'apps'"),
    ("unknown-report", "match: {a: 1}\nreports: weekly\n", 2, "unknown report 'weekly'"),
    ("sources-empty", "match: {a: 1}\nsources: []\n", 2, "names no source"),
    ("sources-number", "match: {a: 1}\nsources: [1]\n", 2, "must list source names"),
    (
        "several-unnamed",
        "rules:\n  - name: a\n    match: {a: 1}\n  - match: {b: 1}\n",
        4,
        "each needs a `name:`",
    ),
    (
        "duplicate-name",
        "rules:\n  - name: a\n    match: {a: 1}\n  - name: a\n    match: {b: 1}\n",
        4,
        "first at line 2",
    ),
    ("key-next-to-rules", "rules: []\nname: x\n", 2, "cannot stand next to `rules:`"),
    ("rules-not-list", "# c\nrules: {a: 1}\n", 2, "rules must be a list of rules"),
    ("rule-not-mapping", "rules:\n  - a\n", 2, "rule 1 must be a mapping"),
    ("empty-file", "# only a comment\n", 1, "the file is empty"),
    ("top-level-list", "- match: {a: 1}\n", 1, "a rule file must hold one rule"),
]


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [case[1:] for case in LOAD_ERRORS],
    ids=[case[0] for case in LOAD_ERRORS],
)
def test_load_error_has_its_line(text: str, line: int, fragment: str) -> None:
    """Each mistake is one problem at FILE:LINE of the offending key or item, saying what to do."""
    problems = problems_of(text)
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"r.yaml:{line}: "), problems
    assert fragment in problems[0], problems


def test_all_problems_reported_in_line_order_and_no_rules_loaded() -> None:
    """Every problem of a file is reported, sorted by line, and the file loads no rule."""
    rules, problems = parse(
        """
        rules:
          - name: good
            match: {a: 1}
          - name: bad
            bogus: 1
            match:
              b: {regex: 'x(?!y)', in: 1}
            when: {hours: "9-5"}
        """
    )
    assert rules == []
    assert [p.line for p in problems] == [5, 7, 7, 8]
    assert all(p.file == "r.yaml" for p in problems)


def test_yaml_syntax_error_is_located(tmp_path: Path) -> None:
    """A YAML syntax error comes back as FILE:LINE through load_rule_file."""
    path = write(tmp_path, "broken.yaml", "match:\n  a: [1, 2\nname: x\n")
    rules, problems = load_rule_file(path)
    assert rules == []
    assert len(problems) == 1 and problems[0].file == str(path) and problems[0].line == 3


def test_file_stem_that_is_no_valid_name(tmp_path: Path) -> None:
    """A file whose stem is not a valid rule name needs an explicit name."""
    path = write(tmp_path, "my rules.yaml", "match: {a: 1}\n")
    _, problems = load_rule_file(path)
    assert [p.line for p in problems] == [1] and "add `name:`" in problems[0].message
    named = write(tmp_path, "my other rules.yaml", "name: ok\nmatch: {a: 1}\n")
    assert load_rule_file(named)[0][0].name == "ok"


# --- files and directories -----------------------------------------------------------------------


def test_load_rule_file_names_rule_after_stem(tmp_path: Path) -> None:
    """load_rule_file reads a file and names an unnamed rule after its stem."""
    path = write(tmp_path, "ssh-failures.yml", "match: {event: ssh.fail}\n")
    rules, problems = load_rule_file(path, source_names=SOURCES, report_names=REPORTS)
    assert problems == [] and rules[0].name == "ssh-failures" and rules[0].file == str(path)


def test_load_rules_path_file_and_directory(tmp_path: Path) -> None:
    """load_rules_path takes a file or a directory; disabled rules are included."""
    write(tmp_path, "b.yaml", "match: {b: 1}\nenabled: false\n")
    write(
        tmp_path, "a.yml", "rules:\n  - {name: a1, match: {a: 1}}\n  - {name: a2, match: {a: 2}}\n"
    )
    write(tmp_path, "c.txt", "not: yaml rules\n")
    rules, problems = load_rules_path(tmp_path, SOURCES, REPORTS)
    assert problems == []
    assert [r.name for r in rules] == ["a1", "a2", "b"]
    assert [r.enabled for r in rules] == [True, True, False]
    one, _ = load_rules_path(tmp_path / "b.yaml")
    assert [r.name for r in one] == ["b"]
    missing, problems = load_rules_path(tmp_path / "nope.yaml")
    assert missing == [] and problems[0].file == str(tmp_path / "nope.yaml")


def test_check_rules_reports_every_file(tmp_path: Path) -> None:
    """check_rules returns the problems of every rule file, and of a duplicate across files."""
    write(tmp_path, "a.yaml", "name: dup\nmatch: {a: 1}\n")
    write(tmp_path, "b.yaml", "# c\nname: dup\nmatch: {b: 1}\n")
    write(tmp_path, "c.yaml", "match: {c: {gt: []}}\n")
    problems = check_rules(tmp_path, SOURCES, REPORTS)
    assert [(Path(p.file).name, p.line) for p in problems] == [("b.yaml", 2), ("c.yaml", 1)]
    assert f"already used at {tmp_path / 'a.yaml'}:1" in problems[0].message


def test_check_rules_missing_directory(tmp_path: Path) -> None:
    """A missing rules directory is one problem naming it."""
    problems = check_rules(tmp_path / "rules.d", SOURCES, REPORTS)
    assert len(problems) == 1 and problems[0].file == str(tmp_path / "rules.d")
    assert "does not exist" in problems[0].message


# --- RuleBook ------------------------------------------------------------------------------------


@pytest.fixture
def book(tmp_path: Path) -> RuleBook:
    return RuleBook(tmp_path, SOURCES, REPORTS)


def names(rules: tuple[Rule, ...]) -> list[str]:
    return [r.name for r in rules]


def test_rulebook_loads_sorted_files_and_skips_others(tmp_path: Path, book: RuleBook) -> None:
    """Rule files load in sorted order; hidden, backup, swap, non-YAML and directories are not."""
    write(tmp_path, "b.yaml", "match: {b: 1}\n")
    write(
        tmp_path, "a.yml", "rules:\n  - {name: a2, match: {a: 2}}\n  - {name: a1, match: {a: 1}}\n"
    )
    for ignored in (".hidden.yaml", "c.yaml~", ".c.yaml.swp", ".#c.yaml", "c.yaml.bak", "c.json"):
        write(tmp_path, ignored, "match: {x: 1}\n")
    (tmp_path / "d.yaml").mkdir()
    assert book.version == 0 and book.rules == ()
    assert book.reload() == []
    assert names(book.rules) == ["a2", "a1", "b"]
    assert book.version == 1


def test_rulebook_disabled_rules_only_in_all_rules(tmp_path: Path, book: RuleBook) -> None:
    """Disabled rules are in all_rules but not in rules."""
    write(
        tmp_path,
        "a.yaml",
        "rules:\n  - {name: on, match: {a: 1}}\n  - {name: off, enabled: false, match: {a: 2}}\n",
    )
    book.reload()
    assert names(book.rules) == ["on"]
    assert names(book.all_rules) == ["on", "off"]


def test_rulebook_unchanged_reload_keeps_rules_and_version(tmp_path: Path, book: RuleBook) -> None:
    """Reloading unchanged (or merely touched) files keeps the same Rule objects and version."""
    path = write(tmp_path, "a.yaml", "match: {a: 1}\n")
    book.reload()
    first = book.rules
    assert book.reload() == []
    assert book.rules[0] is first[0] and book.version == 1
    old = time.time() - 3600
    os.utime(path, (old, old))
    book.reload()
    assert book.rules[0] is first[0] and book.version == 1
    book.reload()  # now trusted by its stat key
    assert book.rules[0] is first[0] and book.version == 1


def test_rulebook_change_add_remove(tmp_path: Path, book: RuleBook) -> None:
    """A changed file replaces its rules, a new file adds, a removed file drops; version counts."""
    path = write(tmp_path, "a.yaml", "match: {a: 1}\n")
    book.reload()
    write(tmp_path, "a.yaml", "match: {a: 2}\n")
    assert book.reload() == []
    assert book.version == 2 and book.rules[0].match({"a": 2})
    write(tmp_path, "b.yaml", "match: {b: 1}\n")
    book.reload()
    assert names(book.rules) == ["a", "b"] and book.version == 3
    path.unlink()
    book.reload()
    assert names(book.rules) == ["b"] and book.version == 4


def test_rulebook_disabling_a_rule_bumps_version(tmp_path: Path, book: RuleBook) -> None:
    """Disabling a rule removes it from rules and changes the version."""
    write(tmp_path, "a.yaml", "match: {a: 1}\n")
    book.reload()
    write(tmp_path, "a.yaml", "match: {a: 1}\nenabled: false\n")
    book.reload()
    assert book.rules == () and names(book.all_rules) == ["a"] and book.version == 2


def test_rulebook_broken_file_keeps_previous_version(tmp_path: Path, book: RuleBook) -> None:
    """A file that fails keeps its previous version in force; the other files load normally."""
    write(tmp_path, "a.yaml", "match: {a: 1}\n")
    write(tmp_path, "b.yaml", "match: {b: 1}\n")
    book.reload()
    kept = book.rules[0]
    write(tmp_path, "a.yaml", "match:\n  a: {regex: '(?<=x)a'}\n")
    write(tmp_path, "b.yaml", "match: {b: 2}\n")
    problems = book.reload()
    assert [(Path(p.file).name, p.line) for p in problems] == [("a.yaml", 2)]
    assert book.rules[0] is kept
    assert book.rules[1].match({"b": 2})
    assert book.reload() == problems  # still broken: still reported
    write(tmp_path, "a.yaml", "match: {a: 3}\n")
    assert book.reload() == []
    assert book.rules[0].match({"a": 3})


def test_rulebook_yaml_syntax_error_keeps_previous_version(tmp_path: Path, book: RuleBook) -> None:
    """A half-typed YAML file is reported at its line; the previous version stays in force."""
    write(tmp_path, "a.yaml", "match: {a: 1}\n")
    book.reload()
    write(tmp_path, "a.yaml", "match: {a: 1}\nwhen: {days: [mon\n")
    problems = book.reload()
    assert len(problems) == 1 and problems[0].line == 3 and "YAML" in problems[0].message
    assert names(book.rules) == ["a"] and book.version == 1


def test_rulebook_emptied_file_keeps_previous_version(tmp_path: Path, book: RuleBook) -> None:
    """A file truncated mid-save (empty) fails, so its rules stay in force meanwhile."""
    path = write(tmp_path, "a.yaml", "match: {a: 1}\n")
    book.reload()
    path.write_text("")
    assert len(book.reload()) == 1
    assert names(book.rules) == ["a"] and book.version == 1


def test_rulebook_restored_file_gets_its_rules_back(tmp_path: Path, book: RuleBook) -> None:
    """Broken then restored to the same bytes: the same Rule objects, no version change."""
    path = write(tmp_path, "a.yaml", "match: {a: 1}\n")
    book.reload()
    kept = book.rules[0]
    path.write_bytes(b"match: {a: \xff}\n")
    problems = book.reload()
    assert problems[0].line == 1 and "UTF-8" in problems[0].message
    write(tmp_path, "a.yaml", "match: {a: 1}\n")
    assert book.reload() == []
    assert book.rules[0] is kept and book.version == 1


def test_rulebook_new_broken_file_loads_nothing(tmp_path: Path, book: RuleBook) -> None:
    """A broken file that never loaded has no rules in force and reports its problems."""
    write(tmp_path, "a.yaml", "match: {a: 1}\nsources: [db]\n")
    problems = book.reload()
    assert [str(p) for p in problems] == [
        f"{tmp_path / 'a.yaml'}:2: unknown source 'db'; the configured sources are: app, web"
    ]
    assert book.all_rules == () and book.version == 0


def test_rulebook_duplicate_name_fails_later_file(tmp_path: Path, book: RuleBook) -> None:
    """A name used by an earlier file (in sort order) makes the later file fail."""
    write(tmp_path, "a.yaml", "name: dup\nmatch: {a: 1}\n")
    write(
        tmp_path,
        "b.yaml",
        "rules:\n  - name: other\n    match: {b: 1}\n  - name: dup\n    match: {b: 2}\n",
    )
    problems = book.reload()
    assert [(Path(p.file).name, p.line) for p in problems] == [("b.yaml", 4)]
    assert f"already used at {tmp_path / 'a.yaml'}:1" in problems[0].message
    assert names(book.rules) == ["dup"] and book.rules[0].file.endswith("a.yaml")
    write(tmp_path, "b.yaml", "rules:\n  - name: other\n    match: {b: 1}\n")
    assert book.reload() == []
    assert names(book.rules) == ["dup", "other"]


def test_rulebook_duplicate_keeps_later_files_old_version(tmp_path: Path, book: RuleBook) -> None:
    """When a later file gains a clashing name, its previous version stays in force."""
    write(tmp_path, "a.yaml", "name: x\nmatch: {a: 1}\n")
    write(tmp_path, "b.yaml", "name: y\nmatch: {b: 1}\n")
    book.reload()
    write(tmp_path, "b.yaml", "name: x\nmatch: {b: 1}\n")
    problems = book.reload()
    assert len(problems) == 1 and problems[0].file.endswith("b.yaml")
    assert names(book.rules) == ["x", "y"]


def test_rulebook_clash_from_earlier_file_withdraws_old_version(
    tmp_path: Path, book: RuleBook
) -> None:
    """If an earlier file takes a name the later file's old version uses, that old version goes."""
    write(tmp_path, "a.yaml", "name: x\nmatch: {a: 1}\n")
    write(tmp_path, "b.yaml", "name: y\nmatch: {b: 1}\n")
    book.reload()
    write(
        tmp_path, "a.yaml", "rules:\n  - {name: x, match: {a: 1}}\n  - {name: y, match: {a: 2}}\n"
    )
    problems = book.reload()
    assert [Path(p.file).name for p in problems] == ["b.yaml", "b.yaml"]
    assert "withdrawn" in problems[1].message
    assert [(r.name, Path(r.file).name) for r in book.rules] == [("x", "a.yaml"), ("y", "a.yaml")]


def test_rulebook_missing_directory(tmp_path: Path) -> None:
    """A missing rules_dir is one problem and no rules; its return brings the rules back."""
    rules_dir = tmp_path / "rules.d"
    rules_dir.mkdir()
    write(rules_dir, "a.yaml", "match: {a: 1}\n")
    book = RuleBook(rules_dir, SOURCES, REPORTS)
    book.reload()
    (rules_dir / "a.yaml").rename(tmp_path / "a.yaml")
    rules_dir.rmdir()
    problems = book.reload()
    assert len(problems) == 1 and problems[0].file == str(rules_dir)
    assert book.rules == () and book.version == 2
    assert len(book.reload()) == 1 and book.version == 2
    rules_dir.mkdir()
    (tmp_path / "a.yaml").rename(rules_dir / "a.yaml")
    assert book.reload() == []
    assert names(book.rules) == ["a"] and book.version == 3


# --- hostile rule files ------------------------------------------------------------------------


@pytest.mark.timeout(30)
@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_hostile_rule_file_is_a_located_problem(tmp_path: Path, book: RuleBook, kind: str) -> None:
    """A deep, alias-bomb, huge-number or oversized rule file is one FILE:LINE problem; an edit to it keeps the previous version in force."""
    hostile = HOSTILE[kind]
    write(tmp_path, "a.yaml", "match: {level: error}\n")
    assert book.reload() == []
    (tmp_path / "a.yaml").write_text(hostile.text)  # an edit that turns a good file hostile
    (tmp_path / "b.yaml").write_text(hostile.text)  # and a new file
    expected = [
        Problem(str(tmp_path / name), hostile.line, hostile.message)
        for name in ("a.yaml", "b.yaml")
    ]
    assert book.reload() == expected
    assert names(book.rules) == ["a"]
    assert check_rules(tmp_path, SOURCES, REPORTS) == expected
    assert load_rule_file(tmp_path / "b.yaml") == ([], expected[1:])


def test_oversized_rule_file_is_not_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The size limit is checked on the file's stat, before a byte of it is read."""
    path = write(tmp_path, "big.yaml", HOSTILE["oversized"].text)
    reads: list[Path] = []
    monkeypatch.setattr(READER, lambda file, limit: reads.append(file))
    assert load_rules_path(tmp_path)[1] == [Problem(str(path), 1, HOSTILE["oversized"].message)]
    assert reads == []


def test_rule_file_that_grows_past_the_limit_while_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file that was small at the stat but grew before the read is refused: no more than the limit + 1 bytes are read."""
    path = write(tmp_path, "grows.yaml", "match: {level: error}\n")
    lengths: list[int] = []

    def grow_then_read(file: Path, limit: int) -> bytes | None:
        with file.open("a") as f:
            f.write(HOSTILE["oversized"].text)
        content = read_bounded(file, limit)
        lengths.append(len(content or b""))
        return content

    monkeypatch.setattr(READER, grow_then_read)
    message = (
        "the rule file is over 1 MiB; the limit is 1 MiB: split it into several files in the "
        "rules directory"
    )
    assert load_rules_path(tmp_path)[1] == [Problem(str(path), 1, message)]
    assert lengths == [MAX_RULE_FILE_BYTES + 1]


def test_a_thousand_rules_fit_in_one_file_comfortably(tmp_path: Path) -> None:
    """1,000 rules of ~200 bytes in one file are well under the size limit and all load."""
    rules = "".join(
        f"  - name: rule-{n:04d}\n"
        f"    description: Failed logins of user {n:04d} from outside the office network\n"
        f"    match:\n"
        f"      all:\n"
        f"        - user.name: user{n:04d}\n"
        f"        - event: {{startswith: login.}}\n"
        f"        - not: {{remote_ip: {{cidr: 10.0.0.0/8}}}}\n"
        for n in range(1000)
    )
    path = write(tmp_path, "many.yaml", "rules:\n" + rules)
    assert 190_000 < path.stat().st_size < MAX_RULE_FILE_BYTES / 4
    loaded, problems = load_rules_path(tmp_path, SOURCES, REPORTS)
    assert problems == [] and len(loaded) == 1000


def test_unexpected_error_in_one_file_fails_that_file_alone(
    tmp_path: Path, book: RuleBook, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Defence in depth: an exception while loading one file is a problem for it; its previous version stays, the others load."""
    for name in ("a", "b", "c"):
        write(tmp_path, f"{name}.yaml", f"match: {{{name}: 1}}\n")
    assert book.reload() == []

    def broken_for_b(text: str, file: str) -> tuple[Any, list[Problem]]:
        if file.endswith("b.yaml"):
            raise RuntimeError("boom")
        return parse_yaml(text, file)

    monkeypatch.setattr(PARSER, broken_for_b)
    write(tmp_path, "b.yaml", "match: {b: 2}\n")
    write(tmp_path, "d.yaml", "match: {d: 1}\n")
    message = (
        "this file could not be loaded (RuntimeError: boom); its previous version stays in "
        "force; please report this as a bug in tailmail"
    )
    assert book.reload() == [Problem(str(tmp_path / "b.yaml"), 1, message)]
    assert names(book.rules) == ["a", "b", "c", "d"]
    assert [r.match({"b": 1}) for r in book.rules if r.name == "b"] == [True]


def test_stage_changes_nothing_until_published(tmp_path: Path, book: RuleBook) -> None:
    """stage() reads and compiles but leaves the rules in force and the version alone; publish() swaps them in one step."""
    write(tmp_path, "a.yaml", "match: {a: 1}\n")
    book.reload()
    rules, version = book.rules, book.version
    write(tmp_path, "b.yaml", "match: {b: 1}\n")
    write(tmp_path, "c.yaml", "match: {c: [}\n")
    staged = book.stage()
    assert book.rules is rules and book.version == version
    assert [p.file for p in book.publish(staged)] == [str(tmp_path / "c.yaml")]
    assert names(book.rules) == ["a", "b"] and book.version == version + 1
