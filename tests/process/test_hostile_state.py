"""Hostile input and damaged state against the real `tailmail run`, `status`, `rotate`, `check`:
file names that are not UTF-8, event times at the edge of the calendar, names with a newline,
damaged checkpoints and outbox entries, a full state directory, a clock that steps back.

Each would have put the service in a crash loop (exit 1 at every start) or lost a report
without a word; now it is handled, said, and every event is stored once.
"""

from __future__ import annotations

import contextlib
import email
import email.policy
import os
import re
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from agent_proc import Agent, tailmail, wait_for, write_config
from hostile_ground import append, event_lines, log_events, need_root
from pipeline_harness import ReportingPipeline
from rotation_world import make_config, stored_lines

from agent.config.load import load_config
from agent.deliver import Outbox
from agent.rules.load import RuleBook
from agent.tail.eventtime import event_time, time_reader


def start(config: Path, tmp_path: Path, agents: list[Agent]) -> Agent:
    agent = Agent(config, tmp_path)
    agents.append(agent)
    return agent.wait_ready()


def plain_text(eml: Path) -> str:
    """The plain-text part of a queued report, its lines joined: phrases are found whole."""
    msg = email.message_from_bytes(eml.read_bytes(), policy=email.policy.default)
    assert isinstance(msg, email.message.EmailMessage)
    part = msg.get_body(preferencelist=("plain",))
    assert part is not None
    return " ".join(part.get_content().split())


def no_traceback(*outputs: str) -> None:
    for output in outputs:
        assert "Traceback" not in output, output


# ---- 3: file names that are not UTF-8 ---------------------------------------------------------


def test_a_file_name_that_is_not_utf8_is_read_checkpointed_and_shown(
    tmp_path: Path, agents: list[Agent], closed_port: int
) -> None:
    """`bad\\xff.json` in a source directory: its events are stored, the checkpoint keeps its
    name's bytes (a restart resumes it, nothing twice), and status shows it escaped."""
    config = make_config(tmp_path, closed_port, path="*.json")
    bad = os.fsencode(tmp_path / "logs") + b"/bad\xff.json"
    with open(bad, "wb") as f:
        f.write(event_lines(10))
    agent = start(config, tmp_path, agents)
    wait_for(lambda: len(stored_lines(tmp_path)) == 10, "the 10 events stored")
    assert agent.stop() == 0
    state = orjson.loads((tmp_path / "state" / "checkpoint.json").read_bytes())
    [entry] = state["files"].values()
    assert bytes.fromhex(entry["path_bytes"]) == bad
    assert entry["path"].endswith("bad\\xff.json")
    with open(bad, "ab") as f:
        f.write(event_lines(5, start=10))
    again = start(config, tmp_path, agents)
    wait_for(lambda: len(stored_lines(tmp_path)) == 15, "the 5 new events stored")
    assert stored_lines(tmp_path) == event_lines(15).splitlines()
    status = tailmail("status", "-c", str(config))
    assert status.returncode == 0, status.stderr
    assert "bad\\xff.json: offset" in status.stdout
    assert again.stop() == 0
    no_traceback(again.log(), status.stderr)


# ---- 4: event times at the edge of the calendar ------------------------------------------------

EDGE_TIMES: list[Any] = [
    "9999-12-31T23:59:59-14:00",
    "0001-01-01T00:00:00+14:00",
    "9999-12-31T23:59:59.999999",
    "0001-01-01",
    253402300799999,  # 9999-12-31T23:59:59.999Z in milliseconds
    -62135596800000,  # 0001-01-01T00:00:00Z in milliseconds
    1e300,
]


def test_event_times_at_the_edge_of_the_calendar_count_as_absent() -> None:
    """Times that parse but cannot be converted to every zone are no event time (arrival)."""
    arrival = datetime(2026, 12, 4, 12, tzinfo=UTC)
    read = time_reader("ts", UTC, lambda: arrival)
    for value in EDGE_TIMES:
        assert read({"ts": value}) == arrival, value
        assert event_time(value) is None, value
    assert read({"ts": "2026-12-04T10:00:00+01:00"}) == datetime(2026, 12, 4, 9, tzinfo=UTC)


