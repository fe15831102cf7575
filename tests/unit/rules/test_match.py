"""Tests for agent.rules (parse, predicates): conditions, operators, when windows, and their mistakes."""

from __future__ import annotations

import fnmatch
import ipaddress
import textwrap
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.config.yamlfile import Problem, parse_yaml
from agent.rules import (
    MISSING,
    All,
    AnyOf,
    Cidr,
    Eq,
    Exists,
    FieldTest,
    In,
    Ne,
    Not,
    Rule,
    StartsWith,
    Window,
    getter,
    glob_test,
    glob_to_re2,
    parse_rules,
    position,
    regex_test,
)


def text_of(yaml_text: str) -> str:
    return textwrap.dedent(yaml_text).lstrip("\n")


def parse(yaml_text: str) -> tuple[list[Rule], list[Problem]]:
    """The rules of file r.yaml, compiled as the agent compiles them (no routing names checked)."""
    data, problems = parse_yaml(text_of(yaml_text), "r.yaml")
    assert problems == []
    return parse_rules(data, "r.yaml", "r")


def rule(yaml_text: str) -> Rule:
    rules, problems = parse(yaml_text)
    assert problems == []
    assert len(rules) == 1
    return rules[0]


def cond(condition: str) -> Callable[[dict[str, Any]], bool]:
    """The compiled `match` of a rule whose condition is `condition` (YAML)."""
    body = textwrap.indent(text_of(condition), "  ")
    return rule("match:\n" + body).match


def problems_of(yaml_text: str) -> list[str]:
    return [str(p) for p in parse(yaml_text)[1]]


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


# --- equality and kinds --------------------------------------------------------------------------


def test_scalar_value_means_equality() -> None:
    """A field given a scalar must equal it."""
    m = cond("level: error")
    assert m({"level": "error"})
    assert not m({"level": "warning"})
    assert not m({})


def test_number_never_equals_string() -> None:
    """10 and "10" are different kinds and never equal, both ways."""
    assert not cond("code: 10")({"code": "10"})
    assert not cond('code: "10"')({"code": 10})
    assert cond('code: "10"')({"code": "10"})


def test_int_equals_float() -> None:
    """Numbers compare as numbers: 1 == 1.0 in both directions."""
    assert cond("n: 1")({"n": 1.0})
    assert cond("n: 1.0")({"n": 1})


def test_bool_is_not_a_number() -> None:
    """true never equals 1 and 1 never equals true; false never equals 0."""
    assert not cond("flag: true")({"flag": 1})
    assert not cond("n: 1")({"n": True})
    assert not cond("n: 0")({"n": False})
    assert not cond("flag: false")({"flag": 0})
    assert cond("flag: true")({"flag": True})
    assert cond("flag: false")({"flag": False})


def test_null_matches_present_null_only() -> None:
    """`x: null` holds for a present null and not for a missing field."""
    m = cond("x: null")
    assert m({"x": None})
    assert not m({})
    assert not m({"x": 0})
    assert not m({"x": ""})


def test_eq_deep_values_keep_kinds() -> None:
    """eq on lists and objects compares deeply, kinds included (true is not 1 inside either)."""
    m = cond("tags: {eq: [1, a, true]}")
    assert m({"tags": [1.0, "a", True]})
    assert not m({"tags": [True, "a", True]})
    assert not m({"tags": [1, "a"]})
    o = cond("user: {eq: {id: 1, admin: false}}")
    assert o({"user": {"id": 1, "admin": False}})
    assert not o({"user": {"id": 1, "admin": 0}})
    assert not o({"user": {"id": 1}})


def test_ne_holds_for_missing_and_other_kinds() -> None:
    """ne holds for a missing field and a value of another kind, not for an equal value."""
    m = cond("code: {ne: 10}")
    assert m({})
    assert m({"code": "10"})
    assert m({"code": 11})
    assert not m({"code": 10})
    assert not m({"code": 10.0})


