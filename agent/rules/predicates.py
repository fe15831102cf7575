"""The condition tree compiled into closures: what runs for every candidate event.

A predicate never looks at the tree again: paths are split, operands converted and patterns
compiled once, when the rule is loaded. The shapes operators write most get a closure of their
own, because on the hot path each call costs more than the test it makes:

- a test of a top-level field reads it with `dict.get` (no path walk);
- `field: "text"` (and `eq:`) is one `dict.get` and one comparison, no value-test call;
- `in:` strings, `startswith:` and `endswith:` on a top-level field are one fused closure that
  reads and tests (one call per event instead of two);
- `all`/`any` of one or two parts are the part itself or an `and`/`or`, not a loop;
- regular expressions use RE2's fast path (`agent.rules.patterns`).

A `Window` becomes a test of the event time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from agent.rules.condition import (
    All,
    AnyOf,
    Cidr,
    Condition,
    Contains,
    EndsWith,
    Eq,
    Exists,
    FieldTest,
    Glob,
    In,
    Ne,
    NotIn,
    Operator,
    Order,
    Regex,
    StartsWith,
    Window,
)
from agent.rules.fields import MISSING, Event, getter
from agent.rules.patterns import glob_test, regex_test
from agent.rules.values import (
    ValueTest,
    cidr_test,
    constant,
    contains_test,
    equal_test,
    member_test,
    negate,
    order_test,
)

Predicate = Callable[[Event], bool]
TimeTest = Callable[[datetime], bool]


def predicate(condition: Condition) -> Predicate:
    """`event -> whether the condition holds`."""
    if isinstance(condition, FieldTest):
        return _field_predicate(condition.path, [_operator(t) for t in condition.tests])
    if isinstance(condition, All):
        return _all_of([predicate(c) for c in condition.items])
    if isinstance(condition, AnyOf):
        return _any_of([predicate(c) for c in condition.items])
    return _negate(predicate(condition.item))


@dataclass(frozen=True, slots=True)
class _Test:
    """One compiled operator: its value test, its answer for a missing field, the string it
    compares with when it is a plain `eq` (which compiles to a single dict lookup), and for the
    commonest string tests a builder of one closure that reads a top-level field and tests it."""

    test: ValueTest
    on_missing: bool = False
    equals_str: str | None = None
    fused: Callable[[str], Predicate] | None = None


def _operator(op: Operator) -> _Test:
    if isinstance(op, Eq):
        value = op.value
        return _Test(equal_test(value), equals_str=value if type(value) is str else None)
    if isinstance(op, Ne):
        return _Test(negate(equal_test(op.value)), on_missing=True)
    if isinstance(op, In):
        return _membership(op.values)
    if isinstance(op, NotIn):
        return _Test(negate(member_test(op.values)), on_missing=True)
    if isinstance(op, StartsWith | EndsWith):
        return _affix(op)
    if isinstance(op, Exists):
        return _Test(constant(op.present), on_missing=not op.present)
    if isinstance(op, Contains):
        return _Test(contains_test(op.value))
    if isinstance(op, Regex):
        return _Test(regex_test(op.pattern, whole=False))
    if isinstance(op, Glob):
        return _Test(glob_test(op.pattern))
    if isinstance(op, Order):
        return _Test(order_test(op.op, op.value))
    if isinstance(op, Cidr):
        return _Test(cidr_test(op.networks))
    raise TypeError(f"not an operator: {op!r}")


def _membership(values: tuple[Any, ...]) -> _Test:
    test = member_test(values)
    if not all(type(x) is str for x in values):
        return _Test(test)
    strings = frozenset(values)

    def fuse_in(key: str) -> Predicate:
        def field_in(ev: Event) -> bool:
            v = ev.get(key)
            return type(v) is str and v in strings

        return field_in

    return _Test(test, fused=fuse_in)


def _affix(op: StartsWith | EndsWith) -> _Test:
    # str.startswith takes one string or a tuple; one string is the faster of the two.
    affixes = op.affixes if len(op.affixes) > 1 else op.affixes[0]
    if isinstance(op, StartsWith):

        def starts(v: Any) -> bool:
            return type(v) is str and v.startswith(affixes)

        def fuse_starts(key: str) -> Predicate:
            def field_starts(ev: Event) -> bool:
                v = ev.get(key)
                return type(v) is str and v.startswith(affixes)

            return field_starts

        return _Test(starts, fused=fuse_starts)

    def ends(v: Any) -> bool:
        return type(v) is str and v.endswith(affixes)

    def fuse_ends(key: str) -> Predicate:
        def field_ends(ev: Event) -> bool:
            v = ev.get(key)
            return type(v) is str and v.endswith(affixes)

        return field_ends

    return _Test(ends, fused=fuse_ends)


def _all_values(tests: list[ValueTest]) -> ValueTest:
    if len(tests) == 1:
        return tests[0]
    ts = tuple(tests)

    def every(v: Any) -> bool:
        for t in ts:  # noqa: SIM110 (hot path: all() of a generator costs 3x)
            if not t(v):
                return False
        return True

    return every


def _field_predicate(path: str, tests: list[_Test]) -> Predicate:
    on_missing = all(t.on_missing for t in tests)
    test = _all_values([t.test for t in tests])
    if "." not in path:
        key = path
        s = tests[0].equals_str if len(tests) == 1 else None
        if s is not None:

            def equals(ev: Event) -> bool:
                v: object = ev.get(key)
                return v == s

            return equals
        if len(tests) == 1 and tests[0].fused is not None:
            return tests[0].fused(key)
        if on_missing:

            def test_or_missing(ev: Event) -> bool:
                v = ev.get(key, MISSING)
                return v is MISSING or test(v)

            return test_or_missing

        def test_present(ev: Event) -> bool:
            v = ev.get(key, MISSING)
            return v is not MISSING and test(v)

        return test_present
    get = getter(path)
    if on_missing:

        def path_or_missing(ev: Event) -> bool:
            v = get(ev)
            return v is MISSING or test(v)

        return path_or_missing

    def path_present(ev: Event) -> bool:
        v = get(ev)
        return v is not MISSING and test(v)

    return path_present


def _always(result: bool) -> Predicate:
    def constant_predicate(ev: Event) -> bool:
        return result

    return constant_predicate


def _all_of(parts: list[Predicate]) -> Predicate:
    if not parts:
        return _always(True)
    if len(parts) == 1:
        return parts[0]
    if len(parts) == 2:
        a, b = parts

        def both(ev: Event) -> bool:
            return a(ev) and b(ev)

        return both
    ps = tuple(parts)

    def every(ev: Event) -> bool:
        for p in ps:  # noqa: SIM110 (hot path: all() of a generator costs 3x)
            if not p(ev):
                return False
        return True

    return every


def _any_of(parts: list[Predicate]) -> Predicate:
    if not parts:
        return _always(False)
    if len(parts) == 1:
        return parts[0]
    if len(parts) == 2:
        a, b = parts

        def either(ev: Event) -> bool:
            return a(ev) or b(ev)

        return either
    ps = tuple(parts)

    def some(ev: Event) -> bool:
        for p in ps:  # noqa: SIM110 (hot path: any() of a generator costs 3x)
            if p(ev):
                return True
        return False

    return some


def _negate(inner: Predicate) -> Predicate:
    def negated(ev: Event) -> bool:
        return not inner(ev)

    return negated


def time_test(window: Window) -> TimeTest:
    """`event time -> whether it falls in the window`; a naive time is taken as UTC.

    Days apply to the local date of the event time itself, also inside a window that wraps
    past midnight: with `days: [fri]` and `hours: "22:00-06:00"`, Friday 23:00 is in, and
    Saturday 03:00 is not (it falls on Saturday)."""
    tz = window.timezone
    allowed = window.days if window.days is not None else frozenset(range(7))
    if window.hours is None:

        def on_days(t: datetime) -> bool:
            local = (t if t.tzinfo is not None else t.replace(tzinfo=UTC)).astimezone(tz)
            return local.weekday() in allowed

        return on_days
    start, end = window.hours
    wraps = start > end

    def in_window(t: datetime) -> bool:
        local = (t if t.tzinfo is not None else t.replace(tzinfo=UTC)).astimezone(tz)
        if local.weekday() not in allowed:
            return False
        minute = local.hour * 60 + local.minute
        if wraps:
            return minute >= start or minute < end
        return start <= minute < end

    return in_window
