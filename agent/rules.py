"""Filter rules: what the operator wrote in `rules_dir`, validated once and compiled to closures.

A rule's condition is compiled at load time into nested closures, so the hot path (`Rule.match`,
called for every event) never looks at YAML again: field paths are pre-split, operands
pre-converted, regular expressions pre-compiled with RE2 (linear time, no lookaround or
backreferences). Events are plain JSON values as `orjson`/`json` build them: exact `dict`,
`list`, `str`, `int`, `float`, `bool` and `None`; kinds are told apart by exact type, so a
`bool` is never a number.

Every mistake is a `Problem` with the line of the offending key or item. A file with any problem
loads no rule; `RuleBook` then keeps that file's previous version in force.
"""

from __future__ import annotations

import difflib
import hashlib
import ipaddress
import operator
import os
import re
import socket
import stat
import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import re2

from agent.periods import system_timezone
from agent.yamlfile import Map, Problem, Seq, load_yaml, parse_yaml

Event = dict[str, Any]
Predicate = Callable[[Event], bool]
ValueTest = Callable[[Any], bool]
TimeTest = Callable[[datetime], bool]


@dataclass(frozen=True, slots=True)
class Rule:
    """One compiled rule. An event is selected when `match(event)` holds and, if `when` is set,
    `when(event_time)` holds; `sources`/`reports` restrict where it applies (None: everywhere)."""

    name: str
    description: str
    file: str
    line: int
    enabled: bool
    sources: frozenset[str] | None  # None: all sources
    reports: frozenset[str] | None  # None: all reports
    match: Predicate  # compiled once; called per event
    when: TimeTest | None  # takes the event time, aware (a naive one is taken as UTC)
    fields: tuple[str, ...]  # field paths the condition reads, first-use order


class _Missing:
    __slots__ = ()

    def __repr__(self) -> str:
        return "<missing>"


_MISSING: Final = _Missing()
_NUMBER: Final = frozenset({int, float})  # exact types: bool is not a number here

RULE_KEYS: Final = ("name", "description", "enabled", "sources", "reports", "match", "when")
WHEN_KEYS: Final = ("days", "hours", "timezone")
OPERATORS: Final = (
    "eq", "ne", "in", "not_in", "contains", "startswith", "endswith", "regex", "glob",
    "exists", "gt", "gte", "lt", "lte", "cidr",
)  # fmt: skip
_COMPARISONS: Final[dict[str, Callable[[Any, Any], bool]]] = {
    "gt": operator.gt, "gte": operator.ge, "lt": operator.lt, "lte": operator.le,
}  # fmt: skip
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_NAME_RULE = "may use only letters, digits, '.', '_' and '-' (and start with a letter or digit)"


# --- JSON values -------------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    """A YAML operand as a plain JSON value (dict/list, not Map/Seq); TypeError if not JSON."""
    if value is None or isinstance(value, str | bool | int | float):
        return value
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    raise TypeError(type(value).__name__)


def _json_equal(a: Any, b: Any) -> bool:
    """Equality within a JSON kind: 1 == 1.0, but 1 != true and 10 != "10", also deep inside."""
    ta, tb = type(a), type(b)
    if ta in _NUMBER:
        return tb in _NUMBER and a == b
    if ta is not tb:
        return False
    if ta is list:
        return len(a) == len(b) and all(_json_equal(x, y) for x, y in zip(a, b, strict=True))
    if ta is dict:
        return a.keys() == b.keys() and all(_json_equal(v, b[k]) for k, v in a.items())
    return bool(a == b)


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return f"the number {value}"
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return f"a {type(value).__name__}"


def _equal_test(x: Any) -> ValueTest:
    tx = type(x)
    if tx is str:
        text: str = x

        def eq_str(v: object) -> bool:
            return v == text  # only a str equals a str

        return eq_str
    if tx in _NUMBER:

        def eq_number(v: Any) -> bool:
            return v == x and type(v) is not bool

        return eq_number
    if tx is bool or x is None:

        def eq_identity(v: Any) -> bool:
            return v is x

        return eq_identity

    def eq_deep(v: Any) -> bool:
        return _json_equal(v, x)

    return eq_deep


def _member_test(values: list[Any]) -> ValueTest:
    strings = frozenset(x for x in values if type(x) is str)
    numbers = frozenset(x for x in values if type(x) in _NUMBER)
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
        return any(_json_equal(v, x) for x in deep)

    return member


def _negate_value(test: ValueTest) -> ValueTest:
    def negated(v: Any) -> bool:
        return not test(v)

    return negated


# --- regular expressions and globs -------------------------------------------------------------

_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False  # a bad pattern is a Problem, not a line on stderr
_RE2_OPTIONS.never_capture = True  # groups are never read; matching is faster without them


def _fast_re2_available() -> bool:
    """google-re2's wrapper re-encodes and builds a match object per call (~5 us); its compiled
    RE2 object answers the same question in ~1 us. It is not public API, so it is used only when
    this probe shows it behaves as expected; otherwise the public `search`/`fullmatch` serve."""
    try:
        raw = re2.compile("b", _RE2_OPTIONS)._regexp
        anchor = re2._Anchor
        return bool(
            raw.Match(anchor.UNANCHORED, b"ab", 0, 2)[0] == (1, 2)
            and raw.Match(anchor.ANCHOR_BOTH, b"ab", 0, 2)[0][0] == -1
        )
    except Exception:
        return False


_FAST_RE2: Final = _fast_re2_available()


