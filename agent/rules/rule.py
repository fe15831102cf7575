"""A rule, and the rules of one parsed rule file.

A rule is a name, where it applies (`sources:`, `reports:`), a condition (`match:`) and an
optional time window (`when:`), parsed once into a tree (`agent.rules.parse`). Everything the
agent runs is derived from that tree when the `Rule` is made, so nothing can disagree with it:
the predicate, the time test, the index key and residual, the fields it reads.

`Rule.selects` is the one definition of "this rule selects this event"; the pipeline's indexed
path (candidates, residual, `when`) means exactly the same (tests/unit/rules/test_routes.py checks it on
random rules and events).

Every mistake is a `Problem` with the line of the offending key or item; a file with any problem
yields no rule.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

from agent.config.yamlfile import Map, Problem, Seq
from agent.rules.condition import Condition, Window, paths
from agent.rules.fields import Event
from agent.rules.keys import Key, residual, rule_key
from agent.rules.parse import Parser, describe, suggest
from agent.rules.predicates import Predicate, TimeTest, predicate, time_test

# `event -> its time`, or None when it cannot be known (see Rule.selects).
TimeOf = Callable[[Event], datetime | None]


@dataclass(frozen=True, slots=True, eq=False)
class Rule:
    """One rule: what the operator wrote, and what is derived from it once, when it is made.

    `sources`/`reports` restrict where it applies (None: everywhere). A disabled rule is
    loaded and checked like the others; `RuleBook.rules` leaves it out.
    """

    name: str
    description: str
    file: str
    line: int
    name_line: int  # of `name:`, or of the rule when it is named after its file
    enabled: bool
    sources: frozenset[str] | None  # None: all sources
    reports: frozenset[str] | None  # None: all reports
    condition: Condition
    window: Window | None = None

    # Derived from `condition` and `window` in __post_init__.
    match: Predicate = field(init=False, repr=False)  # the condition; called per event
    when: TimeTest | None = field(init=False, repr=False)  # the window; an aware event time
    fields: tuple[str, ...] = field(init=False)  # paths the condition reads, first-use order
    key: Key | None = field(init=False)  # strings one of which it requires (agent.rules.keys)
    # What a candidate found through `key` must still pass: `match` without the part the key
    # stands for; None when that was all of it. Used only with a key.
    residual: Predicate | None = field(init=False, repr=False)

    def __post_init__(self) -> None:
        derive = object.__setattr__  # frozen: set once, here
        match = predicate(self.condition)
        derive(self, "match", match)
        derive(self, "when", time_test(self.window) if self.window is not None else None)
        derive(self, "fields", paths(self.condition))
        key = rule_key(self.condition)
        derive(self, "key", key)
        rest = residual(self.condition, key) if key is not None else None
        if rest is None:
            derive(self, "residual", None)
        elif rest is self.condition:  # nothing taken out: `match` itself, not compiled twice
            derive(self, "residual", match)
        else:
            derive(self, "residual", predicate(rest))

    @property
    def test(self) -> Predicate | None:
        """What the router's candidate must pass: the residual if keyed, else the match."""
        return self.residual if self.key is not None else self.match

    def selects(self, event: Event, at: TimeOf) -> bool:
        """Whether this rule selects `event`: its condition holds, and its window at `at(event)`.

        `at` is called only when the window must be checked, so an event time is parsed only
        for an event that meets the condition of a rule with a window. It returns None when the
        time cannot be known (a stored line does not carry its arrival time): the window is then
        taken to have held, as it did when the event was selected.
        """
        if not self.match(event):
            return False
        when = self.when
        if when is None:
            return True
        t = at(event)
        return t is None or when(t)


RULE_KEYS: Final = ("name", "description", "enabled", "sources", "reports", "match", "when")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")  # fullmatch: `$` allows a final newline
_NAME_RULE = "may use only letters, digits, '.', '_' and '-' (and start with a letter or digit)"


def _names(p: Parser, m: Map, key: str, known: frozenset[str] | None) -> frozenset[str] | None:
    """`sources:`/`reports:`: a name or a list of names, each known when `known` is given."""
    if key not in m:
        return None
    value, line = m[key], m.line_of(key)
    entries = (
        [(x, value.line_of(i)) for i, x in enumerate(value)]
        if isinstance(value, Seq)
        else [(value, line)]
    )
    what = key[:-1]
    if not entries:
        p.problem(
            line, f"{key}: [] names no {what}; leave {key} out to apply the rule to every {what}"
        )
        return None
    names: set[str] = set()
    for entry, entry_line in entries:
        if not isinstance(entry, str):
            p.problem(entry_line, f"{key} must list {what} names, not {describe(entry)}")
        elif known is not None and entry not in known:
            listed = ", ".join(sorted(known)) if known else f"none: the configuration has no {key}"
            p.problem(
                entry_line,
                f"unknown {what} {entry!r}{suggest(entry, known)}; the configured {key} are: {listed}",
            )
        names.add(str(entry))
    return frozenset(names)


