"""The rule index: which conditions give a key, and that indexed routing selects exactly what
trying every rule selects (also on random rules and events)."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.config.yamlfile import parse_yaml
from agent.rules import (
    EQ,
    MEMO_LIMIT,
    PREFIX,
    Condition,
    Route,
    Router,
    Rule,
    parse_rules,
    residual,
)
from agent.tail.eventtime import time_reader


def rules_from(*matches: Any) -> list[Rule]:
    text = json.dumps({"rules": [{"name": f"r{i}", "match": m} for i, m in enumerate(matches)]})
    data, problems = parse_yaml(text, "rules.yaml")
    assert not problems
    rules, problems = parse_rules(data, "rules.yaml", "rules")
    assert not problems, problems
    return rules


def key_of(match: Any) -> Any:
    return rules_from(match)[0].key


def router_of(rules: list[Rule]) -> Router:
    routes: list[Route] = [(i, r.test, r.when, (0,)) for i, r in enumerate(rules)]
    return Router(routes, [r.key for r in rules])


def chosen(router: Router, event: dict[str, Any]) -> list[int]:
    """The rules that select the event, tried as the pipeline tries them: candidates only."""
    now = datetime.now(UTC)
    return sorted(
        index
        for index, test, when, _ in router.candidates(event)
        if (test is None or test(event)) and (when is None or when(now))
    )


def linear(rules: list[Rule], event: dict[str, Any]) -> list[int]:
    return [i for i, r in enumerate(rules) if r.match(event)]


# --- keys --------------------------------------------------------------------------------------


def test_equality_and_membership_of_strings_are_keys() -> None:
    """A string equality, or membership in strings, keys a rule by those strings."""
    assert key_of({"event": "login.failed"}) == {("event", EQ, "login.failed")}
    assert key_of({"level": {"eq": "error"}}) == {("level", EQ, "error")}
    assert key_of({"level": {"in": ["error", "warning"]}}) == {
        ("level", EQ, "error"),
        ("level", EQ, "warning"),
    }
    assert key_of({"user.name": "bob"}) == {("user.name", EQ, "bob")}


def test_prefixes_are_keys() -> None:
    """startswith keys a rule by its prefixes."""
    assert key_of({"event": {"startswith": "login."}}) == {("event", PREFIX, "login.")}
    assert key_of({"path": {"startswith": ["/a/", "/b/"]}}) == {
        ("path", PREFIX, "/a/"),
        ("path", PREFIX, "/b/"),
    }


@pytest.mark.parametrize(
    "match",
    [
        {"status": 500},  # numbers have cross-type equality (500 == 500.0): not indexed
        {"status": {"in": [500, "500"]}},
        {"ok": True},
        {"gone": None},
        {"level": {"ne": "debug"}},
        {"level": {"not_in": ["debug"]}},
        {"user": {"exists": True}},
        {"msg": {"contains": "x"}},
        {"msg": {"regex": "^x"}},
        {"not": {"level": "error"}},
        {"any": [{"level": "error"}, {"status": {"gte": 500}}]},  # one branch has no key
        {"any": []},
        {"all": []},
    ],
)
def test_conditions_that_require_no_string_give_no_key(match: Any) -> None:
    """Numbers, negations, other operators and any: with an unkeyed branch give no key."""
    assert key_of(match) is None


def test_a_conjunction_takes_the_most_specific_key() -> None:
    """Of several necessary keys, the one with the longest text (equality first) is taken."""
    key = key_of({"all": [{"level": "error"}, {"event": "login.failed"}]})
    assert key == {("event", EQ, "login.failed")}
    # Several keys in one mapping are a conjunction too; an equality beats a shorter prefix.
    assert key_of({"level": "error", "event": {"startswith": "lo"}}) == {("level", EQ, "error")}
    # Operators on one field: the key comes from the one that names strings.
    key = key_of({"event": {"startswith": "login.", "ne": "login.ok"}})
    assert key == {("event", PREFIX, "login.")}


def test_a_disjunction_is_keyed_by_every_branch() -> None:
    """any: is keyed by the union of its branches' keys."""
    key = key_of({"any": [{"event": "a"}, {"user.name": {"startswith": "adm"}}]})
    assert key == {("event", EQ, "a"), ("user.name", PREFIX, "adm")}


def test_the_field_form_gives_a_key() -> None:
    """The field form (`{field: all, eq: x}`) is keyed like any field."""
    assert key_of({"field": "all", "eq": "x"}) == {("all", EQ, "x")}


# --- routing -----------------------------------------------------------------------------------


