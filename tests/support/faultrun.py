"""Fault injection against the real `tailmail run`: kill -9 at random moments, then count every line.

Used by `tests/process/test_faults.py` (a short run in `make test`) and `tests/support/soak.py` (`make soak`).

A writer thread appends numbered lines to `logs/events.json` at a steady rate, some of them bad
(malformed, not an object, invalid UTF-8, NUL bytes, empty, over `max_line_bytes`), and often
leaves the file ending in the middle of a line. The source's glob is `events.json*`, so the
rotated names match too, and the source is rotated both ways logrotate does it: rename and
create (the writer keeps writing to the renamed file for a moment, as a daemon does until it
reopens its log) and copytruncate (done while the writer is paused: lines written between the
copy and the truncate are the one loss SPEC documents, and this harness does not test it). At
most `keep_sources` rotated files are kept; the oldest is deleted only once the checkpoint shows
it read to its end, so whatever is missing at the end was lost by the agent, not by the harness.

Each cycle starts the agent and kills it with SIGKILL at one of these moments, chosen by a
seeded RNG: while tailing, shortly after a source rotation, during a store rotation (`tailmail
rotate` in flight: at a random moment, as soon as the store is renamed, as soon as the report
is in the outbox, right after the command returns, or in the third of three rotations in quick
succession), or during start-up (before or just after READY). Sometimes the source is rotated while
the agent is down. At the end the writer stops, the agent catches up, the store is rotated once
more and the agent stops cleanly. Then every stored line (the rotated store files in rotation
order, gunzipped if compressed, then the live store) is checked against the lines the rule
selects from everything written: none lost, none stored twice, no foreign or bad line stored,
and each source file's lines in the order they were written. Lines of different files are
counted when they interleave, not failed: the agent reads a rotated file before the one that
replaced it when it knows which replaced which (tests/test_source_order.py proves that), but a
file rotated twice around a kill, the first new file never seen, cannot be placed. Also checked: every rotated store file has exactly one queued report, whose
figures (selected, read, skipped, from its subject) match its file, and the periods' figures
add up to what was written.

SIGKILL leaves the page cache intact, so this proves the commit protocol's order of writes and
renames, not its fsyncs (that would take a power cut).

A failure report names each lost, duplicated or reordered line by its sequence number, groups
them into runs, and shows what the harness did around them (kills, rotations), with the path of
the agent's log and of the checkpoint saved after each kill.
"""

from __future__ import annotations

import bisect
import email.parser
import email.policy
import gzip
import hashlib
import itertools
import math
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from array import array
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import orjson
from agent_proc import Agent, wait_for, write_config

# ---- the lines ---------------------------------------------------------------------------------

MAX_LINE = 4096  # the source's max_line_bytes: the over-long bad lines are longer
BAD_EVERY = 97  # every 97th line is a bad one, of one of the kinds below in turn
SELECTED_SEL = (0, 1, 2)  # the rule: `sel` in these; sel is (seq * 7) % 10, so 3 lines in 10
RULE = "name: picked\nmatch:\n  sel: {in: [0, 1, 2]}\n"
SUBJECT = "{report} selected={selected} read={read} skipped={skipped}"
SEQ = re.compile(rb'"seq":(\d+)')
SUBJECT_FIGURES = re.compile(r"selected=([\d,]+) read=([\d,]+) skipped=([\d,]+)")
PADS = [("pad-" + "x" * (i % 29) + "ü" * (i % 3)).encode() for i in range(97)]


