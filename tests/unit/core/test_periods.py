"""Report periods: local-date boundaries, DST days, forced rotations, and the tiling property."""

from __future__ import annotations

import functools
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.core.periods import (
    Period,
    boundary,
    hour_counts,
    period_from,
    period_of,
    system_timezone,
)

BERLIN = ZoneInfo("Europe/Berlin")
MIDNIGHT = time(0, 0)
HOUR = timedelta(hours=1)
TICK = timedelta(microseconds=1)


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def test_utc_period_is_the_calendar_day() -> None:
    """In UTC with rotate_at 00:00 a period is the calendar day that contains the instant."""
    period = period_of(utc(2026, 11, 21, 10, 0), MIDNIGHT, ZoneInfo("UTC"))
    assert period == Period(utc(2026, 11, 21), utc(2026, 11, 22), date(2026, 11, 21))


def test_instant_before_rotate_at_belongs_to_the_previous_day() -> None:
    """Before the day's rotate_at, an instant is still in the period named after yesterday."""
    period = period_of(utc(2026, 11, 21, 5, 59), time(6, 0), ZoneInfo("UTC"))
    assert period == Period(utc(2026, 11, 20, 6), utc(2026, 11, 21, 6), date(2026, 11, 20))


@pytest.mark.parametrize(
    ("instant", "expected"),
    [
        # winter, UTC+1: 00:30 local on the 21st is 23:30 UTC on the 20th
        (
            utc(2026, 11, 20, 23, 30),
            Period(utc(2026, 11, 20, 23), utc(2026, 11, 21, 23), date(2026, 11, 21)),
        ),
        # winter: 23:30 local on the 20th
        (
            utc(2026, 11, 20, 22, 30),
            Period(utc(2026, 11, 19, 23), utc(2026, 11, 20, 23), date(2026, 11, 20)),
        ),
        # summer, UTC+2: 01:00 local on 1 July is 23:00 UTC on 30 June
        (
            utc(2026, 6, 30, 23, 0),
            Period(utc(2026, 6, 30, 22), utc(2026, 7, 1, 22), date(2026, 7, 1)),
        ),
    ],
)
def test_berlin_period_follows_the_local_date(instant: datetime, expected: Period) -> None:
    """In Europe/Berlin the period is the local day, whatever the UTC date of the instant."""
    assert period_of(instant, MIDNIGHT, BERLIN) == expected


def test_boundary_is_local_rotate_at_in_utc() -> None:
    """boundary() gives the UTC instant of the local rotate_at, with the offset of that day."""
    assert boundary(date(2026, 1, 15), time(6, 30), BERLIN) == utc(2026, 1, 15, 5, 30)
    assert boundary(date(2026, 7, 15), time(6, 30), BERLIN) == utc(2026, 7, 15, 4, 30)
    assert boundary(date(2026, 7, 15), time(6, 30), BERLIN).tzinfo is UTC


def test_instant_exactly_at_the_boundary_opens_the_new_period() -> None:
    """The start is inclusive and the end exclusive: the boundary instant is in the new period."""
    at = time(6, 0)
    edge = boundary(date(2026, 11, 21), at, BERLIN)
    assert period_of(edge, at, BERLIN).day == date(2026, 11, 21)
    assert period_of(edge, at, BERLIN).start == edge
    assert period_of(edge - TICK, at, BERLIN).day == date(2026, 11, 20)
    assert period_of(edge - TICK, at, BERLIN).end == edge


def test_spring_forward_day_is_23_hours() -> None:
    """2026-03-29 in Europe/Berlin (02:00 -> 03:00) gives a period of 23 hours, not 24."""
    period = period_of(utc(2026, 3, 29, 12), MIDNIGHT, BERLIN)
    assert period == Period(utc(2026, 3, 28, 23), utc(2026, 3, 29, 22), date(2026, 3, 29))
    assert period.end - period.start == timedelta(hours=23)


def test_fall_back_day_is_25_hours() -> None:
    """2026-10-25 in Europe/Berlin (03:00 -> 02:00) gives a period of 25 hours."""
    period = period_of(utc(2026, 10, 25, 12), MIDNIGHT, BERLIN)
    assert period == Period(utc(2026, 10, 24, 22), utc(2026, 10, 25, 23), date(2026, 10, 25))
    assert period.end - period.start == timedelta(hours=25)