def _re2_test(pattern: str, whole: bool, fast: bool = _FAST_RE2) -> ValueTest:
    """A string test: RE2 `pattern` found in the value (or matching all of it when `whole`).

    Raises re2.error (or UnicodeError) when RE2 cannot compile the pattern.
    """
    compiled = re2.compile(pattern, _RE2_OPTIONS)
    if fast:
        match = compiled._regexp.Match
        anchor = re2._Anchor.ANCHOR_BOTH if whole else re2._Anchor.UNANCHORED

        def test_fast(v: Any) -> bool:
            if type(v) is not str:
                return False
            try:
                data = v.encode()
            except UnicodeEncodeError:  # a lone surrogate: never crash on event data
                data = v.encode("utf-8", "surrogatepass")
            start: int = match(anchor, data, 0, len(data))[0][0]
            return start >= 0

        return test_fast
    find = compiled.fullmatch if whole else compiled.search

    def test_public(v: Any) -> bool:
        if type(v) is not str:
            return False
        try:
            return find(v) is not None
        except UnicodeEncodeError:
            return False

    return test_public


def _re2_error(exc: Exception) -> str:
    if isinstance(exc, UnicodeError):
        return str(exc)
    text = exc.args[0] if exc.args else str(exc)
    return text.decode("utf-8", "replace") if isinstance(text, bytes) else str(text)


def _literal(c: str) -> str:
    return c if c.isascii() and c.isalnum() else f"\\x{{{ord(c):x}}}"


def _glob_class(pattern: str, start: int) -> tuple[str | None, int]:
    """The bracket expression opening at pattern[start - 1] as an RE2 class, and the index after
    it; (None, start) when it is not closed, so `[` is literal. Ranges, `!` negation, a leading
    `]` and backwards ranges behave exactly as in `fnmatch`, whose chunking this mirrors."""
    n = len(pattern)
    j = start
    if j < n and pattern[j] == "!":
        j += 1
    if j < n and pattern[j] == "]":
        j += 1
    while j < n and pattern[j] != "]":
        j += 1
    if j >= n:
        return None, start
    negate = pattern[start] == "!"
    body = pattern[start + 1 if negate else start : j]
    # Split into chunks at the hyphens that form ranges (a hyphen first or last is literal).
    chunks: list[str] = []
    if "-" in body:
        s, k = 0, 1
        while (k := body.find("-", k)) >= 0:
            chunks.append(body[s:k])
            s, k = k + 1, k + 3
        if body[s:]:
            chunks.append(body[s:])
        else:
            chunks[-1] += "-"
        for k in range(len(chunks) - 1, 0, -1):  # drop backwards ranges such as z-a
            if chunks[k - 1][-1] > chunks[k][0]:
                chunks[k - 1] = chunks[k - 1][:-1] + chunks[k][1:]
                del chunks[k]
    elif body:
        chunks.append(body)
    ranges: list[tuple[str, str]] = []
    for index, chunk in enumerate(chunks):
        first = 1 if index > 0 else 0
        last = len(chunk) - 1 if index < len(chunks) - 1 else len(chunk)
        ranges.extend((c, c) for c in chunk[first:last])
        if index > 0:
            ranges.append((chunks[index - 1][-1], chunk[0]))
    if not ranges:
        # An empty set never matches; its negation matches any one character.
        return ("." if negate else "[^\\x00-\\x{10ffff}]"), j + 1
    items = "".join(
        _literal(lo) if lo == hi else f"{_literal(lo)}-{_literal(hi)}" for lo, hi in ranges
    )
    return f"[{'^' if negate else ''}{items}]", j + 1


def glob_to_re2(pattern: str) -> str:
    """A shell glob as an RE2 pattern to match whole strings: `*` is any run of characters
    (`/` and newlines included), `?` one character, `[...]` a class; no backslash escapes
    (as in `fnmatch`: write `[*]` for a literal star)."""
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        i += 1
        if c == "*":
            if not out or out[-1] != ".*":
                out.append(".*")
        elif c == "?":
            out.append(".")
        elif c == "[":
            cls, i = _glob_class(pattern, i)
            out.append(cls if cls is not None else _literal("["))
        else:
            out.append(_literal(c))
    return "(?s)" + "".join(out)


def _glob_test(pattern: str) -> ValueTest:
    """Globs made of literals and `*` only are the common case; they need no regex."""
    if "?" not in pattern and "[" not in pattern:
        parts = pattern.split("*")
        if len(parts) == 1:
            return _equal_test(pattern)
        head, tail = parts[0], parts[-1]
        minimum = len(head) + len(tail)
        if len(parts) == 2 or (len(parts) == 3 and not head and not tail and parts[1]):
            middle = parts[1] if len(parts) == 3 else ""

            def simple(v: Any) -> bool:
                return (
                    type(v) is str
                    and len(v) >= minimum
                    and v.startswith(head)
                    and v.endswith(tail)
                    and middle in v
                )

            return simple
    return _re2_test(glob_to_re2(pattern), whole=True)


# --- IP networks -------------------------------------------------------------------------------


