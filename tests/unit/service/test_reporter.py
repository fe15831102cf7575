"""The reporter (agent/service/reporter.py) in-process: real files, a real pipeline and outbox,
the real event loop and worker thread. A report is built off the loop; one that cannot be built
stops nothing, is retried, and is said everywhere; a period whose file went is still reported."""

from __future__ import annotations

import asyncio
import email
import email.policy
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

import agent.service.reporter as reporter_module
from agent.config.model import Config, ReportConfig, SmtpConfig, SourceConfig
from agent.core.periods import system_timezone
from agent.deliver.outbox import Outbox
from agent.pipeline.pipeline import Pipeline
from agent.rules.load import RuleBook
from agent.service.reporter import Reporter, ReportJob

NOW = datetime(2026, 12, 4, 12, tzinfo=UTC)


def plain(path: Path) -> str:
    """The plain-text part of a queued message, its lines joined."""
    msg = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
    assert isinstance(msg, email.message.EmailMessage)
    part = msg.get_body(preferencelist=("plain",))
    assert part is not None
    return " ".join(part.get_content().split())


def make(tmp_path: Path, **report: Any) -> Config:
    for sub in ("rules.d", "logs"):
        (tmp_path / sub).mkdir(exist_ok=True)
    (tmp_path / "rules.d" / "all.yaml").write_text("match:\n  event: {exists: true}\n")
    return Config(
        path=tmp_path / "config.yaml",
        state_dir=tmp_path / "state",
        rules_dir=tmp_path / "rules.d",
        sources=(SourceConfig("app", str(tmp_path / "logs" / "*.json"), "beginning"),),
        reports=(
            ReportConfig(
                name="daily",
                store=tmp_path / "store" / "daily.jsonl",
                to=("ops@example.com",),
                timezone=system_timezone(),
                **report,
            ),
        ),
        smtp=SmtpConfig(host="127.0.0.1", from_addr="t@example.com", security="none"),
    )


class World:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.rulebook = RuleBook(config.rules_dir, ["app"], ["daily"])
        assert self.rulebook.reload() == []
        self.outbox = Outbox(config.state_dir / "outbox")
        self.queued = 0
        self.pipeline = Pipeline(
            config, self.rulebook, clock=NOW.timestamp, id_taken=self.outbox.contains
        )
        self.pipeline.open()
        self.seconds = 0.0  # the reporter's monotonic clock, moved by the test
        self.reporter = Reporter(
            config, self.pipeline, self.rulebook, self.outbox, self._queued, lambda: self.seconds
        )

    def _queued(self) -> None:
        self.queued += 1

    def write(self, *events: dict[str, Any]) -> None:
        with (Path(self.config.sources[0].path).parent / "a.json").open("ab") as f:
            f.write(b"".join(orjson.dumps(e) + b"\n" for e in events))
        self.pipeline.rescan()
        while self.pipeline.pump():
            pass

    def close_period(self) -> str:
        return self.pipeline.rotate(self.config.reports[0]).outbox_id


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = World(make(tmp_path))
    yield w
    w.pipeline.close()


async def test_a_report_is_built_off_the_event_loop(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While a report is built (held here until released), the loop runs other tasks: a
    big store's report no longer stops tailing, the control socket or the watchdog."""
    world.write({"event": "x"})
    outbox_id = world.close_period()
    building, release = threading.Event(), threading.Event()
    build = reporter_module.build_message

    def slow_build(job: ReportJob) -> bytes:
        building.set()
        assert release.wait(30)
        return build(job)

    monkeypatch.setattr(reporter_module, "build_message", slow_build)
    task = asyncio.create_task(world.reporter.report_due())
    assert await asyncio.to_thread(building.wait, 30)
    turns = 0
    for _ in range(100):  # the loop turns while the thread builds
        await asyncio.sleep(0)
        turns += 1
    world.write({"event": "y"})  # and the pipeline reads meanwhile
    assert turns == 100 and not task.done()
    release.set()
    assert await asyncio.wait_for(task, 30) is None
    assert world.outbox.contains(outbox_id)
    assert world.pipeline.closed == ()
    assert world.queued == 1


async def test_a_report_that_cannot_be_built_is_retried_said_and_stops_nothing(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A build that raises (a bug): logged with its traceback, the period stays closed with its
    error (committed), the reporter says when it tries again, reading goes on, the next report
    names the failure; once the build works, the report is queued."""
    world.write({"event": "x"})
    first = world.close_period()
    build = reporter_module.build_message
    broken = {first}

    def flaky(job: ReportJob) -> bytes:
        if job.rotation.outbox_id in broken:
            raise ValueError("invalid literal for int() with base 10: '²'")
        return build(job)

    monkeypatch.setattr(reporter_module, "build_message", flaky)
    delay = await world.reporter.report_due()
    assert delay is not None and 0 < delay <= reporter_module.RETRY_FIRST
    assert "ValueError: invalid literal" in world.reporter.trouble[first]
    [closed] = world.pipeline.closed
    assert closed.attempts == 1 and "ValueError" in closed.error
    world.write({"event": "y"})  # reading goes on
    world.pipeline.commit()
    assert world.pipeline.checkpoint.closed[0].attempts == 1
    second = world.close_period()
    await world.reporter.report_due()  # the second report is built; the first waits its turn
    assert world.outbox.contains(second) and not world.outbox.contains(first)
    [entry] = world.outbox.entries()
    assert f"the report {first} could not be built" in plain(entry.path)
    broken.clear()
    world.seconds += delay  # its backoff is over
    assert await world.reporter.report_due() is None
    assert world.outbox.contains(first)
    assert world.reporter.trouble == {}
    assert world.pipeline.closed == ()


async def test_a_closed_period_whose_file_was_removed_by_hand_is_reported_red(
    world: World,
) -> None:
    """The rotated file of a closed period deleted before its report is built: the report is
    built all the same, red, saying the file is missing, and queued."""
    world.write({"event": "x"}, {"event": "y"})
    outbox_id = world.close_period()
    world.pipeline.closed[0].rotated.unlink()
    assert await world.reporter.report_due() is None
    [entry] = world.outbox.entries()
    assert entry.id == outbox_id
    msg = email.message_from_bytes(entry.path.read_bytes(), policy=email.policy.default)
    assert msg["X-Tailmail-Status"] == "red"
    assert "the store file is missing" in plain(entry.path)