def bad_kind(seq: int) -> int | None:
    return (seq // BAD_EVERY) % 6 if seq % BAD_EVERY == 0 else None


def make_line(seq: int) -> bytes:
    """The line with this sequence number, without its newline; the same on every call."""
    kind = bad_kind(seq)
    if kind is None:
        sel = (seq * 7) % 10
        line = b'{"seq":%d,"sel":%d,"pad":"%s"}' % (seq, sel, PADS[seq % 97])
        return line + b"\r" if seq % 13 == 5 else line  # a CR before the newline is kept
    # Bad lines would be selected (sel 0) if they were taken for events.
    return (
        b'{"seq":%d,"sel":0,"cut' % seq,  # malformed JSON
        b'[{"seq":%d,"sel":0}]' % seq,  # not an object
        b'{"seq":%d,"sel":0,"s":"\xff\xfe"}' % seq,  # invalid UTF-8
        b'{"seq":%d,"sel":0}\x00\x00\x00' % seq,  # NUL bytes
        b"",  # empty
        b'{"seq":%d,"sel":0,"pad":"%s"}' % (seq, b"y" * (MAX_LINE + 100)),  # too long
    )[kind]


def is_selected(seq: int) -> bool:
    return bad_kind(seq) is None and (seq * 7) % 10 in SELECTED_SEL


# ---- the writer ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Segment:
    """Lines written to one file content, from `first` on: their order must be kept."""

    first: int
    what: str


def rotated_sources(logs: Path) -> list[Path]:
    """events.json.1, .2, ... in that order (newest first)."""
    found = []
    for path in logs.glob("events.json.*"):
        suffix = path.name.removeprefix("events.json.")
        if suffix.isdigit():
            found.append((int(suffix), path))
    return [p for _, p in sorted(found)]


def _shift(logs: Path) -> None:
    """events.json.N -> .N+1, highest first, freeing events.json.1."""
    for path in reversed(rotated_sources(logs)):
        n = int(path.name.removeprefix("events.json."))
        os.rename(path, logs / f"events.json.{n + 1}")


class Writer:
    """Appends numbered lines to the source at `rate` lines per second, in a thread."""

    def __init__(self, logs: Path, rate: int, rng: random.Random) -> None:
        self.logs = logs
        self.path = logs / "events.json"
        self.rate = rate
        self.rng = rng
        self.seq = 0  # lines written (whole or partly): the next line's number
        self.carry = b""  # the end of the last line, not yet written
        self.lock = threading.Lock()  # held by whoever touches the file or the names
        self.segments = [Segment(0, "events.json created")]
        self.error: BaseException | None = None
        self.active = 0.0  # seconds from the start to the last write: the achieved rate
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL, 0o644)
        self._switch_at: float | None = None  # after a rename: when to create the new file
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="writer", daemon=True)

    def start(self) -> None:
        self._started = time.monotonic()
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                with self.lock:
                    now = time.monotonic()
                    if self._switch_at is not None and now >= self._switch_at:
                        self._switch()
                    due = math.ceil((now - self._started) * self.rate) - self.seq
                    if due > 0:
                        self._write(due)
                        self.active = now - self._started
                self._stop.wait(0.005)
        except BaseException as exc:  # reported by check(): a dead writer must fail the run
            self.error = exc

    def _write(self, n: int) -> None:
        lines = [make_line(s) for s in range(self.seq, self.seq + n)]
        self.seq += n
        data = self.carry + b"\n".join(lines) + b"\n"
        cut = len(data)
        if self.rng.random() < 0.5:
            # Stop inside the last line (or just before it): a reader sees a partial line.
            cut = self.rng.randrange(len(data) - len(lines[-1]) - 1, len(data))
        self._put(data[:cut])
        self.carry = data[cut:]

    def _put(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]

    def _finish_line(self) -> None:
        self._put(self.carry)
        self.carry = b""

    def _switch(self) -> None:
        """After a rename: the writer reopens its log, creating a new events.json."""
        self._finish_line()
        os.close(self._fd)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL, 0o644)
        self._switch_at = None
        self.segments.append(Segment(self.seq, "events.json created after a rename"))

    def check(self) -> None:
        if self.error is not None:
            raise AssertionError(f"the writer failed: {self.error!r}") from self.error

    def wait_switched(self) -> None:
        wait_for(lambda: self._switch_at is None, "the writer to reopen events.json", 30)

    def rotate_rename(self, tail: float) -> None:
        """logrotate `create`: rename events.json to .1; the writer reopens after `tail` s."""
        self.wait_switched()
        with self.lock:
            self._finish_line()
            _shift(self.logs)
            os.rename(self.path, self.logs / "events.json.1")
            self._switch_at = time.monotonic() + tail

    def rotate_copytruncate(self) -> None:
        """logrotate `copytruncate`, with the writer paused across the copy and the truncate."""
        self.wait_switched()
        with self.lock:
            self._finish_line()
            _shift(self.logs)
            shutil.copyfile(self.path, self.logs / "events.json.1")
            os.truncate(self.path, 0)
            self.segments.append(Segment(self.seq, "events.json truncated by copytruncate"))

    def halt(self) -> None:
        """Stop the thread, leaving the file as it is."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    def stop(self) -> None:
        """Stop writing with the last line whole, and the file closed."""
        self._stop.set()
        self._thread.join(timeout=30)
        with self.lock:
            if self._switch_at is not None:
                self._switch()
            self._finish_line()
            os.close(self._fd)
        self.check()


# ---- the result --------------------------------------------------------------------------------


@dataclass(slots=True)
class Verdict:
    """What the stores hold, compared with what the rule selects from everything written."""

    written: int = 0
    bad_written: int = 0
    selected: int = 0
    stored: int = 0
    lost: list[int] = field(default_factory=list)
    duplicated: list[tuple[int, str, str]] = field(default_factory=list)  # (seq, first, again)
    reordered: list[tuple[int, int, str]] = field(default_factory=list)  # (seq, after, where)
    foreign: list[tuple[bytes, str]] = field(default_factory=list)  # (line, where)
    interleavings: int = 0  # a line stored after a later-written line of another file (allowed)
    stored_in: array[int] = field(default_factory=lambda: array("H"))  # seq -> files index + 1
    files: list[str] = field(default_factory=list)  # the store files read, in order
    problems: list[str] = field(default_factory=list)  # store files, outbox, figures

    @property
    def ok(self) -> bool:
        return not (self.lost or self.duplicated or self.reordered or self.foreign or self.problems)


@dataclass(slots=True)
class Result:
    seed: int
    workdir: Path
    verdict: Verdict
    kills: Counter[str]
    actions: Counter[str]
    elapsed: float
    rate: float
    timeline: list[tuple[float, int, str]]
    segments: list[Segment]
    agent_errors: Counter[str]

    @property
    def ok(self) -> bool:
        return self.verdict.ok

    def summary(self) -> str:
        v = self.verdict
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(self.kills.items()))
        acts = ", ".join(f"{k} {n}" for k, n in sorted(self.actions.items()))
        errors = ", ".join(f"{k} {n}" for k, n in sorted(self.agent_errors.items())) or "none"
        return "\n".join(
            [
                f"seed {self.seed}",
                f"lines written {v.written:,} ({v.bad_written:,} bad), selected {v.selected:,}, "
                f"stored {v.stored:,}",
                f"lost {len(v.lost):,}, duplicated {len(v.duplicated):,}, "
                f"reordered {len(v.reordered):,}, foreign or bad stored {len(v.foreign):,}, "
                f"other problems {len(v.problems):,}",
                f"kills {sum(self.kills.values()):,} ({kinds})",
                f"actions: {acts}",
                f"lines of different files interleaved in the store (allowed): {v.interleavings:,}",
                f"agent errors logged: {errors}",
                f"elapsed {self.elapsed:.1f} s; writer {self.rate:,.0f} lines/s; "
                f"workdir {self.workdir}",
            ]
        )

    def report(self, examples: int = 5) -> str:
        """The summary, then precisely which lines went wrong and what happened around them."""
        v = self.verdict
        out = [self.summary()]
        if v.lost:
            spans = _runs(v.lost)
            out.append(f"LOST {len(v.lost):,} selected lines in {len(spans)} run(s):")
            for first, last, n in spans[:examples]:
                out.append(f"  seq {first}..{last} ({n} lines), {self._where(first)}")
                out.append(f"    {self._neighbours(first, last)}")
                out.extend(self._around(first, last))
        if v.duplicated:
            out.append(f"DUPLICATED {len(v.duplicated):,} lines:")
            for (first, a, b), (last, _, _), n in _grouped(v.duplicated)[:examples]:
                out.append(
                    f"  seq {first}..{last} ({n} lines) stored in {a} and again in {b}; "
                    f"{self._where(first)}"
                )
                out.extend(self._around(first, last))
        if v.reordered:
            out.append(f"REORDERED {len(v.reordered):,} lines:")
            for (first, after, w), (last, _, _), n in _grouped(v.reordered)[:examples]:
                out.append(
                    f"  seq {first}..{last} ({n} lines) stored in {w} after seq {after} of the "
                    f"same file; {self._where(first)}"
                )
                out.extend(self._around(first, last))
        if v.foreign:
            out.append(f"FOREIGN OR BAD LINES STORED {len(v.foreign):,}, first ones:")
            out.extend(f"  {line[:120]!r} in {w}" for line, w in v.foreign[:examples])
        out.extend(f"PROBLEM {p}" for p in v.problems[: examples * 4])
        if len(v.problems) > examples * 4:
            out.append(f"... and {len(v.problems) - examples * 4} more problems")
        out.append(
            f"agent log: {self.workdir / 'agent.log'}; checkpoint after each kill: "
            f"{self.workdir / 'checkpoints'}"
        )
        return "\n".join(out)

    def _neighbours(self, first: int, last: int) -> str:
        """Where the selected lines just before and just after a lost run were stored."""
        v = self.verdict
        before = next((s for s in range(first - 1, -1, -1) if v.stored_in[s]), None)
        after = next((s for s in range(last + 1, v.written) if v.stored_in[s]), None)
        text = [
            f"seq {s} is in {v.files[v.stored_in[s] - 1]}" for s in (before, after) if s is not None
        ]
        return "; ".join(text) or "no line around it was stored"

    def _where(self, seq: int) -> str:
        i = bisect.bisect_right([s.first for s in self.segments], seq) - 1
        seg = self.segments[i]
        return f"file content #{i} ({seg.what} at seq {seg.first})"

    def _around(self, first: int, last: int) -> list[str]:
        """The harness's actions from just before `first` was written to just after `last`."""
        seqs = [s for _, s, _ in self.timeline]
        lo = max(0, bisect.bisect_left(seqs, first) - 3)
        hi = bisect.bisect_right(seqs, last) + 3
        return [f"    t={t:7.2f} s  seq {s:>9}  {what}" for t, s, what in self.timeline[lo:hi]]


