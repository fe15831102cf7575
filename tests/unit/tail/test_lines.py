"""Decoding: bytes in arbitrary chunks -> whole lines with their offsets -> JSON events."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from itertools import pairwise
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.tail.eventtime import event_time, time_reader
from agent.tail.lines import (
    EMPTY,
    INVALID_UTF8,
    MALFORMED,
    NOT_OBJECT,
    NUL,
    Chunk,
    LineSplitter,
    Positions,
    classify,
    sample,
)

BIG = 1 << 30  # a limit no generated line reaches

# Few distinct pieces, so that newlines, CRs and repeated bytes are frequent.
PIECES = [b"a", b"b", b"\n", b"\n", b"\r", b"\x00", b"\xff", b"xyz", b'{"k":1}']
data_strategy = st.lists(st.sampled_from(PIECES), max_size=120).map(b"".join)


# ---- a reference model and a driver ----------------------------------------------------------


def model(data: bytes, max_line: int) -> tuple[list[tuple[int, bytes]], list[int]]:
    """The good lines (offset, bytes) and the offsets of the over-long lines, by definition."""
    good: list[tuple[int, bytes]] = []
    long: list[int] = []
    pos = 0
    parts = data.split(b"\n")
    for part in parts[:-1]:
        if len(part) > max_line:
            long.append(pos)
        else:
            good.append((pos, part))
        pos += len(part) + 1
    if len(parts[-1]) > max_line:
        long.append(pos)  # an unfinished line already over the limit is counted while streaming
    return good, long


def cut(data: bytes, points: list[int]) -> list[bytes]:
    """`data` split at the given points (any order, repeats allowed: empty pieces too)."""
    bounds = [0, *sorted(p % (len(data) + 1) for p in points), len(data)]
    return [data[a:b] for a, b in pairwise(bounds)]


class Collector:
    """Feeds pieces to a splitter and records what it emits, checking each chunk as it goes."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.good: list[tuple[int, bytes]] = []
        self.long: list[int] = []

    def feed(self, splitter: LineSplitter, piece: bytes) -> Chunk:
        read_pos = splitter.read_pos
        assert self.data[read_pos : read_pos + len(piece)] == piece, "fed at the wrong position"
        chunk = splitter.feed(piece)
        fed_to = read_pos + len(piece)
        assert chunk.end == splitter.offset
        assert chunk.start <= chunk.end <= fed_to
        positions = Positions(chunk)
        for i, line in enumerate(chunk.lines):
            offset = positions.at(i)
            length = chunk.long.get(i, len(line))
            # Never a partial line: the newline that ends it has been fed, and lies in the chunk.
            assert offset + length < fed_to
            assert self.data[offset + length : offset + length + 1] == b"\n"
            assert offset + length + 1 <= chunk.end
            if i in chunk.long:
                assert line == b""
                self.long.append(offset)
            else:
                self.good.append((offset, line))
        self.long.extend(chunk.too_long)
        return chunk

    def check(self, max_line: int) -> None:
        good, long = model(self.data, max_line)
        assert self.good == good
        assert sorted(self.long) == long  # each over-long line exactly once, at its true offset


# ---- LineSplitter properties -------------------------------------------------------------------


@settings(max_examples=400)
@given(data=data_strategy, points=st.lists(st.integers(0, 10_000), max_size=12))
def test_any_split_yields_exactly_the_complete_lines(data: bytes, points: list[int]) -> None:
    """Any chunking of any bytes yields data.split(b"\\n")[:-1], in order, at true offsets."""
    splitter = LineSplitter(BIG)
    collector = Collector(data)
    for piece in cut(data, points):
        collector.feed(splitter, piece)
    collector.check(BIG)
    tail = data.split(b"\n")[-1]
    assert splitter.carry == tail
    assert splitter.offset == len(data) - len(tail)
    assert splitter.read_pos == len(data)
    assert not splitter.skipping


@settings(max_examples=600)
@given(
    data=data_strategy,
    points=st.lists(st.integers(0, 10_000), max_size=12),
    max_line=st.integers(0, 8),
)
def test_over_long_lines_are_dropped_once_at_their_offset(
    data: bytes, points: list[int], max_line: int
) -> None:
    """Lines over max_line are dropped and counted once at their offset, whatever the chunking."""
    splitter = LineSplitter(max_line)
    collector = Collector(data)
    for piece in cut(data, points):
        collector.feed(splitter, piece)
        assert len(splitter.carry) <= max_line, "an over-long line is never held"
    collector.check(max_line)
    assert splitter.read_pos == len(data)


