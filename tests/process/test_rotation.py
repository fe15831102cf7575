"""Source rotation, line edge cases and store write errors, against the real `tailmail run`.

Each test runs the agent as a child process (agent_proc.Agent), an application thread that
keeps logging numbered JSON lines while its files are rotated under it (rotation_world.Writer),
and then compares the report store on disk line by line with what the rule selects from every
byte that was written: nothing lost, nothing twice, order kept within each file's content.
Mail is not involved: the SMTP port is closed, and the stores are read directly.
"""

from __future__ import annotations

import gzip
import os
import resource
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from agent_proc import Agent, wait_for
from rotation_world import (
    Expected,
    Writer,
    checkpoint,
    file_state,
    log_records,
    make_config,
    selected,
    stored_lines,
    verify,
    wait_stored,
)

# ---- harness ---------------------------------------------------------------------------------


@pytest.fixture
def writers() -> Iterator[list[Writer]]:
    made: list[Writer] = []
    yield made
    for writer in made:
        writer.close()


def start_agent(config: Path, tmp_path: Path, agents: list[Agent]) -> Agent:
    agent = Agent(config, tmp_path)
    agents.append(agent)
    return agent.wait_ready()


def start_writer(path: Path, writers: list[Writer], run: bool = True, **kw: Any) -> Writer:
    writer = Writer(path, **kw)
    writers.append(writer)
    if run:
        writer.start()
    return writer


def barrier(tmp_path: Path, writer: Writer) -> None:
    """Append one more selected line and wait until it is stored. A pump reads every file it
    follows until none has more, then commits: the agent has read all there was before it."""
    line = writer.write_marker()
    wait_for(lambda: line in stored_lines(tmp_path), "the agent to store a marker line")


def finish(tmp_path: Path, agent: Agent, writer: Writer, max_line: int | None = None) -> None:
    """Stop the writer; check the store once the agent has stored everything by itself, then
    again after a stop and a start (nothing is read twice on restart)."""
    writer.stop()
    reached, note = wait_stored(tmp_path, Expected.of(writer, max_line=max_line))
    if not reached:
        # Lost, or only late? Wake the agent with an event in the source's directory.
        (tmp_path / "logs" / f".poke-{time.monotonic_ns()}").touch()
        wait_stored(tmp_path, Expected.of(writer, max_line=max_line), timeout=10)
        assert agent.stop() == 0
        verify(tmp_path, Expected.of(writer, max_line=max_line), note)
        raise AssertionError(f"lines were stored only once the directory was touched {note}")
    barrier(tmp_path, writer)
    assert agent.stop() == 0
    verify(tmp_path, Expected.of(writer, max_line=max_line), note)
    again = Agent(agent.config, tmp_path).wait_ready()
    try:
        barrier(tmp_path, writer)
    finally:
        again.stop()
    verify(tmp_path, Expected.of(writer, max_line=max_line), "(after a restart)")


def shift(logs: Path, name: str = "events.json", keep: int = 3) -> None:
    """logrotate's numbering: NAME.N -> NAME.N+1, the oldest deleted."""
    (logs / f"{name}.{keep}").unlink(missing_ok=True)
    for n in range(keep - 1, 0, -1):
        older = logs / f"{name}.{n}"
        if older.exists():
            older.rename(logs / f"{name}.{n + 1}")


def slow_copy(src: Path, dst: Path, chunk: int = 4096) -> None:
    """Copy in small writes spread over some milliseconds, as a big file's copy is seen by the
    agent while it is being written (the pauses only pace the copy)."""
    with src.open("rb") as fin, dst.open("wb") as fout:
        while data := fin.read(chunk):
            fout.write(data)
            fout.flush()
            time.sleep(0.002)