T = TypeVar("T", bound=tuple[Any, ...])


def _grouped(items: list[T], gap: int = 20) -> list[tuple[T, T, int]]:
    """Items (seq first) in runs of close sequence numbers: (first item, last item, count)."""
    groups: list[tuple[T, T, int]] = []
    for item in items:
        if groups and 0 <= item[0] - groups[-1][1][0] <= gap:
            first, _, n = groups[-1]
            groups[-1] = (first, item, n + 1)
        else:
            groups.append((item, item, 1))
    return groups


def _runs(seqs: list[int], gap: int = 20) -> list[tuple[int, int, int]]:
    spans: list[tuple[int, int, int]] = []
    for s in seqs:
        if spans and s - spans[-1][1] <= gap:
            first, _, n = spans[-1]
            spans[-1] = (first, s, n + 1)
        else:
            spans.append((s, s, 1))
    return spans


# ---- checking the stores -------------------------------------------------------------------------

ROTATED_STORE = re.compile(r"daily-(\d{4}-\d{2}-\d{2})(?:\.(\d+))?\.jsonl(\.gz)?")


def _name_key(path: Path) -> tuple[str, int]:
    m = ROTATED_STORE.fullmatch(path.name)
    assert m is not None
    return m[1], int(m[2] or 1)


def rotated_stores(store_dir: Path) -> list[Path]:
    """The rotated store files in name order: by period day, then .2, .3, ..."""
    return sorted(
        (p for p in store_dir.iterdir() if ROTATED_STORE.fullmatch(p.name)), key=_name_key
    )


