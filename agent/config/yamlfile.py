"""YAML loading that remembers where each value was written.

Operators need `FILE:LINE: message` for every mistake, so mappings and lists come back as
`Map`/`Seq`, which carry the line of each key and item. Scalars resolve as in YAML 1.2's core
schema: `no`, `on` and `off` stay strings (the "Norway problem"), `06:30` is not the base-60
number 390, and `2026-11-21` is not a date object. Only plain data types are built: the loader
is PyYAML's SafeLoader underneath.

Anyone who can write to rules_dir can hand the agent a document, so what one may cost is bounded
before the work is done, while its nodes are composed: how deep mappings and lists nest
(MAX_DEPTH), how many values it stands for once every alias is counted as all it repeats
(MAX_VALUES: a "billion laughs" is refused within a few dozen nodes, not after a billion), and
how many digits a number has (MAX_DIGITS). Whatever walks the converted value later (the rule
compiler, the rule index, field collection) may then recurse and expand it freely.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from agent.core.errors import ConfigError


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong in a file the operator wrote."""

    file: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.message}"


class ProblemsError(ConfigError):
    """Raised at the edge with every problem found; the CLI prints them, one per line."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("\n".join(str(p) for p in problems))
        self.problems = problems


class Map(dict[str, Any]):
    """A YAML mapping with the line of the mapping and of each key."""

    line: int
    key_lines: dict[str, int]

    def line_of(self, key: str) -> int:
        return self.key_lines.get(key, self.line)


class Seq(list[Any]):
    """A YAML sequence with the line of the sequence and of each item."""

    line: int
    item_lines: list[int]

    def line_of(self, index: int) -> int:
        return self.item_lines[index] if index < len(self.item_lines) else self.line


MAX_DEPTH = 64  # nested mappings and lists; a rule with conditions nested ten deep needs ~25
MAX_VALUES = 200_000  # values a document stands for, each alias counted as all it repeats
# Python refuses to convert longer decimal integers (sys.get_int_max_str_digits); a number is
# also printed in messages, so a hex or octal one is held to the same length in decimal.
MAX_DIGITS = min(4300, sys.get_int_max_str_digits() or 4300)


class _Refused(Exception):
    """A limit was crossed at `line`; the document is not read further."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line = line
        self.message = message


def _line_of(event: yaml.Event) -> int:
    return event.start_mark.line + 1 if event.start_mark is not None else 1


