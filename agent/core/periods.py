"""Report periods: which daily period an instant falls in, in a report's own time zone.

Pure: every function takes the instant it reasons about. Boundaries are computed on local dates,
never by adding 24 hours, so a period is 23 or 25 hours long across a DST change. A `rotate_at`
that does not exist on a spring-forward day (02:30 in Europe/Berlin) resolves as PEP 495 says for
`fold=0`, i.e. the same distance after the gap (03:30); one that happens twice on a fall-back
day rotates at its first occurrence.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError


@dataclass(frozen=True, slots=True)
class Period:
    start: datetime  # aware, UTC
    end: datetime  # aware, UTC; exclusive
    day: date  # the local date the period starts on: {date} in subjects and file names


def system_timezone() -> ZoneInfo:
    """The system's IANA zone: $TZ, then /etc/localtime's target, then /etc/timezone, then UTC."""
    tz = os.environ.get("TZ", "").lstrip(":")
    candidates = [tz] if tz else []
    try:
        target = os.readlink("/etc/localtime")
        if "zoneinfo/" in target:
            candidates.append(target.split("zoneinfo/", 1)[1])
    except OSError:
        pass
    with contextlib.suppress(OSError):
        candidates.append(Path("/etc/timezone").read_text().strip())
    for name in candidates:
        try:
            return ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            continue
    return ZoneInfo("UTC")


def boundary(day: date, at: time, tz: ZoneInfo) -> datetime:
    """The instant (UTC) at which the period of local `day` starts."""
    return datetime.combine(day, at, tzinfo=tz).astimezone(UTC)


def period_of(instant: datetime, at: time, tz: ZoneInfo) -> Period:
    """The period containing `instant` (aware).

    It starts at the latest boundary at or before `instant` and ends at the first boundary after
    its start. Neighbouring days are searched, and days whose boundary coincides with the next
    one are skipped, because a zone can skip a local hour (Nuuk's gap at midnight) or a whole
    local day (Samoa, 2011-12-30).
    """
    local_day = instant.astimezone(tz).date()
    day = local_day + timedelta(days=1)
    start = boundary(day, at, tz)
    while start > instant:
        day -= timedelta(days=1)
        start = boundary(day, at, tz)
    end_day = day + timedelta(days=1)
    end = boundary(end_day, at, tz)
    while end <= start:
        end_day += timedelta(days=1)
        end = boundary(end_day, at, tz)
    return Period(start, end, day)


def period_from(start: datetime, at: time, tz: ZoneInfo) -> Period:
    """The period that begins at `start` (which may be off-boundary after a forced rotation).

    It ends at the next scheduled boundary after `start`, and is named after `start`'s local date.
    """
    scheduled = period_of(start, at, tz)
    return Period(start.astimezone(UTC), scheduled.end, start.astimezone(tz).date())


HourKey = tuple[int, int, int, int]  # year, month, day, hour in a report's zone
_HOUR = timedelta(hours=1)
_TICK = timedelta(microseconds=1)
_NEVER = datetime.max.replace(tzinfo=UTC)  # an empty span: no instant is at or after it


def hour_counts(times: list[datetime], tz: tzinfo) -> dict[HourKey, int]:
    """How many of `times` (aware) fall in each local hour of `tz`.

    Converting every instant to local time is most of the cost of the hour chart, and events
    come mostly in order: once an instant is converted, the UTC span of its local hour is
    known, and the instants that follow inside it are counted by comparison alone. The span is
    taken only when the offset is the same at its start, at the instant and at its end, so no
    change of offset (a DST switch, also of half an hour) lies inside; otherwise the instants
    of that hour are converted one by one.
    """
    counts: dict[HourKey, int] = {}
    lo = hi = _NEVER
    key: HourKey | None = None
    n = 0
    for t in times:
        if lo <= t < hi:
            n += 1
            continue
        if key is not None:
            counts[key] = counts.get(key, 0) + n
        local = t.astimezone(tz)
        key = (local.year, local.month, local.day, local.hour)
        n = 1
        start = t.astimezone(UTC) - timedelta(
            minutes=local.minute, seconds=local.second, microseconds=local.microsecond
        )
        end = start + _HOUR
        offset = local.utcoffset()
        if start.astimezone(tz).utcoffset() == offset == (end - _TICK).astimezone(tz).utcoffset():
            lo, hi = start, end
        else:
            lo = hi = _NEVER
    if key is not None:
        counts[key] = counts.get(key, 0) + n
    return counts