@dataclass(frozen=True, slots=True)
class Queued:
    """A report in the outbox (or failed/): its meta and its message file."""

    meta: dict[str, Any]
    eml: Path


def queued_reports(workdir: Path) -> dict[str, list[Queued]]:
    """The outbox's reports by the rotated file they are about (its name before gzip)."""
    outbox = workdir / "state" / "outbox"
    found: dict[str, list[Queued]] = {}
    for d in (outbox, outbox / "failed"):
        if d.is_dir():
            for p in d.glob("*.json"):
                if not p.name.startswith(("_", ".")):
                    meta = orjson.loads(p.read_bytes())
                    found.setdefault(meta.get("rotated_file", "?"), []).append(
                        Queued(meta, p.with_suffix(".eml"))
                    )
    return found


def in_rotation_order(
    rotated: list[Path], reports: dict[str, list[Queued]], v: Verdict
) -> list[Path]:
    """The rotated files (given in name order) in the order of the periods their reports name.

    When the names agree with the periods, name order is kept, so that a file without exactly
    one report (a problem of its own) stays where its name puts it. When they disagree, the
    periods win and such files go last.
    """

    def period(path: Path) -> datetime | None:
        entries = reports.get(str(path).removesuffix(".gz"), [])
        return (
            datetime.fromisoformat(entries[0].meta["period_start"]) if len(entries) == 1 else None
        )

    starts = {p: period(p) for p in rotated}
    known = [p for p in rotated if starts[p] is not None]
    by_period = sorted(known, key=lambda p: (starts[p], _name_key(p)))
    if known == by_period:
        return rotated
    for before, after in itertools.pairwise(by_period):
        if _name_key(after) < _name_key(before):
            v.problems.append(
                f"{after.name} holds the period after {before.name}'s: rotated names out of "
                "rotation order (a name freed by pruning was given again?)"
            )
    return by_period + [p for p in rotated if starts[p] is None]