@settings(max_examples=400)
@given(
    data=data_strategy,
    first=st.lists(st.integers(0, 10_000), max_size=8),
    second=st.lists(st.integers(0, 10_000), max_size=8),
    stop=st.integers(0, 20),
    max_line=st.sampled_from([0, 1, 3, 6, BIG]),
)
def test_restart_at_a_consumed_offset_loses_and_repeats_nothing(
    data: bytes, first: list[int], second: list[int], stop: int, max_line: int
) -> None:
    """A new splitter at a consumed offset (with its skipping flag) continues seamlessly."""
    splitter = LineSplitter(max_line)
    collector = Collector(data)
    pieces = cut(data, first)
    for piece in pieces[: stop % (len(pieces) + 1)]:
        collector.feed(splitter, piece)
    # What a checkpoint keeps: the consumed offset and whether it is inside an over-long line.
    # The carried partial line is not kept: it is read again from the file.
    resumed = LineSplitter(max_line, splitter.offset, splitter.skipping)
    assert resumed.read_pos == splitter.offset
    for piece in cut(data[resumed.read_pos :], second):
        collector.feed(resumed, piece)
    collector.check(max_line)


def test_long_line_streamed_byte_by_byte_is_counted_once() -> None:
    """A line over the limit arriving one byte at a time is dropped, counted once, not held."""
    data = b"first\n" + b"x" * 50 + b"\nnext\n"
    splitter = LineSplitter(10)
    collector = Collector(data)
    for i in range(len(data)):
        collector.feed(splitter, data[i : i + 1])
        assert len(splitter.carry) <= 10
    assert collector.good == [(0, b"first"), (57, b"next")]
    assert collector.long == [6]


def test_long_line_inside_one_chunk_is_replaced_and_measured() -> None:
    """An over-long line within one read keeps its slot (b"") and its true length in `long`."""
    data = b"a\n" + b"y" * 20 + b"\nb\n"
    chunk = LineSplitter(5).feed(data)
    assert chunk.lines == [b"a", b"", b"b"]
    assert chunk.long == {1: 20}
    assert chunk.too_long == []
    positions = Positions(chunk)
    assert [positions.at(i) for i in range(3)] == [0, 2, 23]
    assert chunk.end == len(data)


def test_long_unfinished_line_is_dropped_and_next_line_is_intact() -> None:
    """A partial line passing the limit is dropped while open; reading resumes after its newline."""
    splitter = LineSplitter(4)
    first = splitter.feed(b"ok\nabcdefgh")
    assert first.lines == [b"ok"]
    assert first.too_long == [3]
    assert splitter.skipping
    assert splitter.carry == b""
    second = splitter.feed(b"ij\nfine\n")
    assert second.lines == [b"fine"]
    assert second.start == 14
    assert second.too_long == []
    assert not splitter.skipping


def test_partial_line_waits_for_its_newline() -> None:
    """A line without its newline is held, not emitted, and emitted whole when it ends."""
    splitter = LineSplitter(100)
    assert splitter.feed(b'{"a":').lines == []
    assert splitter.feed(b"1}").lines == []
    chunk = splitter.feed(b"\n")
    assert chunk.lines == [b'{"a":1}']
    assert (chunk.start, chunk.end) == (0, 8)


def test_carriage_return_before_newline_is_kept() -> None:
    """The bytes of a line are everything before its \\n: a \\r before it stays."""
    chunk = LineSplitter(100).feed(b'{"a":1}\r\n\r\n')
    assert chunk.lines == [b'{"a":1}\r', b"\r"]


def test_line_of_exactly_max_line_is_kept() -> None:
    """The limit is inclusive: a line of exactly max_line bytes is a normal line."""
    splitter = LineSplitter(4)
    assert splitter.feed(b"abcd").lines == []
    chunk = splitter.feed(b"\nabcde\n")
    assert chunk.lines == [b"abcd", b""]
    assert chunk.long == {1: 5}


@given(data=data_strategy, indexes=st.sets(st.integers(0, 200)))
def test_positions_agree_with_offsets_when_called_sparsely(data: bytes, indexes: set[int]) -> None:
    """Positions.at gives the same offset whether or not earlier indexes were asked for."""
    chunk = LineSplitter(3).feed(data)
    dense = Positions(chunk)
    every = [dense.at(i) for i in range(len(chunk.lines))]
    sparse = Positions(chunk)
    for i in sorted(i for i in indexes if i < len(chunk.lines)):
        assert sparse.at(i) == every[i]


