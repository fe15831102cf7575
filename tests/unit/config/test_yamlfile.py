"""Located YAML loading: YAML 1.2 scalars, line numbers, and every failure as a Problem."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from hostile import DEPTH, EXPANSION, TOO_LONG, billion_laughs, nested_all

from agent.config import yamlfile
from agent.config.yamlfile import MAX_DEPTH, Map, Problem, ProblemsError, Seq, load_yaml, parse_yaml


def value_of(text: str) -> Any:
    """The value of key `v` in a one-line document `v: TEXT`, which must parse cleanly."""
    data, problems = parse_yaml(f"v: {text}\n", "f.yaml")
    assert problems == []
    return data["v"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # YAML 1.1 booleans are plain strings in 1.2 (the "Norway problem")
        ("no", "no"),
        ("NO", "NO"),
        ("yes", "yes"),
        ("on", "on"),
        ("off", "off"),
        ("y", "y"),
        ("n", "n"),
        # no base-60 numbers, no timestamps
        ("06:30", "06:30"),
        ("1:20:30", "1:20:30"),
        ("2026-11-21", "2026-11-21"),
        ("2026-11-21T10:00:00Z", "2026-11-21T10:00:00Z"),
        # no YAML 1.1 binary or underscores in numbers
        ("0b101", "0b101"),
        ("1_000", "1_000"),
        ("=", "="),
        ("none", "none"),
        # core schema values
        ("true", True),
        ("True", True),
        ("FALSE", False),
        ("null", None),
        ("~", None),
        ("", None),
        ("42", 42),
        ("-7", -7),
        ("+12", 12),
        ("007", 7),
        ("0x1F", 31),
        ("0o17", 15),
        ("1.5", 1.5),
        ("-0.25", -0.25),
        ("1e3", 1000.0),
        (".inf", math.inf),
        ("-.inf", -math.inf),
        # quoting always gives a string
        ("'42'", "42"),
        ('"true"', "true"),
        ('"06:30"', "06:30"),
    ],
)
def test_scalars_resolve_as_yaml_1_2_core_schema(text: str, expected: object) -> None:
    """Plain scalars resolve by the YAML 1.2 core schema: only true/false are booleans, no sexagesimal numbers or dates."""
    value = value_of(text)
    assert value == expected
    assert type(value) is type(expected)


def test_nan_is_a_float() -> None:
    """`.nan` is the float NaN, as the core schema says."""
    assert math.isnan(value_of(".nan"))


def test_keys_resolve_like_values_but_stay_strings() -> None:
    """`on:` and `no:` as keys stay the strings a reader sees, and a number key becomes its text."""
    data, problems = parse_yaml("on: 1\nno: 2\n3: x\n", "f.yaml")
    assert problems == []
    assert data == {"on": 1, "no": 2, "3": "x"}


def test_mappings_and_sequences_carry_line_numbers() -> None:
    """Map and Seq record the line of themselves, each key and each item; line_of falls back to the container's line."""
    text = (
        "# a comment\n"  # 1
        "top: 1\n"  # 2
        "\n"  # 3
        "items:\n"  # 4
        "  - name: a\n"  # 5
        "    x: 1\n"  # 6
        "  - plain\n"  # 7
        "  -\n"  # 8
        "    - nested\n"  # 9
        "flow: {a: 1,\n"  # 10
        "  b: 2}\n"  # 11
    )
    data, problems = parse_yaml(text, "f.yaml")
    assert problems == []
    assert isinstance(data, Map)
    assert data.line == 2
    assert data.key_lines == {"top": 2, "items": 4, "flow": 10}
    items = data["items"]
    assert isinstance(items, Seq)
    assert items.line == 5
    assert items.item_lines == [5, 7, 9]
    assert items[0].line == 5
    assert items[0].line_of("x") == 6
    assert items[0].line_of("missing") == 5
    assert items.line_of(99) == 5
    assert data["flow"].line_of("b") == 11