def test_events_at_the_edge_of_the_calendar_are_stored_and_reported(
    tmp_path: Path, agents: list[Agent], closed_port: int
) -> None:
    """Events whose time is at the edge of the calendar: stored, the service runs on, and the
    report is built with figures that add up (they crashed the hour chart at every start)."""
    config = make_config(tmp_path, closed_port, time_field="ts")
    log = tmp_path / "logs" / "events.json"
    lines = [orjson.dumps({"kind": "event", "seq": i, "ts": t}) for i, t in enumerate(EDGE_TIMES)]
    log.write_bytes(b"\n".join(lines) + b"\n")
    agent = start(config, tmp_path, agents)
    wait_for(lambda: len(stored_lines(tmp_path)) == len(lines), "every edge event stored")
    rotate = tailmail("rotate", "-c", str(config))
    assert rotate.returncode == 0, rotate.stderr
    [eml] = (tmp_path / "state" / "outbox").glob("*.eml")
    msg = email.message_from_bytes(eml.read_bytes(), policy=email.policy.default)
    assert msg["X-Tailmail-Status"] == "green"
    assert f"{len(lines)} events selected" in str(msg["Subject"])
    assert agent.proc.poll() is None
    assert agent.stop() == 0
    no_traceback(agent.log())


# ---- 5: names that end in a newline -------------------------------------------------------------


def test_names_with_a_trailing_newline_are_refused_by_check(
    tmp_path: Path, closed_port: int
) -> None:
    """A report, source or rule name ending in a newline (a `$` matches before it) is a located
    problem of `check`, not a rotation that raises after the store was renamed."""
    config = make_config(tmp_path, closed_port)
    document = load_yaml_plain(config)
    document["reports"][0]["name"] = "daily\n"
    document["sources"][0]["name"] = "app\n"
    write_config(config, document)
    (tmp_path / "rules.d" / "newline.yaml").write_text('name: "events2\\n"\nmatch: {kind: x}\n')
    result = tailmail("check", "-c", str(config))
    assert result.returncode == 2
    assert "report name 'daily\\n' may use only letters" in result.stderr
    assert "source name 'app\\n' may use only letters" in result.stderr
    no_traceback(result.stderr)
    document["reports"][0]["name"] = "daily"
    document["sources"][0]["name"] = "app"
    write_config(config, document)
    result = tailmail("check", "-c", str(config))
    assert result.returncode == 2
    assert f"{tmp_path / 'rules.d' / 'newline.yaml'}:1: rule name 'events2\\n' may use only" in (
        result.stderr
    )


def load_yaml_plain(path: Path) -> dict[str, Any]:
    import yaml

    data: dict[str, Any] = yaml.safe_load(path.read_text())
    return data


# ---- 6: damaged state ---------------------------------------------------------------------------


def run_and_stop(config: Path, tmp_path: Path, agents: list[Agent], count: int) -> None:
    agent = start(config, tmp_path, agents)
    wait_for(lambda: len(stored_lines(tmp_path)) == count, f"{count} events stored")
    assert agent.stop() == 0


