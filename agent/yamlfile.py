"""YAML loading that remembers where each value was written.

Operators need `FILE:LINE: message` for every mistake, so mappings and lists come back as
`Map`/`Seq`, which carry the line of each key and item. Scalars resolve as in YAML 1.2's core
schema: `no`, `on` and `off` stay strings (the "Norway problem"), `06:30` is not the base-60
number 390, and `2026-11-21` is not a date object. Only plain data types are built: the loader
is PyYAML's SafeLoader underneath.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong in a file the operator wrote."""

    file: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.message}"


class ProblemsError(Exception):
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


class _Loader(yaml.SafeLoader):
    pass


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


def _int_1_2(loader: _Loader, node: yaml.ScalarNode) -> int:
    text = str(loader.construct_scalar(node))
    if text.startswith("0o"):
        return int(text[2:], 8)
    return int(text, 0) if text.startswith("0x") else int(text, 10)


_Loader.add_constructor("tag:yaml.org,2002:int", _int_1_2)


_MAP_TAGS = frozenset({"tag:yaml.org,2002:map"})
_SEQ_TAGS = frozenset({"tag:yaml.org,2002:seq"})
MAX_NODES = 200_000  # bounds what aliases can expand to ("billion laughs")


class _Converter:
    """Turns PyYAML's node tree into located plain values, sharing nodes reached by aliases."""

    def __init__(self, loader: _Loader, file: str, problems: list[Problem]) -> None:
        self.loader = loader
        self.file = file
        self.problems = problems
        self.done: dict[int, Any] = {}  # id(node) -> value: an alias reuses, never re-expands
        self.count = 0

    def problem(self, node: yaml.Node, message: str) -> None:
        self.problems.append(Problem(self.file, node.start_mark.line + 1, message))

    def convert(self, node: yaml.Node) -> Any:
        key = id(node)
        if key in self.done:
            return self.done[key]
        self.count += 1
        if self.count > MAX_NODES:
            raise _TooBig(node)
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


class _TooBig(Exception):
    def __init__(self, node: yaml.Node) -> None:
        self.node = node


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
    except _TooBig as exc:
        line = exc.node.start_mark.line + 1
        problems.append(
            Problem(file, line, f"the document expands to more than {MAX_NODES} values (aliases?)")
        )
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