def test_duplicate_keys_are_reported_with_both_lines() -> None:
    """A repeated key is a problem at its line naming the first line, and the first value is kept."""
    data, problems = parse_yaml("a: 1\nb: 2\na: 3\n", "f.yaml")
    assert problems == [Problem("f.yaml", 3, "duplicate key 'a' (first at line 1)")]
    assert data == {"a": 1, "b": 2}


def test_duplicate_keys_in_nested_mappings_are_reported() -> None:
    """Duplicates are found at every depth, not only at the top."""
    _, problems = parse_yaml("outer:\n  - x: 1\n    y: 2\n    x: 3\n", "f.yaml")
    assert [str(p) for p in problems] == ["f.yaml:4: duplicate key 'x' (first at line 2)"]


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("a: 1\nb: [1, 2\nc: 3\n", 3, "YAML syntax error: expected ',' or ']', but got ':'"),
        ("a: 1\n  b: 2\n", 2, "YAML syntax error: mapping values are not allowed here"),
        ("a: 1\nb: 'open\n", 3, "YAML syntax error: found unexpected end of stream"),
        ("a: 1\nb: *nope\n", 2, "YAML syntax error: found undefined alias 'nope'"),
        ("a: 1\n---\nb: 2\n", 2, "YAML syntax error: but found another document"),
        ("a:\n\tb: 1\n", 2, "YAML syntax error: found character '\\t' that cannot start any token"),
    ],
)
def test_syntax_errors_are_problems_with_their_line(text: str, line: int, message: str) -> None:
    """A syntax error becomes one Problem at the line where the parser noticed it."""
    data, problems = parse_yaml(text, "f.yaml")
    assert data is None
    assert problems == [Problem("f.yaml", line, message)]


def test_empty_document_is_none_without_problems() -> None:
    """An empty file or one with only comments is None, not an error; callers decide."""
    assert parse_yaml("", "f.yaml") == (None, [])
    assert parse_yaml("# nothing here\n", "f.yaml") == (None, [])


def test_unsafe_tags_are_refused() -> None:
    """A python/* tag on a scalar builds nothing: the value is None and a problem names the line."""
    data, problems = parse_yaml("a: 1\nb: !!python/name:os.system x\n", "f.yaml")
    assert data == {"a": 1, "b": None}
    assert len(problems) == 1
    assert problems[0].line == 2
    assert problems[0].message.startswith("invalid value: could not determine a constructor")


@pytest.mark.parametrize(
    "text",
    [
        "a: 1\nb: !!python/object/apply:os.system [true]\n",
        "a: 1\nb: !!python/object:collections.OrderedDict {x: 1}\n",
        "a: 1\nb: !!set {x, y}\n",
    ],
    ids=["python-apply", "python-object", "set"],
)
def test_tags_on_collections_are_reported(text: str) -> None:
    """An explicit tag on a list or mapping is a problem at its line, not silently dropped."""
    _, problems = parse_yaml(text, "f.yaml")
    assert [p.line for p in problems] == [2]


def test_invalid_value_problem_is_one_line() -> None:
    """A problem prints on one line as FILE:LINE: message, without PyYAML's multi-line mark dump."""
    _, problems = parse_yaml("a: 1\nb: !!python/name:os.system x\n", "f.yaml")
    assert len(problems) == 1
    assert "\n" not in problems[0].message
    assert "<unicode string>" not in problems[0].message


def test_merge_keys_are_rejected() -> None:
    """`<<: *base` is reported as unsupported instead of silently becoming a key named '<<'."""
    text = "base: &base\n  x: 1\nother:\n  <<: *base\n  y: 2\n"
    data, problems = parse_yaml(text, "f.yaml")
    assert problems == [Problem("f.yaml", 4, "merge keys (<<) are not supported")]
    assert "<<" not in data["other"]