def test_candidates_are_only_the_rules_whose_strings_the_event_holds() -> None:
    """An event finds the rules whose strings it holds, and every unkeyed rule."""
    rules = rules_from(
        {"event": "login.failed"},
        {"event": {"startswith": "file."}},
        {"user.name": "bob"},
        {"status": {"gte": 500}},  # no key: always a candidate
    )
    router = router_of(rules)
    assert router.indexed == 3
    found = sorted(r[0] for r in router.candidates({"event": "file.upload", "user": {"name": "x"}}))
    assert found == [1, 3]
    found = sorted(
        r[0] for r in router.candidates({"event": "login.failed", "user": {"name": "bob"}})
    )
    assert found == [0, 2, 3]


@pytest.mark.parametrize(
    "value", [1, 1.0, True, None, ["login.failed"], {"a": 1}, "login.faile", "LOGIN.FAILED"]
)
def test_values_that_are_not_the_string_find_nothing(value: Any) -> None:
    """Values of another kind or another text find no keyed rule."""
    router = router_of(rules_from({"event": "login.failed"}, {"event": {"startswith": "login."}}))
    assert chosen(router, {"event": value}) == ([1] if value == "login.faile" else [])


def test_list_positions_are_indexed() -> None:
    """A path with a list position is indexed, and reads an object key too."""
    router = router_of(rules_from({"items.0": "a"}))
    assert chosen(router, {"items": ["a", "b"]}) == [0]
    assert chosen(router, {"items": ["b", "a"]}) == []
    assert chosen(router, {"items": {"0": "a"}}) == [0]  # a digit segment also names a key


def test_a_rule_found_through_two_alternatives_is_a_candidate_once() -> None:
    """A rule is a candidate once even when the event holds two of its alternatives."""
    rules = rules_from(
        {"event": {"startswith": ["log", "login."]}},
        {"any": [{"event": "login.x"}, {"user": "bob"}]},
    )
    router = router_of(rules)
    found = [r[0] for r in router.candidates({"event": "login.x", "user": "bob"})]
    assert sorted(found) == [0, 1]


def test_the_memo_of_prefix_answers_stays_bounded_and_right() -> None:
    """Prefix answers are remembered up to MEMO_LIMIT values; later values are still right."""
    router = router_of(rules_from({"path": {"startswith": "/srv/"}}))
    for n in range(MEMO_LIMIT + 100):
        assert chosen(router, {"path": f"/home/{n}"}) == []
    assert chosen(router, {"path": "/srv/x"}) == [0]
    assert chosen(router, {"path": "/srv/y"}) == [0]  # after the memo is full: worked out again


def test_the_pipeline_shortcut_applies_only_to_one_top_level_equality_field() -> None:
    """Router.simple is offered only for rules keyed by equality on one top-level field."""
    assert router_of(rules_from({"level": {"in": ["error", "warning"]}})).simple is not None
    assert router_of(rules_from({"user.name": "bob"})).simple is None
    assert router_of(rules_from({"level": "error"}, {"event": "x"})).simple is None
    assert router_of(rules_from({"level": "error"}, {"status": 500})).simple is None
    assert router_of(rules_from({"event": {"startswith": "x"}})).simple is None


# --- residuals ---------------------------------------------------------------------------------

LOGIN = {"event": {"startswith": "login."}}
LEVELS = {"level": {"in": ["error", "warning"]}}


def condition_of(match: Any) -> Condition:
    return rules_from(match)[0].condition


def residual_of(match: Any) -> Condition | str:
    """The residual of a rule's condition: "nothing", "whole" (nothing taken out) or the rest."""
    [rule] = rules_from(match)
    assert rule.key is not None
    rest = residual(rule.condition, rule.key)
    return "nothing" if rest is None else "whole" if rest is rule.condition else rest