def freeze(agent: Agent) -> None:
    """SIGSTOP the agent and wait until it is stopped: it sees nothing until `thaw`."""
    agent.signal(signal.SIGSTOP)

    def stopped() -> bool:
        fields = Path(f"/proc/{agent.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return fields[0] == "T"

    wait_for(stopped, "the agent to stop on SIGSTOP")


def thaw(agent: Agent) -> None:
    agent.signal(signal.SIGCONT)


def copytruncate(log: Path, writer: Writer, window: int = 0) -> bytes:
    """logrotate's copytruncate, the writer paused around it; `window` lines are written
    between the copy and the truncate (no reader can see them). Returns those lines."""
    with writer.paused():
        shift(log.parent)
        slow_copy(log, log.with_name(log.name + ".1"))
        lost = writer.write_lines(window) if window else b""
        os.truncate(log, 0)
        writer.new_generation()
    return lost


def stats(tmp_path: Path) -> dict[str, Any]:
    result: dict[str, Any] = checkpoint(tmp_path)["reports"]["daily"]["stats"]
    return result


def stored_count(tmp_path: Path) -> int:
    return len(stored_lines(tmp_path))


def interrupt(agent: Agent, how: str) -> None:
    if how == "sigterm":
        assert agent.stop() == 0
    elif how == "sigkill":
        agent.kill()


def committed_at(tmp_path: Path, log: Path, offset: int, skipping: bool = False) -> bool:
    state = file_state(tmp_path, log)
    return state is not None and state["offset"] == offset and state["skipping"] == skipping


def bytes_read(agent: Agent) -> int:
    """What the agent has read with read(2)/pread(2) since it started (/proc/PID/io)."""
    for line in Path(f"/proc/{agent.proc.pid}/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar in /proc/PID/io")


def peak_rss(agent: Agent) -> int:
    for line in Path(f"/proc/{agent.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc/PID/status")


# ---- rename and create -----------------------------------------------------------------------


def compress_and_shift(logs: Path, name: str = "events.json", keep: int = 4) -> None:
    """logrotate with `compress` and `delaycompress`: NAME.1 -> NAME.2.gz, NAME.N.gz -> N+1."""
    (logs / f"{name}.{keep}.gz").unlink(missing_ok=True)
    for n in range(keep - 1, 1, -1):
        older = logs / f"{name}.{n}.gz"
        if older.exists():
            older.rename(logs / f"{name}.{n + 1}.gz")
    first = logs / f"{name}.1"
    if first.exists():
        (logs / f"{name}.2.gz").write_bytes(gzip.compress(first.read_bytes()))
        first.unlink()


def test_rename_and_create_under_a_glob_reads_every_file_once(
    tmp_path: Path, closed_port: int, agents: list[Agent], writers: list[Writer]
) -> None:
    """rename+create under `events.json*`, the writer still writing to the renamed file, old ones gzipped: each line once."""
    config = make_config(tmp_path, closed_port)
    log = tmp_path / "logs" / "events.json"
    writer = start_writer(log, writers, buffered=True)
    agent = start_agent(config, tmp_path, agents)
    for _ in range(4):
        writer.wait_written(300)
        compress_and_shift(log.parent)
        log.rename(log.with_name("events.json.1"))
        log.touch()  # logrotate's `create`
        writer.wait_written(100)  # the application still logs to the renamed file
        writer.reopen()  # postrotate: it reopens its log
    writer.wait_written(200)
    finish(tmp_path, agent, writer)
    assert list(log.parent.glob("events.json.*.gz")), "the rotation compressed old files"
    assert stats(tmp_path)["skipped"] == {}, "compressed rotations are not read as lines"


def test_rename_and_create_of_a_plain_path_reads_the_renamed_file_to_its_end(
    tmp_path: Path, closed_port: int, agents: list[Agent], writers: list[Writer]
) -> None:
    """Source `events.json`: the renamed file, no longer matched, is read to its end, late lines included."""
    config = make_config(tmp_path, closed_port, path="events.json")
    logs = tmp_path / "logs"
    log = logs / "events.json"
    others = [logs / f"other{i}.log" for i in range(4)]
    for other in others:
        other.touch()
    # A steady, slow stream: the agent is mostly at the end of the file, waiting for more.
    writer = start_writer(log, writers, lines_per_tick=2, buffered=True)
    agent = start_agent(config, tmp_path, agents)
    for _ in range(2):
        writer.wait_written(200)
        log.rename(logs / "events.json.1")
        log.touch()
        # logrotate goes on with the other logs of the directory while the application still
        # writes to the renamed file: it reopens its log only in postrotate, at the very end.
        for other in others:
            other.rename(other.with_name(other.name + ".1"))
            other.touch()
            writer.wait_written(20)
        writer.reopen()
    writer.wait_written(100)
    finish(tmp_path, agent, writer)


# ---- copytruncate ----------------------------------------------------------------------------


def test_copytruncate_with_the_writer_paused_loses_nothing(
    tmp_path: Path, closed_port: int, agents: list[Agent], writers: list[Writer]
) -> None:
    """copytruncate under `events.json*` (copy seen half-written, or all at once): each line once."""
    config = make_config(tmp_path, closed_port)
    log = tmp_path / "logs" / "events.json"
    writer = start_writer(log, writers)
    agent = start_agent(config, tmp_path, agents)
    for cycle in range(4):
        writer.wait_written(300)
        frozen = cycle % 2 == 1  # the agent sees nothing of it: the copy and the truncate at once
        if frozen:
            freeze(agent)
        try:
            copytruncate(log, writer)
            writer.wait_written(100)
        finally:
            if frozen:
                thaw(agent)
    writer.wait_written(200)
    finish(tmp_path, agent, writer)


def loss_warnings(agent: Agent, path: Path) -> list[dict[str, Any]]:
    """The agent's warnings that lines of `path` were (or may have been) lost."""
    return [
        r
        for r in log_records(agent.log_path)
        if r.get("level") in ("warning", "error")
        and str(path) in (text := orjson.dumps(r).decode())
        and "lost" in text.lower()
    ]


def test_copytruncate_loses_only_the_lines_between_copy_and_truncate_and_says_so(
    tmp_path: Path, closed_port: int, agents: list[Agent], writers: list[Writer]
) -> None:
    """Lines written between copytruncate's copy and its truncate are the only loss; it is logged and counted."""
    config = make_config(tmp_path, closed_port)
    log = tmp_path / "logs" / "events.json"
    writer = start_writer(log, writers)
    agent = start_agent(config, tmp_path, agents)
    writer.wait_written(300)
    # The agent is not scheduled during the rotation, so the window is certain to be unread.
    freeze(agent)
    try:
        window = copytruncate(log, writer, window=50)
        writer.wait_written(200)
    finally:
        thaw(agent)
    writer.wait_written(200)
    writer.stop()
    barrier(tmp_path, writer)
    expected = Expected.of(writer, lost_ok=window)
    assert expected.lost_ok
    stored = set(stored_lines(tmp_path))
    assert not expected.lost_ok & stored, "the window was unreadable: nothing of it can be stored"
    verify(tmp_path, expected)
    # The agent cannot know how many lines it never saw; it knows a copytruncate happened, and
    # must say that what was written between the copy and the truncate is lost.
    assert loss_warnings(agent, log), f"no warning that lines of {log} were lost:\n{agent.log()}"
    problems = orjson.dumps(stats(tmp_path)["problems"]).decode()
    assert str(log) in problems and "lost" in problems.lower(), (
        f"the period's problems do not mention the loss: {problems}"
    )
    assert agent.stop() == 0


def test_copytruncate_window_read_before_the_truncate_is_not_reported_lost(
    tmp_path: Path, closed_port: int, agents: list[Agent], writers: list[Writer]
) -> None:
    """Lines written after the copy but read before the truncate are stored, and not counted as lost."""
    config = make_config(tmp_path, closed_port)
    log = tmp_path / "logs" / "events.json"
    writer = start_writer(log, writers)
    agent = start_agent(config, tmp_path, agents)
    writer.wait_written(300)
    with writer.paused():
        shift(log.parent)
        slow_copy(log, log.with_name("events.json.1"))
        window = [x for x in writer.write_lines(50).splitlines() if selected(x)]
        wait_for(lambda: set(window) <= set(stored_lines(tmp_path)), "the window to be stored")
        os.truncate(log, 0)
        writer.new_generation()
    writer.wait_written(200)
    writer.stop()
    barrier(tmp_path, writer)
    verify(tmp_path, Expected.of(writer))
    # A notice that lines *may* have been lost is fair; a count of lost bytes that were stored
    # is not.
    counted = [r for r in loss_warnings(agent, log) if r.get("bytes")]
    assert not counted, f"bytes counted lost, yet every line was stored: {counted}"
    assert stats(tmp_path).get("lost_bytes", 0) == 0, "the period counts bytes that were stored"
    assert agent.stop() == 0


# ---- delete and recreate ---------------------------------------------------------------------


def test_delete_and_recreate_while_writing(
    tmp_path: Path, closed_port: int, agents: list[Agent], writers: list[Writer]
) -> None:
    """The source deleted (its writer still writing to it a moment) and created again: each line once."""
    config = make_config(tmp_path, closed_port, path="events.json")
    log = tmp_path / "logs" / "events.json"
    writer = start_writer(log, writers, buffered=True)
    agent = start_agent(config, tmp_path, agents)
    for _ in range(4):
        writer.wait_written(200)
        log.unlink()
        writer.wait_written(30)  # to the deleted file, through the open descriptor
        writer.reopen()
    writer.wait_written(200)
    finish(tmp_path, agent, writer)


# ---- rotation while the agent is down --------------------------------------------------------


@pytest.mark.parametrize("rotation", ["rename", "copytruncate", "delete"])
@pytest.mark.parametrize("down", ["sigterm", "sigkill"])
def test_file_replaced_while_the_agent_is_down(
    tmp_path: Path,
    closed_port: int,
    agents: list[Agent],
    writers: list[Writer],
    rotation: str,
    down: str,
) -> None:
    """A file rotated (or deleted and created again) while the agent is stopped or killed: nothing lost or repeated."""
    config = make_config(tmp_path, closed_port)
    log = tmp_path / "logs" / "events.json"
    writer = start_writer(log, writers, buffered=rotation == "rename")
    agent = start_agent(config, tmp_path, agents)
    writer.wait_written(300)
    wait_for(lambda: stored_count(tmp_path) >= 100, "the agent to store some lines")
    old = log.stat()
    if rotation == "delete":
        # What a deleted file held unread is gone with it: here the agent has read it all.
        with writer.paused():
            barrier(tmp_path, writer)
            interrupt(agent, down)
            log.unlink()
            writer.reopen()  # often on the inode just freed: only the first bytes tell
    else:
        interrupt(agent, down)
        writer.wait_written(100)
        if rotation == "rename":
            log.rename(log.with_name("events.json.1"))
            log.touch()
            writer.wait_written(100)
            writer.reopen()
        else:
            copytruncate(log, writer)
    # The new content grows past the old position: only its first bytes tell it is new.
    wait_for(lambda: log.stat().st_size > old.st_size + 2000, "the new file to grow")
    agent = start_agent(config, tmp_path, agents)
    writer.wait_written(200)
    finish(tmp_path, agent, writer)


# ---- symbolic links --------------------------------------------------------------------------


def relink(link: Path, target: Path) -> None:
    """Point `link` at `target` atomically, as `ln -sfn` does: a new link renamed over the old."""
    tmp = link.with_name(f".{link.name}.tmp")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(target)
    tmp.replace(link)


@pytest.mark.parametrize("where", ["same-directory", "other-directory"])
def test_symlinked_source_whose_target_changes(
    tmp_path: Path, closed_port: int, agents: list[Agent], writers: list[Writer], where: str
) -> None:
    """Source `events.json` -> a.json, then -> b.json, then -> c.json, while writing: each line once."""
    config = make_config(tmp_path, closed_port, path="events.json")
    logs = tmp_path / "logs"
    targets = logs if where == "same-directory" else tmp_path / "releases"
    targets.mkdir(exist_ok=True)
    link = logs / "events.json"
    # A steady, slow stream: the agent is mostly at the end of the file, waiting for more.
    writer = start_writer(targets / "a.json", writers, lines_per_tick=2, buffered=True)
    relink(link, targets / "a.json")
    agent = start_agent(config, tmp_path, agents)
    # The application's other log in the same directory, switched the same way just after.
    other = logs / "access.json"
    for name in ("b.json", "c.json"):
        writer.wait_written(200)
        (targets / name).touch()
        relink(link, targets / name)
        for n in range(3):
            # A last few lines still go to the previous target while it switches the other log.
            (targets / f"access-{name}-{n}").touch()
            relink(other, targets / f"access-{name}-{n}")
            writer.wait_written(20)
        writer.reopen(targets / name)
    writer.wait_written(200)
    finish(tmp_path, agent, writer)


# ---- lines -----------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["running", "sigterm", "sigkill"])
def test_partial_last_line_is_stored_once_and_whole(
    tmp_path: Path, closed_port: int, agents: list[Agent], writers: list[Writer], how: str
) -> None:
    """A last line without its newline yet is stored once and whole when it ends, across a stop or kill -9."""
    config = make_config(tmp_path, closed_port)
    log = tmp_path / "logs" / "events.json"
    writer = start_writer(log, writers, run=False)
    agent = start_agent(config, tmp_path, agents)
    lines = b"".join(writer.line() for _ in range(20))
    line = b'{"seq":-1,"kind":"event","note":"written in two halves"}\n'
    writer.write(lines + line[:30])  # one write: the agent reads the half line with the others
    wait_for(lambda: committed_at(tmp_path, log, len(lines)), "the whole lines to be committed")
    interrupt(agent, how)
    writer.write(line[30:])
    writer.write_lines(20)
    if how != "running":
        agent = start_agent(config, tmp_path, agents)
    finish(tmp_path, agent, writer)
    assert stored_lines(tmp_path).count(line[:-1]) == 1


@pytest.mark.parametrize("how", ["running", "sigkill"])
def test_over_long_line_is_skipped_and_the_next_line_is_intact(
    tmp_path: Path, closed_port: int, agents: list[Agent], writers: list[Writer], how: str
) -> None:
    """Lines over max_line_bytes (whole, or streamed, across a kill -9) are counted, never stored; the next is intact."""
    config = make_config(tmp_path, closed_port, max_line_bytes="1KiB")
    log = tmp_path / "logs" / "events.json"
    writer = start_writer(log, writers, run=False)
    agent = start_agent(config, tmp_path, agents)
    writer.write_lines(10)
    # A valid, selected event, but too long: it arrives whole with the lines after it.
    writer.write(orjson.dumps({"seq": -1, "kind": "event", "pad": "x" * 5000}) + b"\n")
    writer.write_lines(10)
    # One that streams in: the agent is inside it, skipping, when it commits (and is killed).
    writer.write(b'{"seq":-2,"kind":"event","pad":"' + b"x" * 1500)
    inside = log.stat().st_size
    wait_for(lambda: committed_at(tmp_path, log, inside, skipping=True), "a commit inside the line")
    interrupt(agent, how)
    # Its end is an event of its own: read from where the agent stopped, it would be stored.
    writer.write(b'{"seq":-3,"kind":"event","tail":"of an over-long line"}\n')
    writer.write_lines(10)
    if how != "running":
        agent = start_agent(config, tmp_path, agents)
    finish(tmp_path, agent, writer, max_line=1024)
    assert stats(tmp_path)["skipped"] == {"line too long": 2}


def test_huge_line_is_not_held_in_memory(
    tmp_path: Path, closed_port: int, agents: list[Agent], writers: list[Writer]
) -> None:
    """A 64 MiB line over max_line_bytes is streamed past: the agent's peak memory barely moves."""
    config = make_config(tmp_path, closed_port, max_line_bytes="1KiB")
    log = tmp_path / "logs" / "events.json"
    writer = start_writer(log, writers, run=False)
    agent = start_agent(config, tmp_path, agents)
    writer.write_lines(10)
    barrier(tmp_path, writer)
    before = peak_rss(agent)
    writer.write(b'{"seq":-1,"kind":"event","pad":"' + b"x" * (64 << 20) + b'"}\n')
    writer.write_lines(10)
    barrier(tmp_path, writer)
    grown = peak_rss(agent) - before
    finish(tmp_path, agent, writer, max_line=1024)
    assert grown < 16 << 20, f"peak memory grew by {grown >> 20} MiB reading a 64 MiB line"


# ---- NUL bytes -------------------------------------------------------------------------------


def test_nul_runs_are_counted_and_skipped(
    tmp_path: Path, closed_port: int, agents: list[Agent], writers: list[Writer]
) -> None:
    """Runs of NUL bytes (ext4 after a power loss) mid-file are skipped with their offset and counted."""
    config = make_config(tmp_path, closed_port)
    log = tmp_path / "logs" / "events.json"
    writer = start_writer(log, writers)
    agent = start_agent(config, tmp_path, agents)
    offsets = []
    for size in (4096, 100, 65536):
        writer.wait_written(200)
        with writer.paused():
            offsets.append(os.fstat(writer.fd).st_size)
            # The next line is written right after the zeros: it is part of the bad line.
            writer.write(b"\0" * size)
    writer.wait_written(200)
    finish(tmp_path, agent, writer)
    assert stats(tmp_path)["skipped"] == {"NUL bytes": 3}
    skipped = [r for r in log_records(agent.log_path) if r.get("event") == "line.skipped"]
    assert [(r["reason"], r["offset"], r["path"]) for r in skipped] == [
        ("NUL bytes", offset, str(log)) for offset in offsets
    ]


# ---- store write errors ----------------------------------------------------------------------


class FileSizeLimitedAgent(Agent):
    """The agent with RLIMIT_FSIZE set low: writing its store past `limit` fails with EFBIG
    (CPython ignores SIGXFSZ). Set with prlimit(2) as soon as it is spawned, before any event is
    written for it to store; `lift` removes it."""

    def __init__(self, config: Path, workdir: Path, limit: int) -> None:
        super().__init__(config, workdir)
        resource.prlimit(self.proc.pid, resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))

    def lift(self) -> None:
        infinity = (resource.RLIM_INFINITY, resource.RLIM_INFINITY)
        resource.prlimit(self.proc.pid, resource.RLIMIT_FSIZE, infinity)


