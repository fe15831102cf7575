"""`tailmail check`: the configuration and every rule file, and what is risky though valid."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from agent.config.load import load_config
from agent.config.model import Config
from agent.config.yamlfile import ProblemsError
from agent.core.fs import writable_by_others
from agent.rules.load import check_rules, load_rules_path


@dataclass(frozen=True, slots=True)
class Checked:
    config: Config
    rules: int  # rule files' rules in force
    warnings: list[str]  # FILE:LINE: warning: ...


def check(path: Path) -> Checked:
    """Validate; raise ProblemsError with every problem of the config or the rule files."""
    config = load_config(path)
    sources = [s.name for s in config.sources]
    reports = [r.name for r in config.reports]
    problems = check_rules(config.rules_dir, sources, reports)
    if problems:
        raise ProblemsError(problems)
    rules, _ = load_rules_path(config.rules_dir, sources, reports)
    return Checked(config, len(rules), shared_directories(config))


def shared_directories(config: Config) -> list[str]:
    """Warnings for the directories tailmail writes in that other users can write too: there
    they can plant names. tailmail refuses what it did not make, but it is better not to ask."""
    advice = (
        "another user could plant files there (tailmail refuses any file it did not make); "
        "give tailmail a directory of its own: chmod 0750"
    )
    found = []
    why = writable_by_others(config.state_dir)
    if why:
        found.append(
            f"{config.path}:{config.state_dir_line}: warning: state_dir {config.state_dir} {why}; {advice}"
        )
    for report in config.reports:
        why = writable_by_others(report.store.parent)
        if why:
            found.append(
                f"{config.path}:{report.store_line}: warning: the store {report.store} of report "
                f"{report.name}: its directory {why}; {advice}"
            )
    return found
