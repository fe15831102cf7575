"""The world of the rotation tests: an application that keeps logging, the agent's config, and
the check of a report store against what the rule must select from what was written."""

from __future__ import annotations

import contextlib
import gzip
import os
import random
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from agent_proc import wait_for, write_config

STALL_SECONDS = 5.0  # a store that does not grow for this long while lines are due has lost them

# The rule of every rotation test selects the `event` lines and leaves the `noise` ones.
RULE = "name: events\nmatch:\n  kind: event\n"


def selected(line: bytes) -> bool:
    """The rule above, written independently: a JSON object whose `kind` is "event"."""
    try:
        event = orjson.loads(line)
    except orjson.JSONDecodeError:
        return False
    return isinstance(event, dict) and event.get("kind") == "event"


def make_config(tmp_path: Path, smtp_port: int, path: str = "events.json*", **source: Any) -> Path:
    """Source `logs/<path>` from its beginning, one report `daily`, mail to a closed port."""
    for sub in ("rules.d", "logs", "store"):
        (tmp_path / sub).mkdir(exist_ok=True)
    (tmp_path / "rules.d" / "events.yaml").write_text(RULE)
    config = {
        "state_dir": str(tmp_path / "state"),
        "rules_dir": str(tmp_path / "rules.d"),
        "sources": [
            {
                "name": "app",
                "path": str(tmp_path / "logs" / path),
                "start_at": "beginning",
                **source,
            }
        ],
        "reports": [
            {
                "name": "daily",
                "store": str(tmp_path / "store" / "daily.jsonl"),
                "to": ["ops@example.com"],
                "compress": "none",
            }
        ],
        # Nothing is mailed in these tests (the stores are read on disk); a refused connection
        # only defers a report that a rotation at midnight might queue.
        "smtp": {
            "host": "127.0.0.1",
            "port": smtp_port,
            "security": "none",
            "from": "tailmail@example.com",
            "timeout": 5,
        },
        "log": {"level": "info", "format": "json"},
    }
    return write_config(tmp_path / "config.yaml", config)


class Writer(threading.Thread):
    """An application logging numbered JSON lines until stopped.

    Like a real one it keeps one descriptor open (O_APPEND) across renames and deletes of its
    file, until it is told to reopen. Every byte it writes is recorded per *content*: a new
    generation starts when it opens a new file or when its file is truncated, so the order of
    lines can be checked within each file's content. `lock` is held for each write; hold it
    (`paused()`) to rotate between two writes. A `buffered` writer is like stdio: its writes cut
    lines anywhere, and what it holds is flushed to the old file before it reopens.
    """

    def __init__(
        self,
        path: Path,
        lines_per_tick: int = 10,
        tick: float = 0.005,
        pad: int = 40,
        buffered: bool = False,
    ) -> None:
        super().__init__(name=f"writer-{path.name}", daemon=True)
        self.path = path
        self.lines_per_tick = lines_per_tick
        self.tick = tick
        self.pad = pad
        self.lock = threading.RLock()
        self.seq = 0
        self.count = 0  # lines written
        self.gen = 0
        self.streams: dict[int, bytearray] = {0: bytearray()}
        self.fd = self._open(path)
        self._halt = threading.Event()
        self.failure: BaseException | None = None
        self.buffered = buffered
        self.held = b""  # a buffered writer's bytes not yet written
        self.random = random.Random(path.name)

    @staticmethod
    def _open(path: Path) -> int:
        return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)

    def line(self) -> bytes:
        seq = self.seq
        self.seq += 1
        kind = "noise" if seq % 4 == 3 else "event"
        pad = "p" * (seq * 7 % self.pad)
        return orjson.dumps({"seq": seq, "gen": self.gen, "kind": kind, "pad": pad}) + b"\n"

    def write(self, data: bytes) -> None:
        """Append raw bytes to the current file (a NUL run, half a line)."""
        with self.lock:
            view = memoryview(data)
            while view:
                view = view[os.write(self.fd, view) :]
            self.streams[self.gen] += data

    def write_lines(self, n: int) -> bytes:
        """Append `n` lines in one write (buffered: up to a random byte); return the lines."""
        with self.lock:
            lines = b"".join(self.line() for _ in range(n))
            self.count += n
            data = lines
            if self.buffered:
                data = self.held + lines
                cut = self.random.randrange(len(data) + 1)
                data, self.held = data[:cut], data[cut:]
            self.write(data)
            return lines

    def flush(self) -> None:
        with self.lock:
            self.write(self.held)
            self.held = b""

    def write_marker(self) -> bytes:
        """Append one selected line; return it (without its newline)."""
        with self.lock:
            self.flush()
            line = orjson.dumps({"seq": self.seq, "gen": self.gen, "kind": "event", "mark": 1})
            self.seq += 1
            self.write(line + b"\n")
            self.count += 1
            return line

    def run(self) -> None:
        try:
            while not self._halt.is_set():
                self.write_lines(self.lines_per_tick)
                self._halt.wait(self.tick)  # pacing only: a steady stream, not a correctness wait
        except BaseException as exc:
            self.failure = exc
            raise

    def stop(self) -> None:
        self._halt.set()
        if self.is_alive():
            self.join(timeout=10)
        assert self.failure is None, f"the writer failed: {self.failure!r}"
        self.flush()

    def close(self) -> None:
        self.stop()
        with contextlib.suppress(OSError):
            os.close(self.fd)

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        with self.lock:
            yield

    def new_generation(self) -> None:
        """The file's content starts anew (it was truncated, or another file is opened)."""
        with self.lock:
            self.gen += 1
            self.streams[self.gen] = bytearray()

    def reopen(self, path: Path | None = None) -> None:
        """Open the path again (a rotation's new file), or another path, and write there."""
        with self.lock:
            self.flush()
            os.close(self.fd)
            self.path = path or self.path
            self.fd = self._open(self.path)
            self.new_generation()

    def wait_written(self, lines: int) -> None:
        """Let the writer write `lines` more lines."""
        target = self.count + lines
        wait_for(lambda: self.count >= target or self.failure, f"the writer to write {lines} lines")
        assert self.failure is None, f"the writer failed: {self.failure!r}"