def _read_store(path: Path) -> Iterator[bytes]:
    """The lines of a store file, each with its newline (the last one may lack it)."""
    if path.suffix == ".gz":
        with gzip.open(path, "rb") as gz:
            yield from gz
    else:
        with path.open("rb") as f:
            yield from f


def verify(workdir: Path, written: int, segments: Sequence[Segment]) -> Verdict:
    """Every stored line against what was written; then the reports and their figures."""
    v = Verdict(written=written)
    v.bad_written = sum(1 for s in range(written) if bad_kind(s) is not None)
    firsts = [s.first for s in segments]
    v.stored_in = seen = array("H", bytes(2 * written))
    last_of_segment: dict[int, int] = {}
    previous = -1
    store_dir = workdir / "store"
    reports = queued_reports(workdir)
    rotated = in_rotation_order(rotated_stores(store_dir), reports, v)
    for path in [*rotated, store_dir / "daily.jsonl"]:
        if not path.exists():
            v.problems.append(f"{path} does not exist")
            continue
        v.files.append(path.name)
        for raw in _read_store(path):
            if not raw.endswith(b"\n"):
                v.problems.append(f"{path} ends with a line without its newline: {raw[:80]!r}")
            line = raw.removesuffix(b"\n")
            v.stored += 1
            m = SEQ.search(line)
            seq = int(m[1]) if m else -1
            if not 0 <= seq < written or line != make_line(seq) or not is_selected(seq):
                v.foreign.append((line, path.name))
                continue
            if seen[seq]:
                v.duplicated.append((seq, v.files[seen[seq] - 1], path.name))
                continue
            seen[seq] = len(v.files)
            segment = bisect.bisect_right(firsts, seq) - 1
            last = last_of_segment.get(segment, -1)
            if seq < last:
                v.reordered.append((seq, last, path.name))
            last_of_segment[segment] = max(last, seq)
            if seq < previous:
                v.interleavings += 1
            previous = seq
    v.lost = [s for s in range(written) if not seen[s] and is_selected(s)]
    v.selected = sum(1 for s in range(written) if is_selected(s))
    _check_reports(workdir, rotated, reports, v)
    return v


def verify_again(workdir: Path) -> Verdict:
    """`verify` on the work directory of a finished run (from its run.json)."""
    record = orjson.loads((workdir / "run.json").read_bytes())
    return verify(workdir, record["written"], [Segment(**s) for s in record["segments"]])


def _count_lines(path: Path) -> int:
    return sum(1 for _ in _read_store(path))


def _check_reports(
    workdir: Path, rotated: list[Path], reports: dict[str, list[Queued]], v: Verdict
) -> None:
    """One queued report per rotated store file; figures that match the files and add up."""
    by_file = dict(reports)
    read = skipped = 0
    for path in rotated:
        plain = str(path).removesuffix(".gz")
        entries = by_file.pop(plain, [])
        if not entries:
            v.problems.append(f"{path.name}: no report in the outbox for this period's file")
            continue
        if len(entries) > 1:
            v.problems.append(
                f"{path.name}: reported {len(entries)} times: {[e.eml.name for e in entries]}"
            )
            continue
        eml = entries[0].eml
        with eml.open("rb") as f:
            headers = email.parser.BytesHeaderParser(policy=email.policy.default).parse(f)
        m = SUBJECT_FIGURES.search(str(headers["subject"]))
        if m is None:
            v.problems.append(f"{eml.name}: no figures in the subject {headers['subject']!r}")
            continue
        selected, r, s = (int(g.replace(",", "")) for g in m.groups())
        lines = _count_lines(path)
        if selected != lines:
            v.problems.append(f"{eml.name} says {selected} selected; {path.name} holds {lines}")
        read += r
        skipped += s
    for name, entries in by_file.items():
        v.problems.append(
            f"queued report(s) {[e.eml.name for e in entries]} for {name}, not on disk"
        )
    checkpoint = orjson.loads((workdir / "state" / "checkpoint.json").read_bytes())
    live = checkpoint["reports"]["daily"]["stats"]
    lines = _count_lines(workdir / "store" / "daily.jsonl")
    if live["selected"] != lines:
        v.problems.append(
            f"the live period counts {live['selected']} selected; the store holds {lines}"
        )
    read += live["read"]
    skipped += sum(live["skipped"].values())
    if read != v.written:
        v.problems.append(f"the periods count {read:,} lines read; {v.written:,} were written")
    if skipped != v.bad_written:
        v.problems.append(
            f"the periods count {skipped:,} skipped; {v.bad_written:,} bad lines were written"
        )