def test_quoted_double_angle_key_is_an_ordinary_key() -> None:
    """A quoted '<<' is just a string key, not a merge."""
    data, problems = parse_yaml("'<<': 1\n", "f.yaml")
    assert problems == []
    assert data == {"<<": 1}


def test_aliases_are_expanded() -> None:
    """An alias repeats the anchored value, and the copy is located like any other mapping."""
    data, problems = parse_yaml("a: &x {k: 1}\nb: *x\n", "f.yaml")
    assert problems == []
    assert data == {"a": {"k": 1}, "b": {"k": 1}}
    assert isinstance(data["b"], Map)


@pytest.mark.timeout(10)
def test_alias_bomb_is_refused_where_it_crosses_the_limit() -> None:
    """A "billion laughs" document (9**9 values from 400 bytes) is refused at the line whose alias crosses the limit, before anything expands."""
    text = billion_laughs()
    assert len(text) < 500
    # Level 6 stands for 9**6 = 531,441 values: its first alias already crosses 200,000.
    assert parse_yaml(text, "f.yaml") == (None, [Problem("f.yaml", 6, EXPANSION)])


def test_aliases_within_the_limit_are_shared_and_counted_in_full() -> None:
    """Aliases are shared, not copied, yet each counts as all it repeats: one more repetition crosses the limit."""
    # Level e stands for 66,430 values (9**5 x, and the lists); with a to e, ~75,000 in all.
    ok = billion_laughs(levels=5).replace("match: {x: {in: *e}}", "u: [*e]")
    data, problems = parse_yaml(ok, "f.yaml")
    assert problems == []
    assert data["u"][0] is data["e"]
    too_many = ok.replace("u: [*e]", "u: [*e, *e]")  # 75,000 + 2 * 66,430
    assert parse_yaml(too_many, "f.yaml") == (None, [Problem("f.yaml", 6, EXPANSION)])


@pytest.mark.parametrize(
    "text",
    ["a: &a [*a]\n", "a: &a {b: [1, *a]}\n"],
    ids=["list", "mapping"],
)
def test_an_alias_inside_its_own_anchor_is_refused(text: str) -> None:
    """An alias that refers to the value it is part of (a loop) is a problem, not a RecursionError."""
    message = (
        "the alias *a is inside the value it names, which would repeat without end; "
        "write the value out instead"
    )
    assert parse_yaml(text, "f.yaml") == (None, [Problem("f.yaml", 1, message)])


def test_deep_nesting_is_refused_while_composing() -> None:
    """300 nested `all:` levels are refused at the line where the 65th level begins, without a RecursionError."""
    # match (1), then all's list and its item mapping per level: level 31's list is the 64th.
    assert parse_yaml(nested_all(300), "f.yaml") == (None, [Problem("f.yaml", 64, DEPTH)])
    flow = "match: " + "{all: [" * 300 + "{a: 1}" + "]}" * 300 + "\n"
    assert parse_yaml(flow, "f.yaml") == (None, [Problem("f.yaml", 1, DEPTH)])


def test_nesting_up_to_the_limit_loads() -> None:
    """A document exactly MAX_DEPTH levels deep loads; one level more is refused."""
    assert MAX_DEPTH == 64

    def lists(n: int) -> str:  # the mapping, n lists, the scalar: n + 2 levels
        return "a: " + "[" * n + "x" + "]" * n + "\n"

    assert parse_yaml(lists(MAX_DEPTH - 2), "f.yaml")[1] == []
    assert parse_yaml(lists(MAX_DEPTH - 1), "f.yaml") == (None, [Problem("f.yaml", 1, DEPTH)])


def test_recursion_error_is_a_problem_not_a_crash(monkeypatch: pytest.MonkeyPatch) -> None:
    """Defence in depth: were the depth limit gone, a RecursionError would still be a problem at line 1."""
    monkeypatch.setattr(yamlfile, "MAX_DEPTH", 10**6)
    flow = "a: " + "[" * 5000 + "]" * 5000 + "\n"
    assert parse_yaml(flow, "f.yaml") == (
        None,
        [Problem("f.yaml", 1, "the document nests too deeply; keep it under 1000000 levels")],
    )