def test_rotate_at_in_the_spring_gap_rotates_just_after_the_gap() -> None:
    """rotate_at 02:30 on 2026-03-29 (a time that does not exist) rotates at 03:30 CEST."""
    at = time(2, 30)
    edge = boundary(date(2026, 3, 29), at, BERLIN)
    assert edge == utc(2026, 3, 29, 1, 30)
    assert edge.astimezone(BERLIN).replace(tzinfo=None) == datetime(2026, 3, 29, 3, 30)
    before = period_of(edge - TICK, at, BERLIN)
    after = period_of(edge, at, BERLIN)
    assert before.end == after.start == edge
    assert before.end - before.start == timedelta(hours=24)
    assert after.end - after.start == timedelta(hours=23)


def test_rotate_at_in_the_repeated_hour_rotates_at_its_first_occurrence() -> None:
    """rotate_at 02:30 on 2026-10-25 (a time that happens twice) rotates once, at 02:30 CEST."""
    at = time(2, 30)
    edge = boundary(date(2026, 10, 25), at, BERLIN)
    assert edge == utc(2026, 10, 25, 0, 30)  # 02:30 +02:00, not 02:30 +01:00
    period = period_of(edge + HOUR, at, BERLIN)  # the second 02:30: still the same period
    assert period.start == edge
    assert period.end == utc(2026, 10, 26, 1, 30)
    assert period.end - period.start == timedelta(hours=25)


def test_lord_howe_half_hour_dst_changes_the_period_by_30_minutes() -> None:
    """Australia/Lord_Howe shifts by 30 minutes: its DST days give periods of 24.5 and 23.5 hours."""
    tz = ZoneInfo("Australia/Lord_Howe")
    autumn = period_of(utc(2026, 4, 5, 6), MIDNIGHT, tz)
    spring = period_of(utc(2026, 10, 4, 6), MIDNIGHT, tz)
    assert (autumn.day, autumn.end - autumn.start) == (date(2026, 4, 5), timedelta(hours=24.5))
    assert (spring.day, spring.end - spring.start) == (date(2026, 10, 4), timedelta(hours=23.5))


def test_sao_paulo_midnight_gap_moves_the_boundary_to_01_00() -> None:
    """America/Sao_Paulo sprang forward at midnight (2018-11-04): rotate_at 00:00 became 01:00."""
    tz = ZoneInfo("America/Sao_Paulo")
    period = period_of(utc(2018, 11, 4, 12), MIDNIGHT, tz)
    assert period == Period(utc(2018, 11, 4, 3), utc(2018, 11, 5, 2), date(2018, 11, 4))
    assert period.start.astimezone(tz).replace(tzinfo=None) == datetime(2018, 11, 4, 1, 0)
    assert period_of(period.start - TICK, MIDNIGHT, tz).end == period.start


def test_nuuk_gap_before_midnight_keeps_the_instant_inside_its_period() -> None:
    """America/Nuuk springs forward 23:00 -> 00:00; with rotate_at 23:30 an instant at 00:10 is still in the previous period."""
    # 2025-03-29 23:30 (-02:00) does not exist; it resolves to 00:30 (-01:00) on the 30th, i.e.
    # 01:30 UTC. 00:10 (-01:00) on the 30th is 01:10 UTC: before that boundary.
    tz = ZoneInfo("America/Nuuk")
    at = time(23, 30)
    instant = utc(2025, 3, 30, 1, 10)
    period = period_of(instant, at, tz)
    assert period.start <= instant < period.end
    assert period == Period(utc(2025, 3, 29, 1, 30), utc(2025, 3, 30, 1, 30), date(2025, 3, 28))


def test_apia_skipped_day_keeps_the_instant_inside_its_period() -> None:
    """Pacific/Apia skipped 2011-12-30 entirely; an instant on the 31st still gets a period containing it."""
    tz = ZoneInfo("Pacific/Apia")
    at = time(12, 0)
    instant = utc(2011, 12, 30, 20, 0)  # 2011-12-31 10:00 +14:00
    period = period_of(instant, at, tz)
    assert period.start <= instant < period.end
    assert period.start < period.end


def test_period_from_after_a_forced_rotation() -> None:
    """A period opened by a forced rotation starts at that instant, ends at the next scheduled boundary and is named after its local date."""
    at = time(6, 0)
    forced = datetime(2026, 11, 21, 15, 42, 7, tzinfo=BERLIN)
    period = period_from(forced, at, BERLIN)
    assert period == Period(utc(2026, 11, 21, 14, 42, 7), utc(2026, 11, 22, 5), date(2026, 11, 21))
    assert period.start.tzinfo is UTC
    assert period_of(period.end, at, BERLIN).start == period.end  # the schedule resumes


