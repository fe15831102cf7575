"""The rule index: which conditions give a key, and that indexed routing selects exactly what
trying every rule selects (also on random rules and events)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.config.yamlfile import parse_yaml
from agent.rules.load import Rule, parse_rules
from agent.rules.routes import EQ, MEMO_LIMIT, NOTHING_LEFT, PREFIX, Route, Router, residual


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
    assert key_of({"event": "login.failed"}) == {("event", EQ, "login.failed")}
    assert key_of({"level": {"eq": "error"}}) == {("level", EQ, "error")}
    assert key_of({"level": {"in": ["error", "warning"]}}) == {
        ("level", EQ, "error"),
        ("level", EQ, "warning"),
    }
    assert key_of({"user.name": "bob"}) == {("user.name", EQ, "bob")}


def test_prefixes_are_keys() -> None:
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
    assert key_of(match) is None


def test_a_conjunction_takes_the_most_specific_key() -> None:
    key = key_of({"all": [{"level": "error"}, {"event": "login.failed"}]})
    assert key == {("event", EQ, "login.failed")}
    # Several keys in one mapping are a conjunction too; an equality beats a shorter prefix.
    assert key_of({"level": "error", "event": {"startswith": "lo"}}) == {("level", EQ, "error")}
    # Operators on one field: the key comes from the one that names strings.
    key = key_of({"event": {"startswith": "login.", "ne": "login.ok"}})
    assert key == {("event", PREFIX, "login.")}


def test_a_disjunction_is_keyed_by_every_branch() -> None:
    key = key_of({"any": [{"event": "a"}, {"user.name": {"startswith": "adm"}}]})
    assert key == {("event", EQ, "a"), ("user.name", PREFIX, "adm")}


def test_the_field_form_gives_a_key() -> None:
    assert key_of({"field": "all", "eq": "x"}) == {("all", EQ, "x")}


# --- routing -----------------------------------------------------------------------------------


def test_candidates_are_only_the_rules_whose_strings_the_event_holds() -> None:
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
    router = router_of(rules_from({"event": "login.failed"}, {"event": {"startswith": "login."}}))
    assert chosen(router, {"event": value}) == ([1] if value == "login.faile" else [])


def test_list_positions_are_indexed() -> None:
    router = router_of(rules_from({"items.0": "a"}))
    assert chosen(router, {"items": ["a", "b"]}) == [0]
    assert chosen(router, {"items": ["b", "a"]}) == []
    assert chosen(router, {"items": {"0": "a"}}) == [0]  # a digit segment also names a key


def test_a_rule_found_through_two_alternatives_is_a_candidate_once() -> None:
    rules = rules_from(
        {"event": {"startswith": ["log", "login."]}},
        {"any": [{"event": "login.x"}, {"user": "bob"}]},
    )
    router = router_of(rules)
    found = [r[0] for r in router.candidates({"event": "login.x", "user": "bob"})]
    assert sorted(found) == [0, 1]


def test_the_memo_of_prefix_answers_stays_bounded_and_right() -> None:
    router = router_of(rules_from({"path": {"startswith": "/srv/"}}))
    for n in range(MEMO_LIMIT + 100):
        assert chosen(router, {"path": f"/home/{n}"}) == []
    assert chosen(router, {"path": "/srv/x"}) == [0]
    assert chosen(router, {"path": "/srv/y"}) == [0]  # after the memo is full: worked out again


def test_the_pipeline_shortcut_applies_only_to_one_top_level_equality_field() -> None:
    assert router_of(rules_from({"level": {"in": ["error", "warning"]}})).simple is not None
    assert router_of(rules_from({"user.name": "bob"})).simple is None
    assert router_of(rules_from({"level": "error"}, {"event": "x"})).simple is None
    assert router_of(rules_from({"level": "error"}, {"status": 500})).simple is None
    assert router_of(rules_from({"event": {"startswith": "x"}})).simple is None


# --- residuals ---------------------------------------------------------------------------------

LOGIN = {"event": {"startswith": "login."}}
LEVELS = {"level": {"in": ["error", "warning"]}}


def residual_of(match: Any) -> Any:
    text = json.dumps({"match": match})
    data, problems = parse_yaml(text, "rules.yaml")
    assert not problems
    key = key_of(match)
    assert key is not None
    rest = residual(data["match"], key)
    return (
        "nothing"
        if rest is NOTHING_LEFT
        else None
        if rest is None
        else json.loads(json.dumps(rest))
    )


@pytest.mark.parametrize(
    ("match", "rest"),
    [
        ({"level": "error"}, "nothing"),
        ({"level": {"eq": "error"}}, "nothing"),
        (LEVELS, "nothing"),
        ({**LEVELS, **LOGIN}, LOGIN),  # the longer literal is the key
        ({"all": [LEVELS, LOGIN]}, {"all": [LOGIN]}),
        ({"all": [LOGIN, {"level": "error"}]}, {"all": [LOGIN]}),
        ({"all": [{"level": "error"}], "user": {"exists": True}}, {"user": {"exists": True}}),
        ({"a": {"eq": "x"}, "b": {"eq": "yyyy"}}, {"a": {"eq": "x"}}),  # not the first one
        ({"b": {"startswith": "xy", "ne": "xyz"}}, None),  # two operators: tested whole
        ({"any": [{"a": "x"}, {"a": "y"}]}, None),
        ({"field": "all", "eq": "xyz"}, None),
        ({"all": [{"a": "x", "b": {"gte": 1}}]}, None),  # inside a mapping of two conditions
    ],
)
def test_the_residual_drops_exactly_the_condition_the_key_stands_for(match: Any, rest: Any) -> None:
    assert residual_of(match) == rest


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
    rules = rules_from(*matches)
    router = router_of(rules)
    for event in events:
        assert chosen(router, event) == linear(rules, event)
