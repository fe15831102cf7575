"""`tailmail rotate` against the real agent: the same rotation with the service and without,
every line written before the command in the closing period however far behind reading is,
and a rotate that arrives while the service is still starting."""

from __future__ import annotations

from pathlib import Path

import orjson
import yaml
from agent_proc import Agent, tailmail, wait_for
from rotation_world import make_config

from agent.deliver.outbox import Outbox

PUMP = 8 << 20  # agent/pipeline/pipeline.py PUMP_BYTES: the backlog is several of these


def backlog(path: Path, mib: int, start: int = 0) -> list[bytes]:
    """About `mib` MiB of lines, one in 50 selected (`kind: event`); the selected ones."""
    lines = []
    selected = []
    seq = start
    while len(lines) * 100 < mib << 20:
        kind = "event" if seq % 50 == 0 else "noise"
        line = orjson.dumps({"kind": kind, "seq": seq, "pad": "x" * 60})
        lines.append(line)
        if kind == "event":
            selected.append(line)
        seq += 1
    with path.open("ab") as f:
        f.write(b"\n".join(lines) + b"\n")
    return selected


def rotated_lines(tmp_path: Path) -> list[bytes]:
    """The lines of the closed periods' files, in the order the periods were closed."""
    entries = Outbox(tmp_path / "state" / "outbox", readonly=True).entries()
    lines: list[bytes] = []
    for entry in sorted(entries, key=lambda e: e.meta["queued_at"]):
        lines += Path(entry.meta["rotated_file"]).read_bytes().splitlines()
    return lines


def test_rotate_with_the_service_far_behind_closes_after_every_line_written_before(
    tmp_path: Path, agents: list[Agent], closed_port: int
) -> None:
    """The service is started on a backlog of several pumps and asked to rotate at once: the
    closed period holds every selected line written before the command, none of the later."""
    config = make_config(tmp_path, closed_port)
    log = tmp_path / "logs" / "events.json"
    before = backlog(log, 10 * PUMP >> 20)  # a second or more to catch up on
    agent = Agent(config, tmp_path)
    agents.append(agent)
    agent.wait_ready()  # READY, and catching up on the backlog
    result = tailmail("rotate", "-c", str(config))
    assert result.returncode == 0, result.stderr + agent.log()
    after = backlog(log, 1, start=10_000_000)
    assert "the running service delivers it now" in result.stdout
    assert rotated_lines(tmp_path) == before
    store = tmp_path / "store" / "daily.jsonl"
    wait_for(lambda: store.read_bytes().splitlines() == after, "the later lines in the next period")
    assert agent.stop() == 0


def test_rotate_without_the_service_closes_after_every_line_written_before(
    tmp_path: Path, agents: list[Agent], closed_port: int
) -> None:
    """The same command with no service running: the same period, built from the same lines
    (the two paths share one implementation)."""
    config = make_config(tmp_path, closed_port)
    log = tmp_path / "logs" / "events.json"
    agent = Agent(config, tmp_path)
    agents.append(agent)
    agent.wait_ready()
    assert agent.stop() == 0
    before = backlog(log, 5 * PUMP >> 20)
    result = tailmail("rotate", "-c", str(config))
    assert result.returncode == 0, result.stderr
    assert "the service will deliver it when it next runs" in result.stdout
    assert rotated_lines(tmp_path) == before


def test_rotate_right_after_the_start_works_fifty_times_in_a_row(
    tmp_path: Path, agents: list[Agent], closed_port: int
) -> None:
    """`systemctl start tailmail && tailmail rotate`, 50 times, each on a backlog larger than a
    pump: the command waits for the starting service's socket, and each period holds exactly
    the lines written before its command."""
    config = make_config(tmp_path, closed_port)
    log = tmp_path / "logs" / "events.json"
    expected: list[bytes] = []
    for round in range(50):
        expected += backlog(log, (PUMP >> 20) + 1, start=round * 1_000_000)
        agent = Agent(config, tmp_path)
        agents.append(agent)
        result = tailmail("rotate", "-c", str(config))
        assert result.returncode == 0, f"round {round}: {result.stderr}\n{agent.log()}"
        agent.wait_ready()  # the command may have come first, and rotated on its own
        assert agent.stop() == 0
        assert rotated_lines(tmp_path) == expected, f"round {round}"
    assert len(Outbox(tmp_path / "state" / "outbox", readonly=True).entries()) == 50


def test_a_report_with_a_top_field_the_rules_read_otherwise_is_built_and_reading_goes_on(
    tmp_path: Path, agents: list[Agent], closed_port: int
) -> None:
    """`top_fields: ["items.²"]` with an event `{"items": [1, 2]}` selected: the report's field
    reader and the rules' agree (² is a key, not a list position), the report is queued, and
    the service reads on. It raised in the rotation at every start before."""
    config = make_config(tmp_path, closed_port)
    document = yaml.safe_load(config.read_text())
    document["reports"][0]["top_fields"] = ["items.²", "items.0"]
    config.write_text(yaml.safe_dump(document, allow_unicode=True))
    log = tmp_path / "logs" / "events.json"
    log.write_bytes(orjson.dumps({"kind": "event", "items": [1, 2], "seq": 0}) + b"\n")
    agent = Agent(config, tmp_path)
    agents.append(agent)
    agent.wait_ready()
    store = tmp_path / "store" / "daily.jsonl"
    wait_for(lambda: store.exists() and store.read_bytes().count(b"\n") == 1, "stored")
    result = tailmail("rotate", "-c", str(config))
    assert result.returncode == 0, result.stderr + agent.log()
    [entry] = Outbox(tmp_path / "state" / "outbox", readonly=True).entries()
    assert Path(entry.meta["rotated_file"]).read_bytes().count(b"\n") == 1
    later = orjson.dumps({"kind": "event", "seq": 1})
    with log.open("ab") as f:
        f.write(later + b"\n")
    wait_for(lambda: store.read_bytes() == later + b"\n", "reading goes on")
    assert "report.build_failed" not in agent.log()
    assert agent.stop() == 0
