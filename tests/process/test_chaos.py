"""Chaos: the real agent through every hostile thing at once, and the books still balance.

One run of `tailmail run`, in phases, each waited for on a condition: bad lines of every kind
between good ones, a file name that is not UTF-8, hundreds of files under one glob, event times
at the edge of the calendar, hostile rule files dropped in, the store deleted by hand, a damaged
outbox entry, a symlink planted at the checkpoint's temporary name while a rotation is forced,
`kill -9`, a rename rotation while the agent is down, the checkpoint damaged
while it is down, and the source directory deleted and made again.

At the end: the agent is alive; every good line is stored exactly once, in the order written
within each file, and a rotated file's lines come before its successor's; every bad line is
counted (the reports' skipped figures equal the bad lines written); and what went wrong is
visible in `tailmail status` and in the reports.
"""

from __future__ import annotations

import email
import email.policy
import os
import re
import signal
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
from agent_proc import Agent, tailmail, wait_for, write_config
from hostile import HOSTILE
from hostile_ground import log_events

MAX_LINE = 4096
SUBJECT = "{report} selected={selected} read={read} skipped={skipped}"
FIGURES = re.compile(r"selected=([\d,]+) read=([\d,]+) skipped=([\d,]+)")

# One of each kind of bad line the contract names; each is counted and skipped.
BAD = [
    b'{"kind": "event", "broken',  # malformed JSON
    b"[1, 2, 3]",  # not an object
    b'{"kind": "event", "x": "\xff\xfe"}',  # invalid UTF-8
    b'{"kind": "event", "nul": "a\x00b"}',  # a NUL byte
    b"",  # empty
    b'{"kind": "event", "pad": "' + b"x" * (MAX_LINE + 100) + b'"}',  # too long
]
EDGE_TIMES = ["9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00+14:00", 1e300]