# ---- classify -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b"", EMPTY),
        (b"   \t", EMPTY),
        (b"\r", EMPTY),
        (b'{"a":"\x00"}', NUL),
        (b"\x00", NUL),
        (b'{"a":"\xff"}', INVALID_UTF8),
        (b"\xc3\x28", INVALID_UTF8),
        (b'{"a":1', MALFORMED),
        (b'{"a":1} trailing', MALFORMED),
        (b"not json", MALFORMED),
        (b"[1, 2]", NOT_OBJECT),
        (b"42", NOT_OBJECT),
        (b'"text"', NOT_OBJECT),
        (b"null", NOT_OBJECT),
    ],
)
def test_classify_names_the_reason_of_a_bad_line(line: bytes, reason: str) -> None:
    """Every kind of bad line gets its own reason and no event."""
    assert classify(line) == (reason, None)


def test_classify_returns_the_event_of_a_good_line() -> None:
    """A JSON object (a \\r before the newline included) decodes to its event."""
    assert classify(b'{"event":"login","n":1}\r') == ("", {"event": "login", "n": 1})
    assert classify('{"user":"jürgen"}'.encode()) == ("", {"user": "jürgen"})


def test_sample_is_short_and_printable() -> None:
    """A sample of a bad line is cut at the limit and shows NUL and invalid bytes escaped."""
    assert sample(b"a\x00\xff") == "a\\x00\\xff"
    assert sample(b"x" * 200, limit=10) == "x" * 10 + "…"


# ---- event_time -----------------------------------------------------------------------------

BERLIN = ZoneInfo("Europe/Berlin")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2026-11-21T10:00:00Z", datetime(2026, 11, 21, 10, tzinfo=UTC)),
        ("2026-11-21T10:00:00.250Z", datetime(2026, 11, 21, 10, 0, 0, 250_000, tzinfo=UTC)),
        (
            "2026-11-21T10:00:00+05:30",
            datetime(2026, 11, 21, 10, tzinfo=timezone(timedelta(hours=5, minutes=30))),
        ),
        ("2026-11-21 10:00:00", datetime(2026, 11, 21, 10, tzinfo=BERLIN)),  # naive: default zone
        (1_700_000_000, datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)),
        (1_700_000_000.5, datetime(2023, 11, 14, 22, 13, 20, 500_000, tzinfo=UTC)),
        (1_700_000_000_000, datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)),  # milliseconds
        (1_700_000_000_250.0, datetime(2023, 11, 14, 22, 13, 20, 250_000, tzinfo=UTC)),
        (0, datetime(1970, 1, 1, tzinfo=UTC)),
    ],
)
def test_event_time_reads_iso_and_epoch(value: Any, expected: datetime) -> None:
    """ISO 8601 (Z, offset, naive in the default zone) and epoch s/ms give the same instant."""
    got = event_time(value, BERLIN)
    assert got == expected
    assert got is not None
    assert got.tzinfo is not None


def test_event_time_naive_uses_the_default_zone() -> None:
    """A time without an offset is read in the zone it is given, not in UTC."""
    got = event_time("2026-07-01T12:00:00", BERLIN)
    assert got is not None
    assert got.astimezone(UTC) == datetime(2026, 7, 1, 10, tzinfo=UTC)
    assert event_time("2026-07-01T12:00:00") == datetime(2026, 7, 1, 12, tzinfo=UTC)


@pytest.mark.parametrize(
    "value",
    [
        "yesterday",
        "",
        "2026-13-01T00:00:00Z",
        True,
        False,
        None,
        [1_700_000_000],
        {"s": 1},
        float("nan"),
        float("inf"),
        10**30,
    ],
)
def test_event_time_of_garbage_is_none(value: Any) -> None:
    """Text that is no ISO time, booleans, containers, NaN and out-of-range numbers give None."""
    assert event_time(value) is None


ARRIVAL = datetime(2030, 1, 1, tzinfo=UTC)
TIME_VALUES = [
    "2026-11-21T10:00:00Z", "2026-11-21T10:00:00.250Z", "2026-11-21T10:00:00+05:30",
    "2026-11-21 10:00:00", "yesterday", "", "2026-13-01T00:00:00Z", 1_700_000_000,
    1_700_000_000_000, 0, True, None, [1], {"s": 1}, float("nan"), 10**30,
]  # fmt: skip


@pytest.mark.parametrize("value", TIME_VALUES)
def test_time_reader_says_what_event_time_says_or_arrival(value: Any) -> None:
    """The hot path's reader of event times agrees with event_time; arrival time otherwise."""
    read = time_reader("ts", BERLIN, lambda: ARRIVAL)
    expected = event_time(value, BERLIN)
    got = read({"ts": value})
    assert got == (expected if expected is not None else ARRIVAL)
    assert got.utcoffset() == (expected or ARRIVAL).utcoffset()
    assert read({"other": value}) == ARRIVAL  # no time field in the event
    assert time_reader(None, BERLIN, lambda: ARRIVAL)({"ts": value}) == ARRIVAL