@pytest.mark.parametrize(
    ("match", "rest"),
    [
        ({"level": "error"}, "nothing"),
        ({"level": {"eq": "error"}}, "nothing"),
        (LEVELS, "nothing"),
        ({**LEVELS, **LOGIN}, LOGIN),  # the longer literal is the key
        ({"all": [LEVELS, LOGIN]}, LOGIN),
        ({"all": [LOGIN, {"level": "error"}]}, LOGIN),
        ({"all": [{"level": "error"}], "user": {"exists": True}}, {"user": {"exists": True}}),
        ({"a": {"eq": "x"}, "b": {"eq": "yyyy"}}, {"a": {"eq": "x"}}),  # not the first one
        ({"field": "all", "eq": "xyz"}, "nothing"),
        # Taken out wherever it stands in the conjunction: one operator of several on a field,
        # an item of a mapping inside `all:`.
        ({"b": {"startswith": "xy", "ne": "xyz"}}, {"b": {"ne": "xyz"}}),
        ({"all": [{"a": "x", "b": {"gte": 1}}]}, {"b": {"gte": 1}}),
        # An `any:` whose every branch is exactly its key is exactly their union.
        ({"any": [{"a": "x"}, {"a": "y"}]}, "nothing"),
        ({"any": [{"a": "x"}, {"b": {"startswith": "yy"}}], "c": 1}, {"c": 1}),
        # A branch that is more than its key: the key is only necessary, the rule is tested whole.
        ({"any": [{"a": "x"}, {"b": {"startswith": "y", "ne": "yz"}}]}, "whole"),
        ({"any": [{"a": "x"}, {"all": [{"a": "y"}, {"c": 1}]}]}, "whole"),
    ],
)
def test_the_residual_drops_exactly_the_condition_the_key_stands_for(match: Any, rest: Any) -> None:
    """The residual is the condition without the one part its key stands for, or all of it."""
    assert residual_of(match) == (rest if isinstance(rest, str) else condition_of(rest))


@pytest.mark.parametrize(
    ("match", "selected", "not_selected"),
    [
        ({"a": {"eq": "x"}, "b": {"eq": "yyyy"}}, {"a": "x", "b": "yyyy"}, {"a": "z", "b": "yyyy"}),
        ({"b": {"startswith": "xy", "ne": "xyz"}}, {"b": "xyw"}, {"b": "xyz"}),
        (
            {"all": [LEVELS, LOGIN]},
            {"level": "error", "event": "login.x"},
            {"level": "error", "event": "x"},
        ),
        ({"level": "error"}, {"level": "error"}, {"level": "errors"}),
    ],
)
def test_a_candidate_still_passes_the_rest_of_its_rule(
    match: Any, selected: dict[str, Any], not_selected: dict[str, Any]
) -> None:
    """A candidate is selected only when the rest of its condition holds too."""
    rules = rules_from(match)
    router = router_of(rules)
    assert chosen(router, selected) == linear(rules, selected) == [0]
    assert chosen(router, not_selected) == linear(rules, not_selected) == []


# --- the same answer as trying every rule ------------------------------------------------------

FIELDS = ["a", "b", "c.d", "items.0"]
WORDS = ["", "x", "xy", "xyz", "login.", "login.failed", "10", "é", "a.b"]
scalars = st.one_of(
    st.sampled_from(WORDS),
    st.integers(-2, 12),
    st.sampled_from([1.0, 10.0]),
    st.booleans(),
    st.none(),
)


def _operator() -> st.SearchStrategy[dict[str, Any]]:
    words = st.sampled_from(WORDS)
    return st.one_of(
        st.builds(lambda v: {"eq": v}, scalars),
        st.builds(lambda v: {"ne": v}, scalars),
        st.builds(lambda v: {"in": v}, st.lists(scalars, min_size=1, max_size=3)),
        st.builds(lambda v: {"not_in": v}, st.lists(scalars, min_size=1, max_size=3)),
        st.builds(lambda v: {"startswith": v}, words),
        st.builds(lambda v: {"startswith": v}, st.lists(words, min_size=1, max_size=3)),
        st.builds(lambda v: {"exists": v}, st.booleans()),
        st.builds(lambda v: {"gte": v}, st.integers(0, 10)),
        st.builds(lambda a, b: {"startswith": a, "ne": b}, words, words),
    )


def _condition() -> st.SearchStrategy[Any]:
    field = st.builds(lambda f, op: {f: op}, st.sampled_from(FIELDS), _operator())
    bare = st.builds(lambda f, v: {f: v}, st.sampled_from(FIELDS), scalars)
    leaf = st.one_of(field, bare)
    return st.recursive(
        leaf,
        lambda inner: st.one_of(
            st.builds(lambda xs: {"all": xs}, st.lists(inner, max_size=3)),
            st.builds(lambda xs: {"any": xs}, st.lists(inner, max_size=3)),
            st.builds(lambda x: {"not": x}, inner),
            st.builds(lambda x, y: {**x, **y}, field, field),
        ),
        max_leaves=5,
    )