def test_in_and_not_in_with_mixed_kinds() -> None:
    """in/not_in use the same kind-exact equality for every item kind."""
    m = cond("v: {in: [1, a, true, null, [2]]}")
    for hit in (1, 1.0, "a", True, None, [2]):
        assert m({"v": hit}), hit
    misses: list[Any] = ["1", 2, False, "b", [2.5], {}]
    for miss in misses:
        assert not m({"v": miss}), miss
    assert not m({})
    n = cond("level: {not_in: [debug, info]}")
    assert n({"level": "error"})
    assert n({})
    assert n({"level": 1})
    assert not n({"level": "info"})


def test_in_strings_rejects_non_strings() -> None:
    """An all-string in-list never matches numbers, bools or lists."""
    m = cond("v: {in: ['1', 'true']}")
    assert not m({"v": 1})
    assert not m({"v": True})
    assert not m({"v": ["1"]})
    assert m({"v": "1"})


# --- string operators ----------------------------------------------------------------------------


def test_contains_substring_and_membership() -> None:
    """contains is a substring test on strings and kind-exact membership on lists."""
    m = cond("msg: {contains: fail}")
    assert m({"msg": "login failed"})
    assert not m({"msg": "ok"})
    assert m({"msg": ["a", "fail"]})
    assert not m({"msg": ["failed"]})
    assert not m({"msg": {"fail": 1}})
    n = cond("tags: {contains: 1}")
    assert n({"tags": [3, 1.0]})
    assert not n({"tags": [True]})
    assert not n({"tags": "1"})
    assert not n({"tags": 1})
    b = cond("tags: {contains: true}")
    assert b({"tags": [True]})
    assert not b({"tags": [1]})
    z = cond("tags: {contains: null}")
    assert z({"tags": [None]})
    assert not z({"tags": ["null"]})


def test_startswith_endswith_strings_only() -> None:
    """startswith/endswith hold on strings only; a list operand means any of them."""
    s = cond('event: {startswith: "login."}')
    assert s({"event": "login.failed"})
    assert not s({"event": "logout"})
    assert not s({"event": ["login.x"]})
    e = cond('code: {endswith: "4"}')
    assert e({"code": "404"})
    assert not e({"code": 404})
    many = cond("path: {endswith: [.exe, .dll]}")
    assert many({"path": "a.dll"})
    assert not many({"path": "a.txt"})


def test_regex_searches_unanchored() -> None:
    """regex finds a match anywhere unless the pattern anchors itself; strings only."""
    m = cond('msg: {regex: "fail(ed|ure)"}')
    assert m({"msg": "login failed for bob"})
    assert not m({"msg": "fail"})
    assert not m({"msg": 12})
    anchored = cond('msg: {regex: "^user [0-9]+$"}')
    assert anchored({"msg": "user 42"})
    assert not anchored({"msg": "the user 42"})
    insensitive = cond('msg: {regex: "(?i)error"}')
    assert insensitive({"msg": "ERROR!"})
    unicode = cond('who: {regex: "^.{3}$"}')
    assert unicode({"who": "äöü"})


def test_regex_survives_lone_surrogates() -> None:
    """A lone surrogate in event data never raises, on the fast and the public RE2 path."""
    for fast in (True, False):
        test = regex_test("a", whole=False, fast=fast)
        assert test("x\ud800a") is (fast is True)  # public API cannot encode it: no match
        assert not test("\ud800")


@pytest.mark.parametrize("fast", [True, False])
def test_re2_fast_and_public_paths_agree(fast: bool) -> None:
    """The RE2 fast path and the public-API fallback give the same answers."""
    search = regex_test("b+c", whole=False, fast=fast)
    whole = regex_test("a.*c", whole=True, fast=fast)
    assert search("abbbc") and not search("ac") and not search(3)
    assert whole("abc") and not whole("abcd") and not whole("xabc")


