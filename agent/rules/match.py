"""Match conditions and `when` windows, compiled once into predicates.

A rule's `match:` condition is compiled at load time into nested closures, so the hot path
(`Rule.match`, called for every event) never looks at YAML again: field paths are pre-split,
operands pre-converted, regular expressions pre-compiled with RE2 (linear time, no lookaround or
backreferences). Events are plain JSON values as `orjson`/`json` build them: exact `dict`,
`list`, `str`, `int`, `float`, `bool` and `None`; kinds are told apart by exact type, so a
`bool` is never a number. A `when:` window (days, hours, time zone) becomes a test of the event
time.

A `Compiler` records every mistake as a `Problem` with the line of the offending key or item.
"""

from __future__ import annotations

import difflib
import ipaddress
import operator
import re
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import re2

from agent.config.yamlfile import Map, Problem, Seq
from agent.core.periods import system_timezone
from agent.rules.fields import MISSING, getter

Event = dict[str, Any]
Predicate = Callable[[Event], bool]
ValueTest = Callable[[Any], bool]
TimeTest = Callable[[datetime], bool]


_NUMBER: Final = frozenset({int, float})  # exact types: bool is not a number here

WHEN_KEYS: Final = ("days", "hours", "timezone")
OPERATORS: Final = (
    "eq", "ne", "in", "not_in", "contains", "startswith", "endswith", "regex", "glob",
    "exists", "gt", "gte", "lt", "lte", "cidr",
)  # fmt: skip
_COMPARISONS: Final[dict[str, Callable[[Any, Any], bool]]] = {
    "gt": operator.gt, "gte": operator.ge, "lt": operator.lt, "lte": operator.le,
}  # fmt: skip


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


def describe(value: Any) -> str:
    """A value as a message names it: null, true, the number 3, the string 'x', a list."""
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


@dataclass(frozen=True, slots=True)
class _Test:
    """One compiled operator: its value test, its answer for a missing field, the string it
    compares with when it is a plain `eq` (which compiles to a single dict lookup), and for the
    commonest string tests a builder of one closure that reads a top-level field and tests it:
    one call per event instead of two."""

    test: ValueTest
    on_missing: bool = False
    equals_str: str | None = None
    fused: Callable[[str], Predicate] | None = None


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
        if len(tests) == 1 and tests[0].fused is not None:
            return tests[0].fused(key)
        if on_missing:

            def test_or_missing(ev: Event) -> bool:
                v = ev.get(key, MISSING)
                return v is MISSING or test(v)

            return test_or_missing

        def test_present(ev: Event) -> bool:
            v = ev.get(key, MISSING)
            return v is not MISSING and test(v)

        return test_present
    get = getter(path)
    if on_missing:

        def path_or_missing(ev: Event) -> bool:
            v = get(ev)
            return v is MISSING or test(v)

        return path_or_missing

    def path_present(ev: Event) -> bool:
        v = get(ev)
        return v is not MISSING and test(v)

    return path_present


# --- compiling conditions ----------------------------------------------------------------------


def suggest(word: str, choices: Iterable[str]) -> str:
    """The hint ` (did you mean 'x'?)` for the choice closest to `word`, or an empty string."""
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


class Compiler:
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
                f"`any: [...]` or `not: {{...}}`, not {describe(node)}",
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
                f"{{user: root}}]`, not {describe(value)}",
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
                line, f"field must name a field path, e.g. `field: all`, not {describe(path)}"
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
                self.problem(line, f"exists takes true or false, not {describe(operand)}")
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
                f"{describe(operand)}; to require several write `all: [{{{path}: {{contains: a}}}}, "
                f"{{{path}: {{contains: b}}}}]`",
            )
            return None
        try:
            value = _plain(operand)
        except TypeError:
            self.problem(line, f"{op}: {describe(operand)} is not a JSON value")
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
            f"{where}unknown operator {op!r}{suggest(op, OPERATORS)}; operators are {known}; "
            f"to test a nested field write `{path or 'field'}.{op}: value`",
        )

    def membership(self, op: str, operand: Any, line: int) -> _Test | None:
        single = "eq" if op == "in" else "ne"
        if not isinstance(operand, Seq):
            self.problem(
                line,
                f"{op} takes a list of values, e.g. `{op}: [error, warning]`, not "
                f"{describe(operand)}; for a single value write `{single}: ...`",
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
        if op == "in" and all(type(x) is str for x in values):
            strings = frozenset(values)

            def fuse_in(key: str) -> Predicate:
                def field_in(ev: Event) -> bool:
                    v = ev.get(key)
                    return type(v) is str and v in strings

                return field_in

            return _Test(test, fused=fuse_in)
        return _Test(test) if op == "in" else _Test(_negate_value(test), on_missing=True)

    def affix(self, op: str, operand: Any, line: int) -> _Test | None:
        # A list is accepted as "any of these" because str.startswith takes a tuple for free.
        items = operand if isinstance(operand, Seq) else [operand]
        if not items or not all(isinstance(x, str) for x in items):
            self.problem(
                line,
                f"{op} takes a string or a list of strings, not {describe(operand)}; "
                f'quote numbers, e.g. `{op}: "10."`',
            )
            return None
        affixes = tuple(items) if len(items) > 1 else items[0]
        if op == "startswith":

            def starts(v: Any) -> bool:
                return type(v) is str and v.startswith(affixes)

            def fuse_starts(key: str) -> Predicate:
                def field_starts(ev: Event) -> bool:
                    v = ev.get(key)
                    return type(v) is str and v.startswith(affixes)

                return field_starts

            return _Test(starts, fused=fuse_starts)

        def ends(v: Any) -> bool:
            return type(v) is str and v.endswith(affixes)

        def fuse_ends(key: str) -> Predicate:
            def field_ends(ev: Event) -> bool:
                v = ev.get(key)
                return type(v) is str and v.endswith(affixes)

            return field_ends

        return _Test(ends, fused=fuse_ends)

    def pattern(self, op: str, value: Any, line: int) -> _Test | None:
        if not isinstance(value, str):
            self.problem(
                line, f'{op} takes a string, not {describe(value)}; quote it: `{op}: "..."`'
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
            f"{op} takes a number or a string, not {describe(value)}; numbers compare with "
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
                    f"not {describe(entry)}",
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


def _day_set(c: Compiler, value: Any, line: int) -> frozenset[int] | None:
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


def _hours(c: Compiler, value: Any, line: int) -> tuple[int, int] | None:
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
        f"(start included, end excluded), not {describe(value)}",
    )
    return None


def compile_when(c: Compiler, node: Any, line: int) -> TimeTest | None:
    """Days apply to the local date of the event time itself, also inside a window that wraps
    past midnight: with `days: [fri]` and `hours: "22:00-06:00"`, Friday 23:00 is in, and
    Saturday 03:00 is not (it falls on Saturday)."""
    if not isinstance(node, Map) or not node:
        c.problem(
            line,
            f'when must be a mapping with days and/or hours, e.g. `when: {{days: [mon-fri], hours: "08:00-18:00"}}`, not {describe(node)}',
        )
        return None
    for key in node:
        if key not in WHEN_KEYS:
            c.problem(
                node.line_of(key),
                f"unknown key {key!r} in when{suggest(key, WHEN_KEYS)}; known keys: {', '.join(WHEN_KEYS)}",
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