def _event() -> st.SearchStrategy[dict[str, Any]]:
    value = st.one_of(scalars, st.lists(scalars, max_size=2))
    return st.fixed_dictionaries(
        {},
        optional={
            "a": value,
            "b": value,
            "c": st.one_of(st.fixed_dictionaries({}, optional={"d": value}), value),
            "items": st.lists(scalars, max_size=2),
        },
    )


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_condition(), min_size=1, max_size=8), st.lists(_event(), min_size=1, max_size=8))
def test_indexed_routing_selects_what_trying_every_rule_selects(
    matches: list[Any], events: list[dict[str, Any]]
) -> None:
    """Candidates and their tests select what every rule's condition selects, on random rules and events."""
    rules = rules_from(*matches)
    router = router_of(rules)
    for event in events:
        assert chosen(router, event) == linear(rules, event)


# --- the pipeline's indexed path means Rule.selects --------------------------------------------

BERLIN = ZoneInfo("Europe/Berlin")
ARRIVAL = datetime(2026, 11, 21, 23, 30, tzinfo=UTC)  # a Saturday in UTC, a Sunday in Berlin
DAYS = ["mon", "tue", "wed", "thu", "fri", "sat", "sun", "mon-fri", "fri-mon", "sunday"]


def _hours() -> st.SearchStrategy[str]:
    def text(start: int, end: int) -> str:
        return f"{start // 60:02d}:{start % 60:02d}-{end // 60:02d}:{end % 60:02d}"

    minutes = st.integers(0, 47).map(lambda n: n * 30)
    return st.builds(text, minutes, minutes).filter(lambda h: h[:5] != h[6:])


def _window() -> st.SearchStrategy[dict[str, Any]]:
    days = st.lists(st.sampled_from(DAYS), min_size=1, max_size=3)
    zones = st.sampled_from(["UTC", "Europe/Berlin", "Pacific/Auckland"])
    return st.one_of(
        st.fixed_dictionaries({"days": days}, optional={"timezone": zones}),
        st.fixed_dictionaries({"hours": _hours()}, optional={"days": days, "timezone": zones}),
    )


def _richer_condition() -> st.SearchStrategy[Any]:
    """`_condition`, with operators that give no key, fields with several operators (keyed or
    not), mappings of several fields and the field form."""
    words = st.sampled_from(WORDS)
    strings = st.lists(words, min_size=1, max_size=3)
    others = st.one_of(
        st.builds(lambda v: {"endswith": v}, words),
        st.builds(lambda v: {"contains": v}, st.one_of(words, st.integers(0, 3))),
        st.builds(lambda v: {"regex": v}, st.sampled_from(["^x", "y$", "é", "[0-9]"])),
        st.builds(lambda v: {"glob": v}, st.sampled_from(["x*", "*.b", "?", "login.*"])),
        st.builds(lambda v: {"lt": v}, st.one_of(st.integers(0, 12), words)),
        st.builds(lambda v: {"in": v}, strings),
        st.builds(lambda v, w: {"in": v, "ne": w}, strings, words),
        st.builds(lambda v, w: {"in": v, "startswith": w}, strings, strings),
        st.builds(lambda v, w: {"startswith": v, "in": w}, strings, strings),
        st.builds(lambda v, w: {"endswith": v, "eq": w}, words, words),
        st.builds(lambda v, w: {"ne": v, "startswith": w}, words, strings),
    )
    other = st.builds(lambda f, op: {f: op}, st.sampled_from(FIELDS), others)
    several = st.dictionaries(st.sampled_from(FIELDS), st.one_of(others, words), min_size=2)
    keyword = st.builds(
        lambda op: {"field": "any", **op}, st.one_of(_operator(), others)
    )  # a field named like a keyword
    return st.recursive(
        st.one_of(_condition(), other, several, keyword),
        lambda inner: st.one_of(
            st.builds(lambda xs: {"all": xs}, st.lists(inner, max_size=3)),
            st.builds(lambda xs: {"any": xs}, st.lists(inner, max_size=3)),
            st.builds(lambda x: {"not": x}, inner),
        ),
        max_leaves=4,
    )


def literals(value: Any) -> list[Any]:
    """The scalars a rule definition names, to build events that meet its tests."""
    if isinstance(value, dict):
        return [x for v in value.values() for x in literals(v)]
    if isinstance(value, list):
        return [x for v in value for x in literals(v)]
    return [value]