def _rule(
    file: str,
    problems: list[Problem],
    m: Map,
    default_name: str | None,
    source_names: frozenset[str] | None,
    report_names: frozenset[str] | None,
) -> Rule | None:
    """One rule mapping -> its Rule, or None with problems recorded."""
    p = Parser(file, problems)
    before = len(problems)
    for key in m:
        if key not in RULE_KEYS:
            p.problem(
                m.line_of(key),
                f"unknown key {key!r} in a rule{suggest(key, RULE_KEYS)}; known keys: {', '.join(RULE_KEYS)}",
            )
    name, name_line = default_name, m.line
    if "name" in m:
        value, name_line = m["name"], m.line_of("name")
        if isinstance(value, str | int) and not isinstance(value, bool):
            name = str(value)
            if not _NAME.fullmatch(name):
                p.problem(name_line, f"rule name {name!r} {_NAME_RULE}")
        else:
            p.problem(name_line, f"name must be a string, not {describe(value)}")
    elif name is None:
        p.problem(
            m.line, "this file holds several rules, so each needs a `name:` (unique across files)"
        )
    elif not _NAME.fullmatch(name):
        p.problem(
            m.line,
            f"the rule is named after its file, {name!r}, but a rule name {_NAME_RULE}; "
            "add `name:` or rename the file",
        )
    description = m.get("description")
    if description is None:
        description = ""
    elif not isinstance(description, str):
        p.problem(
            m.line_of("description"), f"description must be text, not {describe(description)}"
        )
    enabled = m.get("enabled", True)
    if not isinstance(enabled, bool):
        p.problem(m.line_of("enabled"), f"enabled must be true or false, not {describe(enabled)}")
    sources = _names(p, m, "sources", source_names)
    reports = _names(p, m, "reports", report_names)
    condition: Condition | None = None
    if "match" not in m:
        p.problem(m.line, "missing required key 'match': the condition that selects events")
    elif m["match"] is None:
        p.problem(m.line_of("match"), "match is empty; give a condition such as `level: error`")
    else:
        condition = p.condition(m["match"], m.line_of("match"), "match")
    window = None
    if m.get("when") is not None:
        window = p.window(m["when"], m.line_of("when"))
    if len(problems) > before or condition is None or name is None:
        return None
    rule = Rule(
        name=name,
        description=str(description),
        file=file,
        line=m.line,
        name_line=name_line,
        enabled=bool(enabled),
        sources=sources,
        reports=reports,
        condition=condition,
        window=window,
    )
    return rule


def parse_rules(
    data: Any,
    file: str,
    default_name: str,
    *,
    source_names: Collection[str] | None = None,
    report_names: Collection[str] | None = None,
) -> tuple[list[Rule], list[Problem]]:
    """Validate and compile the rules of one parsed YAML file (from `parse_yaml`).

    With any problem, no rule is returned. Names in `sources:`/`reports:` are checked only when
    the configured names are given.
    """
    sources = frozenset(source_names) if source_names is not None else None
    reports = frozenset(report_names) if report_names is not None else None
    problems: list[Problem] = []
    what = "one rule (a mapping with at least `match:`), or `rules:` with a list of rules"
    if data is None:
        # An empty file is refused rather than read as "no rules": an editor that truncates
        # before writing must not withdraw the file's rules in between.
        return [], [Problem(file, 1, f"the file is empty; it must hold {what}")]
    if not isinstance(data, Map):
        line = data.line if isinstance(data, Seq) else 1
        return [], [Problem(file, line, f"a rule file must hold {what}, not {describe(data)}")]
    entries: list[tuple[Any, int]]
    if "rules" in data:
        for key in data:
            if key != "rules":
                problems.append(
                    Problem(
                        file,
                        data.line_of(key),
                        f"{key!r} cannot stand next to `rules:`; move it into the rules of the list",
                    )
                )
        items = data["rules"]
        if not isinstance(items, Seq):
            problems.append(
                Problem(
                    file,
                    data.line_of("rules"),
                    f"rules must be a list of rules, not {describe(items)}",
                )
            )
            return [], problems
        entries = [(item, items.line_of(i)) for i, item in enumerate(items)]
    else:
        entries = [(data, data.line)]
    name_lines: dict[str, int] = {}
    rules: list[Rule] = []
    for index, (item, line) in enumerate(entries):
        if not isinstance(item, Map):
            problems.append(
                Problem(
                    file,
                    line,
                    f"rule {index + 1} must be a mapping with at least `match:`, not {describe(item)}",
                )
            )
            continue
        rule = _rule(
            file, problems, item, default_name if len(entries) == 1 else None, sources, reports
        )
        if rule is None:
            continue
        if rule.name in name_lines:
            problems.append(
                Problem(
                    file,
                    rule.name_line,
                    f"duplicate rule name {rule.name!r} (first at line {name_lines[rule.name]}); "
                    "rule names must be unique",
                )
            )
            continue
        name_lines[rule.name] = rule.name_line
        rules.append(rule)
    if problems:
        return [], sorted(problems, key=lambda p: p.line)
    return rules, problems