def test_store_write_error_stops_reading_and_recovers_without_loss(
    tmp_path: Path, closed_port: int, agents: list[Agent], writers: list[Writer]
) -> None:
    """The store cannot be written (EFBIG): reading stops, the error is logged; once it clears, every line is stored once."""
    limit = 256 << 10
    config = make_config(tmp_path, closed_port)
    log = tmp_path / "logs" / "events.json"
    writer = start_writer(log, writers)
    agent = FileSizeLimitedAgent(config, tmp_path, limit)
    agents.append(agent)
    agent.wait_ready()

    def failures() -> list[dict[str, Any]]:
        return [r for r in log_records(agent.log_path) if r.get("event") == "pipeline.write_failed"]

    wait_for(failures, "pipeline.write_failed in the log")
    assert "File too large" in failures()[0]["error"]
    stalled = checkpoint(tmp_path)
    assert stalled["reports"]["daily"]["store_size"] <= limit
    # While the store fails, the agent must not read on: what it read would pile up in memory.
    read_before = bytes_read(agent)
    writer.write_lines(20_000)  # about 2 MiB
    wait_for(lambda: len(failures()) >= 2, "a retry that fails again")
    time.sleep(1.5)  # an observation window: reading must stay stopped through it
    read_during = bytes_read(agent) - read_before
    assert checkpoint(tmp_path)["files"] == stalled["files"], "offsets moved past unstored lines"
    agent.lift()
    writer.wait_written(200)
    finish(tmp_path, agent, writer)
    assert any(r.get("event") == "pipeline.write_recovered" for r in log_records(agent.log_path))
    assert read_during < 512 << 10, (
        f"the agent read {read_during} bytes of source while it could not store them"
    )