class World:
    """The files the test writes, and every good line it wrote, per file content."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.logs = root / "logs"
        self.extra = root / "extra"
        self.written: dict[str, list[bytes]] = {}  # content name -> good lines, in order
        self.bad = 0
        self.seq = 0

    def good(self, name: str, n: int, **fields: Any) -> bytes:
        lines = []
        for _ in range(n):
            event = {"kind": "event", "file": name, "seq": self.seq, **fields}
            self.seq += 1
            lines.append(orjson.dumps(event))
        self.written.setdefault(name, []).extend(lines)
        return b"".join(line + b"\n" for line in lines)

    def write(self, path: Path | bytes, data: bytes) -> None:
        with open(path, "ab") as f:
            f.write(data)

    def mixed(self, name: str, path: Path | bytes) -> None:
        """Good lines with one bad line of every kind between them, and edge-of-calendar times."""
        data = b""
        for bad in BAD:
            data += self.good(name, 3) + bad + b"\n"
            self.bad += 1
        for t in EDGE_TIMES:
            data += self.good(name, 1, ts=t)
        self.write(path, data + self.good(name, 3))

    def stored(self) -> list[bytes]:
        """The rotated files of every period (by period), then the current store."""
        store = self.root / "store"
        lines: list[bytes] = []

        def period(path: Path) -> tuple[str, int]:  # daily-DAY.jsonl, then daily-DAY.2.jsonl
            day, _, n = path.name.removeprefix("daily-").removesuffix(".jsonl").partition(".")
            return day, int(n or 1)

        for path in sorted(store.glob("daily-*.jsonl"), key=period):
            lines += path.read_bytes().splitlines()
        if (store / "daily.jsonl").exists():
            lines += (store / "daily.jsonl").read_bytes().splitlines()
        return lines

    def all_stored(self) -> bool:
        return len(self.stored()) >= sum(len(v) for v in self.written.values())


def config(root: Path, smtp_port: int) -> Path:
    for sub in ("rules.d", "logs", "store", "extra"):
        (root / sub).mkdir(exist_ok=True)
    (root / "rules.d" / "events.yaml").write_text("name: events\nmatch:\n  kind: event\n")
    document = {
        "state_dir": str(root / "state"),
        "rules_dir": str(root / "rules.d"),
        "sources": [
            {
                "name": "app",
                "path": str(root / "logs" / "*.json*"),
                "start_at": "beginning",
                "time_field": "ts",
                "max_line_bytes": MAX_LINE,
            },
            {"name": "extra", "path": str(root / "extra" / "*.json"), "start_at": "beginning"},
        ],
        "reports": [
            {
                "name": "daily",
                "store": str(root / "store" / "daily.jsonl"),
                "to": ["ops@example.com"],
                "compress": "none",
                "subject": SUBJECT,
            }
        ],
        "smtp": {"host": "127.0.0.1", "port": smtp_port, "security": "none", "from": "t@x.org"},
        "log": {"level": "info", "format": "json"},
    }
    return write_config(root / "config.yaml", document)


def reports(root: Path) -> list[email.message.EmailMessage]:
    outbox = root / "state" / "outbox"
    found = []
    for path in sorted(outbox.glob("*.eml")):
        msg = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        assert isinstance(msg, email.message.EmailMessage)
        found.append(msg)
    return sorted(found, key=lambda m: str(m["Date"]))


def text_of(msg: email.message.EmailMessage) -> str:
    part = msg.get_body(preferencelist=("plain",))
    assert part is not None
    return " ".join(part.get_content().split())


def test_chaos(tmp_path: Path, agents: list[Agent], closed_port: int) -> None:
    """Everything hostile in one run: alive, each good line once and in order, each bad line
    counted, every trouble visible in status and the reports."""
    root = tmp_path
    w = World(root)
    conf = config(root, closed_port)
    app = w.logs / "app.json"
    w.write(app, w.good("app.json", 5))
    env = {"TAILMAIL_RESCAN_SECONDS": "3600"}  # directories are found by inotify alone

    def start() -> Agent:
        agent = Agent(conf, root, env=env)
        agents.append(agent)
        return agent.wait_ready()

    def alive(agent: Agent) -> None:
        if agent.proc.poll() is not None:
            raise AssertionError(f"the agent exited with {agent.proc.returncode}:\n{agent.log()}")

    def stored_all(agent: Agent, what: str) -> None:
        def done() -> bool:
            alive(agent)
            return w.all_stored()

        wait_for(done, what)

    agent = start()

    # Bad lines of every kind, a name that is not UTF-8, many files, hostile rule files.
    w.mixed("app.json", app)
    w.mixed("bad\\xff.json", os.fsencode(w.logs) + b"/bad\xff.json")
    for i in range(300):
        w.write(w.logs / f"many-{i:03d}.json", w.good(f"many-{i:03d}.json", 2))
    rules = root / "rules.d"
    for kind, hostile in HOSTILE.items():
        (rules / f"{kind}.yaml").write_text(hostile.text)
    (rules / "newline.yaml").write_text('name: "events2\\n"\nmatch: {kind: x}\n')
    stored_all(agent, "phase 1: every good line stored")
    wait_for(
        lambda: len(log_events(agent.log(), "rules.problem")) >= len(HOSTILE) + 1,
        "every hostile rule file reported",
    )

    # The store deleted by hand; a damaged outbox entry.
    (root / "store" / "daily.jsonl").unlink()
    outbox = root / "state" / "outbox"
    (outbox / "daily-20261201T000000Z.eml").write_bytes(b"Subject: x\r\n\r\nbody\r\n")
    (outbox / "daily-20261201T000000Z.json").write_bytes(b'{"recipients": 7}')
    w.write(app, w.good("app.json", 20))
    stored_all(agent, "phase 2: the store made again")

    # A symlink planted at the checkpoint's temporary name: never written through, so the
    # state cannot be written while a rotation is forced; it is done once it can.
    target = root / "target"
    target.write_bytes(b"keep me\n")
    blocker = root / "state" / ".checkpoint.json.tmp"
    blocker.symlink_to(target)
    w.write(app, w.good("app.json", 20))
    rotate = tailmail("rotate", "-c", str(conf))
    assert rotate.returncode == 1 and "as soon as it can write again" in rotate.stderr
    status = tailmail("status", "-c", str(conf))
    assert "cannot write" in status.stdout
    blocker.unlink()
    wait_for(lambda: len(reports(root)) == 1, "the forced rotation's report")
    stored_all(agent, "phase 3: every line stored")

    # The source directory of `extra` deleted and made again: found without a rescan.
    w.write(w.extra / "x.json", w.good("x.json", 5))
    stored_all(agent, "phase 4: extra read")
    (w.extra / "x.json").unlink()
    w.extra.rmdir()
    w.extra.mkdir()
    w.write(w.extra / "y.json", w.good("y.json", 5))
    stored_all(agent, "phase 4: the new directory's file read")

    # kill -9; the log renamed while the agent is down (its writer still writes to it), a new
    # one created; the checkpoint damaged: the agent goes back to the previous one.
    w.write(app, w.good("app.json", 10))
    stored_all(agent, "phase 5: before the kill")
    agent.proc.send_signal(signal.SIGKILL)
    agent.proc.wait()
    agent.close()
    old = w.logs / "app.json.1"
    os.rename(app, old)
    w.write(old, w.good("app.json", 10))  # written by the application before it reopens
    w.write(app, w.good("app.json.new", 10))
    checkpoint = root / "state" / "checkpoint.json"
    data = checkpoint.read_bytes()
    checkpoint.write_bytes(data[: len(data) // 3])
    agent = start()
    w.mixed("app.json.new", app)
    stored_all(agent, "phase 5: every line stored after the restart")
    assert log_events(agent.log(), "state.checkpoint_recovered")

    status = tailmail("status", "-c", str(conf))
    assert status.returncode == 0, status.stderr
    final = tailmail("rotate", "-c", str(conf))
    assert final.returncode == 0, final.stderr
    alive(agent)
    assert agent.stop() == 0
    log = agent.log()

    # Each good line once, in the order written within each file, the rotated file's first.
    stored = w.stored()
    counts = Counter(stored)
    assert not [line for line, n in counts.items() if n > 1], "duplicated lines"
    written = [line for lines in w.written.values() for line in lines]
    assert not [line for line in written if not counts[line]], "lost lines"
    assert len(stored) == len(written)
    position = {line: i for i, line in enumerate(stored)}
    for name, lines in w.written.items():
        assert [position[x] for x in lines] == sorted(position[x] for x in lines), name
    assert max(position[x] for x in w.written["app.json"]) < min(
        position[x] for x in w.written["app.json.new"]
    ), "the rotated file is read to its end before its successor"

    # Every bad line counted: the reports' figures add up to what was written.
    sent = reports(root)
    assert len(sent) == 2
    figures = [FIGURES.search(str(m["Subject"])) for m in sent]
    assert all(figures)
    selected = sum(int(f[1].replace(",", "")) for f in figures if f)
    skipped = sum(int(f[3].replace(",", "")) for f in figures if f)
    assert selected == len(written)
    assert skipped == w.bad

    # And visible: status, the reports, the log.
    assert "1 failed (1 damaged)" in status.stdout
    # Moved aside by the sender's next pass (at the latest at the restart).
    assert (outbox / "failed" / "daily-20261201T000000Z.json").exists()
    assert "notice: " in status.stdout and "checkpoint.json is damaged" in status.stdout
    assert re.search(r"app: \d+ bad line\(s\) skipped this period", status.stdout)
    first, second = (text_of(m) for m in sent)
    assert "made it again from what it held: nothing was lost" in first
    assert "is damaged (not valid JSON" in second  # the path before it may be wrapped
    for reason in ("malformed JSON", "not a JSON object", "invalid UTF-8", "NUL bytes", "empty"):
        assert reason in first + second, reason
    assert "line too long" in first + second
    assert "Traceback" not in log
    assert target.read_bytes() == b"keep me\n"
