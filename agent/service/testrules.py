"""`tailmail test-rules`: which rules select which of the given events; nothing is changed."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from agent.config.model import Config
from agent.config.yamlfile import ProblemsError
from agent.core.periods import system_timezone
from agent.rules import Rule, load_rules_path
from agent.tail.eventtime import time_reader
from agent.tail.lines import classify

Line = tuple[str, int, bytes]  # file name, line number, the line without its newline


class NoSuchSource(Exception):
    """--source names no source of the config."""


@dataclass
class RuleMatches:
    name: str
    count: int = 0
    firsts: list[str] = field(default_factory=list)  # "FILE:LINE: the line", the first few


@dataclass
class Tested:
    total: int = 0
    skipped: int = 0
    selected: int = 0  # lines selected by at least one rule
    rules: list[RuleMatches] = field(default_factory=list)


def rules_to_test(
    config: Config | None, rules_path: Path, source: str | None
) -> tuple[list[Rule], str | None]:
    """The enabled rules of `rules_path` (only those of `source`, with its time field)."""
    sources = [s.name for s in config.sources] if config else None
    reports = [r.name for r in config.reports] if config else None
    rules, problems = load_rules_path(rules_path, sources, reports)
    if problems:
        raise ProblemsError(problems)
    rules = [r for r in rules if r.enabled]
    if source is None:
        return rules, None
    if config is None or source not in (sources or []):
        raise NoSuchSource(f"no source named {source!r} in the config")
    rules = [r for r in rules if r.sources is None or source in r.sources]
    return rules, next(s.time_field for s in config.sources if s.name == source)


def try_rules(
    rules: list[Rule],
    time_field: str | None,
    lines: Iterable[Line],
    show: int,
    on_skipped: Callable[[str, int, str], None],
) -> Tested:
    """Run `rules` on `lines` as the service would; `on_skipped(file, line, reason)` for each
    bad line. Raises OSError when the input cannot be read."""
    # Events without a time (or without a source to say where it is) are timed by their
    # arrival, as the service times them: now.
    at = time_reader(time_field, system_timezone(), lambda: datetime.now(UTC))
    result = Tested(rules=[RuleMatches(r.name) for r in rules])
    for name, number, line in lines:
        result.total += 1
        reason, event = classify(line)
        if reason:
            result.skipped += 1
            on_skipped(name, number, reason)
            continue
        hit = False
        for rule, matches in zip(rules, result.rules, strict=True):
            if not rule.selects(event, at):
                continue
            hit = True
            matches.count += 1
            if len(matches.firsts) < show:
                matches.firsts.append(f"{name}:{number}: {line.decode('utf-8', 'replace')[:200]}")
        result.selected += hit
    return result