class _Loader(yaml.SafeLoader):
    """SafeLoader that counts, while composing, the depth and the expanded size of the document."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.depth = 0
        self.expanded = 0  # values composed so far, an alias counting as all it stands for
        self.sizes: dict[int, int] = {}  # id(anchored node) -> the values it stands for

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        event: yaml.Event = self.peek_event()  # type: ignore[no-untyped-call]
        if isinstance(event, yaml.AliasEvent):
            node = super().compose_node(parent, index)  # raises on an undefined alias
            size = self.sizes.get(id(node))
            if size is None:  # the anchored node is still open: the alias is inside it
                raise _Refused(
                    _line_of(event),
                    f"the alias *{event.anchor} is inside the value it names, which would repeat "
                    "without end; write the value out instead",
                )
            self._count(size, event)
            return node
        if self.depth >= MAX_DEPTH:
            raise _Refused(
                _line_of(event),
                f"mappings and lists nest more than {MAX_DEPTH} levels deep here; flatten them "
                "(one all: or any: list holds any number of conditions)",
            )
        start = self.expanded
        self._count(1, event)
        self.depth += 1
        node = super().compose_node(parent, index)
        self.depth -= 1
        if isinstance(event, yaml.NodeEvent) and event.anchor is not None:
            self.sizes[id(node)] = self.expanded - start
        return node

    def _count(self, values: int, event: yaml.Event) -> None:
        self.expanded += values
        if self.expanded > MAX_VALUES:
            raise _Refused(
                _line_of(event),
                f"the document stands for more than {MAX_VALUES:,} values (each alias counts as "
                "all it repeats); use fewer aliases, or split the rules into several files",
            )


# YAML 1.2 core schema resolvers instead of YAML 1.1's: fewer surprises in rule values.
_Loader.yaml_implicit_resolvers = {}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:int",
    re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$"),
    list("-+0123456789"),
)
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
    ),
    list("-+0123456789."),
)
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:null", re.compile(r"^(?:~|null|Null|NULL|)$"), ["~", "n", "N", ""]
)


_TOO_BIG = 10**MAX_DIGITS


def _int_1_2(loader: _Loader, node: yaml.ScalarNode) -> int:
    text = str(loader.construct_scalar(node))
    # Checked before int(): Python refuses a longer decimal number with a ValueError, and a
    # longer hex one would fail where a message prints it.
    if len(text.lstrip("+-")) <= MAX_DIGITS:
        if text.startswith("0o"):
            value = int(text[2:], 8)
        else:
            value = int(text, 16) if text.startswith("0x") else int(text, 10)
        if abs(value) < _TOO_BIG:
            return value
    raise yaml.constructor.ConstructorError(
        None,
        None,
        f"the number {text[:12]}… is too long: a number has at most {MAX_DIGITS} digits; "
        "quote it if it is text",
        node.start_mark,
    )


_Loader.add_constructor("tag:yaml.org,2002:int", _int_1_2)


_MAP_TAGS = frozenset({"tag:yaml.org,2002:map"})
_SEQ_TAGS = frozenset({"tag:yaml.org,2002:seq"})


class _Converter:
    """Turns PyYAML's node tree into located plain values, sharing nodes reached by aliases.

    The tree is already bounded (see `_Loader`): at most MAX_DEPTH deep, no alias loops.
    """

    def __init__(self, loader: _Loader, file: str, problems: list[Problem]) -> None:
        self.loader = loader
        self.file = file
        self.problems = problems
        self.done: dict[int, Any] = {}  # id(node) -> value: an alias reuses, never re-expands

    def problem(self, node: yaml.Node, message: str) -> None:
        self.problems.append(Problem(self.file, node.start_mark.line + 1, message))

    def convert(self, node: yaml.Node) -> Any:
        key = id(node)
        if key in self.done:
            return self.done[key]
        value = self._convert(node)
        self.done[key] = value
        return value

    def _convert(self, node: yaml.Node) -> Any:
        if isinstance(node, yaml.MappingNode):
            if node.tag not in _MAP_TAGS:
                self.problem(
                    node, f"the YAML tag {node.tag} is not allowed here; write a plain mapping"
                )
                return None
            result = Map()
            result.line = node.start_mark.line + 1
            result.key_lines = {}
            for key_node, value_node in node.value:
                line = key_node.start_mark.line + 1
                if (
                    isinstance(key_node, yaml.ScalarNode)
                    and key_node.value == "<<"
                    and key_node.style is None
                ):
                    self.problem(key_node, "merge keys (<<) are not supported")
                    continue
                key = self.convert(key_node)
                if not isinstance(key, str):
                    key = str(key)
                if key in result:
                    self.problem(
                        key_node, f"duplicate key {key!r} (first at line {result.key_lines[key]})"
                    )
                    continue
                result[key] = self.convert(value_node)
                result.key_lines[key] = line
            return result
        if isinstance(node, yaml.SequenceNode):
            if node.tag not in _SEQ_TAGS:
                self.problem(
                    node, f"the YAML tag {node.tag} is not allowed here; write a plain list"
                )
                return None
            seq = Seq()
            seq.line = node.start_mark.line + 1
            seq.item_lines = []
            for item in node.value:
                seq.append(self.convert(item))
                seq.item_lines.append(item.start_mark.line + 1)
            return seq
        try:
            return self.loader.construct_object(node, deep=True)
        except yaml.YAMLError as exc:
            what = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            self.problem(node, f"invalid value: {what}")
            return None


def parse_yaml(text: str, file: str) -> tuple[Any, list[Problem]]:
    """Parse one YAML document; return the located value and the problems found."""
    problems: list[Problem] = []
    loader: _Loader | None = None
    try:
        loader = _Loader(text)
        node = loader.get_single_node()
        if node is None:
            return None, problems
        return _Converter(loader, file, problems).convert(node), problems
    except _Refused as exc:
        problems.append(Problem(file, exc.line, exc.message))
        return None, problems
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        what = exc.problem or str(exc).splitlines()[0]
        problems.append(Problem(file, line, f"YAML syntax error: {what}"))
        return None, problems
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, exc.position) + 1
        problems.append(Problem(file, line, f"character {exc.character!r} is not allowed in YAML"))
        return None, problems
    except yaml.YAMLError as exc:
        problems.append(Problem(file, 1, f"YAML error: {str(exc).splitlines()[0]}"))
        return None, problems
    except RecursionError:  # defence in depth: MAX_DEPTH should stop any document before this
        problems.append(
            Problem(file, 1, f"the document nests too deeply; keep it under {MAX_DEPTH} levels")
        )
        return None, problems
    finally:
        if loader is not None:
            loader.dispose()


def load_yaml(path: Path) -> tuple[Any, list[Problem]]:
    """Read and parse a YAML file; an unreadable file is a problem at line 1, not an exception."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        return None, [Problem(str(path), 1, "not valid UTF-8 text")]
    except OSError as exc:
        return None, [Problem(str(path), 1, f"cannot read: {exc.strerror or exc}")]
    return parse_yaml(text, str(path))
