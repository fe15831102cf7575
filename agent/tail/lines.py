"""Bytes from a file -> whole lines -> JSON events. Pure: no files, no clock.

`LineSplitter` turns the chunks read from one file into complete lines, keeping a partial last
line until its newline arrives and refusing to hold more than `max_line` bytes of one line:
an over-long line is dropped while it streams past, and reading resynchronises at the next
newline. Classifying a bad line (why it failed) happens only on the error path.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

EMPTY = "empty"
MALFORMED = "malformed JSON"
NOT_OBJECT = "not a JSON object"
INVALID_UTF8 = "invalid UTF-8"
NUL = "NUL bytes"
TOO_LONG = "line too long"


@dataclass(slots=True)
class Chunk:
    """The complete lines of one read, and where they start in the file."""

    lines: list[bytes]  # without their b"\n"; a b"\r" before it is kept
    start: int  # file offset of lines[0]
    end: int  # file offset just after the last consumed byte (a newline, or skipped bytes)
    too_long: list[int] = field(default_factory=list)  # offsets of lines dropped while streaming
    long: dict[int, int] = field(default_factory=dict)  # index in lines -> length, for lines
    # dropped from this chunk because they are over the limit (their slot holds b"")


class Positions:
    """File offsets of a chunk's lines, walked forward only when a bad line needs one."""

    __slots__ = ("_chunk", "_index", "_pos")

    def __init__(self, chunk: Chunk) -> None:
        self._chunk = chunk
        self._index = 0
        self._pos = chunk.start

    def at(self, index: int) -> int:
        """Offset of lines[index]; indexes must not decrease between calls."""
        lines, long = self._chunk.lines, self._chunk.long
        i = self._index
        if i < index:
            # Summed in C; the lines dropped as too long hold b"" and add their true length.
            self._pos += sum(map(len, lines[i:index])) + (index - i)
            self._pos += sum(n for k, n in long.items() if i <= k < index)
            self._index = index
        return self._pos


@dataclass(slots=True)
class LineSplitter:
    """Splits one file's bytes into lines; `offset` is where the unconsumed bytes begin."""

    max_line: int
    offset: int = 0
    skipping: bool = False  # inside an over-long line, dropping bytes up to the next newline
    carry: bytes = b""  # a partial line, read but not yet complete

    @property
    def read_pos(self) -> int:
        """Where the next read must start."""
        return self.offset + len(self.carry)

    def feed(self, data: bytes) -> Chunk:
        """Take the bytes read at `read_pos`; return the complete lines they finish."""
        start = self.offset
        chunk = Chunk([], start, start)
        if self.skipping:
            nl = data.find(b"\n")
            if nl < 0:
                self.offset += len(data)
                chunk.start = chunk.end = self.offset
                return chunk
            self.skipping = False
            self.offset += nl + 1
            data = data[nl + 1 :]
            chunk.start = chunk.end = self.offset
        last = data.rfind(b"\n")
        if last < 0:
            buf = self.carry + data
            if len(buf) > self.max_line:
                # Drop what we hold rather than grow without bound; the line is counted once.
                chunk.too_long.append(self.offset)
                self.offset += len(buf)
                self.carry = b""
                self.skipping = True
                chunk.end = self.offset
            else:
                self.carry = buf
            return chunk
        # Split the read itself and join the carried part to its first line only: gluing the
        # carry to the whole read would copy every byte once more.
        lines = data.split(b"\n")
        tail = lines.pop()
        consumed = len(self.carry) + last + 1
        if self.carry:
            lines[0] = self.carry + lines[0]
        if consumed > self.max_line and self._any_long(lines, len(data)):
            self._drop_long(lines, chunk)
        self.carry = tail
        if len(tail) > self.max_line:
            self.skipping = True
        chunk.lines = lines
        self.offset += consumed
        chunk.end = self.offset
        if self.skipping:
            chunk.too_long.append(self.offset)
            self.offset += len(tail)
            self.carry = b""
            chunk.end = self.offset
        return chunk

    def _any_long(self, lines: list[bytes], read: int) -> bool:
        if read <= self.max_line:
            return len(lines[0]) > self.max_line  # the others lie within the read
        return max(map(len, lines)) > self.max_line

    def _drop_long(self, lines: list[bytes], chunk: Chunk) -> None:
        for i, line in enumerate(lines):
            if len(line) > self.max_line:
                # Replaced by an empty line so indexes stay; `long` keeps its true length.
                chunk.long[i] = len(line)
                lines[i] = b""


def classify(line: bytes) -> tuple[str, Any]:
    """Decode one line; return (reason, None) for a bad line, ("", event) for a good one.

    The hot path calls orjson.loads directly and only comes here for lines that failed or are
    not objects, so the reason is worked out only when something is wrong.
    """
    if not line.strip():
        return EMPTY, None
    if b"\x00" in line:
        return NUL, None
    try:
        value = orjson.loads(line)
    except orjson.JSONDecodeError:
        try:
            line.decode("utf-8")
        except UnicodeDecodeError:
            return INVALID_UTF8, None
        return MALFORMED, None
    if type(value) is not dict:
        return NOT_OBJECT, None
    return "", value


def sample(line: bytes, limit: int = 120) -> str:
    """A short, printable excerpt of a bad line for logs and reports."""
    text = line[:limit].decode("utf-8", "backslashreplace").replace("\x00", "\\x00")
    return text + ("…" if len(line) > limit else "")