def complete_lines(data: bytes | bytearray) -> list[bytes]:
    """The lines of a file's content, without a last line that has no newline yet."""
    return bytes(data).split(b"\n")[:-1]


@dataclass
class Expected:
    """The selected lines of each content generation, in the order they were written."""

    by_gen: dict[int, list[bytes]]
    lost_ok: set[bytes] = field(default_factory=set)  # lines the contract allows to be lost

    @classmethod
    def of(cls, writer: Writer, lost_ok: bytes = b"", max_line: int | None = None) -> Expected:
        """What the rule selects from what `writer` wrote; lines over `max_line` are skipped."""

        def kept(line: bytes) -> bool:
            return selected(line) and (max_line is None or len(line) <= max_line)

        by_gen = {
            gen: [x for x in complete_lines(data) if kept(x)]
            for gen, data in writer.streams.items()
        }
        return cls(by_gen, {x for x in complete_lines(lost_ok) if kept(x)})

    @property
    def count(self) -> int:
        return sum(len(lines) for lines in self.by_gen.values())


def stored_lines(tmp_path: Path) -> list[bytes]:
    """Every line of the report's store, its rotated files first (a test run across midnight)."""
    store = tmp_path / "store"
    lines: list[bytes] = []
    for path in sorted(store.glob("daily-*.jsonl*")):
        data = path.read_bytes()
        lines += (gzip.decompress(data) if path.suffix == ".gz" else data).splitlines()
    current = store / "daily.jsonl"
    if current.exists():
        lines += current.read_bytes().splitlines()
    return lines


def wait_stored(tmp_path: Path, expected: Expected, timeout: float = 30.0) -> tuple[bool, str]:
    """Wait until the store holds as many lines as expected; give up early once it has not
    grown for a few seconds (lines were lost: the comparison says which).

    Returns whether the count was reached, and a note on the wait for the failure message."""
    want = expected.count - len(expected.lost_ok)
    start = time.monotonic()
    last = {"count": -1, "since": start}

    def done() -> bool:
        count = len(stored_lines(tmp_path))
        now = time.monotonic()
        if count != last["count"]:
            last["count"], last["since"] = count, now
        return count >= want or now - last["since"] > STALL_SECONDS

    with contextlib.suppress(AssertionError):
        wait_for(done, f"{want} stored lines", timeout=timeout)
    end = time.monotonic()
    reached = last["count"] >= want
    return reached, (
        f"(waited {end - start:.1f} s for {want} lines: the store held {last['count']}"
        + ("" if reached else f" and had not grown for {end - last['since']:.1f} s")
        + ")"
    )


def verify(tmp_path: Path, expected: Expected, note: str = "") -> None:
    """The store holds each selected line exactly once, in order within each file's content;
    only lines in `expected.lost_ok` may be missing."""
    stored = stored_lines(tmp_path)
    counts = Counter(stored)
    gen_of = {line: gen for gen, lines in expected.by_gen.items() for line in lines}
    lost = [
        line
        for lines in expected.by_gen.values()
        for line in lines
        if not counts[line] and line not in expected.lost_ok
    ]
    duplicated = sorted(line for line, n in counts.items() if n > 1)
    unexpected = [line for line in counts if line not in gen_of]
    disordered = []
    for gen, lines in expected.by_gen.items():
        got = [line for line in stored if gen_of.get(line) == gen and counts[line] == 1]
        want = [line for line in lines if counts[line] == 1]
        if got != want:
            disordered.append(gen)
    problems = []
    if lost:
        problems.append(f"{len(lost)} lost, first {_seqs(lost)}")
    if duplicated:
        problems.append(f"{len(duplicated)} duplicated, first {_seqs(duplicated)}")
    if unexpected:
        problems.append(f"{len(unexpected)} not selected by the rule, first {unexpected[:3]!r}")
    if disordered:
        problems.append(f"out of order within the content generations {disordered}")
    assert not problems, (
        f"store of {len(stored)} lines, {expected.count} selected were written: "
        + "; ".join(problems)
        + f" {note}"
    )


def _seqs(lines: list[bytes]) -> list[Any]:
    out: list[Any] = []
    for line in lines[:8]:
        try:
            event = orjson.loads(line)
            out.append((event.get("gen"), event.get("seq")))
        except orjson.JSONDecodeError:
            out.append(line[:60])
    return out


def log_records(log_path: Path) -> list[dict[str, Any]]:
    """The agent's JSON log records (other lines, such as tracebacks, are left out)."""
    records = []
    for line in log_path.read_bytes().splitlines():
        with contextlib.suppress(orjson.JSONDecodeError):
            record = orjson.loads(line)
            if isinstance(record, dict):
                records.append(record)
    return records


def checkpoint(tmp_path: Path) -> dict[str, Any]:
    data = (tmp_path / "state" / "checkpoint.json").read_bytes()
    result: dict[str, Any] = orjson.loads(data)
    return result


def file_state(tmp_path: Path, path: Path) -> dict[str, Any] | None:
    """The checkpointed position of the file now at `path` (by device and inode)."""
    st = path.stat()
    for state in checkpoint(tmp_path).get("files", {}).values():
        if (state["dev"], state["ino"]) == (st.st_dev, st.st_ino):
            result: dict[str, Any] = state
            return result
    return None
