"""Text for people: numbers with separators, sizes, durations, and values made safe to show.

Values from outside (event fields, file names, server answers) reach mail headers, report bodies
and terminals: here they lose what could break a header or hide in a body (line breaks, control
characters), and file names that are not UTF-8 become readable escapes. Pure, stdlib only.
"""

from __future__ import annotations

import os
import re
from datetime import datetime, timedelta


def display_path(path: str) -> str:
    """A file name as text that can be written anywhere (JSON, mail, a terminal): names that
    are not UTF-8 come from the OS with surrogate escapes, shown here as `\\xff`."""
    if path.isascii():
        return path
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return os.fsencode(path).decode("utf-8", "backslashreplace")
    return path


# Characters str.splitlines() breaks on: the email package refuses any of them in a header.
_BREAKS = re.compile("[\r\n\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]+")


_CONTROLS = re.compile("[\x00-\x08\x0e-\x1f\x7f]")


_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _escape(m: re.Match[str]) -> str:
    code = ord(m.group())
    return f"\\x{code:02x}" if code < 256 else f"\\u{code:04x}"


def one_line(text: str) -> str:
    """A header-safe value: line breaks become one space, NUL and other controls go."""
    return _CONTROLS.sub("", _BREAKS.sub(" ", text)).strip()


def clean(text: str, limit: int) -> str:
    """Event or config text fit for the body: controls shown as escapes, cut at `limit`."""
    shown = _UNPRINTABLE.sub(_escape, text)
    if len(shown) > limit:
        return f"{shown[:limit]}... ({figure(len(shown) - limit)} more characters)"
    return shown


def figure(count: int) -> str:
    return f"{count:,}"


def line_count(count: int) -> str:
    return f"{figure(count)} line{'s' if count != 1 else ''}"


def more(count: int, what: str) -> str:
    return f"... and {figure(count)} more {what}" if count > 0 else ""


def size_text(size: int) -> str:
    """`812 bytes`, `12.3 KiB (12,594 bytes)`: readable, and exact for checking."""
    if size < 1024:
        return f"{size:,} bytes"
    value = float(size)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if value < 1024 or unit == "TiB":
            break
    return f"{value:.1f} {unit} ({size:,} bytes)"


def local_time(at: datetime) -> str:
    return f"{at:%Y-%m-%d %H:%M %Z}"


def duration(delta: timedelta) -> str:
    minutes = round(delta.total_seconds() / 60)
    hours, rest = divmod(minutes, 60)
    if rest == 0:
        return f"{hours} hour{'s' if hours != 1 else ''}"
    return f"{hours} h {rest} min"
