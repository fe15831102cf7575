"""A rule's key and residual, derived from its condition tree: what lets the index skip rules.

Most rules name values: `event: login.failed`, `user.name: {in: [alice, bob]}`,
`path: {startswith: /srv/}`. Such a condition, when every event the rule selects must satisfy
it, is the rule's *key*: a field path and the strings that field must equal or start with. The
`Router` (`agent.rules.routes`) files each rule under its key's strings, and tests a candidate
only on its *residual*: the condition without the part the key stands for, which the candidate
already meets.

A key is taken only where it is a necessary condition: a field test in the conjunction at the
top of the condition (`all:`, several keys of one mapping, several operators of one field), or
one that every branch of an `any:` has. Only strings are indexed: numbers and booleans have
cross-type equality rules (1 == 1.0, but not true) that a dictionary would blur.
"""

from __future__ import annotations

from collections.abc import Sequence

from agent.rules.condition import All, AnyOf, Condition, Eq, FieldTest, In, Operator, StartsWith

EQ = "eq"
PREFIX = "prefix"

# (path, kind, text): the event's value at `path` is a string equal to (EQ) or starting with
# (PREFIX) `text`. A rule's key is a set of these, one of which every event it selects satisfies.
Alternative = tuple[str, str, str]
Key = frozenset[Alternative]


def rule_key(condition: Condition) -> Key | None:
    """The key of a rule's condition, or None when it has none (the rule is tried always)."""
    if isinstance(condition, FieldTest):
        return _best([_operator_key(condition.path, op) for op in condition.tests])
    if isinstance(condition, All):
        return _best([rule_key(item) for item in condition.items])
    if isinstance(condition, AnyOf):
        return _union([rule_key(item) for item in condition.items])
    return None  # a negation requires no value


def _operator_key(path: str, op: Operator) -> Key | None:
    """The key of one operator; every operator that has one holds exactly when its key does."""
    if isinstance(op, Eq):
        return frozenset({(path, EQ, op.value)}) if type(op.value) is str else None
    if isinstance(op, In):
        if all(type(x) is str for x in op.values):
            return frozenset((path, EQ, x) for x in op.values)
        return None
    if isinstance(op, StartsWith):
        return frozenset((path, PREFIX, x) for x in op.affixes)
    return None


def residual(condition: Condition, key: Key) -> Condition | None:
    """What a candidate found through `key` must still pass: the condition without one part that
    holds exactly when `key` does; None when nothing else is left.

    A candidate found through its key's strings satisfies that part already: testing it again
    would only cost a call per event. The part is taken out of the conjunction at the top of the
    condition, however it is nested (`all:` items, several keys of one mapping, several
    operators of one field): `level: error`, `level: {in: [error, warning]}`,
    `event: {startswith: login.}`, or an `any:` whose every branch is such a test. When no part
    is exactly the key, the whole condition is the residual.
    """
    rest = _without(condition, key)
    return condition if isinstance(rest, _NotFound) else rest


class _NotFound:
    """No part of the condition is exactly the key."""

    __slots__ = ()


def _without(condition: Condition, key: Key) -> Condition | _NotFound | None:
    """`condition` without one conjunct that is exactly `key`; None when nothing is left."""
    if _exact_key(condition) == key:
        return None
    if isinstance(condition, FieldTest) and len(condition.tests) > 1:
        for index, op in enumerate(condition.tests):
            if _operator_key(condition.path, op) == key:
                tests = condition.tests[:index] + condition.tests[index + 1 :]
                return FieldTest(condition.path, tests, condition.line)
    elif isinstance(condition, All):
        for index, item in enumerate(condition.items):
            rest = _without(item, key)
            if isinstance(rest, _NotFound):
                continue
            before, after = condition.items[:index], condition.items[index + 1 :]
            items = before + after if rest is None else (*before, rest, *after)
            if len(items) > 1:
                return All(items, condition.line)
            return items[0] if items else None  # all of one condition is that condition
    return _NotFound()


def _exact_key(condition: Condition) -> Key | None:
    """The key that holds exactly when `condition` does, if there is one."""
    if isinstance(condition, FieldTest):
        return (
            _operator_key(condition.path, condition.tests[0]) if len(condition.tests) == 1 else None
        )
    if isinstance(condition, All):
        return _exact_key(condition.items[0]) if len(condition.items) == 1 else None
    if isinstance(condition, AnyOf):
        keys = [_exact_key(item) for item in condition.items]
        return _union(keys)
    return None


def _union(keys: Sequence[Key | None]) -> Key | None:
    """`any:`: a key only if every branch has one (an empty `any` matches nothing: no key)."""
    if not keys or any(k is None for k in keys):
        return None
    return frozenset().union(*(k for k in keys if k is not None))


def _best(keys: Sequence[Key | None]) -> Key | None:
    """Of a conjunction's keys, the one likely to leave fewest candidates: longest texts first
    (a long literal is rarer than a short one), equality before prefix, fewer alternatives."""
    found = [k for k in keys if k is not None]
    if not found:
        return None
    return max(found, key=_score)


def _score(key: Key) -> tuple[int, int]:
    weakest = min(len(text) + (4 if kind == EQ else 0) for _, kind, text in key)
    return weakest, -len(key)