def test_glob_star_crosses_slashes() -> None:
    """glob is shell-style and case-sensitive; `*` also matches `/`."""
    m = cond('path: {glob: "/var/*.log"}')
    assert m({"path": "/var/log/app/x.log"})
    assert not m({"path": "/var/log/app/x.LOG"})
    assert not m({"path": "/srv/x.log"})
    assert not m({"path": 3})
    assert cond('p: {glob: "a?c"}')({"p": "a/c"})
    assert cond('p: {glob: "*"}')({"p": "multi\nline"})


def test_glob_classes_and_literals() -> None:
    """Bracket classes, negation, and `[*]` for a literal star work as in fnmatch."""
    m = cond('f: {glob: "log[0-9][!a-z].[*]"}')
    assert m({"f": "log1A.*"})
    assert not m({"f": "log1a.*"})
    assert not m({"f": "log1A.x"})
    assert cond('f: {glob: "a[b"}')({"f": "a[b"})
    assert not cond('f: {glob: "[b-a]"}')({"f": "a"})  # a backwards range is empty
    assert cond('f: {glob: "[!b-a]"}')({"f": "z"})  # and its negation is any character
    assert cond('f: {glob: "*é*"}')({"f": "café"})


_GLOB_ALPHABET = "ab/-!]*?["


@given(
    pattern=st.text(alphabet=_GLOB_ALPHABET, max_size=8),
    text=st.text(alphabet="ab/-!]*?[\n", max_size=8),
)
def test_glob_agrees_with_fnmatchcase(pattern: str, text: str) -> None:
    """For patterns of literals, *, ?, classes and ranges, glob agrees with fnmatchcase."""
    assert glob_test(pattern)(text) == fnmatch.fnmatchcase(text, pattern)


@given(pattern=st.text(alphabet="ab*?[]!-", max_size=8), text=st.text(alphabet="ab-", max_size=6))
def test_glob_regex_path_agrees_with_fnmatchcase(pattern: str, text: str) -> None:
    """The RE2 translation alone (no literal shortcut) also agrees with fnmatchcase."""
    whole = regex_test(glob_to_re2(pattern), whole=True)
    assert whole(text) == fnmatch.fnmatchcase(text, pattern)


# --- exists, comparisons, cidr -------------------------------------------------------------------


def test_exists_true_holds_for_present_null() -> None:
    """exists: true holds for any present value, null included; exists: false only when absent."""
    yes = cond("x: {exists: true}")
    no = cond("x: {exists: false}")
    assert yes({"x": None}) and yes({"x": 0}) and not yes({})
    assert no({}) and not no({"x": None})


def test_number_comparisons() -> None:
    """gt/gte/lt/lte compare numbers with numbers, ints and floats alike."""
    assert cond("n: {gt: 3}")({"n": 3.5})
    assert not cond("n: {gt: 3}")({"n": 3})
    assert cond("n: {gte: 3}")({"n": 3.0})
    assert cond("n: {lt: 3}")({"n": -1})
    assert not cond("n: {lt: 3}")({"n": 3})
    assert cond("n: {lte: 3}")({"n": 3})
    window = cond("n: {gte: 200, lt: 300}")
    assert window({"n": 204}) and not window({"n": 300}) and not window({"n": 199})


def test_string_comparisons_use_code_points() -> None:
    """Strings compare with strings by code point: "B" < "a", "10" < "9"."""
    assert cond('s: {lt: "a"}')({"s": "B"})
    assert cond('s: {lt: "9"}')({"s": "10"})
    assert cond('ts: {gte: "2026-11-21"}')({"ts": "2026-11-21T08:00:00Z"})
    assert not cond('s: {gt: "a"}')({"s": "A"})


def test_comparisons_never_cross_types() -> None:
    """A number never compares with a string or a bool, in either direction."""
    assert not cond("n: {gt: 9}")({"n": "10"})
    assert not cond('n: {lt: "9"}')({"n": 1})
    assert not cond("n: {gte: 0}")({"n": True})
    assert not cond("n: {lt: 1}")({"n": False})
    assert not cond("n: {lt: 1}")({"n": None})
    assert not cond("n: {lt: 1}")({"n": [0]})