def _cidr_test(networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> ValueTest:
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


# --- combining predicates ----------------------------------------------------------------------


def _always(result: bool) -> Predicate:
    def constant(ev: Event) -> bool:
        return result

    return constant


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


def _getter(segments: list[str]) -> Callable[[Event], Any]:
    """Walk a path of two or more segments; a digit segment also indexes a list."""
    first = segments[0]
    steps = tuple((s, int(s) if s.isascii() and s.isdigit() else -1) for s in segments[1:])

    def get(ev: Event) -> Any:
        value = ev.get(first, _MISSING)
        for key, index in steps:
            kind = type(value)
            if kind is dict:
                value = value.get(key, _MISSING)
            elif kind is list and 0 <= index < len(value):
                value = value[index]
            else:
                return _MISSING
        return value

    return get


@dataclass(frozen=True, slots=True)
class _Test:
    """One compiled operator: its value test, its answer for a missing field, and the string
    it compares with when it is a plain `eq` (which compiles to a single dict lookup)."""

    test: ValueTest
    on_missing: bool = False
    equals_str: str | None = None


def _field_predicate(path: str, tests: list[_Test]) -> Predicate:
    segments = path.split(".")
    on_missing = all(t.on_missing for t in tests)
    test = _all_values([t.test for t in tests])
    if len(segments) == 1:
        key = segments[0]
        s = tests[0].equals_str if len(tests) == 1 else None
        if s is not None:

            def equals(ev: Event) -> bool:
                v: object = ev.get(key)
                return v == s

            return equals
        if on_missing:

            def test_or_missing(ev: Event) -> bool:
                v = ev.get(key, _MISSING)
                return v is _MISSING or test(v)

            return test_or_missing

        def test_present(ev: Event) -> bool:
            v = ev.get(key, _MISSING)
            return v is not _MISSING and test(v)

        return test_present
    get = _getter(segments)
    if on_missing:

        def path_or_missing(ev: Event) -> bool:
            v = get(ev)
            return v is _MISSING or test(v)

        return path_or_missing

    def path_present(ev: Event) -> bool:
        v = get(ev)
        return v is not _MISSING and test(v)

    return path_present


# --- compiling conditions ----------------------------------------------------------------------


def _suggest(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


class _Compiler:
    """Compiles one rule, recording problems and the field paths its condition reads."""

    def __init__(self, file: str, problems: list[Problem]) -> None:
        self.file = file
        self.problems = problems
        self.fields: dict[str, None] = {}  # an ordered set

    def problem(self, line: int, message: str) -> None:
        self.problems.append(Problem(self.file, line, message))

    def condition(self, node: Any, line: int, where: str) -> Predicate | None:
        if not isinstance(node, Map):
            self.problem(
                line,
                f"{where} must be a condition: a mapping such as `level: error`, `all: [...]`, "
                f"`any: [...]` or `not: {{...}}`, not {_describe(node)}",
            )
            return None
        if not node:
            # An empty mapping is more likely a slip than a wish to match everything.
            self.problem(
                line, f"{where} is an empty condition; to match every event write `all: []`"
            )
            return None
        if "field" in node:
            return self.field_form(node)
        parts: list[Predicate] = []
        ok = True
        for key, value in node.items():
            key_line = node.line_of(key)
            part: Predicate | None
            if key in ("all", "any"):
                part = self.combination(key, value, key_line)
            elif key == "not":
                if isinstance(value, Seq):
                    self.problem(
                        key_line,
                        "not takes one condition, not a list; write `not: {any: [...]}` "
                        "for none of several, or `not: {all: [...]}` for not all of them",
                    )
                    part = None
                else:
                    inner = self.condition(value, key_line, "not")
                    part = _negate(inner) if inner is not None else None
            else:
                part = self.field(key, value, key_line)
            if part is None:
                ok = False
            else:
                parts.append(part)
        return _all_of(parts) if ok else None

    def combination(self, key: str, value: Any, line: int) -> Predicate | None:
        # `all: []` holds and `any: []` does not, as in logic (and in Python's all()/any()):
        # `match: {all: []}` is the explicit way to select every event.
        if not isinstance(value, Seq):
            self.problem(
                line,
                f"{key} must be a list of conditions, e.g. `{key}: [{{level: error}}, "
                f"{{user: root}}]`, not {_describe(value)}",
            )
            return None
        parts: list[Predicate] = []
        ok = True
        for index, item in enumerate(value):
            part = self.condition(item, value.line_of(index), f"item {index + 1} of {key}")
            if part is None:
                ok = False
            else:
                parts.append(part)
        if not ok:
            return None
        return _all_of(parts) if key == "all" else _any_of(parts)

    def path(self, path: str, line: int) -> bool:
        if not path or any(not segment for segment in path.split(".")):
            self.problem(
                line,
                f"{path!r} is not a field path: names are separated by single dots, "
                "e.g. `user.name` or `items.0`",
            )
            return False
        self.fields.setdefault(path)
        return True

    def field(self, path: str, spec: Any, line: int) -> Predicate | None:
        if not self.path(path, line):
            return None
        if isinstance(spec, Map):
            if not spec:
                self.problem(line, f"{path}: no operator given; write e.g. `{path}: {{eq: value}}`")
                return None
            return self.operators(path, spec, line)
        if isinstance(spec, Seq):
            self.problem(
                line,
                f"{path}: a list is not a value to compare with; for one of several values "
                f"write `{path}: {{in: [...]}}`, for the list itself `{path}: {{eq: [...]}}`",
            )
            return None
        test = self.operator("eq", spec, line)
        return _field_predicate(path, [test]) if test is not None else None

    def field_form(self, node: Map) -> Predicate | None:
        """`{field: all, eq: 3}`: for field names that are also keywords (all, any, not)."""
        path, line = node["field"], node.line_of("field")
        if not isinstance(path, str):
            self.problem(
                line, f"field must name a field path, e.g. `field: all`, not {_describe(path)}"
            )
            return None
        if len(node) == 1:
            self.problem(
                line,
                f"field {path!r} needs at least one operator next to it, "
                f"e.g. `{{field: {path}, eq: 3}}`",
            )
            return None
        if not self.path(path, line):
            return None
        return self.operators(path, node, line, skip="field")

    def operators(self, path: str, ops: Map, line: int, skip: str = "") -> Predicate | None:
        tests: list[_Test] = []
        ok = True
        for op, operand in ops.items():
            if op == skip:
                continue
            test = self.operator(op, operand, ops.line_of(op), path)
            if test is None:
                ok = False
            else:
                tests.append(test)
        return _field_predicate(path, tests) if ok else None

    def operator(self, op: str, operand: Any, line: int, path: str = "") -> _Test | None:
        """Validate one operator and its operand; compile it to a value test."""
        if op not in OPERATORS:
            self.unknown_operator(path, op, line)
            return None
        if op in ("in", "not_in"):
            return self.membership(op, operand, line)
        if op == "exists":
            if not isinstance(operand, bool):
                self.problem(line, f"exists takes true or false, not {_describe(operand)}")
                return None
            return _Test(_always_value(operand), on_missing=not operand)
        if op in ("startswith", "endswith"):
            return self.affix(op, operand, line)
        if op == "cidr":
            return self.cidr(operand, line)
        if isinstance(operand, list | dict) and op == "contains":
            self.problem(
                line,
                f"contains takes one value (a string, number, true/false or null), not "
                f"{_describe(operand)}; to require several write `all: [{{{path}: {{contains: a}}}}, "
                f"{{{path}: {{contains: b}}}}]`",
            )
            return None
        try:
            value = _plain(operand)
        except TypeError:
            self.problem(line, f"{op}: {_describe(operand)} is not a JSON value")
            return None
        if op == "eq":
            return _Test(_equal_test(value), equals_str=value if type(value) is str else None)
        if op == "ne":
            return _Test(_negate_value(_equal_test(value)), on_missing=True)
        if op == "contains":
            return _Test(_contains_test(value))
        if op in ("regex", "glob"):
            return self.pattern(op, value, line)
        return self.comparison(op, value, line)

    def unknown_operator(self, path: str, op: str, line: int) -> None:
        where = f"{path}: " if path else ""
        known = ", ".join(OPERATORS)
        if op in ("all", "any", "not"):
            self.problem(
                line,
                f"{where}{op} combines conditions and cannot test a field's value; write "
                f"`{op}: ...` around the field's condition (e.g. `not: {{{path or 'field'}: x}}`), "
                f"or use ne/not_in; operators are {known}",
            )
            return
        self.problem(
            line,
            f"{where}unknown operator {op!r}{_suggest(op, OPERATORS)}; operators are {known}; "
            f"to test a nested field write `{path or 'field'}.{op}: value`",
        )

    def membership(self, op: str, operand: Any, line: int) -> _Test | None:
        single = "eq" if op == "in" else "ne"
        if not isinstance(operand, Seq):
            self.problem(
                line,
                f"{op} takes a list of values, e.g. `{op}: [error, warning]`, not "
                f"{_describe(operand)}; for a single value write `{single}: ...`",
            )
            return None
        if not operand:
            self.problem(line, f"{op}: [] lists no value; list at least one")
            return None
        try:
            values = _plain(operand)
        except TypeError as exc:
            self.problem(line, f"{op}: a {exc} is not a JSON value")
            return None
        test = _member_test(values)
        return _Test(test) if op == "in" else _Test(_negate_value(test), on_missing=True)

    def affix(self, op: str, operand: Any, line: int) -> _Test | None:
        # A list is accepted as "any of these" because str.startswith takes a tuple for free.
        items = operand if isinstance(operand, Seq) else [operand]
        if not items or not all(isinstance(x, str) for x in items):
            self.problem(
                line,
                f"{op} takes a string or a list of strings, not {_describe(operand)}; "
                f'quote numbers, e.g. `{op}: "10."`',
            )
            return None
        affixes = tuple(items) if len(items) > 1 else items[0]
        if op == "startswith":

            def starts(v: Any) -> bool:
                return type(v) is str and v.startswith(affixes)

            return _Test(starts)

        def ends(v: Any) -> bool:
            return type(v) is str and v.endswith(affixes)

        return _Test(ends)

    def pattern(self, op: str, value: Any, line: int) -> _Test | None:
        if not isinstance(value, str):
            self.problem(
                line, f'{op} takes a string, not {_describe(value)}; quote it: `{op}: "..."`'
            )
            return None
        try:
            test = _glob_test(value) if op == "glob" else _re2_test(value, whole=False)
        except (re2.error, UnicodeError) as exc:
            self.problem(
                line,
                f"{op} {value!r} cannot be compiled by RE2: {_re2_error(exc)}; lookaround "
                "(?=, ?!, ?<=), backreferences (\\1) and \\Z are not available because "
                "patterns must run in linear time (write \\z for the end of the text)",
            )
            return None
        return _Test(test)

    def comparison(self, op: str, value: Any, line: int) -> _Test | None:
        compare = _COMPARISONS[op]
        if type(value) in _NUMBER:

            def numbers(v: Any) -> bool:
                return type(v) in _NUMBER and compare(v, value)

            return _Test(numbers)
        if type(value) is str:  # code-point order, as Python compares str

            def strings(v: Any) -> bool:
                return type(v) is str and compare(v, value)

            return _Test(strings)
        self.problem(
            line,
            f"{op} takes a number or a string, not {_describe(value)}; numbers compare with "
            "numbers and strings with strings",
        )
        return None

    def cidr(self, operand: Any, line: int) -> _Test | None:
        entries = (
            [(x, operand.line_of(i)) for i, x in enumerate(operand)]
            if isinstance(operand, Seq)
            else [(operand, line)]
        )
        if not entries:
            self.problem(line, "cidr: [] lists no network; list at least one")
            return None
        networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for entry, entry_line in entries:
            if not isinstance(entry, str):
                self.problem(
                    entry_line,
                    f"cidr takes a network such as 10.0.0.0/8 (or a list of them), "
                    f"not {_describe(entry)}",
                )
                continue
            try:
                networks.append(ipaddress.ip_network(entry.strip()))
            except ValueError as exc:
                hint = ""
                if "host bits" in str(exc):
                    hint = f"; write {ipaddress.ip_network(entry.strip(), strict=False)}"
                self.problem(
                    entry_line,
                    f"cidr: {entry!r} is not a network ({exc}){hint or '; write e.g. 10.0.0.0/8 or 2001:db8::/32'}",
                )
        return _Test(_cidr_test(networks)) if len(networks) == len(entries) else None


def _always_value(result: bool) -> ValueTest:
    def constant(v: Any) -> bool:
        return result

    return constant


def _contains_test(x: Any) -> ValueTest:
    if type(x) is str or x is None:
        # `in` on a list compares with ==, which is kind-exact for strings and null.
        def contains_plain(v: Any) -> bool:
            tv = type(v)
            if tv is str:
                return type(x) is str and x in v
            return tv is list and x in v

        return contains_plain
    eq = _equal_test(x)

    def contains_item(v: Any) -> bool:
        if type(v) is list:
            for item in v:
                if eq(item):
                    return True
        return False

    return contains_item


# --- when: days and hours ----------------------------------------------------------------------

_DAY_NAMES: Final = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_DAYS: Final = {
    **{d: i for i, d in enumerate(_DAY_NAMES)},
    **{d: i for i, d in enumerate(("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"))},
}  # fmt: skip
_HOURS = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*$")


def _day_set(c: _Compiler, value: Any, line: int) -> frozenset[int] | None:
    entries = (
        [(x, value.line_of(i)) for i, x in enumerate(value)]
        if isinstance(value, Seq)
        else [(value, line)]
    )
    if not entries:
        c.problem(line, "days: [] selects no day; leave days out to allow every day")
        return None
    days: set[int] = set()
    ok = True
    for entry, entry_line in entries:
        ends = str(entry).strip().lower().split("-")
        if not isinstance(entry, str) or len(ends) > 2 or any(d not in _DAYS for d in ends):
            c.problem(
                entry_line,
                f"days: {entry!r} is not a day; write mon, tue, wed, thu, fri, sat or sun, "
                "or a range such as mon-fri",
            )
            ok = False
            continue
        start, end = _DAYS[ends[0]], _DAYS[ends[-1]]
        days.update((start + k) % 7 for k in range((end - start) % 7 + 1))
    return frozenset(days) if ok else None


def _hours(c: _Compiler, value: Any, line: int) -> tuple[int, int] | None:
    m = _HOURS.match(value) if isinstance(value, str) else None
    if m is not None:
        h1, m1, h2, m2 = (int(g) for g in m.groups())
        start, end = h1 * 60 + m1, h2 * 60 + m2
        if h1 <= 23 and m1 <= 59 and m2 <= 59 and (h2 <= 23 or end == 24 * 60):
            if start == end % (24 * 60):
                c.problem(
                    line,
                    f"hours {value!r} starts where it ends; to allow the whole day leave hours out",
                )
                return None
            return start, end % (24 * 60)
    c.problem(
        line,
        f'hours must be a quoted window "HH:MM-HH:MM" such as "08:00-18:00" or "22:00-06:00" '
        f"(start included, end excluded), not {_describe(value)}",
    )
    return None


def _compile_when(c: _Compiler, node: Any, line: int) -> TimeTest | None:
    """Days apply to the local date of the event time itself, also inside a window that wraps
    past midnight: with `days: [fri]` and `hours: "22:00-06:00"`, Friday 23:00 is in, and
    Saturday 03:00 is not (it falls on Saturday)."""
    if not isinstance(node, Map) or not node:
        c.problem(
            line,
            f'when must be a mapping with days and/or hours, e.g. `when: {{days: [mon-fri], hours: "08:00-18:00"}}`, not {_describe(node)}',
        )
        return None
    for key in node:
        if key not in WHEN_KEYS:
            c.problem(
                node.line_of(key),
                f"unknown key {key!r} in when{_suggest(key, WHEN_KEYS)}; known keys: {', '.join(WHEN_KEYS)}",
            )
    days = _day_set(c, node["days"], node.line_of("days")) if "days" in node else None
    hours = _hours(c, node["hours"], node.line_of("hours")) if "hours" in node else None
    tz = system_timezone()
    if "timezone" in node:
        name = node["timezone"]
        try:
            if not isinstance(name, str):
                raise ValueError(name)
            tz = ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            c.problem(
                node.line_of("timezone"),
                f"timezone: unknown time zone {name!r}; use an IANA name such as Europe/Berlin",
            )
    if "days" not in node and "hours" not in node:
        c.problem(line, "when needs days, hours or both; leave when out to allow any time")
    if days is None and hours is None:
        return None
    return _time_test(days, hours, tz)


def _time_test(
    days: frozenset[int] | None, hours: tuple[int, int] | None, tz: ZoneInfo
) -> TimeTest:
    allowed = days if days is not None else frozenset(range(7))
    if hours is None:

        def on_days(t: datetime) -> bool:
            local = (t if t.tzinfo is not None else t.replace(tzinfo=UTC)).astimezone(tz)
            return local.weekday() in allowed

        return on_days
    start, end = hours
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


# --- rules and rule files ----------------------------------------------------------------------


def _names(c: _Compiler, m: Map, key: str, known: frozenset[str] | None) -> frozenset[str] | None:
    """`sources:`/`reports:`: a name or a list of names, each known when `known` is given."""
    if key not in m:
        return None
    value, line = m[key], m.line_of(key)
    entries = (
        [(x, value.line_of(i)) for i, x in enumerate(value)]
        if isinstance(value, Seq)
        else [(value, line)]
    )
    what = key[:-1]
    if not entries:
        c.problem(
            line, f"{key}: [] names no {what}; leave {key} out to apply the rule to every {what}"
        )
        return None
    names: set[str] = set()
    for entry, entry_line in entries:
        if not isinstance(entry, str):
            c.problem(entry_line, f"{key} must list {what} names, not {_describe(entry)}")
        elif known is not None and entry not in known:
            listed = ", ".join(sorted(known)) if known else f"none: the configuration has no {key}"
            c.problem(
                entry_line,
                f"unknown {what} {entry!r}{_suggest(entry, known)}; the configured {key} are: {listed}",
            )
        names.add(str(entry))
    return frozenset(names)


def _rule(
    file: str,
    problems: list[Problem],
    m: Map,
    default_name: str | None,
    source_names: frozenset[str] | None,
    report_names: frozenset[str] | None,
) -> tuple[Rule, int] | None:
    """One rule mapping -> (Rule, line of its name), or None with problems recorded."""
    c = _Compiler(file, problems)
    before = len(problems)
    for key in m:
        if key not in RULE_KEYS:
            c.problem(
                m.line_of(key),
                f"unknown key {key!r} in a rule{_suggest(key, RULE_KEYS)}; known keys: {', '.join(RULE_KEYS)}",
            )
    name, name_line = default_name, m.line
    if "name" in m:
        value, name_line = m["name"], m.line_of("name")
        if isinstance(value, str | int) and not isinstance(value, bool):
            name = str(value)
            if not _NAME.match(name):
                c.problem(name_line, f"rule name {name!r} {_NAME_RULE}")
        else:
            c.problem(name_line, f"name must be a string, not {_describe(value)}")
    elif name is None:
        c.problem(
            m.line, "this file holds several rules, so each needs a `name:` (unique across files)"
        )
    elif not _NAME.match(name):
        c.problem(
            m.line,
            f"the rule is named after its file, {name!r}, but a rule name {_NAME_RULE}; "
            "add `name:` or rename the file",
        )
    description = m.get("description")
    if description is None:
        description = ""
    elif not isinstance(description, str):
        c.problem(
            m.line_of("description"), f"description must be text, not {_describe(description)}"
        )
    enabled = m.get("enabled", True)
    if not isinstance(enabled, bool):
        c.problem(m.line_of("enabled"), f"enabled must be true or false, not {_describe(enabled)}")
    sources = _names(c, m, "sources", source_names)
    reports = _names(c, m, "reports", report_names)
    match: Predicate | None = None
    if "match" not in m:
        c.problem(m.line, "missing required key 'match': the condition that selects events")
    elif m["match"] is None:
        c.problem(m.line_of("match"), "match is empty; give a condition such as `level: error`")
    else:
        match = c.condition(m["match"], m.line_of("match"), "match")
    when = None
    if m.get("when") is not None:
        when = _compile_when(c, m["when"], m.line_of("when"))
    if len(problems) > before or match is None or name is None:
        return None
    rule = Rule(
        name=name,
        description=str(description),
        file=file,
        line=m.line,
        enabled=bool(enabled),
        sources=sources,
        reports=reports,
        match=match,
        when=when,
        fields=tuple(c.fields),
    )
    return rule, name_line


def _parse(
    data: Any,
    file: str,
    default_name: str,
    source_names: frozenset[str] | None,
    report_names: frozenset[str] | None,
) -> tuple[list[Rule], list[Problem], dict[str, int]]:
    """Rules, problems, and the line of each rule's name (for cross-file duplicate messages)."""
    problems: list[Problem] = []
    what = "one rule (a mapping with at least `match:`), or `rules:` with a list of rules"
    if data is None:
        # An empty file is refused rather than read as "no rules": an editor that truncates
        # before writing must not withdraw the file's rules in between.
        return [], [Problem(file, 1, f"the file is empty; it must hold {what}")], {}
    if not isinstance(data, Map):
        line = data.line if isinstance(data, Seq) else 1
        return [], [Problem(file, line, f"a rule file must hold {what}, not {_describe(data)}")], {}
    entries: list[tuple[Any, int]]
    if "rules" in data:
        for key in data:
            if key != "rules":
                problems.append(
                    Problem(
                        file,
                        data.line_of(key),
                        f"{key!r} cannot stand next to `rules:`; move it into the rules of the list",
                    )
                )
        items = data["rules"]
        if not isinstance(items, Seq):
            problems.append(
                Problem(
                    file,
                    data.line_of("rules"),
                    f"rules must be a list of rules, not {_describe(items)}",
                )
            )
            return [], problems, {}
        entries = [(item, items.line_of(i)) for i, item in enumerate(items)]
    else:
        entries = [(data, data.line)]
    name_lines: dict[str, int] = {}
    rules: list[Rule] = []
    for index, (item, line) in enumerate(entries):
        if not isinstance(item, Map):
            problems.append(
                Problem(
                    file,
                    line,
                    f"rule {index + 1} must be a mapping with at least `match:`, not {_describe(item)}",
                )
            )
            continue
        built = _rule(
            file,
            problems,
            item,
            default_name if len(entries) == 1 else None,
            source_names,
            report_names,
        )
        if built is None:
            continue
        rule, name_line = built
        if rule.name in name_lines:
            problems.append(
                Problem(
                    file,
                    name_line,
                    f"duplicate rule name {rule.name!r} (first at line {name_lines[rule.name]}); "
                    "rule names must be unique",
                )
            )
            continue
        name_lines[rule.name] = name_line
        rules.append(rule)
    if problems:
        return [], sorted(problems, key=lambda p: p.line), {}
    return rules, problems, name_lines


def _frozen(names: Collection[str] | None) -> frozenset[str] | None:
    return frozenset(names) if names is not None else None


def parse_rules(
    data: Any,
    file: str,
    default_name: str,
    *,
    source_names: Collection[str] | None = None,
    report_names: Collection[str] | None = None,
) -> tuple[list[Rule], list[Problem]]:
    """Validate and compile the rules of one parsed YAML file (from `parse_yaml`).

    With any problem, no rule is returned. Names in `sources:`/`reports:` are checked only when
    the configured names are given.
    """
    rules, problems, _ = _parse(
        data, file, default_name, _frozen(source_names), _frozen(report_names)
    )
    return rules, problems


def load_rule_file(
    path: Path,
    *,
    source_names: Collection[str] | None = None,
    report_names: Collection[str] | None = None,
) -> tuple[list[Rule], list[Problem]]:
    """Read, parse and compile one rule file; the default rule name is the file's stem."""
    data, problems = load_yaml(path)
    if problems:
        return [], problems
    return parse_rules(
        data, str(path), path.stem, source_names=source_names, report_names=report_names
    )


# --- directories and reloads -------------------------------------------------------------------


def is_rule_file_name(name: str) -> bool:
    """*.yaml and *.yml; not hidden files (.x.yaml, editors' .#x.yaml locks), not backups (x~)."""
    return not name.startswith(".") and not name.endswith("~") and name.endswith((".yaml", ".yml"))


@dataclass(slots=True)
class _Loaded:
    """One parse of one file's content."""

    file: str
    rules: tuple[Rule, ...]
    problems: list[Problem]
    name_lines: dict[str, int] = field(default_factory=dict)
    digest: bytes = b""
    stat_key: tuple[int, ...] | None = None  # None: re-read next time


def _stat_key(st: os.stat_result) -> tuple[int, ...]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


# File times come from a coarse kernel clock: a same-size rewrite within one tick of our read
# would leave the stat key unchanged. As git does with its index, a file changed this recently
# is not trusted by its stat key (its bytes are read and hashed again next time).
_RACY_NS: Final = 2_000_000_000


def _load_file(
    path: Path,
    cached: _Loaded | None,
    in_force: _Loaded | None,
    source_names: frozenset[str] | None,
    report_names: frozenset[str] | None,
) -> _Loaded | None:
    """The current content of `path`, reusing the latest parse (`cached`) or the version in
    force when the file or its bytes did not change, so that unchanged files keep their very
    Rule objects. None: not a regular file."""
    file = str(path)
    try:
        before = os.stat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return _Loaded(file, (), [Problem(file, 1, f"cannot read: {exc.strerror or exc}")])
    if not stat.S_ISREG(before.st_mode):
        return None
    key = _stat_key(before)
    if cached is not None and cached.stat_key == key:
        return cached
    try:
        content = path.read_bytes()
        # A file being written while we read, or just written, is read again next time.
        stable = _stat_key(os.stat(path)) == key and time.time_ns() - before.st_mtime_ns > _RACY_NS
    except FileNotFoundError:
        return None
    except OSError as exc:
        return _Loaded(file, (), [Problem(file, 1, f"cannot read: {exc.strerror or exc}")])
    digest = hashlib.sha256(content).digest()
    for known in (cached, in_force):
        if known is not None and known.digest == digest:
            known.stat_key = key if stable else None
            return known
    loaded = _Loaded(file, (), [], digest=digest, stat_key=key if stable else None)
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError:
        loaded.problems = [Problem(file, 1, "not valid UTF-8 text; save the file as UTF-8")]
        return loaded
    data, problems = parse_yaml(text, file)
    if problems:
        loaded.problems = problems
        return loaded
    rules, loaded.problems, loaded.name_lines = _parse(
        data, file, path.stem, source_names, report_names
    )
    loaded.rules = tuple(rules)
    return loaded


def _scan(
    directory: Path,
    cache: dict[str, _Loaded],
    in_force: dict[str, _Loaded],
    source_names: frozenset[str] | None,
    report_names: frozenset[str] | None,
) -> dict[str, _Loaded]:
    """Every rule file of `directory` by file name, in sorted order. Raises OSError."""
    with os.scandir(directory) as entries:
        names = sorted(entry.name for entry in entries if is_rule_file_name(entry.name))
    loaded: dict[str, _Loaded] = {}
    for name in names:
        current = _load_file(
            directory / name, cache.get(name), in_force.get(name), source_names, report_names
        )
        if current is not None:
            loaded[name] = current
    return loaded


def _resolve(
    loaded: dict[str, _Loaded], previous: dict[str, _Loaded]
) -> tuple[dict[str, _Loaded], list[Problem]]:
    """Choose the version of each file in force, in sorted order.

    A file that loads cleanly is in force. One that fails keeps its previous version (if any).
    A rule name already taken by an earlier file makes the later file fail; its previous version
    is kept only when that does not clash as well, so two rules in force never share a name and
    the outcome depends on the files, not on the order of edits.
    """
    taken: dict[str, str] = {}  # rule name -> "FILE:LINE" of the rule in force
    in_force: dict[str, _Loaded] = {}
    problems: list[Problem] = []
    for name in sorted(loaded):
        current = loaded[name]
        candidate: _Loaded | None = None
        if current.problems:
            problems.extend(current.problems)
        else:
            clashes = [
                Problem(
                    current.file,
                    current.name_lines.get(r.name, r.line),
                    f"rule name {r.name!r} is already used at {taken[r.name]}; rule names must be "
                    "unique across files, so this file is not loaded: rename one of the rules",
                )
                for r in current.rules
                if r.name in taken
            ]
            problems.extend(clashes)
            candidate = None if clashes else current
        if candidate is None and name in previous:
            old = previous[name]
            clash = next((r.name for r in old.rules if r.name in taken), None)
            if clash is None:
                candidate = old
            else:
                problems.append(
                    Problem(
                        current.file,
                        1,
                        f"the previously loaded version of this file is withdrawn as well: its rule "
                        f"{clash!r} clashes with {taken[clash]}",
                    )
                )
        if candidate is not None:
            for r in candidate.rules:
                taken[r.name] = f"{r.file}:{candidate.name_lines.get(r.name, r.line)}"
            in_force[name] = candidate
    return in_force, problems


def _missing_dir(directory: Path) -> Problem:
    return Problem(
        str(directory),
        1,
        "the rules directory does not exist or is not a directory; create it (it may stay "
        "empty) or set rules_dir to the right place",
    )


def load_rules_path(
    path: Path,
    source_names: Collection[str] | None = None,
    report_names: Collection[str] | None = None,
) -> tuple[list[Rule], list[Problem]]:
    """The rules of one file, or of a directory's rule files as `RuleBook` would load them.

    Disabled rules are included (see `Rule.enabled`). Used by `tailmail test-rules --rules`.
    """
    if not path.is_dir():
        if not path.exists():
            return [], [Problem(str(path), 1, "no such file or directory")]
        return load_rule_file(path, source_names=source_names, report_names=report_names)
    sources, reports = _frozen(source_names), _frozen(report_names)
    try:
        loaded_files = _scan(path, {}, {}, sources, reports)
    except (FileNotFoundError, NotADirectoryError):
        return [], [_missing_dir(path)]
    except OSError as exc:
        return [], [
            Problem(str(path), 1, f"cannot list the rules directory: {exc.strerror or exc}")
        ]
    in_force, problems = _resolve(loaded_files, {})
    return [r for name in sorted(in_force) for r in in_force[name].rules], problems


def check_rules(
    rules_dir: Path, source_names: Collection[str], report_names: Collection[str]
) -> list[Problem]:
    """Every problem of the rule files in `rules_dir`, for `tailmail check`."""
    if not rules_dir.is_dir():
        return [_missing_dir(rules_dir)]
    return load_rules_path(rules_dir, source_names, report_names)[1]


class RuleBook:
    """Owns the rules loaded from rules_dir across reloads."""

    def __init__(
        self, rules_dir: Path, source_names: Collection[str], report_names: Collection[str]
    ) -> None:
        self._dir = Path(rules_dir)
        self._sources = frozenset(source_names)
        self._reports = frozenset(report_names)
        self._loaded: dict[str, _Loaded] = {}  # the latest parse of each file, clean or not
        self._in_force: dict[str, _Loaded] = {}
        self._all: tuple[Rule, ...] = ()
        self._enabled: tuple[Rule, ...] = ()
        self._version = 0

    def reload(self) -> list[Problem]:
        """Rescan the directory; return every problem present now (unchanged broken files too).

        Each file that loads cleanly replaces its previous rules; one that fails keeps its
        previous version in force; a removed file's rules are dropped; a missing directory
        drops every rule. Unchanged files are not parsed again.
        """
        try:
            self._loaded = _scan(
                self._dir, self._loaded, self._in_force, self._sources, self._reports
            )
        except (FileNotFoundError, NotADirectoryError):
            self._loaded = {}
            self._publish({})
            return [_missing_dir(self._dir)]
        except OSError as exc:
            return [
                Problem(
                    str(self._dir),
                    1,
                    f"cannot list the rules directory: {exc.strerror or exc}; "
                    "the rules in force stay as they were",
                )
            ]
        in_force, problems = _resolve(self._loaded, self._in_force)
        self._publish(in_force)
        return problems

    def _publish(self, in_force: dict[str, _Loaded]) -> None:
        self._in_force = in_force
        rules = tuple(r for name in sorted(in_force) for r in in_force[name].rules)
        same = len(rules) == len(self._all) and all(
            a is b for a, b in zip(rules, self._all, strict=True)
        )
        if not same:
            self._version += 1
        self._all = rules
        self._enabled = tuple(r for r in rules if r.enabled)

    @property
    def rules(self) -> tuple[Rule, ...]:
        """The enabled rules in force: files in sorted order, rules in file order."""
        return self._enabled

    @property
    def all_rules(self) -> tuple[Rule, ...]:
        """Every rule in force, disabled ones included."""
        return self._all

    @property
    def version(self) -> int:
        """+1 whenever the rules in force change (any of them, disabled ones included)."""
        return self._version