# ---- the run ---------------------------------------------------------------------------------------

KINDS = ("running", "after-rename", "after-copytruncate", "store-rotation", "startup")
STORE_MOMENTS = ("random", "renamed", "queued", "returned", "burst")


@dataclass(frozen=True, slots=True)
class Plan:
    seed: int
    kills: int  # SIGKILLs of the agent, at least
    min_lines: int = 0  # lines written, at least: the run goes on killing until both are reached
    rate: int = 10_000  # lines per second
    keep_sources: int = 3  # rotated source files kept (events.json.1 .. .3)
    kinds: tuple[str, ...] | None = None  # the kill moments in order; None: random ones
    store_moments: tuple[str, ...] = ()  # the steps of the first store rotations killed at;
    # random ones after these (see FaultRun._kill_in_store_rotation)
    max_up: float = 0.6  # seconds between READY and the kill (or the action before it)
    max_down: float = 0.3  # seconds the agent stays dead
    rotate_while_down: float = 0.2  # probability of a source rotation while the agent is down
    progress_every: int = 0  # print a progress line every this many kills (0: never)


class FaultRun:
    """One run: the writer, the agent started and killed cycle after cycle, the final check."""

    def __init__(
        self, workdir: Path, plan: Plan, out: Callable[[str], None] = lambda s: None
    ) -> None:
        self.workdir = workdir
        self.plan = plan
        self.out = out
        self.rng = random.Random(plan.seed)
        self.logs = workdir / "logs"
        self.checkpoints = workdir / "checkpoints"
        for d in (self.logs, workdir / "rules.d", workdir / "store", self.checkpoints):
            d.mkdir(parents=True, exist_ok=True)
        (workdir / "rules.d" / "picked.yaml").write_text(RULE)
        self.writer = Writer(self.logs, plan.rate, random.Random(self.rng.random()))
        self.kills: Counter[str] = Counter()
        self.actions: Counter[str] = Counter()
        self.timeline: list[tuple[float, int, str]] = []
        self.agent: Agent | None = None
        self._t0 = time.monotonic()
        # Deliveries go to a port that refuses connections: reports stay queued, nothing is lost.
        self._closed = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._closed.bind(("127.0.0.1", 0))
        self.config = write_config(
            workdir / "config.yaml",
            {
                "state_dir": str(workdir / "state"),
                "rules_dir": str(workdir / "rules.d"),
                "sources": [
                    {
                        "name": "app",
                        "path": str(self.logs / "events.json*"),
                        "start_at": "beginning",
                        "max_line_bytes": MAX_LINE,
                    }
                ],
                "reports": [
                    {
                        "name": "daily",
                        "store": str(workdir / "store" / "daily.jsonl"),
                        "timezone": "UTC",
                        "to": ["ops@example.com"],
                        "subject": SUBJECT,
                    }
                ],
                "smtp": {
                    "host": "127.0.0.1",
                    "port": self._closed.getsockname()[1],
                    "security": "none",
                    "from": "tailmail@example.com",
                    "timeout": 5,
                },
                "log": {"level": "info", "format": "json"},
            },
        )

    # ---- the run ----

    def run(self) -> Result:
        try:
            self.writer.start()
            self._note("writer started")
            planned = list(self.plan.kinds or ())
            while kind := self._next_kind(planned):
                self._cycle(kind)
                self.writer.check()
                done = sum(self.kills.values())
                if self.plan.progress_every and done % self.plan.progress_every == 0:
                    self.out(
                        f"  {done:,} kills, {self.writer.seq:,} lines written, "
                        f"{time.monotonic() - self._t0:.0f} s"
                    )
            self._finish()
        finally:
            self.writer.halt()  # already stopped, unless the run failed part-way
            if self.agent is not None and self.agent.proc.poll() is None:
                self.agent.kill()
            self._closed.close()
            record = {"written": self.writer.seq, "segments": self.writer.segments}
            (self.workdir / "run.json").write_bytes(orjson.dumps(record))
            (self.workdir / "timeline.txt").write_text(
                "".join(f"{t:9.3f} s  seq {seq:>10}  {what}\n" for t, seq, what in self.timeline)
            )
        verdict = verify(self.workdir, self.writer.seq, self.writer.segments)
        return Result(
            seed=self.plan.seed,
            workdir=self.workdir,
            verdict=verdict,
            kills=self.kills,
            actions=self.actions,
            elapsed=time.monotonic() - self._t0,
            rate=self.writer.seq / self.writer.active if self.writer.active else 0.0,
            timeline=self.timeline,
            segments=self.writer.segments,
            agent_errors=self._agent_errors(),
        )

    def _next_kind(self, planned: list[str]) -> str | None:
        """The plan's next kill moment; with no plan, random ones until kills and lines are done."""
        if planned:
            return planned.pop(0)
        if self.plan.kinds is not None:
            return None
        if sum(self.kills.values()) < self.plan.kills or self.writer.seq < self.plan.min_lines:
            return self.rng.choices(KINDS, weights=(3, 2, 2, 2, 1))[0]
        return None

    def _cycle(self, kind: str) -> None:
        """The agent is down: maybe rotate the source, start the agent, kill it at `kind`."""
        rng = self.rng
        if rng.random() < self.plan.rotate_while_down and self._make_room(agent_up=False):
            self._rotate_source(rng.choice(("rename", "copytruncate")), "while the agent is down")
        _pause(rng.uniform(0, self.plan.max_down))
        self._start()
        if kind == "startup":
            _pause(rng.uniform(0, 0.5))
            self._kill(kind)
            return
        self._wait_ready()
        _pause(rng.uniform(0, self.plan.max_up))
        if kind in ("after-rename", "after-copytruncate"):
            self._make_room(agent_up=True)
            self._rotate_source(kind.removeprefix("after-"), "")
            _pause(rng.uniform(0, 0.15))
            self._kill(kind)
        elif kind == "store-rotation":
            self._kill_in_store_rotation()
        else:
            self._kill(kind)

    def _kill_in_store_rotation(self) -> None:
        """Start `tailmail rotate` and kill the agent at one of the rotation's steps.

        `random`: anywhere from before the request arrives to after the reply; `renamed`: as
        soon as the store has become a rotated file; `queued`: as soon as the report's message
        is in the outbox; `returned`: right after the command has returned; `burst`: two
        rotations, started early in a second of the wall clock so that both fall within it (as
        manual rotations can), then a third one, killed anywhere. Periods then start less than a
        second apart.
        """
        moments = self.plan.store_moments
        done = sum(v for k, v in self.actions.items() if k.startswith("store rotation kill"))
        moment = moments[done] if done < len(moments) else self.rng.choice(STORE_MOMENTS)
        if moment == "burst":
            _poll(lambda: time.time() % 1.0 < 0.2, timeout=2.0)
            self._rotate_store_whole()
            self._rotate_store_whole()
        store_dir, outbox = self.workdir / "store", self.workdir / "state" / "outbox"
        rotated, emls = len(rotated_stores(store_dir)), len(list(outbox.glob("*.eml")))
        rotate = self._rotate_store()
        if moment in ("random", "burst"):
            _pause(self.rng.uniform(0, 0.5))
        elif moment == "renamed":
            _poll(lambda: len(rotated_stores(store_dir)) > rotated or rotate.poll() is not None)
        elif moment == "queued":
            _poll(lambda: len(list(outbox.glob("*.eml"))) > emls or rotate.poll() is not None)
        else:
            _poll(lambda: rotate.poll() is not None)
        self.actions[f"store rotation kill: {moment}"] += 1
        self._kill("store-rotation")
        self._rotate_store_done(rotate)

    def _rotate_store_whole(self) -> int:
        rotate = self._rotate_store()
        self._rotate_store_done(rotate)
        return rotate.returncode

    def _rotate_store_done(self, rotate: subprocess.Popen[bytes]) -> None:
        said = _said(rotate.communicate(timeout=120)[0])
        self._note(f"`tailmail rotate` exited {rotate.returncode}: {said}")
        self.actions[f"store rotations (exit {rotate.returncode})"] += 1

    def _rotate_store(self) -> subprocess.Popen[bytes]:
        rotate = subprocess.Popen(
            [sys.executable, "-m", "agent", "rotate", "-c", str(self.config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        self._note("`tailmail rotate` started")
        return rotate

    def _finish(self) -> None:
        """Stop writing, let the agent read everything, rotate the store once more, stop."""
        self._start()
        self._wait_ready()
        self.writer.stop()
        self._note("writer stopped")
        wait_for(self._caught_up, "the agent to read every source file to its end", 120)
        assert self.agent is not None
        self._note("caught up")
        if self._rotate_store_whole() != 0:
            raise AssertionError(
                f"the last `tailmail rotate` failed; see {self.workdir}/timeline.txt"
            )
        code = self.agent.stop()
        self._note(f"agent stopped with SIGTERM, exit {code}")
        if code != 0:
            raise AssertionError(f"the agent exited {code} on SIGTERM:\n{_tail(self.agent.log())}")

    # ---- the agent ----

    def _start(self) -> None:
        self.agent = Agent(self.config, self.workdir)
        self._note("agent started")

    def _wait_ready(self) -> None:
        assert self.agent is not None
        self.agent.wait_ready()
        self._note("READY")

    def _kill(self, kind: str) -> None:
        agent = self.agent
        assert agent is not None
        if agent.proc.poll() is not None:
            raise AssertionError(
                f"the agent exited by itself with {agent.proc.returncode}:\n{_tail(agent.log())}"
            )
        agent.kill()  # SIGKILL
        self.kills[kind] += 1
        n = sum(self.kills.values())
        self._note(f"KILL #{n} ({kind})")
        checkpoint = self.workdir / "state" / "checkpoint.json"
        if checkpoint.exists():
            shutil.copyfile(checkpoint, self.checkpoints / f"kill-{n:04d}.json")

    # ---- the source ----

    def _rotate_source(self, how: str, when: str) -> None:
        if how == "rename":
            self.writer.rotate_rename(tail=self.rng.uniform(0, 0.05))
        else:
            self.writer.rotate_copytruncate()
        self.actions[f"source {how}"] += 1
        self._note(f"source rotated: {how} {when}".rstrip())

    def _make_room(self, agent_up: bool) -> bool:
        """Delete the oldest rotated source files beyond `keep_sources`, once they are read.

        With the agent down a file not yet read to its end cannot be deleted: False.
        """
        self.writer.wait_switched()
        files = rotated_sources(self.logs)
        while len(files) >= self.plan.keep_sources:
            oldest = files[-1]
            if not self._consumed(oldest):
                if not agent_up:
                    return False
                wait_for(partial(self._consumed, oldest), f"the agent to read {oldest} to its end")
            oldest.unlink()
            self._note(f"deleted {oldest.name}, read to its end")
            files.pop()
        return True

    def _consumed(self, path: Path) -> bool:
        """Whether the checkpoint shows `path` read to its end (by identity and content)."""
        try:
            st = path.stat()
            if st.st_size == 0:
                return True
            checkpoint = orjson.loads((self.workdir / "state" / "checkpoint.json").read_bytes())
        except FileNotFoundError:
            return False
        entry = checkpoint["files"].get(f"app:{st.st_dev}:{st.st_ino}")
        if entry is None or entry["offset"] != st.st_size:
            return False
        fingerprint: str = entry["fingerprint"]
        with path.open("rb") as f:
            return hashlib.sha256(f.read(entry["fp_len"])).hexdigest() == fingerprint

    def _caught_up(self) -> bool:
        assert self.agent is not None
        if self.agent.proc.poll() is not None:
            raise AssertionError(f"the agent exited:\n{_tail(self.agent.log())}")
        return all(self._consumed(p) for p in self.logs.glob("events.json*"))

    # ---- records ----

    def _note(self, what: str) -> None:
        self.timeline.append((time.monotonic() - self._t0, self.writer.seq, what))

    def _agent_errors(self) -> Counter[str]:
        errors: Counter[str] = Counter()
        log = self.workdir / "agent.log"
        if not log.exists():
            return errors
        with log.open("rb") as f:
            for raw in f:
                try:
                    entry = orjson.loads(raw)
                except orjson.JSONDecodeError:
                    errors[f"not JSON: {raw[:60]!r}"] += 1  # a traceback, or a torn line
                    continue
                if isinstance(entry, dict) and entry.get("level") in ("error", "critical"):
                    errors[str(entry.get("event"))] += 1
        return errors


def _pause(seconds: float) -> None:
    """A random delay that places the next fault; never a wait for a condition."""
    time.sleep(seconds)


def _poll(condition: Callable[[], bool], timeout: float = 30.0) -> bool:
    """Wait for `condition`, looking every millisecond: a kill that follows lands close to it."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.001)
    return True


def _said(output: bytes) -> str:
    """A command's output on one line; of a traceback, its last line."""
    lines = output.decode(errors="replace").strip().splitlines()
    if lines and lines[0].startswith("Traceback"):
        return f"traceback: {lines[-1]}"
    return " | ".join(lines)


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.splitlines()[-lines:])
