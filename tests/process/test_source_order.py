"""A rotated file's lines before those of the file that replaced it, against the real
`tailmail run`: rename-and-create and copytruncate, with the agent running through the rotation
or killed with SIGKILL before it and started again after it.

The application (rotation_world.Writer) keeps logging throughout; after a rename it goes on
writing to the renamed file for a moment before it reopens its log, as a daemon does until its
postrotate signal. Each file content is a generation of the writer, and every line of one
generation was written before any line of the next: so the store must hold them in that order,
besides holding each selected line once and each generation's lines in order (`verify`).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest
from agent_proc import Agent
from rotation_world import Expected, Writer, make_config, stored_lines, verify, wait_stored
from test_rotation import barrier, copytruncate, shift

ROTATIONS = 4


@pytest.fixture
def writers() -> Iterator[list[Writer]]:
    made: list[Writer] = []
    yield made
    for writer in made:
        writer.close()


def inversions(tmp_path: Path, expected: Expected) -> list[str]:
    """Each generation whose lines are not all stored before the first line of the next one."""
    at = {line: i for i, line in enumerate(stored_lines(tmp_path))}
    gens = sorted(expected.by_gen)
    found = []
    for old, new in itertools.pairwise(gens):
        starts = [at[line] for line in expected.by_gen[new] if line in at]
        if not starts:
            continue
        late = [line for line in expected.by_gen[old] if at.get(line, -1) > min(starts)]
        if late:
            found.append(f"{len(late)} lines of generation {old} after generation {new}'s first")
    return found


@pytest.mark.parametrize("rotation", ["rename", "copytruncate"])
@pytest.mark.parametrize("agent_during_rotation", ["killed", "running"])
def test_rotated_file_is_read_before_its_replacement(
    tmp_path: Path,
    closed_port: int,
    agents: list[Agent],
    writers: list[Writer],
    rotation: str,
    agent_during_rotation: str,
) -> None:
    """Four rotations while the application writes, the agent killed before each (or running):
    every selected line once, and no line of a file after a line of the file that replaced it."""
    config = make_config(tmp_path, closed_port)
    log = tmp_path / "logs" / "events.json"
    writer = Writer(log, buffered=rotation == "rename")
    writers.append(writer)
    writer.start()
    agent = Agent(config, tmp_path)
    agents.append(agent)
    agent.wait_ready()
    for _ in range(ROTATIONS):
        writer.wait_written(300)
        killed = agent_during_rotation == "killed"
        if killed:
            agent.kill()
            writer.wait_written(100)  # unread when the file is rotated
        if rotation == "rename":
            shift(log.parent)
            log.rename(log.with_name("events.json.1"))
            log.touch()  # logrotate's `create`
            writer.wait_written(50)  # still to the renamed file
            writer.reopen()  # postrotate: the application reopens its log
        else:
            copytruncate(log, writer)
        writer.wait_written(100)
        if killed:
            agent = Agent(config, tmp_path)
            agents.append(agent)
            agent.wait_ready()
    writer.stop()
    reached, note = wait_stored(tmp_path, Expected.of(writer))
    assert reached, note
    barrier(tmp_path, writer)
    assert agent.stop() == 0
    expected = Expected.of(writer)
    verify(tmp_path, expected, note)
    found = inversions(tmp_path, expected)
    assert not found, found