def _timed_event(named: list[Any]) -> st.SearchStrategy[dict[str, Any]]:
    """Events whose values are mostly those the rules name (and longer strings starting with
    them), so that keys, prefixes and the tests beside them are met as often as missed."""
    instants = st.datetimes(
        min_value=datetime(2026, 1, 1), max_value=datetime(2027, 1, 1), timezones=st.just(UTC)
    )
    times = st.one_of(
        instants.map(lambda t: t.isoformat()),
        instants.map(lambda t: t.replace(tzinfo=None).isoformat()),  # read in the local zone
        instants.map(lambda t: int(t.timestamp())),
        st.sampled_from(["yesterday", None, True]),  # no time: the arrival's
    )
    strings = [x for x in named if type(x) is str]
    exact = st.sampled_from(named or WORDS)
    longer = st.builds(
        lambda x, y: x + y, st.sampled_from(strings or WORDS), st.sampled_from(WORDS)
    )
    one = st.one_of(exact, exact, exact, longer, scalars)
    value = st.one_of(one, one, one, st.lists(one, max_size=2))
    return st.fixed_dictionaries(
        {},
        optional={
            "a": value,
            "b": value,
            "c": st.one_of(st.fixed_dictionaries({}, optional={"d": value}), value),
            "items": st.lists(one, max_size=2),
            "any": value,
            "ts": times,
        },
    )


def put(event: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A copy of `event` with `value` at `path` (`0` names a list's first item)."""
    first, *rest = path.split(".")
    for name in reversed(rest):
        value = [value] if name == "0" else {name: value}
    return {**event, first: value}


def _candidate_event(rules: list[Rule], named: list[Any]) -> st.SearchStrategy[dict[str, Any]]:
    """Events that meet one of the rules' key alternatives (an equal string, or a string that
    starts with a prefix, one the rules name if they can): found by the index, so that what
    decides is the residual and the window."""
    alternatives = sorted({alternative for r in rules if r.key for alternative in r.key})
    if not alternatives:
        return _timed_event(named)
    strings = [x for x in named if type(x) is str]

    def meet(event: dict[str, Any], alternative: tuple[str, str, str], pick: int, tail: str) -> Any:
        path, kind, text = alternative
        starting = [x for x in strings if x.startswith(text)] if kind == PREFIX else [text]
        value = starting[pick % len(starting)] if pick >= 0 else text + tail
        return put(event, path, value)

    return st.builds(
        meet,
        _timed_event(named),
        st.sampled_from(alternatives),
        st.integers(-1, 20),
        st.sampled_from(WORDS),
    )


def timed_rules_from(rules: list[tuple[Any, dict[str, Any] | None]]) -> list[Rule]:
    entries = [
        {"name": f"r{i}", "match": match, **({"when": when} if when is not None else {})}
        for i, (match, when) in enumerate(rules)
    ]
    data, problems = parse_yaml(json.dumps({"rules": entries}), "rules.yaml")
    assert not problems
    parsed, problems = parse_rules(data, "rules.yaml", "rules")
    assert not problems, problems
    return parsed


def indexed(
    router: Router, event: dict[str, Any], at: Callable[[dict[str, Any]], datetime]
) -> list[int]:
    """The rules that select the event as the pipeline's loop finds them (`Pipeline._process`):
    the inline lookup when the router offers one, else its candidates; then each candidate's
    test, and its window at the event time, read at most once per event."""
    found: Sequence[Route]
    if router.simple is not None:
        key, table = router.simple
        try:
            found = table.get(event.get(key)) or ()
        except TypeError:  # an unhashable value finds no rule
            found = ()
    else:
        found = router.candidates(event)
    indexes = [route[0] for route in found]
    assert len(indexes) == len(set(indexes)), "a rule found twice would be counted twice"
    hits = []
    when_time: datetime | None = None
    for index, test, when, _ in found:
        if test is None or test(event):
            if when is not None:
                if when_time is None:
                    when_time = at(event)
                if not when(when_time):
                    continue
            hits.append(index)
    return sorted(hits)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(_richer_condition(), st.one_of(st.none(), _window())), min_size=1, max_size=8
    ),
    st.data(),
)
def test_the_indexed_path_selects_exactly_what_rule_selects_selects(
    definitions: list[tuple[Any, dict[str, Any] | None]], data: st.DataObject
) -> None:
    """Candidates, residual and window, as the pipeline runs them, select an event exactly when Rule.selects does."""
    rules = timed_rules_from(definitions)
    router = router_of(rules)
    at = time_reader("ts", BERLIN, lambda: ARRIVAL)
    named = literals([m for m, _ in definitions])
    # Many events per set of rules: parsing the rules is what takes the time.
    events = data.draw(
        st.lists(
            st.one_of(_timed_event(named), _candidate_event(rules, named)),
            min_size=10,
            max_size=40,
        )
    )
    for event in events:
        expected = [i for i, r in enumerate(rules) if r.selects(event, at)]
        assert indexed(router, event, at) == expected