def test_cidr_ipv4_and_ipv6() -> None:
    """cidr holds for string addresses inside any listed network, IPv4 and IPv6."""
    m = cond("ip: {cidr: [10.0.0.0/8, '192.168.1.0/24', '2001:db8::/32']}")
    assert m({"ip": "10.200.3.4"})
    assert m({"ip": "192.168.1.255"})
    assert m({"ip": "2001:db8::1"})
    assert not m({"ip": "192.168.2.1"})
    assert not m({"ip": "2001:db9::1"})
    single = cond("ip: {cidr: 10.0.0.0/8}")
    assert single({"ip": "10.0.0.1"}) and not single({"ip": "11.0.0.1"})
    host = cond("ip: {cidr: 192.0.2.7}")
    assert host({"ip": "192.0.2.7"}) and not host({"ip": "192.0.2.8"})


def test_cidr_invalid_addresses_are_false() -> None:
    """Non-strings, malformed, short-form, zero-padded and padded addresses never match."""
    m = cond("ip: {cidr: [0.0.0.0/0, '::/0']}")
    for bad in ("10.0.0", "127.1", "010.0.0.1", " 10.0.0.1", "10.0.0.1:80", "x", "", "é", "1\0"):
        assert not m({"ip": bad}), bad
    assert not m({"ip": 167772161})
    assert not m({"ip": ["10.0.0.1"]})
    assert not m({})
    assert m({"ip": "8.8.8.8"}) and m({"ip": "::1"})


def test_cidr_ipv4_mapped_and_scoped_ipv6() -> None:
    """An IPv4-mapped IPv6 address is tested as its IPv4 address; a zone id is ignored."""
    m = cond("ip: {cidr: 10.0.0.0/8}")
    assert m({"ip": "::ffff:10.1.2.3"})
    assert not m({"ip": "::ffff:11.1.2.3"})
    assert not m({"ip": "::10.1.2.3"})
    v6 = cond("ip: {cidr: 'fe80::/10'}")
    assert v6({"ip": "fe80::1%eth0"})


@pytest.mark.parametrize(
    "spec",
    [
        "eq: 1",
        "in: [1]",
        "contains: a",
        "startswith: a",
        "endswith: a",
        "regex: a",
        "glob: '*'",
        "exists: true",
        "gt: 0",
        "gte: 0",
        "lt: 0",
        "lte: 0",
        "cidr: 0.0.0.0/0",
    ],
)
def test_missing_field_matches_nothing(spec: str) -> None:
    """A missing field fails every operator except exists: false, ne and not_in."""
    assert not cond(f"x: {{{spec}}}")({"y": 1})


@pytest.mark.parametrize("spec", ["exists: false", "ne: 1", "not_in: [1]"])
def test_missing_field_matches_negative_operators(spec: str) -> None:
    """exists: false, ne and not_in hold for a missing field."""
    assert cond(f"x: {{{spec}}}")({"y": 1})


def test_operators_in_one_mapping_all_hold() -> None:
    """Several operators on one field must all hold; a missing field holds only if all allow it."""
    m = cond("code: {gte: 400, ne: 404}")
    assert m({"code": 500}) and not m({"code": 404}) and not m({"code": 200}) and not m({})
    both = cond("x: {ne: 1, not_in: [2]}")
    assert both({})


# --- paths and combinations ----------------------------------------------------------------------


def test_nested_paths_and_list_indexes() -> None:
    """Dotted paths walk objects; digit segments index lists; anything else is missing."""
    m = cond("user.name: bob")
    assert m({"user": {"name": "bob"}})
    assert not m({"user": "bob"})
    assert not m({"user.name": "bob"})
    assert not m({})
    idx = cond("items.1.id: 7")
    assert idx({"items": [{"id": 1}, {"id": 7}]})
    assert not idx({"items": [{"id": 7}]})
    assert not idx({"items": {"id": 7}})
    key = cond("codes.0: x")
    assert key({"codes": {"0": "x"}})
    assert key({"codes": ["x"]})
    deep = cond("a.b.c.d: {exists: false}")
    assert deep({"a": {"b": 1}})
    assert not deep({"a": {"b": {"c": {"d": None}}}})