def test_period_from_before_the_days_rotate_at_ends_at_that_rotate_at() -> None:
    """A forced rotation at 03:00 with rotate_at 06:00 gives a 3-hour period ending at 06:00 the same day."""
    at = time(6, 0)
    forced = datetime(2026, 11, 21, 3, 0, tzinfo=BERLIN)
    period = period_from(forced, at, BERLIN)
    assert period == Period(utc(2026, 11, 21, 2), utc(2026, 11, 21, 5), date(2026, 11, 21))


def test_period_from_on_a_boundary_equals_period_of() -> None:
    """A rotation that happens exactly on the schedule gives the scheduled period."""
    edge = boundary(date(2026, 3, 29), MIDNIGHT, BERLIN)
    assert period_from(edge, MIDNIGHT, BERLIN) == period_of(edge, MIDNIGHT, BERLIN)


def test_system_timezone_honours_tz(monkeypatch: pytest.MonkeyPatch) -> None:
    """$TZ (with or without the leading ':') names the system zone."""
    monkeypatch.setenv("TZ", "America/Sao_Paulo")
    assert system_timezone() == ZoneInfo("America/Sao_Paulo")
    monkeypatch.setenv("TZ", ":Asia/Kolkata")
    assert system_timezone() == ZoneInfo("Asia/Kolkata")


def test_system_timezone_ignores_an_unknown_tz(monkeypatch: pytest.MonkeyPatch) -> None:
    """An unknown $TZ falls back to /etc/localtime, /etc/timezone or UTC instead of failing."""
    monkeypatch.setenv("TZ", "Mars/Olympus_Mons")
    assert isinstance(system_timezone(), ZoneInfo)
    assert system_timezone().key != "Mars/Olympus_Mons"


ZONES = [
    "UTC",
    "Europe/Berlin",
    "Europe/London",
    "Europe/Dublin",  # negative DST in the tz database
    "America/New_York",
    "America/Sao_Paulo",
    "America/Santiago",
    "America/Havana",  # DST changes at midnight
    "America/Nuuk",  # spring-forward gap 23:00 -> 00:00
    "America/St_Johns",  # -03:30
    "Asia/Kolkata",
    "Asia/Kathmandu",  # +05:45
    "Asia/Tehran",
    "Australia/Lord_Howe",  # 30-minute DST
    "Pacific/Apia",  # skipped 2011-12-30
    "Pacific/Chatham",  # +12:45 / +13:45
    "Africa/Casablanca",  # DST suspended during Ramadan
]


@settings(max_examples=500, derandomize=True, database=None, deadline=None)
@given(
    instant=st.datetimes(
        min_value=datetime(1971, 1, 1), max_value=datetime(2037, 12, 31), timezones=st.just(UTC)
    ),
    zone=st.sampled_from(ZONES),
    at=st.times().map(lambda t: t.replace(second=0, microsecond=0)),
)
def test_periods_contain_their_instant_and_tile_time(
    instant: datetime, zone: str, at: time
) -> None:
    """For any instant, zone and rotate_at: start <= instant < end, and the neighbouring periods meet it without gap or overlap."""
    tz = ZoneInfo(zone)
    period = period_of(instant, at, tz)
    assert period.start <= instant < period.end
    assert period_of(period.end, at, tz).start == period.end
    assert period_of(period.start - TICK, at, tz).end == period.start


# ---- hour_counts ------------------------------------------------------------------------------

# Zones whose offsets change by an hour, by half an hour (Lord Howe's DST), or sit a half or a
# quarter hour off UTC, and Monrovia, 44 min 30 s off until 1972.
CHART_ZONES = [
    "UTC", "Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "Asia/Kolkata",
    "America/St_Johns", "Asia/Kathmandu", "Africa/Monrovia",
]  # fmt: skip


@functools.cache
def _transitions(zone: ZoneInfo, year: int) -> list[datetime]:
    """The UTC instants (to the minute) where the zone's offset changes in `year`."""
    found, t = [], utc(year, 1, 1)
    offset = t.astimezone(zone).utcoffset()
    while t.year == year:
        step = t + timedelta(minutes=30)
        if step.astimezone(zone).utcoffset() != offset:
            for minute in range(31):  # the exact minute inside the half hour
                m = t + timedelta(minutes=minute)
                if m.astimezone(zone).utcoffset() != offset:
                    found.append(m)
                    break
            offset = step.astimezone(zone).utcoffset()
        t = step
    return found


