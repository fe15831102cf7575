"""Field paths: the one definition of how `user.name` or `items.0` is read from an event.

Rules, the rule index and the report's top values all read fields through `getter`, so they
cannot disagree on what a path names. A path is names separated by single dots. Each name after
the first looks up a key of an object; in a list, a name of ASCII digits only (`0`, `12`) is a
position. Any other name (`²`, `٣`, `-1`, `x`) in a list finds nothing, and is always a key of an
object, digits or not: `{"items": {"0": "a"}}` has `items.0`.

Events are plain JSON values as `orjson` builds them (exact `dict` and `list`), and a value that
is not there is `MISSING`, which is not `None`: `null` is a present value.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

Event = dict[str, Any]
Getter = Callable[[Event], Any]


class _Missing:
    __slots__ = ()

    def __repr__(self) -> str:
        return "<missing>"


MISSING: Final = _Missing()


def is_path(path: str) -> bool:
    """Whether `path` is one or more non-empty names separated by single dots."""
    return bool(path) and all(path.split("."))


def position(name: str) -> int | None:
    """The list position a path name stands for: ASCII digits only; None for any other name.

    `str.isdigit` alone is not enough: it is also true of `²` and of other scripts' digits,
    which `int()` refuses or reads as another number.
    """
    return int(name) if name.isascii() and name.isdigit() else None


def getter(path: str) -> Getter:
    """`event -> the value at path`, or MISSING. The path is split and its positions parsed once."""
    names = path.split(".")
    first = names[0]
    if len(names) == 1:

        def get_one(ev: Event) -> Any:
            return ev.get(first, MISSING)

        return get_one
    if len(names) == 2 and position(names[1]) is None:
        second = names[1]

        def get_two(ev: Event) -> Any:  # `user.name`: the most common path, unrolled
            value = ev.get(first, MISSING)
            return value.get(second, MISSING) if type(value) is dict else MISSING

        return get_two
    steps = tuple((name, -1 if (index := position(name)) is None else index) for name in names[1:])

    def get(ev: Event) -> Any:
        value = ev.get(first, MISSING)
        for key, index in steps:
            kind = type(value)
            if kind is dict:
                value = value.get(key, MISSING)
            elif kind is list and 0 <= index < len(value):
                value = value[index]
            else:
                return MISSING
        return value

    return get
