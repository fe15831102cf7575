"""Rule files built to cost too much: deep nesting, alias bombs, huge numbers, oversized files.

Each comes with the FILE:LINE message tailmail gives for it (the file's name filled in).
"""

from __future__ import annotations

from dataclasses import dataclass

MiB = 1024 * 1024


def billion_laughs(levels: int = 9, width: int = 9) -> str:
    """`levels` anchors, each a list of `width` aliases of the one before (nine of nine: 9**9
    values from 400 bytes), and a rule whose `match:` uses the last."""
    names = "abcdefghijklmnop"
    lines = [f"{names[0]}: &{names[0]} [" + ", ".join(["x"] * width) + "]"]
    for level in range(1, levels):
        below = names[level - 1]
        lines.append(f"{names[level]}: &{names[level]} [" + ", ".join([f"*{below}"] * width) + "]")
    lines.append(f"match: {{x: {{in: *{names[levels - 1]}}}}}")
    return "\n".join(lines) + "\n"


def nested_all(levels: int) -> str:
    """A rule whose condition is `levels` nested `all:` lists of one item each, in block style."""
    lines, indent = ["match:"], "  "
    for _ in range(levels):
        lines += [f"{indent}all:", f"{indent}  -"]
        indent += "    "
    return "\n".join([*lines, f"{indent}level: error"]) + "\n"


EXPANSION = (
    "the document stands for more than 200,000 values (each alias counts as all it repeats); "
    "use fewer aliases, or split the rules into several files"
)
DEPTH = (
    "mappings and lists nest more than 64 levels deep here; flatten them "
    "(one all: or any: list holds any number of conditions)"
)
TOO_LONG = (
    "invalid value: the number {}… is too long: a number has at most 4300 digits; "
    "quote it if it is text"
)
TOO_BIG = (
    "the rule file is {} MiB; the limit is 1 MiB: split it into several files in the rules "
    "directory"
)


@dataclass(frozen=True)
class Hostile:
    text: str
    line: int
    message: str


OVERSIZED = "# " + "x" * 77 + "\n"  # 80 bytes a line

HOSTILE = {
    # match (1), then per level all's list and its item: the 31st level's list is the 64th node.
    "deep": Hostile(nested_all(300), 64, DEPTH),
    # Level f stands for 9**6 values: its first alias crosses the limit.
    "billion-laughs": Hostile(billion_laughs(), 6, EXPANSION),
    "huge-number": Hostile(
        "name: n\nmatch: {n: {gt: " + "1" * 5000 + "}}\n", 2, TOO_LONG.format("1" * 12)
    ),
    # 14,000 lines of 80 bytes: 1.07 MiB, shown rounded up.
    "oversized": Hostile("match: {level: error}\n" + OVERSIZED * 14_000, 1, TOO_BIG.format("1.1")),
}
