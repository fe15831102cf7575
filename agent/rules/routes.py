"""Which rules an event can match, found by a few dictionary lookups instead of trying them all.

Most rules name values: `event: login.failed`, `user.name: {in: [alice, bob]}`,
`path: {startswith: /srv/}`. Such a condition, when every event the rule selects must satisfy
it, is the rule's *key*: a field path and the strings that field must equal or start with.
`Router` files each rule under its key's strings, so for an event it looks up the value of each
indexed field (and that value's prefixes of the indexed lengths) and gets back only the rules
that can match; every candidate is then tested in full. Rules without a key are tried for every
event. The answer is the same as trying every rule in order (tests/test_routes.py checks this on
random rules and events); only the work differs, which is what lets 1,000 rules cost about what
10 do.

A key is taken only where it is a necessary condition: a field condition at the top of the
`match:` mapping or inside `all:` (a conjunction), or one that every branch of an `any:` has.
Only strings are indexed: numbers and booleans have cross-type equality rules (1 == 1.0, but not
true) that a dictionary would blur.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from agent.config.yamlfile import Map, Seq
from agent.rules.fields import getter
from agent.rules.match import Event, Predicate, TimeTest

EQ = "eq"
PREFIX = "prefix"

# (path, kind, text): the event's value at `path` is a string equal to (EQ) or starting with
# (PREFIX) `text`. A rule's key is a set of these, one of which every event it selects satisfies.
Alternative = tuple[str, str, str]
Key = frozenset[Alternative]

# One compiled route: rule index, test, when, the indexes of the reports it feeds. The test is
# what a candidate must still pass (the rule's residual for a keyed route); None: nothing.
Route = tuple[int, Predicate | None, TimeTest | None, tuple[int, ...]]


# --- keys: what a condition requires -----------------------------------------------------------


def rule_key(node: Any) -> Key | None:
    """The key of a compiled rule's `match:` node, or None when it has none (tried always)."""
    return _condition(node)


def _condition(node: Any) -> Key | None:
    if not isinstance(node, Map):
        return None
    if "field" in node:
        path = node["field"]
        return (
            _field(path, {k: v for k, v in node.items() if k != "field"})
            if isinstance(path, str)
            else None
        )
    keys: list[Key] = []
    for name, value in node.items():
        if name == "all":
            key = _best([_condition(item) for item in value]) if isinstance(value, Seq) else None
        elif name == "any":
            key = _union([_condition(item) for item in value]) if isinstance(value, Seq) else None
        elif name == "not":
            key = None  # a negation requires no value
        elif isinstance(value, Map):
            key = _field(name, dict(value.items()))
        else:
            key = _field(name, {"eq": value})
        if key is not None:
            keys.append(key)
    return _best(keys)


def _field(path: str, ops: dict[str, Any]) -> Key | None:
    keys: list[Key] = []
    for op, operand in ops.items():
        if op == "eq" and type(operand) is str:
            keys.append(frozenset({(path, EQ, operand)}))
        elif op == "in" and isinstance(operand, Seq) and operand:
            if all(type(x) is str for x in operand):
                keys.append(frozenset((path, EQ, x) for x in operand))
        elif op == "startswith":
            items = list(operand) if isinstance(operand, Seq) else [operand]
            if items and all(type(x) is str for x in items):
                keys.append(frozenset((path, PREFIX, x) for x in items))
    return _best(keys)


# --- residuals: what a candidate found by its key must still pass ------------------------------

NOTHING_LEFT = Map()  # the key was the whole condition: a candidate is selected as found


def residual(node: Any, key: Key) -> Map | None:
    """The `match:` node without the one condition that is `key` exactly, or None if no such
    condition can be taken out (the whole node is then tested).

    A candidate found through its key's strings satisfies that condition already: testing it
    again would only cost a call per event. Exactly means one field, one operator, the same
    strings: `level: error`, `level: {in: [error, warning]}`, `event: {startswith: login.}`,
    at the top of the mapping or as an item of its `all:` list. NOTHING_LEFT when no other
    condition remains.
    """
    if not isinstance(node, Map) or "field" in node:
        return None
    for name, value in node.items():
        if _is_exactly(name, value, key):
            return _without(node, name)
    if isinstance(node.get("all"), Seq):
        items: Seq = node["all"]
        for index, item in enumerate(items):
            if isinstance(item, Map) and len(item) == 1 and "field" not in item:
                [(name, value)] = item.items()
                if _is_exactly(name, value, key):
                    rest = Seq(x for i, x in enumerate(items) if i != index)
                    rest.line = items.line
                    rest.item_lines = [n for i, n in enumerate(items.item_lines) if i != index]
                    return _with(node, "all", rest) if rest else _without(node, "all")
    return None


