"""Thousands of files matching a source's glob: the work to find and settle them grows with
their number, not with its square; the real agent gets READY and reads them all, also from the
usual soft limit of 1024 descriptors, and stays healthy when there are more files than it may
open. Costs are counted (system calls, lines of code run), never timed."""

from __future__ import annotations

import os
import resource
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import orjson
import pytest
from agent_proc import Agent, wait_for
from rotation_world import log_records, make_config, stored_lines

import agent.tail.files
from agent.config.model import SourceConfig
from agent.tail.files import FP_BYTES, SourceTailer

SOURCES = agent.tail.files.__file__


def short_line(i: int) -> bytes:
    """A file smaller than a fingerprint: its first bytes are all of it."""
    return b'{"kind":"event","file":%d}\n' % i


def long_line(i: int) -> bytes:
    """Lines that agree on their first 200 bytes and differ within the fingerprint."""
    return b'{"kind":"event","pad":"%s","file":%d,"more":"%s"}\n' % (b"p" * 180, i, b"m" * 200)


def counted(body: Callable[[], None], monkeypatch: pytest.MonkeyPatch) -> tuple[int, int]:
    """Run `body`; return the pread calls it made and the lines of agent/tail/files.py it ran."""
    preads = lines = 0
    real_pread = os.pread

    def pread(fd: int, n: int, offset: int) -> bytes:
        nonlocal preads
        preads += 1
        return real_pread(fd, n, offset)

    def in_sources(frame: FrameType, event: str, arg: Any) -> Any:
        nonlocal lines
        if event == "line":
            lines += 1
        return in_sources

    def tracer(frame: FrameType, event: str, arg: Any) -> Any:
        return in_sources if frame.f_code.co_filename == SOURCES else None

    monkeypatch.setattr(os, "pread", pread)
    sys.settrace(tracer)
    try:
        body()
    finally:
        sys.settrace(None)
        monkeypatch.setattr(os, "pread", real_pread)
    return preads, lines


def first_scan_and_read(directory: Path, n: int, line: Callable[[int], bytes]) -> None:
    """`n` new files in `directory`: found, settled and read to their end."""
    directory.mkdir()
    for i in range(n):
        (directory / f"app-{i:05d}.json").write_bytes(line(i))
    config = SourceConfig(name="app", path=str(directory / "*.json"), start_at="beginning")
    tailer = SourceTailer(config, {}, first_start=True)
    try:
        tailer.scan()
        read = 0
        for tailed in list(tailer.files.values()):
            while (chunk := tailer.read(tailed)) is not None:
                read += len(chunk.lines)
        assert read == n
    finally:
        tailer.close()


@pytest.mark.parametrize("line", [short_line, long_line], ids=["small-files", "shared-prefix"])
def test_finding_new_files_costs_in_proportion_to_their_number(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, line: Callable[[int], bytes]
) -> None:
    """Twice the new files, about twice the reads and code run: no file is compared with every
    other one (that was 3.1 million preads for 2,500 files, 88 s of CPU for 10,000)."""
    assert len(line(1)) < FP_BYTES or line(1)[:200] == line(2)[:200]
    n = 400
    one = counted(lambda: first_scan_and_read(tmp_path / "n", n, line), monkeypatch)
    two = counted(lambda: first_scan_and_read(tmp_path / "2n", 2 * n, line), monkeypatch)
    for what, a, b in zip(("preads", "lines of agent/tail/files.py run"), one, two, strict=True):
        assert b <= 2.3 * a, f"{what}: {a} for {n} files, {b} for {2 * n}"
    assert two[0] <= 10 * 2 * n, f"{two[0]} preads for {2 * n} files: more than a few per file"


# ---- the real agent -------------------------------------------------------------------------------


def limited(soft: int, hard: int) -> list[str]:
    """A command prefix that runs the agent with RLIMIT_NOFILE set to (soft, hard)."""
    code = (
        "import os, resource, sys;"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (int(sys.argv[1]), int(sys.argv[2])));"
        "os.execv(sys.argv[3], sys.argv[3:])"
    )
    return [sys.executable, "-c", code, str(soft), str(hard)]


def write_files(logs: Path, n: int) -> set[bytes]:
    """`n` files of two lines, one of them selected; return the selected lines."""
    want = set()
    for i in range(n):
        picked = orjson.dumps({"kind": "event", "file": i})
        (logs / f"app-{i:05d}.json").write_bytes(
            picked + b"\n" + orjson.dumps({"kind": "noise", "file": i}) + b"\n"
        )
        want.add(picked)
    return want


@pytest.fixture
def hard_limit() -> Iterator[int]:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard < 4000:
        pytest.skip(f"the hard limit of open files here is {hard}: too few for the test")
    yield hard if hard != resource.RLIM_INFINITY else 1 << 20


def test_thousands_of_files_from_the_default_soft_limit(
    tmp_path: Path, closed_port: int, agents: list[Agent], hard_limit: int
) -> None:
    """3,000 files, the agent started with a soft limit of 1024: it raises it, gets READY and
    stores every file's selected line once."""
    config = make_config(tmp_path, closed_port, path="app-*.json")
    want = write_files(tmp_path / "logs", 3000)
    agent = Agent(config, tmp_path, wrap=limited(1024, hard_limit))
    agents.append(agent)
    agent.wait_ready()
    wait_for(lambda: len(stored_lines(tmp_path)) >= len(want), "every file's line in the store")
    stored = stored_lines(tmp_path)
    assert len(stored) == len(want) and set(stored) == want
    assert agent.stop() == 0


def test_more_files_than_the_limit_allows_keep_the_agent_healthy(
    tmp_path: Path, closed_port: int, agents: list[Agent]
) -> None:
    """600 files and a hard limit of 400 descriptors: the agent opens what leaves it a reserve,
    says once that the rest is not read, and goes on storing and committing what it reads."""
    config = make_config(tmp_path, closed_port, path="app-*.json")
    want = write_files(tmp_path / "logs", 600)
    agent = Agent(config, tmp_path, wrap=limited(400, 400))
    agents.append(agent)
    agent.wait_ready()
    wait_for(lambda: len(stored_lines(tmp_path)) >= 200, "the lines of the files it could open")
    line = orjson.dumps({"kind": "event", "file": 0, "later": True})
    with (tmp_path / "logs" / "app-00000.json").open("ab") as f:
        f.write(line + b"\n")
    wait_for(lambda: line in stored_lines(tmp_path), "a line written later to an open file")
    stored = stored_lines(tmp_path)
    assert len(stored) == len(set(stored)) and set(stored) <= want | {line}
    assert agent.proc.poll() is None
    records = log_records(agent.log_path)
    events = [r.get("event") for r in records]
    assert events.count("source.too_many_files") == 1, events
    assert "pipeline.write_failed" not in events
    assert not [r for r in records if r.get("event") == "source.unreadable"]
    assert agent.stop() == 0
