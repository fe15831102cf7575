"""The pipeline's hot loop and commit with outputs of the test's own (in memory): which lines go
where, that outputs are durable before the checkpoint counts them, that a failing output commits
nothing, and that what an output has to say reaches the period's figures. Fast: no store files."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from agent.config.model import Config, ReportConfig, SmtpConfig, SourceConfig
from agent.pipeline.checkpoint import load_checkpoint
from agent.pipeline.pipeline import Pipeline
from agent.rules import RuleBook

NOW = datetime(2026, 12, 4, 12, tzinfo=UTC)


class MemoryOutput:
    """An Output that keeps its lines in memory and notes when they became durable."""

    def __init__(self, report: ReportConfig, committed: int | None, world: World) -> None:
        self.report = report
        self.world = world
        self.durable: list[bytes] = []
        self.pending: list[bytes] = []
        self.written: list[bytes] = []
        self.size = committed or 0
        self.fail = False
        self.told: list[tuple[str, str]] = []

    @property
    def name(self) -> str:
        return self.report.name

    def open(self) -> None:
        pass

    def accept(self, lines: list[bytes]) -> None:
        self.pending.extend(lines)

    def write(self) -> None:
        self.written.extend(self.pending)
        self.size += sum(len(x) + 1 for x in self.pending)
        self.pending.clear()

    def flush(self) -> None:
        if self.fail:
            raise OSError(28, "No space left on device")
        self.write()
        # The checkpoint on disk must not count these lines yet.
        self.world.flushed_at.append(self.world.committed_lines())
        self.durable = list(self.written)

    def notices(self) -> list[tuple[str, str]]:
        told, self.told = self.told, []
        return told

    def close(self) -> None:
        pass


class World:
    def __init__(self, tmp_path: Path) -> None:
        for sub in ("rules.d", "logs"):
            (tmp_path / sub).mkdir()
        (tmp_path / "rules.d" / "rules.yaml").write_text(
            "rules:\n"
            "  - {name: errors, match: {level: error}, reports: [ops]}\n"
            "  - {name: logins, match: {event: login}, reports: [security]}\n"
            "  - {name: all-fatal, match: {level: fatal}}\n"
        )
        self.log = tmp_path / "logs" / "app.json"
        self.config = Config(
            path=tmp_path / "config.yaml",
            state_dir=tmp_path / "state",
            rules_dir=tmp_path / "rules.d",
            sources=(SourceConfig("app", str(tmp_path / "logs" / "*.json"), "beginning"),),
            reports=tuple(
                ReportConfig(name=n, store=tmp_path / f"{n}.jsonl", to=("o@example.com",))
                for n in ("ops", "security")
            ),
            smtp=SmtpConfig(host="127.0.0.1", from_addr="t@example.com", security="none"),
        )
        self.outputs: dict[str, MemoryOutput] = {}
        self.flushed_at: list[int] = []
        book = RuleBook(self.config.rules_dir, ["app"], ["ops", "security"])
        assert book.reload() == []
        self.pipeline = Pipeline(self.config, book, clock=NOW.timestamp, make_output=self.make)
        self.pipeline.open()

    def make(self, report: ReportConfig, committed: int | None) -> MemoryOutput:
        self.outputs[report.name] = MemoryOutput(report, committed, self)
        return self.outputs[report.name]

    def write(self, *events: dict[str, Any]) -> list[bytes]:
        lines = [orjson.dumps(e) for e in events]
        with self.log.open("ab") as f:
            f.write(b"".join(line + b"\n" for line in lines))
        self.pipeline.rescan()
        return lines

    def committed_lines(self) -> int:
        """Lines of the source the checkpoint on disk counts as read."""
        files = load_checkpoint(self.config.state_dir).files.values()
        offset = max((f.offset for f in files), default=0)
        return self.log.read_bytes()[:offset].count(b"\n") if self.log.exists() else 0


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path)


def test_each_line_goes_to_the_outputs_its_rules_name(world: World) -> None:
    """A rule naming a report feeds its output only; one naming none feeds every output; a line
    several rules select goes to an output once."""
    error, login, fatal, other = world.write(
        {"level": "error"}, {"event": "login"}, {"level": "fatal"}, {"level": "info"}
    )
    both = world.write({"level": "error", "event": "login"})[0]
    while world.pipeline.pump():
        pass
    assert world.outputs["ops"].durable == [error, fatal, both]
    assert world.outputs["security"].durable == [login, fatal, both]
    assert other not in world.outputs["ops"].durable + world.outputs["security"].durable


def test_outputs_are_durable_before_the_checkpoint_counts_their_lines(world: World) -> None:
    """At every flush the checkpoint on disk still counts only what was committed before."""
    before = world.committed_lines()
    world.write({"level": "error"}, {"level": "info"})
    world.pipeline.pump()
    assert world.flushed_at and all(n == before for n in world.flushed_at[-2:])
    assert world.committed_lines() == before + 2


def test_a_failing_output_commits_nothing_and_loses_nothing(world: World) -> None:
    """A flush that fails (a full disk) raises, and the checkpoint keeps the old offsets; once
    it works, the lines are committed, each once."""
    before = world.committed_lines()
    world.outputs["ops"].fail = True
    error = world.write({"level": "error"})[0]
    with pytest.raises(OSError):
        world.pipeline.pump()
    assert world.committed_lines() == before
    assert world.pipeline.trouble == {
        "ops": "cannot write the store of report ops: No space left on device"
    }
    world.outputs["ops"].fail = False
    world.pipeline.commit()
    assert world.committed_lines() == before + 1
    assert world.outputs["ops"].durable.count(error) == 1
    assert world.pipeline.trouble == {}


def test_what_an_output_says_reaches_the_periods_problems(world: World) -> None:
    """An output's notices become problems of its report's period, once."""
    world.outputs["security"].told.append(("store", "the store was cut by hand"))
    world.write({"event": "login"})
    world.pipeline.pump()
    world.pipeline.commit()
    problems = world.pipeline.checkpoint.reports["security"].stats.problems
    assert problems.count({"kind": "store", "text": "the store was cut by hand"}) == 1
    assert not [
        p for p in world.pipeline.checkpoint.reports["ops"].stats.problems if p["kind"] == "store"
    ]