@pytest.mark.parametrize(
    ("number", "shown"),
    [
        ("1" * 5000, "1" * 12),
        ("-" + "9" * 4301, "-" + "9" * 11),
        ("0x" + "f" * 3600, "0x" + "f" * 10),
    ],
    ids=["5000-digits", "4301-digits", "hex-over-10**4300"],
)
def test_numbers_longer_than_python_allows_are_problems(number: str, shown: str) -> None:
    """An integer of more digits than Python converts (4,300) is a located problem, not a ValueError."""
    data, problems = parse_yaml(f"a: 1\nmatch: {{n: {{gt: {number}}}}}\n", "f.yaml")
    assert problems == [Problem("f.yaml", 2, TOO_LONG.format(shown))]
    assert data["match"]["n"]["gt"] is None


def test_numbers_of_4300_digits_load() -> None:
    """4,300 digits is still a number, and one that can be printed in a message."""
    assert value_of("7" * 4300) == int("7" * 4300)
    assert len(str(value_of("0x" + "f" * 3000))) == 3613


@pytest.mark.parametrize("char", ["\x00", "\x07", "\x1b"], ids=["NUL", "BEL", "ESC"])
def test_control_characters_are_a_problem_not_a_crash(char: str) -> None:
    """A control character YAML forbids becomes a Problem at its line instead of an exception."""
    data, problems = parse_yaml(f"a: 1\nb: x{char}y\n", "f.yaml")
    assert data is None
    assert len(problems) == 1
    assert problems[0].file == "f.yaml"
    assert problems[0].line == 2


def test_load_yaml_reads_a_file(tmp_path: Path) -> None:
    """load_yaml parses a UTF-8 file and names problems after its path."""
    path = tmp_path / "rules.yaml"
    path.write_text("name: café\nname: again\n", encoding="utf-8")
    data, problems = load_yaml(path)
    assert data == {"name": "café"}
    assert problems == [Problem(str(path), 2, "duplicate key 'name' (first at line 1)")]


def test_load_yaml_accepts_a_byte_order_mark(tmp_path: Path) -> None:
    """A UTF-8 BOM written by some editors is ignored."""
    path = tmp_path / "bom.yaml"
    path.write_bytes(b"\xef\xbb\xbfa: 1\n")
    assert load_yaml(path) == ({"a": 1}, [])


def test_non_utf8_file_is_a_problem(tmp_path: Path) -> None:
    """A file that is not UTF-8 is reported at line 1, not raised."""
    path = tmp_path / "latin1.yaml"
    path.write_bytes("name: caf\xe9\n".encode("latin-1"))
    assert load_yaml(path) == (None, [Problem(str(path), 1, "not valid UTF-8 text")])


def test_missing_file_is_a_problem(tmp_path: Path) -> None:
    """A file that does not exist is reported at line 1 with the system's reason."""
    path = tmp_path / "nope.yaml"
    assert load_yaml(path) == (
        None,
        [Problem(str(path), 1, "cannot read: No such file or directory")],
    )


def test_unreadable_file_is_a_problem(tmp_path: Path) -> None:
    """A path that cannot be read as a file (here a directory; tests may run as root) is a problem."""
    assert load_yaml(tmp_path) == (None, [Problem(str(tmp_path), 1, "cannot read: Is a directory")])


def test_problems_error_lists_every_problem_one_per_line() -> None:
    """ProblemsError keeps the problems and its text is one FILE:LINE: message per line."""
    problems = [Problem("a.yaml", 3, "first"), Problem("b.yaml", 1, "second")]
    error = ProblemsError(problems)
    assert error.problems == problems
    assert str(error) == "a.yaml:3: first\nb.yaml:1: second"
