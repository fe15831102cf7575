"""Which rules an event can match, found by a few dictionary lookups instead of trying them all.

`Router` files each rule under the strings of its key (`agent.rules.keys`), so for an event it
looks up the value of each indexed field (and that value's prefixes of the indexed lengths) and
gets back only the rules that can match; a candidate is then tested on its residual. Rules
without a key are tried for every event. The answer is the same as `Rule.selects` on every rule
(tests/unit/rules/test_routes.py checks this on random rules and events); only the work differs, which is
what lets 1,000 rules cost about what 10 do.
"""

from __future__ import annotations

from collections.abc import Sequence

from agent.rules.fields import Event, getter
from agent.rules.keys import EQ, PREFIX, Key
from agent.rules.predicates import Predicate, TimeTest

# One compiled route: rule index, test, when, the indexes of the reports it feeds. The test is
# what a candidate must still pass (the rule's residual for a keyed route); None: nothing.
# A plain tuple, not a class: the pipeline's loop unpacks it for every candidate.
Route = tuple[int, Predicate | None, TimeTest | None, tuple[int, ...]]


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
