"""Hostile rule files and numbers against the real `tailmail`: `check` reports each with its
FILE:LINE and exits 2, and the running service logs them and goes on storing events.

The processes run with 1 GiB of address space: a file that made tailmail expand what it reads
(a "billion laughs" took 2.9 GB) fails the test with a MemoryError instead of taking the machine.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
import yaml
from agent_proc import DEADLINE, Agent, wait_for
from hostile import HOSTILE
from rotation_world import make_config

LIMIT_MIB = 1024


def limited(mib: int = LIMIT_MIB) -> list[str]:
    """A command prefix that runs the rest with RLIMIT_AS set to `mib` MiB (kept across exec)."""
    code = (
        "import os, resource, sys; n = int(sys.argv[1]) << 20; "
        "resource.setrlimit(resource.RLIMIT_AS, (n, n)); os.execv(sys.argv[2], sys.argv[2:])"
    )
    return [sys.executable, "-c", code, str(mib)]


def check(config: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*limited(), sys.executable, "-m", "agent", "check", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        env={**os.environ, **(env or {})},
    )


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_check_reports_a_hostile_rule_file(tmp_path: Path, kind: str) -> None:
    """`tailmail check` on a deep, alias-bomb, huge-number or oversized rule file exits 2 with the file's FILE:LINE message and nothing else (no traceback), within 1 GiB."""
    config = make_config(tmp_path, 25)
    hostile = HOSTILE[kind]
    path = tmp_path / "rules.d" / f"{kind}.yaml"
    path.write_text(hostile.text)
    result = check(config)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == f"{path}:{hostile.line}: {hostile.message}\n1 problem found\n"


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        (
            "max_line_bytes",
            int("1" * 400),
            "max_line_bytes: that is more than 1 TiB, too large for any size here; write e.g. 10MiB",
        ),
        (
            "max_line_bytes",
            "1" * 400 + "MiB",
            "max_line_bytes: that is more than 1 TiB, too large for any size here; write e.g. 10MiB",
        ),
        (
            "timeout",
            1e308,
            "timeout: that is more than 10 years, too long for any duration here",
        ),
        (
            "retry_for",
            "${HUGE}",
            "retry_for: that is more than 10 years, too long for any duration here",
        ),
        ("port", "${HUGE}", "port must be a whole number"),
    ],
    ids=["int-400-digits", "size-400-digits", "float-1e308", "duration-from-env", "port-from-env"],
)
def test_check_reports_a_hostile_number_in_the_config(
    tmp_path: Path, key: str, value: object, message: str
) -> None:
    """`tailmail check` on a config number past all reason exits 2 with its FILE:LINE message, not an OverflowError traceback."""
    config = make_config(tmp_path, 25)
    data = yaml.safe_load(config.read_text())
    section = data["sources"][0] if key == "max_line_bytes" else data["smtp"]
    section[key] = value
    text = yaml.safe_dump(data, sort_keys=False, width=10_000)
    config.write_text(text)
    line = next(n for n, t in enumerate(text.splitlines(), 1) if t.strip().startswith(f"{key}:"))
    result = check(config, env={"HUGE": "9" * 5000})
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == f"{config}:{line}: {message}\n1 problem found\n"


def problems_logged(agent: Agent) -> set[str]:
    problems = set()
    for line in agent.log().splitlines():
        try:
            entry = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if isinstance(entry, dict) and entry.get("event") == "rules.problem":
            problems.add(entry["problem"])
    return problems


def stored(tmp_path: Path) -> list[int]:
    try:
        lines = (tmp_path / "store" / "daily.jsonl").read_bytes().splitlines()
    except FileNotFoundError:
        return []
    return [orjson.loads(line)["n"] for line in lines]


def append(log: Path, *numbers: int) -> None:
    with log.open("ab") as f:
        f.write(b"".join(orjson.dumps({"kind": "event", "n": n}) + b"\n" for n in numbers))


def test_running_service_lives_through_hostile_rule_files(
    tmp_path: Path, agents: list[Agent], closed_port: int
) -> None:
    """Hostile rule files dropped into rules_dir (one written over a rule in force) are logged as rules.problem with FILE:LINE; the agent stays up within 1 GiB and the rules in force go on storing events."""
    config = make_config(tmp_path, closed_port, path="events.json")
    log = tmp_path / "logs" / "events.json"
    log.touch()
    agent = Agent(config, tmp_path, wrap=limited())
    agents.append(agent)
    agent.wait_ready()
    append(log, 1)
    wait_for(lambda: stored(tmp_path) == [1], "the first event in the store")

    rules = tmp_path / "rules.d"
    expected = set()
    for kind, hostile in sorted(HOSTILE.items()):
        (rules / f"{kind}.yaml").write_text(hostile.text)
        expected.add(f"{rules / kind}.yaml:{hostile.line}: {hostile.message}")
    laughs = HOSTILE["billion-laughs"]
    (rules / "events.yaml").write_text(laughs.text)  # the rule in force, edited into a bomb
    expected.add(f"{rules / 'events.yaml'}:{laughs.line}: {laughs.message}")

    def all_reported() -> bool:
        if agent.proc.poll() is not None:
            raise AssertionError(f"agent exited with {agent.proc.returncode}:\n{agent.log()}")
        return expected <= problems_logged(agent)

    wait_for(all_reported, "every hostile rule file to be reported")
    append(log, 2)
    wait_for(lambda: stored(tmp_path) == [1, 2], "an event written after the drop in the store")
    assert agent.stop() == 0
    assert "Traceback" not in agent.log()