def _plain_counts(times: list[datetime], zone: tzinfo) -> dict[tuple[int, int, int, int], int]:
    counts: dict[tuple[int, int, int, int], int] = {}
    for t in times:
        local = t.astimezone(zone)
        key = (local.year, local.month, local.day, local.hour)
        counts[key] = counts.get(key, 0) + 1
    return counts


@settings(max_examples=400, deadline=None)
@given(
    st.sampled_from(CHART_ZONES),
    st.sampled_from([1971, 2026, 2027]),
    st.integers(0, 3),
    st.integers(-200, 200),
    st.lists(st.integers(-400, 3700), min_size=1, max_size=40),
    st.booleans(),
)
def test_hour_counts_are_what_converting_every_instant_gives(
    name: str, year: int, which: int, shift: int, steps: list[int], mixed: bool
) -> None:
    """Near each change of offset (and elsewhere), mostly in order with steps back, in UTC or
    given in other zones: the same counts as converting every instant to local time."""
    zone = ZoneInfo(name)
    transitions = _transitions(zone, year) or [utc(year, 6, 1)]
    t = transitions[which % len(transitions)] + timedelta(minutes=shift)
    times = []
    for i, step in enumerate(steps):
        t += timedelta(seconds=step)
        times.append(t.astimezone(ZoneInfo(CHART_ZONES[i % 8])) if mixed else t)
    assert hour_counts(times, zone) == _plain_counts(times, zone)


@pytest.mark.parametrize(
    ("name", "year"),
    [(name, year) for name in CHART_ZONES for year in (1971, 1972, 2026)]
    + [("America/New_York", 1883), ("Asia/Kathmandu", 1985)],  # LMT to EST at 12:03:58
)
def test_hour_counts_across_every_change_of_offset(name: str, year: int) -> None:
    """Minute by minute across each change of offset, forwards, backwards and zig-zag."""
    zone = ZoneInfo(name)
    for change in _transitions(zone, year):
        around = [change + timedelta(minutes=m, seconds=17) for m in range(-75, 76, 4)]
        zigzag = [t for pair in zip(around, reversed(around), strict=True) for t in pair]
        for times in (around, around[::-1], zigzag):
            assert hour_counts(times, zone) == _plain_counts(times, zone)


class _Jump(tzinfo):
    """UTC until 12:30 on 2026-01-01, then an hour ahead: a change of offset in mid-hour
    (tzdb has them only in history, LMT to standard time)."""

    AT = datetime(2026, 1, 1, 12, 30)

    def utcoffset(self, dt: datetime | None) -> timedelta:
        return timedelta(0) if dt is None or dt.replace(tzinfo=None) < self.AT else HOUR

    def dst(self, dt: datetime | None) -> timedelta:
        return timedelta(0)

    def tzname(self, dt: datetime | None) -> str:
        return "JUMP"

    def fromutc(self, dt: datetime) -> datetime:
        naive = dt.replace(tzinfo=None)
        return (naive + (HOUR if naive >= self.AT else timedelta(0))).replace(tzinfo=self)


def test_hour_counts_when_the_offset_jumps_in_mid_hour() -> None:
    """12:10 UTC is 12:10 local, but from 12:30 UTC on the clock reads 13:30: those instants
    belong to hour 13, though they follow 12:10 within the same UTC hour."""
    times = [utc(2026, 1, 1, 12, 0) + timedelta(minutes=10 * i) for i in range(6)]
    counts = hour_counts(times, _Jump())
    assert counts == {(2026, 1, 1, 12): 3, (2026, 1, 1, 13): 3} == _plain_counts(times, _Jump())


def test_hour_counts_of_a_busy_hour_and_a_dst_night() -> None:
    """Berlin's autumn night has two 02:00 hours: they are counted as one local hour (02)."""
    night = [utc(2026, 10, 25, 0, 0) + timedelta(minutes=10 * i) for i in range(18)]
    counts = hour_counts(night, BERLIN)
    assert counts == {(2026, 10, 25, 2): 12, (2026, 10, 25, 3): 6}
    assert sum(counts.values()) == len(night)
    assert hour_counts([], BERLIN) == {}