def test_a_damaged_checkpoint_falls_back_to_the_previous_one_and_stores_each_line_once(
    tmp_path: Path, agents: list[Agent], closed_port: int
) -> None:
    """checkpoint.json cut in half while stopped: the agent starts from the previous checkpoint,
    cuts the store back to it, reads the lines since again (each stored once), keeps the damaged
    file for a look, and the period's report says what happened."""
    config = make_config(tmp_path, closed_port)
    log = tmp_path / "logs" / "events.json"
    log.write_bytes(event_lines(10))
    agent = start(config, tmp_path, agents)
    wait_for(lambda: len(stored_lines(tmp_path)) == 10, "10 stored")
    append(log, event_lines(10, start=10))
    wait_for(lambda: len(stored_lines(tmp_path)) == 20, "20 stored")
    assert agent.stop() == 0
    state = tmp_path / "state"
    assert (state / "checkpoint.prev.json").exists()
    data = (state / "checkpoint.json").read_bytes()
    (state / "checkpoint.json").write_bytes(data[: len(data) // 2])
    append(log, event_lines(10, start=20))
    again = start(config, tmp_path, agents)
    wait_for(lambda: len(stored_lines(tmp_path)) >= 30, "30 stored")
    assert [r["damage"] for r in log_events(again.log(), "state.checkpoint_recovered")]
    assert stored_lines(tmp_path) == event_lines(30).splitlines()
    assert (state / "checkpoint.damaged.json").read_bytes() == data[: len(data) // 2]
    rotate = tailmail("rotate", "-c", str(config))
    assert rotate.returncode == 0, rotate.stderr
    [eml] = (state / "outbox").glob("*.eml")
    text = plain_text(eml)
    # (the long path itself may be wrapped anywhere)
    assert "is damaged (not valid JSON" in text and "went back to the checkpoint before it" in text
    assert again.stop() == 0
    no_traceback(again.log())


@pytest.mark.parametrize(
    ("content", "said"),
    [
        (b"[1]", "Expected `object`, got `array`"),
        (b'{"files": {"app:1:2": {"offset": "a"}}}', "at `$.files[...].offset`"),
        (
            b'{"version": 1, "reports": {"daily": {"store_size": 0, "stats": {"start": "x"}}}}',
            "'x'",
        ),
        (b"", "not valid JSON"),
    ],
    ids=["array", "wrong-shape", "bad-time", "empty"],
)
def test_a_damaged_checkpoint_without_a_previous_one_is_exit_2_with_a_sentence(
    tmp_path: Path, closed_port: int, content: bytes, said: str
) -> None:
    """No usable checkpoint at all: run and rotate exit 2 (systemd does not restart that) with
    a sentence naming the file and what to do; status shows it. No traceback anywhere."""
    config = make_config(tmp_path, closed_port)
    state = tmp_path / "state"
    state.mkdir()
    (state / "checkpoint.json").write_bytes(content)
    run = tailmail("run", "-c", str(config))
    assert run.returncode == 2, run.stderr
    assert f"{state / 'checkpoint.json'} is damaged" in run.stderr and said in run.stderr
    assert "Move it aside" in run.stderr
    rotate = tailmail("rotate", "-c", str(config))
    assert rotate.returncode == 2 and "is damaged" in rotate.stderr
    status = tailmail("status", "-c", str(config))
    assert status.returncode == 0, status.stderr
    assert "state: " in status.stdout and "is damaged" in status.stdout
    no_traceback(run.stderr, rotate.stderr, status.stderr)
    assert (state / "checkpoint.json").read_bytes() == content, "left as it was, for a look"


def test_a_damaged_outbox_entry_moves_to_failed_with_its_reason(
    tmp_path: Path, agents: list[Agent], closed_port: int
) -> None:
    """A queued entry whose meta has the wrong shape: status (read-only) counts it damaged; the
    service moves it to failed/ with the reason and the original meta, and runs on."""
    config = make_config(tmp_path, closed_port)
    outbox = tmp_path / "state" / "outbox"
    outbox.mkdir(parents=True)
    (outbox / "daily-20261201T000000Z.eml").write_bytes(b"Subject: x\r\n\r\nbody\r\n")
    (outbox / "daily-20261201T000000Z.json").write_bytes(b'{"recipients": "ops@example.com"}')
    status = tailmail("status", "-c", str(config))
    assert status.returncode == 0, status.stderr
    assert "1 failed (1 damaged)" in status.stdout
    assert (outbox / "daily-20261201T000000Z.json").exists(), "status moves nothing"
    agent = start(config, tmp_path, agents)
    failed = outbox / "failed"
    wait_for(lambda: (failed / "daily-20261201T000000Z.json").exists(), "the entry in failed/")
    meta = orjson.loads((failed / "daily-20261201T000000Z.json").read_bytes())
    assert "Expected `array`, got `str`" in meta["damaged"]
    assert (failed / "daily-20261201T000000Z.json.damaged").read_bytes() == (
        b'{"recipients": "ops@example.com"}'
    )
    assert (failed / "daily-20261201T000000Z.eml").exists()
    assert not (outbox / "daily-20261201T000000Z.json").exists()
    status = tailmail("status", "-c", str(config))
    assert "1 failed (1 damaged)" in status.stdout
    assert log_events(agent.log(), "outbox.damaged_entry")
    assert agent.stop() == 0
    no_traceback(agent.log(), status.stderr)


# ---- 9: report ids when the clock steps back -----------------------------------------------------


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now.timestamp()


def test_a_clock_that_steps_back_and_forth_never_reuses_a_report_id(
    tmp_path: Path, closed_port: int
) -> None:
    """The clock runs a day ahead, is stepped back, then forward past the boundary, with forced
    rotations in between: every period gets its own id and its own queued report; none is
    dropped as "already queued"."""
    config = load_config(make_config(tmp_path, closed_port))
    log = tmp_path / "logs" / "events.json"
    clock = Clock(datetime(2026, 12, 5, 10, tzinfo=UTC))  # a day ahead
    rulebook = RuleBook(config.rules_dir, ["app"], ["daily"])
    rulebook.reload()
    pipeline = ReportingPipeline(config, rulebook, clock=clock)
    pipeline.open()
    ids = []
    try:
        for step, now in enumerate(
            [
                datetime(2026, 12, 5, 12, tzinfo=UTC),  # forced, a day ahead
                datetime(2026, 12, 4, 9, tzinfo=UTC),  # NTP steps back a day: forced again
                datetime(2026, 12, 4, 9, 30, tzinfo=UTC),
                datetime(2026, 12, 5, 0, 1, tzinfo=UTC),  # forward across midnight
                datetime(2026, 12, 5, 12, 0, tzinfo=UTC),  # the first period's start again
            ]
        ):
            clock.now = now
            append(log, event_lines(3, start=3 * step))
            pipeline.rescan()
            while pipeline.pump():
                pass
            pipeline.rotate_due()
            ids.append(pipeline.rotate(config.reports[0]).outbox_id)
    finally:
        pipeline.close()
    assert len(set(ids)) == len(ids) == 5, ids
    entries = Outbox(config.state_dir / "outbox").entries()
    assert sorted(e.id for e in entries) == sorted(ids), "every period's report is queued"
    rotated = [Path(e.meta["rotated_file"]) for e in entries]
    stored = b"".join(p.read_bytes() for p in sorted(rotated, key=lambda p: p.stat().st_mtime_ns))
    assert sorted(stored.splitlines()) == sorted(event_lines(15).splitlines())


# ---- 11: a forced rotation while the state directory is full -----------------------------------


@pytest.fixture
def small_state(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs mounted as the state directory."""
    need_root()
    state = tmp_path / "state"
    state.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m,mode=0750", "tmpfs", str(state)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        from debian_tools import unavailable

        unavailable(f"cannot mount a tmpfs: {mounted.stderr.strip()}")
    try:
        yield state
    finally:
        subprocess.run(["umount", "-l", str(state)], check=False)


def fill(directory: Path) -> Path:
    """Fill the file system of `directory` to the last byte; return the filler file."""
    filler = directory / "filler"
    with filler.open("wb", buffering=0) as f, contextlib.suppress(OSError):
        while True:
            f.write(b"\0" * 4096)
    return filler


def test_a_forced_rotation_on_a_full_state_directory_happens_once_space_is_freed(
    tmp_path: Path, agents: list[Agent], closed_port: int, small_state: Path
) -> None:
    """`tailmail rotate` while the state directory is full fails saying the service will rotate
    as soon as it can write; status says it waits; once space is freed, the report is queued
    with every event of the period, without another command."""
    config = make_config(tmp_path, closed_port)
    log = tmp_path / "logs" / "events.json"
    log.write_bytes(event_lines(20))
    agent = start(config, tmp_path, agents)
    wait_for(lambda: len(stored_lines(tmp_path)) == 20, "20 stored")
    filler = fill(small_state)
    rotate = tailmail("rotate", "-c", str(config))
    assert rotate.returncode == 1
    assert "the service rotates as soon as it can write again" in rotate.stderr
    status = tailmail("status", "-c", str(config))
    assert "a forced rotation waits until the state can be written" in status.stdout
    assert not list((small_state / "outbox").glob("*.eml"))
    filler.unlink()
    wait_for(lambda: list((small_state / "outbox").glob("*.eml")), "the report queued")
    [entry] = Outbox(small_state / "outbox", readonly=True).entries()
    assert Path(entry.meta["rotated_file"]).read_bytes() == event_lines(20)
    assert agent.proc.poll() is None
    assert agent.stop() == 0
    no_traceback(agent.log(), rotate.stderr)


def test_period_starts_only_go_forward(tmp_path: Path, closed_port: int) -> None:
    """A forced rotation with the clock behind the period's start ends the period where it
    began, and the next starts after it: never before, never at the same instant."""
    config = load_config(make_config(tmp_path, closed_port))
    clock = Clock(datetime(2026, 12, 5, 10, tzinfo=UTC))
    rulebook = RuleBook(config.rules_dir, ["app"], ["daily"])
    pipeline = ReportingPipeline(config, rulebook, clock=clock)
    pipeline.open()
    try:
        first = pipeline.period(config.reports[0]).start
        clock.now -= timedelta(days=2)
        queued = pipeline.rotate(config.reports[0])
        assert queued.start == queued.end == first
        assert pipeline.period(config.reports[0]).start > first
    finally:
        pipeline.close()


# ---- 12: what can and cannot be known of a truncation --------------------------------------------


def test_a_truncation_without_a_matching_copy_is_a_possible_loss_said_as_one(
    tmp_path: Path, agents: list[Agent], closed_port: int
) -> None:
    """A source file truncated with no copy the path matches (copytruncate to `events.json-DATE`
    with `path: events.json`, or `: > events.json`), all of it read before: nobody can know
    whether lines were written just before. The report is amber and says so, never "none"."""
    config = make_config(tmp_path, closed_port, path="events.json")
    log = tmp_path / "logs" / "events.json"
    log.write_bytes(event_lines(10))
    agent = Agent(config, tmp_path, env={"TAILMAIL_RESCAN_SECONDS": "0.2"})
    agents.append(agent)
    agent.wait_ready()
    wait_for(lambda: len(stored_lines(tmp_path)) == 10, "10 stored")
    (tmp_path / "logs" / "events.json-20261204").write_bytes(log.read_bytes())
    os.truncate(log, 0)
    append(log, event_lines(5, start=10))
    wait_for(lambda: log_events(agent.log(), "source.may_have_lost"), "the possible loss logged")
    wait_for(lambda: len(stored_lines(tmp_path)) == 15, "the lines after the truncate stored")
    rotate = tailmail("rotate", "-c", str(config))
    assert rotate.returncode == 0, rotate.stderr
    [eml] = (tmp_path / "state" / "outbox").glob("*.eml")
    msg = email.message_from_bytes(eml.read_bytes(), policy=email.policy.default)
    assert msg["X-Tailmail-Status"] == "amber"
    text = plain_text(eml)
    assert "Possible losses" in text and "if there were any, are lost" in text
    assert "saw none go but cannot know" in text
    assert agent.stop() == 0


def faketime_library() -> str:
    found = sorted(Path("/usr/lib").glob("*/faketime/libfaketime.so.1"))
    if not found:
        from debian_tools import unavailable

        unavailable("libfaketime not found: install Debian's faketime (as root `make test` does)")
    return str(found[0])


def test_the_real_agent_with_its_clock_stepped_back_and_forth_reports_every_period(
    tmp_path: Path, agents: list[Agent], closed_port: int
) -> None:
    """`tailmail run` under a clock that libfaketime steps a day back and forth again across
    midnight, with `tailmail rotate` at each step: every rotation queues a report of its own
    (an id already used made the rotation queue nothing, silently)."""
    library = faketime_library()
    config = make_config(tmp_path, closed_port)
    (tmp_path / "logs" / "events.json").touch()
    clock = tmp_path / "clock"
    clock.write_text("@2026-12-05 10:00:00\n")
    env = {
        "LD_PRELOAD": library,
        "FAKETIME_TIMESTAMP_FILE": str(clock),
        "FAKETIME_NO_CACHE": "1",
        "TZ": "UTC",
    }
    agent = Agent(config, tmp_path, env=env)
    agents.append(agent)
    agent.wait_ready()
    ids: list[str] = []
    for stamp in (
        "2026-12-05 12:00:00",  # a day ahead
        "2026-12-04 09:00:00",  # stepped back a day
        "2026-12-04 09:30:00",
        "2026-12-05 00:01:00",  # forward across midnight
        "2026-12-05 12:00:00",
    ):
        clock.write_text(f"@{stamp}\n")
        result = tailmail("rotate", "-c", str(config))  # the command runs on the real clock
        assert result.returncode == 0, result.stderr
        ids += re.findall(r"^queued (\S+)$", result.stdout, re.M)
    assert len(ids) == 5 and len(set(ids)) == 5, ids
    queued = {e.id for e in Outbox(tmp_path / "state" / "outbox", readonly=True).entries()}
    assert set(ids) <= queued, "every forced rotation queued its own report"
    assert agent.stop() == 0
    no_traceback(agent.log())
