"""The one parser of conditions and `when` windows: located YAML in, a condition tree out.

It reads the `Map`/`Seq` values of `agent.config.yamlfile`, which carry the line of every key
and item, and records each mistake as a `Problem` at the line of the offending key or item, with
what to write instead. It checks everything that can be checked before an event is seen: field
paths, operators and their operands, regular expressions (compiled by RE2 here, so that one it
cannot run is a mistake in the file, not a failure later), networks, days and hours.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
from collections.abc import Iterable
from typing import Any, Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import re2

from agent.config.yamlfile import Map, Problem, Seq
from agent.core.periods import system_timezone
from agent.rules.condition import (
    All,
    AnyOf,
    Cidr,
    Condition,
    Contains,
    EndsWith,
    Eq,
    Exists,
    FieldTest,
    Glob,
    In,
    Ne,
    Network,
    Not,
    NotIn,
    Operator,
    Order,
    Regex,
    StartsWith,
    Window,
)
from agent.rules.fields import is_path
from agent.rules.patterns import error_text, glob_test, regex_test
from agent.rules.values import NUMBER

WHEN_KEYS: Final = ("days", "hours", "timezone")
OPERATORS: Final = (
    "eq", "ne", "in", "not_in", "contains", "startswith", "endswith", "regex", "glob",
    "exists", "gt", "gte", "lt", "lte", "cidr",
)  # fmt: skip


def plain(value: Any) -> Any:
    """A YAML operand as a plain JSON value (dict/list, not Map/Seq); TypeError if not JSON."""
    if value is None or isinstance(value, str | bool | int | float):
        return value
    if isinstance(value, list):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    raise TypeError(type(value).__name__)


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


def suggest(word: str, choices: Iterable[str]) -> str:
    """The hint ` (did you mean 'x'?)` for the choice closest to `word`, or an empty string."""
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


class Parser:
    """Parses the conditions and windows of one file, recording every mistake in `problems`.

    Each method returns None when what it parsed has a mistake (recorded); its caller then
    goes on with the siblings, so that one pass reports every mistake of the file.
    """

    def __init__(self, file: str, problems: list[Problem]) -> None:
        self.file = file
        self.problems = problems

    def problem(self, line: int, message: str) -> None:
        self.problems.append(Problem(self.file, line, message))

    def condition(self, node: Any, line: int, where: str) -> Condition | None:
        """A condition mapping: one key is that condition; several must all hold (All)."""
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
        parts: list[Condition] = []
        ok = True
        for key, value in node.items():
            key_line = node.line_of(key)
            part: Condition | None
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
                    part = Not(inner, key_line) if inner is not None else None
            else:
                part = self.field(key, value, key_line)
            if part is None:
                ok = False
            else:
                parts.append(part)
        if not ok:
            return None
        return parts[0] if len(parts) == 1 else All(tuple(parts), node.line)

    def combination(self, key: str, value: Any, line: int) -> Condition | None:
        # `all: []` holds and `any: []` does not, as in logic (and in Python's all()/any()):
        # `match: {all: []}` is the explicit way to select every event.
        if not isinstance(value, Seq):
            self.problem(
                line,
                f"{key} must be a list of conditions, e.g. `{key}: [{{level: error}}, "
                f"{{user: root}}]`, not {describe(value)}",
            )
            return None
        parts: list[Condition] = []
        ok = True
        for index, item in enumerate(value):
            part = self.condition(item, value.line_of(index), f"item {index + 1} of {key}")
            if part is None:
                ok = False
            else:
                parts.append(part)
        if not ok:
            return None
        return All(tuple(parts), line) if key == "all" else AnyOf(tuple(parts), line)

    def path(self, path: str, line: int) -> bool:
        if not is_path(path):
            self.problem(
                line,
                f"{path!r} is not a field path: names are separated by single dots, "
                "e.g. `user.name` or `items.0`",
            )
            return False
        return True

    def field(self, path: str, spec: Any, line: int) -> Condition | None:
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
        return FieldTest(path, (test,), line) if test is not None else None

    def field_form(self, node: Map) -> Condition | None:
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

    def operators(self, path: str, ops: Map, line: int, skip: str = "") -> Condition | None:
        tests: list[Operator] = []
        ok = True
        for op, operand in ops.items():
            if op == skip:
                continue
            test = self.operator(op, operand, ops.line_of(op), path)
            if test is None:
                ok = False
            else:
                tests.append(test)
        return FieldTest(path, tuple(tests), line) if ok else None

    def operator(self, op: str, operand: Any, line: int, path: str = "") -> Operator | None:
        """One operator and its operand, checked and converted."""
        if op not in OPERATORS:
            self.unknown_operator(path, op, line)
            return None
        if op in ("in", "not_in"):
            return self.membership(op, operand, line)
        if op == "exists":
            if not isinstance(operand, bool):
                self.problem(line, f"exists takes true or false, not {describe(operand)}")
                return None
            return Exists(operand)
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
            value = plain(operand)
        except TypeError:
            self.problem(line, f"{op}: {describe(operand)} is not a JSON value")
            return None
        if op == "eq":
            return Eq(value)
        if op == "ne":
            return Ne(value)
        if op == "contains":
            return Contains(value)
        if op in ("regex", "glob"):
            return self.pattern(op, value, line)
        return self.order(op, value, line)

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

    def membership(self, op: str, operand: Any, line: int) -> Operator | None:
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
            values = tuple(plain(operand))
        except TypeError as exc:
            self.problem(line, f"{op}: a {exc} is not a JSON value")
            return None
        return In(values) if op == "in" else NotIn(values)

    def affix(self, op: str, operand: Any, line: int) -> Operator | None:
        # A list is accepted as "any of these" because str.startswith takes a tuple for free.
        items = operand if isinstance(operand, Seq) else [operand]
        if not items or not all(isinstance(x, str) for x in items):
            self.problem(
                line,
                f"{op} takes a string or a list of strings, not {describe(operand)}; "
                f'quote numbers, e.g. `{op}: "10."`',
            )
            return None
        affixes = tuple(str(x) for x in items)
        return StartsWith(affixes) if op == "startswith" else EndsWith(affixes)

    def pattern(self, op: str, value: Any, line: int) -> Operator | None:
        if not isinstance(value, str):
            self.problem(
                line, f'{op} takes a string, not {describe(value)}; quote it: `{op}: "..."`'
            )
            return None
        try:
            # Built here to be checked; the predicate builds its own when the rule is compiled.
            glob_test(value) if op == "glob" else regex_test(value, whole=False)
        except (re2.error, UnicodeError) as exc:
            self.problem(
                line,
                f"{op} {value!r} cannot be compiled by RE2: {error_text(exc)}; lookaround "
                "(?=, ?!, ?<=), backreferences (\\1) and \\Z are not available because "
                "patterns must run in linear time (write \\z for the end of the text)",
            )
            return None
        return Glob(value) if op == "glob" else Regex(value)

    def order(self, op: str, value: Any, line: int) -> Operator | None:
        if type(value) in NUMBER or type(value) is str:
            return Order(op, value)
        self.problem(
            line,
            f"{op} takes a number or a string, not {describe(value)}; numbers compare with "
            "numbers and strings with strings",
        )
        return None

    def cidr(self, operand: Any, line: int) -> Operator | None:
        entries = (
            [(x, operand.line_of(i)) for i, x in enumerate(operand)]
            if isinstance(operand, Seq)
            else [(operand, line)]
        )
        if not entries:
            self.problem(line, "cidr: [] lists no network; list at least one")
            return None
        networks: list[Network] = []
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
        return Cidr(tuple(networks)) if len(networks) == len(entries) else None

    def window(self, node: Any, line: int) -> Window | None:
        """`when:`: days and/or hours, in a time zone (default: the system's)."""
        if not isinstance(node, Map) or not node:
            self.problem(
                line,
                f'when must be a mapping with days and/or hours, e.g. `when: {{days: [mon-fri], hours: "08:00-18:00"}}`, not {describe(node)}',
            )
            return None
        for key in node:
            if key not in WHEN_KEYS:
                self.problem(
                    node.line_of(key),
                    f"unknown key {key!r} in when{suggest(key, WHEN_KEYS)}; known keys: {', '.join(WHEN_KEYS)}",
                )
        days = self.days(node["days"], node.line_of("days")) if "days" in node else None
        hours = self.hours(node["hours"], node.line_of("hours")) if "hours" in node else None
        tz = system_timezone()
        if "timezone" in node:
            name = node["timezone"]
            try:
                if not isinstance(name, str):
                    raise ValueError(name)
                tz = ZoneInfo(name)
            except (ZoneInfoNotFoundError, ValueError):
                self.problem(
                    node.line_of("timezone"),
                    f"timezone: unknown time zone {name!r}; use an IANA name such as Europe/Berlin",
                )
        if "days" not in node and "hours" not in node:
            self.problem(line, "when needs days, hours or both; leave when out to allow any time")
        if days is None and hours is None:
            return None
        return Window(days, hours, tz, line)

    def days(self, value: Any, line: int) -> frozenset[int] | None:
        entries = (
            [(x, value.line_of(i)) for i, x in enumerate(value)]
            if isinstance(value, Seq)
            else [(value, line)]
        )
        if not entries:
            self.problem(line, "days: [] selects no day; leave days out to allow every day")
            return None
        days: set[int] = set()
        ok = True
        for entry, entry_line in entries:
            ends = str(entry).strip().lower().split("-")
            if not isinstance(entry, str) or len(ends) > 2 or any(d not in _DAYS for d in ends):
                self.problem(
                    entry_line,
                    f"days: {entry!r} is not a day; write mon, tue, wed, thu, fri, sat or sun, "
                    "or a range such as mon-fri",
                )
                ok = False
                continue
            start, end = _DAYS[ends[0]], _DAYS[ends[-1]]
            days.update((start + k) % 7 for k in range((end - start) % 7 + 1))
        return frozenset(days) if ok else None

    def hours(self, value: Any, line: int) -> tuple[int, int] | None:
        m = _HOURS.match(value) if isinstance(value, str) else None
        if m is not None:
            h1, m1, h2, m2 = (int(g) for g in m.groups())
            start, end = h1 * 60 + m1, h2 * 60 + m2
            if h1 <= 23 and m1 <= 59 and m2 <= 59 and (h2 <= 23 or end == 24 * 60):
                if start == end % (24 * 60):
                    self.problem(
                        line,
                        f"hours {value!r} starts where it ends; to allow the whole day leave hours out",
                    )
                    return None
                return start, end % (24 * 60)
        self.problem(
            line,
            f'hours must be a quoted window "HH:MM-HH:MM" such as "08:00-18:00" or "22:00-06:00" '
            f"(start included, end excluded), not {describe(value)}",
        )
        return None


_DAY_NAMES: Final = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_DAYS: Final = {
    **{d: i for i, d in enumerate(_DAY_NAMES)},
    **{d: i for i, d in enumerate(("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"))},
}  # fmt: skip
_HOURS = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*$")
