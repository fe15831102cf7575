"""Tests of one JSON value: equality, membership, containment, order, IP networks.

Values are plain JSON as `orjson` builds them: exact `dict`, `list`, `str`, `int`, `float`,
`bool` and `None`. Kinds are told apart by exact type, so a `bool` is never a number and a
number never equals a string. Each test is a closure specialised for its operand: it runs once
per candidate event, so the operand's kind is decided when the rule is loaded, not per call.
"""

from __future__ import annotations

import operator
import socket
from collections.abc import Callable, Sequence
from typing import Any, Final

from agent.rules.condition import Network

ValueTest = Callable[[Any], bool]

NUMBER: Final = frozenset({int, float})  # exact types: bool is not a number here

_ORDER: Final[dict[str, Callable[[Any, Any], bool]]] = {
    "gt": operator.gt, "gte": operator.ge, "lt": operator.lt, "lte": operator.le,
}  # fmt: skip


def json_equal(a: Any, b: Any) -> bool:
    """Equality within a JSON kind: 1 == 1.0, but 1 != true and 10 != "10", also deep inside."""
    ta, tb = type(a), type(b)
    if ta in NUMBER:
        return tb in NUMBER and a == b
    if ta is not tb:
        return False
    if ta is list:
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b, strict=True))
    if ta is dict:
        return a.keys() == b.keys() and all(json_equal(v, b[k]) for k, v in a.items())
    return bool(a == b)


def equal_test(x: Any) -> ValueTest:
    tx = type(x)
    if tx is str:
        text: str = x

        def eq_str(v: object) -> bool:
            return v == text  # only a str equals a str

        return eq_str
    if tx in NUMBER:

        def eq_number(v: Any) -> bool:
            return v == x and type(v) is not bool

        return eq_number
    if tx is bool or x is None:

        def eq_identity(v: Any) -> bool:
            return v is x

        return eq_identity

    def eq_deep(v: Any) -> bool:
        return json_equal(v, x)

    return eq_deep


def member_test(values: Sequence[Any]) -> ValueTest:
    strings = frozenset(x for x in values if type(x) is str)
    numbers = frozenset(x for x in values if type(x) in NUMBER)
    bools = frozenset(x for x in values if type(x) is bool)
    has_null = any(x is None for x in values)
    deep = tuple(x for x in values if type(x) in (list, dict))
    if len(strings) == len(values):

        def in_strings(v: Any) -> bool:
            return type(v) is str and v in strings

        return in_strings

    def member(v: Any) -> bool:
        tv = type(v)
        if tv is str:
            return v in strings
        if tv is int or tv is float:
            return v in numbers
        if tv is bool:
            return v in bools
        if v is None:
            return has_null
        return any(json_equal(v, x) for x in deep)

    return member


def contains_test(x: Any) -> ValueTest:
    if type(x) is str or x is None:
        # `in` on a list compares with ==, which is kind-exact for strings and null.
        def contains_plain(v: Any) -> bool:
            tv = type(v)
            if tv is str:
                return type(x) is str and x in v
            return tv is list and x in v

        return contains_plain
    eq = equal_test(x)

    def contains_item(v: Any) -> bool:
        if type(v) is list:
            for item in v:
                if eq(item):
                    return True
        return False

    return contains_item


def order_test(op: str, value: int | float | str) -> ValueTest:
    compare = _ORDER[op]
    if type(value) is str:  # code-point order, as Python compares str

        def strings(v: Any) -> bool:
            return type(v) is str and compare(v, value)

        return strings

    def numbers(v: Any) -> bool:
        return type(v) in NUMBER and compare(v, value)

    return numbers


def negate(test: ValueTest) -> ValueTest:
    def negated(v: Any) -> bool:
        return not test(v)

    return negated


def constant(result: bool) -> ValueTest:
    def always(v: Any) -> bool:
        return result

    return always


def cidr_test(networks: Sequence[Network]) -> ValueTest:
    """inet_pton is ~10x faster than ipaddress.ip_address and as strict (no leading zeros,
    no short forms). An IPv4-mapped IPv6 address (::ffff:10.1.2.3, as dual-stack servers log
    IPv4 clients) is also tested as the IPv4 address it carries."""
    v4 = tuple((int(n.network_address), int(n.netmask)) for n in networks if n.version == 4)
    v6 = tuple((int(n.network_address), int(n.netmask)) for n in networks if n.version == 6)
    pton, inet4, inet6, from_bytes = (
        socket.inet_pton,
        socket.AF_INET,
        socket.AF_INET6,
        int.from_bytes,
    )

    def in_networks(v: Any) -> bool:
        if type(v) is not str:
            return False
        try:
            if ":" in v:
                address = from_bytes(pton(inet6, v.partition("%")[0]), "big")
                for net, mask in v6:
                    if address & mask == net:
                        return True
                if address >> 32 != 0xFFFF:
                    return False
                address &= 0xFFFFFFFF
            else:
                address = from_bytes(pton(inet4, v), "big")
        except (OSError, ValueError):  # not an address; NUL or non-ASCII text
            return False
        for net, mask in v4:  # noqa: SIM110 (hot path: a generator costs 3x)
            if address & mask == net:
                return True
        return False

    return in_networks