def _is_exactly(name: str, value: Any, key: Key) -> bool:
    if name in ("all", "any", "not", "field"):
        return False
    if isinstance(value, Map):
        if len(value) != 1 or next(iter(value)) not in ("eq", "in", "startswith"):
            return False
        return _field(name, dict(value.items())) == key
    return type(value) is str and _field(name, {"eq": value}) == key


def _without(node: Map, name: str) -> Map:
    rest = Map((k, v) for k, v in node.items() if k != name)
    rest.line = node.line
    rest.key_lines = node.key_lines
    return rest if rest else NOTHING_LEFT


def _with(node: Map, name: str, value: Any) -> Map:
    changed = Map((k, value if k == name else v) for k, v in node.items())
    changed.line = node.line
    changed.key_lines = node.key_lines
    return changed


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


# --- the router --------------------------------------------------------------------------------


MEMO_LIMIT = 4096  # strings remembered per field beyond its own; then no more are added


class _Field:
    """One indexed field: where to read it, and for each string the routes it leads to.

    `answers` starts as the equality table with every prefix hit of those same strings folded
    in; another string gets its answer from the prefix tables, remembered while there is room,
    so a value seen before costs one lookup whatever the number of rules. The room is bounded
    for fields of unbounded variety (paths, session ids), whose values rarely come again.
    """

    __slots__ = ("answers", "get", "key", "limit", "prefixes")

    def __init__(
        self,
        path: str,
        equal: dict[str, list[Route]],
        prefixes: dict[int, dict[str, list[Route]]],
    ) -> None:
        self.key = None if "." in path else path  # a top-level field is read with dict.get
        self.get = getter(path)
        self.prefixes = tuple(
            (n, {text: tuple(rs) for text, rs in table.items()})
            for n, table in sorted(prefixes.items())
        )
        self.answers = {text: tuple(rs) + self._prefixed(text) for text, rs in equal.items()}
        self.limit = len(self.answers) + MEMO_LIMIT

    def _prefixed(self, value: str) -> tuple[Route, ...]:
        found: tuple[Route, ...] = ()
        for n, table in self.prefixes:
            hit = table.get(value[:n])
            if hit is not None:
                found = found + hit if found else hit
        return found

    def miss(self, value: str) -> tuple[Route, ...]:
        found = self._prefixed(value)
        if len(self.answers) < self.limit:
            self.answers[value] = found
        return found


class Router:
    """The routes of one source, indexed by their keys.

    `candidates(event)` returns the routes the event may match (the order does not matter: each
    route is tested on its own); a route without a key is always among them, and a route appears
    once even when several of its alternatives hold.
    """

    __slots__ = ("_always", "_fields", "_may_repeat", "routes", "simple")

    def __init__(self, routes: Sequence[Route], keys: Sequence[Key | None]) -> None:
        self.routes = tuple(routes)
        always: list[Route] = []
        equal: dict[str, dict[str, list[Route]]] = {}
        prefix: dict[str, dict[int, dict[str, list[Route]]]] = {}
        repeat = False
        for route, key in zip(self.routes, keys, strict=True):
            if key is None:
                always.append(route)
                continue
            # One event can satisfy two of a rule's alternatives when they are on two fields,
            # or prefixes (of each other, or of an equal string) on one.
            repeat = repeat or (len(key) > 1 and any(kind == PREFIX for _, kind, _ in key))
            repeat = repeat or len({path for path, _, _ in key}) > 1
            for path, kind, text in key:
                if kind == EQ:
                    equal.setdefault(path, {}).setdefault(text, []).append(route)
                else:
                    by_len = prefix.setdefault(path, {}).setdefault(len(text), {})
                    by_len.setdefault(text, []).append(route)
        self._always = tuple(always)
        self._fields = tuple(
            _Field(path, equal.get(path, {}), prefix.get(path, {}))
            for path in sorted(equal.keys() | prefix.keys())
        )
        self._may_repeat = repeat
        # The common shape (rules keyed by the equality of one top-level field) needs no call
        # per event: the pipeline's loop does the lookup inline.
        self.simple: tuple[str, dict[str, tuple[Route, ...]]] | None = None
        if not always and len(self._fields) == 1:
            f = self._fields[0]
            if f.key is not None and not f.prefixes:
                self.simple = (f.key, f.answers)

    @property
    def indexed(self) -> int:
        """How many routes have a key (the rest are tried for every event)."""
        return len(self.routes) - len(self._always)

    def candidates(self, event: Event) -> Sequence[Route]:
        found: tuple[Route, ...] = self._always
        for f in self._fields:
            key = f.key
            value = event.get(key) if key is not None else f.get(event)
            if type(value) is not str:
                continue
            hit = f.answers.get(value)
            if hit is None:
                if not f.prefixes:
                    continue
                hit = f.miss(value)
            if hit:
                found = found + hit if found else hit
        if self._may_repeat and len(found) > 1:
            return tuple(dict.fromkeys(found))
        return found
