"""The condition tree: what a rule's `match:` and `when:` say, parsed once (`agent.rules.parse`).

Everything else about a rule is derived from these values: its predicate and time test
(`agent.rules.predicates`), its index key and residual (`agent.rules.routes`) and the fields it
reads (`paths`). Operands are already converted: plain JSON values instead of YAML nodes,
networks instead of text, days as weekday numbers.

Every node is a frozen dataclass. `line` is where it was written, for messages; it takes no part
in equality, so two trees that say the same thing compare equal wherever they were written.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from datetime import tzinfo
from typing import Any

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class Eq:
    """The value equals `value` within its JSON kind (1 == 1.0; 1 != true; 10 != "10")."""

    value: Any


@dataclass(frozen=True, slots=True)
class Ne:
    """Not Eq; also holds for a missing field."""

    value: Any


@dataclass(frozen=True, slots=True)
class In:
    """The value equals one of `values` (at least one)."""

    values: tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class NotIn:
    """Not In; also holds for a missing field."""

    values: tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class Contains:
    """A substring of a string value, or an item of a list value."""

    value: Any


@dataclass(frozen=True, slots=True)
class StartsWith:
    """A string value starting with one of `affixes`."""

    affixes: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class EndsWith:
    """A string value ending with one of `affixes`."""

    affixes: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Regex:
    """An RE2 `pattern` found in a string value (unanchored)."""

    pattern: str


@dataclass(frozen=True, slots=True)
class Glob:
    """A string value matching the shell-style `pattern` whole."""

    pattern: str


@dataclass(frozen=True, slots=True)
class Exists:
    """The field is present (even as null) when `present`, absent otherwise."""

    present: bool


@dataclass(frozen=True, slots=True)
class Order:
    """gt/gte/lt/lte: two numbers, or two strings by code point; never across kinds."""

    op: str  # gt, gte, lt or lte
    value: int | float | str


@dataclass(frozen=True, slots=True)
class Cidr:
    """An IP address (text) in one of `networks`."""

    networks: tuple[Network, ...]


Operator = (
    Eq | Ne | In | NotIn | Contains | StartsWith | EndsWith | Regex | Glob | Exists | Order | Cidr
)


@dataclass(frozen=True, slots=True)
class FieldTest:
    """Every one of `tests` holds for the value at `path` (a missing value: see each operator)."""

    path: str
    tests: tuple[Operator, ...]  # at least one
    line: int = field(default=0, compare=False)


@dataclass(frozen=True, slots=True)
class All:
    """Every item holds; `all: []` holds for every event."""

    items: tuple[Condition, ...]
    line: int = field(default=0, compare=False)


@dataclass(frozen=True, slots=True)
class AnyOf:
    """At least one item holds; `any: []` holds for no event."""

    items: tuple[Condition, ...]
    line: int = field(default=0, compare=False)


@dataclass(frozen=True, slots=True)
class Not:
    """The item does not hold."""

    item: Condition
    line: int = field(default=0, compare=False)


Condition = FieldTest | All | AnyOf | Not


def paths(condition: Condition) -> tuple[str, ...]:
    """The field paths a condition reads, in the order they are written, each once."""
    found: dict[str, None] = {}  # an ordered set

    def visit(c: Condition) -> None:
        if isinstance(c, FieldTest):
            found.setdefault(c.path)
        elif isinstance(c, Not):
            visit(c.item)
        else:
            for item in c.items:
                visit(item)

    visit(condition)
    return tuple(found)


@dataclass(frozen=True, slots=True)
class Window:
    """`when:`: the local weekdays (0 = Monday) and minutes of the day an event time must fall on.

    `hours` is (start, end) in minutes since midnight, start included, end excluded; start >
    end wraps past midnight. None: any day, any hour.
    """

    days: frozenset[int] | None
    hours: tuple[int, int] | None
    timezone: tzinfo
    line: int = field(default=0, compare=False)