def test_a_list_position_is_ascii_digits_only() -> None:
    """`²` and other scripts' digits are keys, never list positions, in conditions as in `getter`."""
    squared = cond("items.²: 2")
    assert not squared({"items": [1, 2]})
    assert squared({"items": {"²": 2}})
    assert not cond("items.\u0661: 2")({"items": [1, 2]})  # ARABIC-INDIC DIGIT ONE
    assert cond("items.01: 2")({"items": [1, 2]})
    assert getter("items.²")({"items": [1, 2]}) is MISSING
    assert getter("items.1")({"items": [1, 2]}) == 2
    assert getter("items.1")({"items": {"1": None}}) is None
    assert [position(name) for name in ("0", "12", "²", "-1", "x", "")] == [
        0,
        12,
        None,
        None,
        None,
        None,
    ]


def test_several_keys_in_one_mapping_all_hold() -> None:
    """Keys of one condition mapping are joined with and."""
    m = cond("level: error\nuser: root")
    assert m({"level": "error", "user": "root"})
    assert not m({"level": "error", "user": "bob"})


def test_all_any_not_and_nesting() -> None:
    """all, any and not combine and nest."""
    m = cond(
        """
        all:
          - event: {startswith: "login."}
          - any:
              - level: error
              - attempts: {gte: 5}
          - not:
              remote_ip: {cidr: 10.0.0.0/8}
        """
    )
    assert m({"event": "login.failed", "level": "error", "remote_ip": "1.2.3.4"})
    assert m({"event": "login.failed", "attempts": 9, "remote_ip": "1.2.3.4"})
    assert not m({"event": "login.failed", "level": "error", "remote_ip": "10.0.0.1"})
    assert not m({"event": "login.failed", "level": "info", "remote_ip": "1.2.3.4"})
    assert not m({"event": "logout", "level": "error"})
    many = cond("any: [{a: 1}, {b: 2}, {c: 3}]")
    assert many({"c": 3}) and not many({"d": 4})
    every = cond("all: [{a: 1}, {b: 2}, {c: 3}]")
    assert every({"a": 1, "b": 2, "c": 3}) and not every({"a": 1, "b": 2})
    double = cond("not: {not: {a: 1}}")
    assert double({"a": 1}) and not double({})


def test_empty_all_is_true_and_empty_any_is_false() -> None:
    """all: [] holds for every event and any: [] for none."""
    assert cond("all: []")({})
    assert not cond("any: []")({"a": 1})
    assert cond("any: [{a: 1}]")({"a": 1})


def test_field_form_for_keyword_names() -> None:
    """`{field: all, eq: 3}` tests a field literally named all; not/any likewise."""
    m = cond("field: all\neq: 3")
    assert m({"all": 3}) and not m({"all": 4}) and not m({})
    n = cond("all:\n  - {field: not, in: [a, b]}\n  - {field: any.x, gt: 1}")
    assert n({"not": "a", "any": {"x": 2}})
    assert not n({"not": "c", "any": {"x": 2}})


