"""A source's directory deleted, renamed away or not there yet, against the real `tailmail run`.

The safety rescan is pushed out of reach (TAILMAIL_RESCAN_SECONDS, a test hook), so only inotify
can lead the agent to the new directory's files: each line must be stored within the deadline,
not at a rescan minutes later.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import orjson
import pytest
from agent_proc import Agent, wait_for
from rotation_world import log_records, make_config, stored_lines

from agent.tail.watch import Watcher

NO_RESCAN = {"TAILMAIL_RESCAN_SECONDS": "3600"}
# Generous for inotify on a loaded machine, and shorter than the service's usual safety rescan
# (30 s), which would otherwise pass these tests without inotify (it did, 25 to 28 s late).
INOTIFY_DEADLINE = 20.0


def write_line(path: Path, n: int) -> bytes:
    """Append one selected line to `path`; return it (without its newline)."""
    line = orjson.dumps({"kind": "event", "n": n, "file": path.name})
    with path.open("ab") as f:
        f.write(line + b"\n")
    return line


def stored(tmp_path: Path, line: bytes) -> bool:
    return line in stored_lines(tmp_path)


@pytest.mark.parametrize("how", ["deleted", "renamed-away"])
def test_source_directory_replaced_while_running(
    tmp_path: Path, closed_port: int, agents: list[Agent], how: str
) -> None:
    """The source's directory deleted (or renamed away) and created again, three times: the new
    directory's files are read at once, through inotify alone."""
    config = make_config(tmp_path, closed_port)
    logs = tmp_path / "logs"
    first = write_line(logs / "events.json", 0)
    agent = Agent(config, tmp_path, env=NO_RESCAN)
    agents.append(agent)
    agent.wait_ready()
    wait_for(lambda: stored(tmp_path, first), "the first line")
    for n in range(1, 4):
        if how == "deleted":
            shutil.rmtree(logs)
        else:
            logs.rename(tmp_path / f"logs.old-{n}")
        logs.mkdir()
        line = write_line(logs / "events.json", n)
        wait_for(
            lambda line=line: stored(tmp_path, line),
            f"the line written after replacement {n}",
            INOTIFY_DEADLINE,
        )
    assert agent.proc.poll() is None
    assert agent.stop() == 0
    got = stored_lines(tmp_path)
    assert len(got) == len(set(got)) == 4


def test_source_directory_created_after_the_start(
    tmp_path: Path, closed_port: int, agents: list[Agent]
) -> None:
    """A source whose directory (and its parent) do not exist at start is read as soon as they
    are created, one level after the other, through inotify alone."""
    config = make_config(tmp_path, closed_port, path="app/current/events*.json")
    agent = Agent(config, tmp_path, env=NO_RESCAN)
    agents.append(agent)
    agent.wait_ready()
    assert any(r.get("event") == "source.missing" for r in log_records(agent.log_path))
    app = tmp_path / "logs" / "app"
    app.mkdir()
    (app / "current").mkdir()
    line = write_line(app / "current" / "events-1.json", 1)
    wait_for(
        lambda: stored(tmp_path, line), "the line in a directory created later", INOTIFY_DEADLINE
    )
    # And the created directory is watched for new files too, not only found once.
    line = write_line(app / "current" / "events-2.json", 2)
    wait_for(lambda: stored(tmp_path, line), "the line of a second file there", INOTIFY_DEADLINE)
    assert agent.stop() == 0


# ---- the watcher itself ----------------------------------------------------------------------


async def event_for(events: asyncio.Queue[str], path: Path) -> None:
    """Wait until the watcher reports `path`."""
    async with asyncio.timeout(INOTIFY_DEADLINE):
        while await events.get() != str(path):
            pass


@pytest.mark.parametrize("first", ["full", "anchor"])
async def test_directory_watched_in_full_and_as_an_anchor_still_reports_writes(
    tmp_path: Path, first: str
) -> None:
    """inotify keeps one mask per directory: the narrow watch (directories only) of a missing
    directory's parent must not replace the full one of the same directory, in either order."""
    logs = tmp_path / "logs"
    logs.mkdir()
    log = logs / "events.json"
    log.touch()
    events: asyncio.Queue[str] = asyncio.Queue()
    watcher = Watcher(asyncio.get_running_loop())
    try:
        wants = [(logs, lambda p, r: events.put_nowait(p)), (logs / "later", lambda p, r: None)]
        for directory, callback in wants if first == "full" else wants[::-1]:
            watcher.watch(directory, callback)
        write_line(log, 1)
        await event_for(events, log)
        (logs / "later").mkdir()  # the second want's anchor moves: still this directory
        await event_for(events, logs / "later")
        write_line(log, 2)
        await event_for(events, log)
    finally:
        watcher.stop()
