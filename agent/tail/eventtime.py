"""An event's time: ISO 8601 text or epoch seconds (or milliseconds) in a field of its own.

Pure: the clock for events without a time (their arrival) is passed in.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, tzinfo
from typing import Any

_MS_THRESHOLD = 100_000_000_000  # epoch numbers above this are milliseconds (year 5138 in s)


# Event times are data: `9999-12-31T23:59:59-14:00` parses, but is past the last instant a
# datetime can hold in UTC, and converting it to any zone overflows. A year away from either
# end of the calendar converts safely to every zone; times outside count as absent (arrival).
_FIRST_YEAR, _LAST_YEAR = 2, 9998


def event_time(value: Any, default_tz: Any = UTC) -> datetime | None:
    """An event's time from ISO 8601 text or epoch seconds (or milliseconds); None if neither.

    A time without an offset is read in `default_tz` (the system's zone, where logs that omit
    the offset are usually written).
    """
    if isinstance(value, str):
        try:
            dt = datetime.fromisoformat(value)
        except ValueError:
            return None
        if not _FIRST_YEAR <= dt.year <= _LAST_YEAR:
            return None
        return dt if dt.tzinfo is not None else dt.replace(tzinfo=default_tz)
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = value / 1000 if abs(value) > _MS_THRESHOLD else value
        try:
            dt = datetime.fromtimestamp(seconds, UTC)
        except (OverflowError, OSError, ValueError):
            return None
        return dt if _FIRST_YEAR <= dt.year <= _LAST_YEAR else None
    return None


def time_reader(
    time_field: str | None, default_tz: tzinfo, fallback: Callable[[], datetime]
) -> Callable[[dict[str, Any]], datetime]:
    """`event -> its time`: event_time of the `time_field` value, else `fallback()` (arrival).

    The same answer as event_time, in one call per selected event: the ISO text that logs
    mostly carry is parsed here rather than through a second function.
    """
    if time_field is None:
        return lambda event: fallback()
    fromisoformat = datetime.fromisoformat
    first, last = _FIRST_YEAR, _LAST_YEAR

    def read(event: dict[str, Any]) -> datetime:
        value = event.get(time_field)
        if type(value) is str:
            try:
                t = fromisoformat(value)
            except ValueError:
                return fallback()
            if not first <= t.year <= last:
                return fallback()
            return t if t.tzinfo is not None else t.replace(tzinfo=default_tz)
        other = event_time(value, default_tz)
        return other if other is not None else fallback()

    return read