def test_a_condition_is_parsed_once_into_a_tree_of_converted_operands() -> None:
    """match: becomes All/AnyOf/Not/FieldTest nodes with plain operands; one key of a mapping is that key's condition."""
    r = rule(
        """
        match:
          event: {startswith: [login., auth.], ne: login.ok}
          any:
            - level: {in: [error, warning]}
            - not: {remote_ip: {cidr: 10.0.0.0/8}}
            - {field: all, exists: true}
        when: {days: [mon-fri], hours: "22:00-06:00", timezone: UTC}
        """
    )
    assert r.condition == All(
        (
            FieldTest("event", (StartsWith(("login.", "auth.")), Ne("login.ok"))),
            AnyOf(
                (
                    FieldTest("level", (In(("error", "warning")),)),
                    Not(FieldTest("remote_ip", (Cidr((ipaddress.ip_network("10.0.0.0/8"),)),))),
                    FieldTest("all", (Exists(True),)),
                )
            ),
        )
    )
    assert (r.condition.line, r.condition.items[1].line) == (2, 3)
    assert r.window == Window(frozenset(range(5)), (22 * 60, 6 * 60), ZoneInfo("UTC"))
    assert rule("match: {level: error}").condition == FieldTest("level", (Eq("error"),))


def test_fields_in_first_use_order_without_duplicates() -> None:
    """Rule.fields lists the paths the condition reads, first use first, each once."""
    r = rule(
        """
        match:
          all:
            - level: error
            - user.name: {ne: root}
            - any: [{level: warning}, {field: all, exists: true}, {items.0: x}]
        """
    )
    assert r.fields == ("level", "user.name", "all", "items.0")


# --- when ----------------------------------------------------------------------------------------


def when_of(when: str) -> Callable[[datetime], bool]:
    r = rule("match: {all: []}\nwhen: " + when)
    assert r.when is not None
    return r.when


def test_hours_start_included_end_excluded() -> None:
    """hours includes its start minute and excludes its end."""
    w = when_of('{hours: "08:00-18:00", timezone: UTC}')
    assert w(utc(2026, 11, 20, 8, 0))
    assert w(utc(2026, 11, 20, 17, 59, 59))
    assert not w(utc(2026, 11, 20, 18, 0))
    assert not w(utc(2026, 11, 20, 7, 59, 59))


def test_hours_wrap_past_midnight() -> None:
    """22:00-06:00 covers late evening and early morning, not the day."""
    w = when_of('{hours: "22:00-06:00", timezone: UTC}')
    assert w(utc(2026, 11, 20, 22, 0))
    assert w(utc(2026, 11, 21, 0, 0))
    assert w(utc(2026, 11, 21, 5, 59))
    assert not w(utc(2026, 11, 21, 6, 0))
    assert not w(utc(2026, 11, 21, 12, 0))
    late = when_of('{hours: "18:00-24:00", timezone: UTC}')
    assert late(utc(2026, 11, 20, 23, 59)) and not late(utc(2026, 11, 20, 0, 0))


def test_days_alone_and_ranges() -> None:
    """days stands alone, is case-insensitive and accepts ranges that may wrap the week."""
    weekdays = when_of("{days: [Mon-FRI], timezone: UTC}")
    assert weekdays(utc(2026, 11, 20, 23, 0))  # Friday
    assert not weekdays(utc(2026, 11, 21, 1, 0))  # Saturday
    weekend = when_of("{days: fri-mon, timezone: UTC}")
    assert weekend(utc(2026, 11, 22, 12, 0)) and weekend(utc(2026, 11, 23, 12, 0))
    assert not weekend(utc(2026, 11, 24, 12, 0))  # Tuesday
    full = when_of("{days: [saturday], timezone: UTC}")
    assert full(utc(2026, 11, 21, 12, 0))


def test_days_apply_to_the_day_of_the_instant_in_a_wrapping_window() -> None:
    """With days [fri] and 22:00-06:00, Friday night is in and the Saturday morning is not."""
    w = when_of('{days: [fri], hours: "22:00-06:00", timezone: UTC}')
    assert w(utc(2026, 11, 20, 23, 0))
    assert w(utc(2026, 11, 20, 3, 0))  # early Friday morning
    assert not w(utc(2026, 11, 21, 3, 0))


def test_timezone_decides_local_time_and_day() -> None:
    """The window is read in its zone: one instant is in for New York and out for Tokyo."""
    instant = utc(2026, 7, 1, 14, 0)  # 10:00 in New York, 23:00 in Tokyo
    assert when_of('{hours: "09:00-17:00", timezone: America/New_York}')(instant)
    assert not when_of('{hours: "09:00-17:00", timezone: Asia/Tokyo}')(instant)
    assert when_of("{days: [thu], timezone: Pacific/Kiritimati}")(instant)  # UTC+14: Thursday


