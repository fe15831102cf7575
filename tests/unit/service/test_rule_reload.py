"""Rule reloads in the service (agent/service/service.py `Service.reload_rules`): the scan and parse run in
a worker thread, so the event loop goes on meanwhile; only the swap runs on the loop."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import structlog
from agent_proc import DEADLINE, write_config

from agent.config.load import load_config
from agent.config.yamlfile import Problem, parse_yaml
from agent.service.notify import Notifier
from agent.service.service import Service


@pytest.fixture
def service(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Service:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    (tmp_path / "rules.d").mkdir()
    (tmp_path / "rules.d" / "old.yaml").write_text("match: {level: error}\n")
    config = write_config(
        tmp_path / "config.yaml",
        {
            "state_dir": str(tmp_path / "state"),
            "rules_dir": str(tmp_path / "rules.d"),
            "sources": [{"name": "app", "path": str(tmp_path / "events.json")}],
            "reports": [
                {"name": "daily", "store": str(tmp_path / "daily.jsonl"), "to": ["a@x.org"]}
            ],
            "smtp": {"host": "127.0.0.1", "security": "none", "from": "t@x.org"},
        },
    )
    service = Service(load_config(config), Notifier())
    assert service.rulebook.reload() == []
    return service


def names(service: Service) -> list[str]:
    return [r.name for r in service.rulebook.rules]


async def test_the_loop_runs_while_a_rule_file_is_parsed(
    service: Service, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While a rule file is parsed, other tasks on the loop keep running and see the old rules; the new ones appear at once when the parse is done."""
    (tmp_path / "rules.d" / "new.yaml").write_text("match: {level: warning}\n")
    parsing, release = threading.Event(), threading.Event()
    parse_threads: list[int] = []

    def slow_parse(text: str, file: str) -> tuple[Any, list[Problem]]:
        parse_threads.append(threading.get_ident())
        parsing.set()
        # Held until the loop has shown it runs: on the loop's own thread this would stall
        # every task (and the checks below would see the reload already done).
        release.wait(DEADLINE)
        return parse_yaml(text, file)

    monkeypatch.setattr("agent.rules.load.parse_yaml", slow_parse)
    version = service.rulebook.version
    reload = asyncio.create_task(service.reload_rules())
    ticks = 0
    deadline = time.monotonic() + DEADLINE
    while not parsing.is_set() or ticks < 100:  # another task's turns while the parse is held
        assert time.monotonic() < deadline, "the parse never started"
        await asyncio.sleep(0.001)
        ticks += parsing.is_set()
        assert names(service) == ["old"] and service.rulebook.version == version
        assert not reload.done()
    release.set()
    await asyncio.wait_for(reload, DEADLINE)
    assert names(service) == ["new", "old"] and service.rulebook.version == version + 1
    assert parse_threads and threading.get_ident() not in parse_threads


async def test_a_failing_reload_keeps_the_rules_in_force(
    service: Service, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unexpected exception in a reload is logged as rules.reload_failed and leaves the rules in force; the next reload works."""

    def broken() -> None:
        raise RuntimeError("boom")

    (tmp_path / "rules.d" / "new.yaml").write_text("match: {level: warning}\n")
    stage = service.rulebook.stage
    monkeypatch.setattr(service.rulebook, "stage", broken)
    with structlog.testing.capture_logs() as logs:
        await service.reload_rules()
    assert [(e["event"], e["error"]) for e in logs] == [
        ("rules.reload_failed", "RuntimeError('boom')")
    ]
    assert names(service) == ["old"]
    monkeypatch.setattr(service.rulebook, "stage", stage)
    await service.reload_rules()
    assert names(service) == ["new", "old"]