def test_timezone_defaults_to_the_system_zone(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without timezone, the system's zone ($TZ first) applies."""
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    w = when_of('{hours: "09:00-10:00"}')
    assert w(utc(2026, 7, 1, 0, 30))  # 09:30 in Tokyo
    assert not w(utc(2026, 7, 1, 9, 30))


def test_when_accepts_other_zones_and_naive_times() -> None:
    """An aware time in any zone is converted; a naive time is taken as UTC."""
    w = when_of('{hours: "08:00-09:00", timezone: UTC}')
    assert w(datetime(2026, 7, 1, 10, 30, tzinfo=ZoneInfo("Europe/Berlin")))
    assert w(datetime(2026, 7, 1, 8, 30))
    assert not w(datetime(2026, 7, 1, 9, 30))


def test_dst_spring_forward_skips_the_missing_hour() -> None:
    """On Berlin's spring-forward day, 02:00-03:00 local never happens; the day before, 60 min."""
    w = when_of('{hours: "02:00-03:00", timezone: Europe/Berlin}')

    def minutes(day: datetime) -> int:
        return sum(w(day + timedelta(minutes=k)) for k in range(24 * 60))

    assert minutes(utc(2026, 3, 29)) == 0
    assert minutes(utc(2026, 3, 28)) == 60
    assert w(utc(2026, 3, 29, 1, 0)) is False  # 03:00 CEST


def test_dst_fall_back_repeats_the_hour() -> None:
    """On Berlin's fall-back day, 02:00-03:00 local happens twice: 120 minutes match."""
    w = when_of('{hours: "02:00-03:00", timezone: Europe/Berlin}')
    matched = [k for k in range(24 * 60) if w(utc(2026, 10, 25) + timedelta(minutes=k))]
    assert len(matched) == 120
    assert matched[0] == 0 and matched[-1] == 119  # 00:00-01:59 UTC


# --- mistakes, each with FILE:LINE ---------------------------------------------------------------

MATCH_ERRORS = [
    ("match-not-mapping", "match: [a]\n", 1, "match must be a condition"),
    ("empty-condition", "match: {}\n", 1, "empty condition"),
    (
        "unknown-operator",
        "match:\n  a:\n    eq: ab\n    startwith: a\n",
        4,
        "did you mean 'startswith'",
    ),
    ("nested-mapping", "match:\n  user: {name: bob}\n", 2, "write `user.name: value`"),
    ("not-as-operator", "match:\n  a: {not: 1}\n", 2, "not combines conditions"),
    ("in-not-list", "match:\n  a: {in: 3}\n", 2, "in takes a list of values"),
    ("in-empty", "match:\n  a: {in: []}\n", 2, "lists no value"),
    ("startswith-number", "match:\n  a:\n    startswith: 3\n", 3, "quote numbers"),
    ("endswith-mapping", "match:\n  a: {endswith: {x: 1}}\n", 2, "endswith takes a string"),
    ("gt-list", "match:\n  a:\n    gt: [1]\n", 3, "gt takes a number or a string, not a list"),
    ("lte-bool", "match:\n  a: {lte: true}\n", 2, "lte takes a number or a string, not true"),
    ("exists-string", 'match:\n  a: {exists: "yes"}\n', 2, "exists takes true or false"),
    ("contains-list", "match:\n  a: {contains: [1, 2]}\n", 2, "contains takes one value"),
    ("regex-lookahead", "match:\n  a:\n    regex: 'a(?=b)'\n", 3, "cannot be compiled by RE2"),
    ("regex-backreference", "match:\n  a: {regex: '(a)\\1'}\n", 2, "cannot be compiled by RE2"),
    ("regex-not-string", "match:\n  a: {regex: 5}\n", 2, "regex takes a string"),
    ("glob-not-string", "match:\n  a: {glob: [a]}\n", 2, "glob takes a string"),
    ("cidr-invalid", "match:\n  ip: {cidr: 10.0.0/8}\n", 2, "is not a network"),
    ("cidr-host-bits", "match:\n  ip: {cidr: 10.0.0.1/8}\n", 2, "write 10.0.0.0/8"),
    (
        "cidr-list-item",
        "match:\n  ip:\n    cidr:\n      - 10.0.0.0/8\n      - 300.1.1.1\n",
        5,
        "300.1.1.1",
    ),
    ("cidr-empty", "match:\n  ip: {cidr: []}\n", 2, "lists no network"),
    ("cidr-number", "match:\n  ip: {cidr: 10}\n", 2, "cidr takes a network"),
    ("field-given-list", "match:\n  level: [error, warning]\n", 2, "write `level: {in: [...]}`"),
    ("not-given-list", "match:\n  not:\n    - {a: 1}\n", 2, "not takes one condition"),
    ("all-not-list", "match:\n  all: {a: 1}\n", 2, "all must be a list of conditions"),
    ("any-item-not-mapping", "match:\n  any:\n    - {a: 1}\n    - b\n", 4, "item 2 of any"),
    ("binary-operand", "match:\n  a:\n    eq: !!binary aGk=\n", 3, "is not a JSON value"),
    ("binary-in-item", "match:\n  a: {in: [!!binary aGk=]}\n", 2, "is not a JSON value"),
    ("bad-path", "match:\n  a..b: 1\n", 2, "is not a field path"),
    ("field-form-alone", "match:\n  any:\n    - field: all\n", 3, "needs at least one operator"),
    ("field-form-bad-path", "match:\n  field: .x\n  eq: 1\n", 2, "is not a field path"),
    ("field-form-number", "match:\n  field: 3\n  eq: 1\n", 2, "field must name a field path"),
    ("no-operator", "match:\n  a: {}\n", 2, "no operator given"),
    ("hours-equal", 'match: {a: 1}\nwhen:\n  hours: "10:00-10:00"\n', 3, "starts where it ends"),
    ("hours-bad", 'match: {a: 1}\nwhen:\n  hours: "8-18"\n', 3, "HH:MM-HH:MM"),
    ("hours-25", 'match: {a: 1}\nwhen: {hours: "25:00-06:00"}\n', 2, "HH:MM-HH:MM"),
    ("days-item", "match: {a: 1}\nwhen:\n  days:\n    - mon\n    - funday\n", 5, "'funday'"),
    ("days-open-range", "match: {a: 1}\nwhen: {days: [mon-]}\n", 2, "is not a day"),
    ("days-empty", "match: {a: 1}\nwhen: {days: []}\n", 2, "selects no day"),
    ("timezone-number", "match: {a: 1}\nwhen: {days: [mon], timezone: 5}\n", 2, "IANA"),
    ("timezone", "match: {a: 1}\nwhen:\n  days: [mon]\n  timezone: Mars/Base\n", 4, "IANA"),
    ("when-empty-map", "match: {a: 1}\nwhen: {}\n", 2, "when must be a mapping"),
    ("when-only-zone", "match: {a: 1}\nwhen:\n  timezone: UTC\n", 2, "when needs days, hours"),
    (
        "when-unknown",
        "match: {a: 1}\nwhen:\n  day: [mon]\n  hours: '1:00-2:00'\n",
        3,
        "did you mean 'days'",
    ),
]


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [case[1:] for case in MATCH_ERRORS],
    ids=[case[0] for case in MATCH_ERRORS],
)
def test_match_error_has_its_line(text: str, line: int, fragment: str) -> None:
    """Each mistake is one problem at FILE:LINE of the offending key or item, saying what to do."""
    problems = problems_of(text)
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"r.yaml:{line}: "), problems
    assert fragment in problems[0], problems
