"""Filter rules: what the operator wrote in `rules_dir`, validated once and compiled to closures.

A rule is a name, where it applies (`sources:`, `reports:`), a condition (`match:`) and an
optional time window (`when:`); `agent.match` compiles the last two. Rule files hold one rule or
a `rules:` list; a directory's files are loaded in sorted order and reloaded by `RuleBook`.

Every mistake is a `Problem` with the line of the offending key or item. A file with any problem
loads no rule; `RuleBook` then keeps that file's previous version in force.

A rule file is limited in size (MAX_RULE_FILE_BYTES, checked before it is read) and in what its
YAML may cost (see `agent.yamlfile`), so one planted file cannot exhaust memory or time; a
reload's scan and parse can run in a worker thread (`RuleBook.stage`) while only the swap of the
rules in force (`RuleBook.publish`) runs where the pipeline reads them.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import stat
import time
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from agent.config.yamlfile import Map, Problem, Seq, parse_yaml
from agent.rules.match import Compiler, Predicate, TimeTest, compile_when, describe, suggest
from agent.rules.routes import NOTHING_LEFT, Key, residual, rule_key


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
    key: Key | None = None  # the strings one of which it requires (see agent.routes), if any
    # What a candidate found through `key` must still pass: `match` without the condition the
    # key stands for; None when that was all of it. Used only with a key.
    residual: Predicate | None = None

    @property
    def test(self) -> Predicate | None:
        """What the router's candidate must pass: the residual if keyed, else the match."""
        return self.residual if self.key is not None else self.match


_MiB: Final = 1024 * 1024
# 1,000 rules of ~200 bytes are 0.2 MiB; a file past this limit is refused before it is read.
# Parsing costs ~3 s of CPU per MiB: the limit also bounds how long one reload can take.
MAX_RULE_FILE_BYTES: Final = 1 * _MiB

RULE_KEYS: Final = ("name", "description", "enabled", "sources", "reports", "match", "when")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")  # fullmatch: `$` allows a final newline
_NAME_RULE = "may use only letters, digits, '.', '_' and '-' (and start with a letter or digit)"


# --- rules and rule files ----------------------------------------------------------------------


def _names(c: Compiler, m: Map, key: str, known: frozenset[str] | None) -> frozenset[str] | None:
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
            c.problem(entry_line, f"{key} must list {what} names, not {describe(entry)}")
        elif known is not None and entry not in known:
            listed = ", ".join(sorted(known)) if known else f"none: the configuration has no {key}"
            c.problem(
                entry_line,
                f"unknown {what} {entry!r}{suggest(entry, known)}; the configured {key} are: {listed}",
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
    c = Compiler(file, problems)
    before = len(problems)
    for key in m:
        if key not in RULE_KEYS:
            c.problem(
                m.line_of(key),
                f"unknown key {key!r} in a rule{suggest(key, RULE_KEYS)}; known keys: {', '.join(RULE_KEYS)}",
            )
    name, name_line = default_name, m.line
    if "name" in m:
        value, name_line = m["name"], m.line_of("name")
        if isinstance(value, str | int) and not isinstance(value, bool):
            name = str(value)
            if not _NAME.fullmatch(name):
                c.problem(name_line, f"rule name {name!r} {_NAME_RULE}")
        else:
            c.problem(name_line, f"name must be a string, not {describe(value)}")
    elif name is None:
        c.problem(
            m.line, "this file holds several rules, so each needs a `name:` (unique across files)"
        )
    elif not _NAME.fullmatch(name):
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
            m.line_of("description"), f"description must be text, not {describe(description)}"
        )
    enabled = m.get("enabled", True)
    if not isinstance(enabled, bool):
        c.problem(m.line_of("enabled"), f"enabled must be true or false, not {describe(enabled)}")
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
        when = compile_when(c, m["when"], m.line_of("when"))
    if len(problems) > before or match is None or name is None:
        return None
    keyed_by = rule_key(m["match"])
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
        key=keyed_by,
        residual=_residual(file, m, keyed_by, match),
    )
    return rule, name_line


def _residual(file: str, m: Map, key: Key | None, match: Predicate) -> Predicate | None:
    if key is None:
        return None
    rest = residual(m["match"], key)
    if rest is NOTHING_LEFT:
        return None
    if rest is None:
        return match
    problems: list[Problem] = []
    test = Compiler(file, problems).condition(rest, m.line_of("match"), "match")
    return test if test is not None and not problems else match  # a part of a valid condition


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
        return [], [Problem(file, line, f"a rule file must hold {what}, not {describe(data)}")], {}
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
                    f"rules must be a list of rules, not {describe(items)}",
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
                    f"rule {index + 1} must be a mapping with at least `match:`, not {describe(item)}",
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
    loaded = _load_guarded(path, None, None, _frozen(source_names), _frozen(report_names))
    if loaded is None:
        return [], [Problem(str(path), 1, "cannot read: not a regular file")]
    return list(loaded.rules), loaded.problems


def _too_big(file: str, size: int | None) -> Problem:
    limit = MAX_RULE_FILE_BYTES // _MiB
    # Rounded up, so that a file just over the limit does not read as the limit itself.
    what = f"{math.ceil(size * 10 / _MiB) / 10} MiB" if size is not None else f"over {limit} MiB"
    return Problem(
        file,
        1,
        f"the rule file is {what}; the limit is {limit} MiB: split it into several files "
        "in the rules directory",
    )


def _read_bounded(path: Path, limit: int) -> bytes | None:
    """At most `limit + 1` bytes of the regular file at `path` (more than `limit`: too big), or
    None when it is not a regular file. Raises OSError.

    Opened without blocking: a FIFO swapped in after the stat would hang open(2) otherwise.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    with open(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return f.read(limit + 1)


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
    if before.st_size > MAX_RULE_FILE_BYTES:
        return _Loaded(file, (), [_too_big(file, before.st_size)], stat_key=key)
    try:
        content = _read_bounded(path, MAX_RULE_FILE_BYTES)
        # A file being written while we read, or just written, is read again next time.
        stable = _stat_key(os.stat(path)) == key and time.time_ns() - before.st_mtime_ns > _RACY_NS
    except FileNotFoundError:
        return None
    except OSError as exc:
        return _Loaded(file, (), [Problem(file, 1, f"cannot read: {exc.strerror or exc}")])
    if content is None:
        return None
    if len(content) > MAX_RULE_FILE_BYTES:  # it grew after the stat
        return _Loaded(file, (), [_too_big(file, None)])
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


def _load_guarded(
    path: Path,
    cached: _Loaded | None,
    in_force: _Loaded | None,
    source_names: frozenset[str] | None,
    report_names: frozenset[str] | None,
) -> _Loaded | None:
    """`_load_file`, where an unexpected exception fails this file alone: its previous version
    stays in force and the other files load, instead of the whole reload failing."""
    try:
        return _load_file(path, cached, in_force, source_names, report_names)
    except Exception as exc:  # defence in depth: the limits should leave nothing to catch here
        message = (
            f"this file could not be loaded ({type(exc).__name__}: {exc}); its previous "
            "version stays in force; please report this as a bug in tailmail"
        )
        return _Loaded(str(path), (), [Problem(str(path), 1, message)])


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
        current = _load_guarded(
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


@dataclass(frozen=True, slots=True)
class Staged:
    """A reload prepared by `RuleBook.stage`, for `RuleBook.publish` to put in force.

    None for `loaded` and `in_force`: the directory could not be listed, nothing changes.
    """

    loaded: dict[str, _Loaded] | None
    in_force: dict[str, _Loaded] | None
    problems: list[Problem]


class RuleBook:
    """Owns the rules loaded from rules_dir across reloads.

    The pipeline reads `rules` and `version` on the event loop's thread; `publish` is the only
    writer and runs there too. `stage`, the slow part (listing, reading, parsing, compiling),
    only reads the book, so it may run in a worker thread, one stage at a time.
    """

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
        return self.publish(self.stage())

    def stage(self) -> Staged:
        """Scan, read, parse and compile what changed, without changing the rules in force."""
        try:
            loaded = _scan(self._dir, self._loaded, self._in_force, self._sources, self._reports)
        except (FileNotFoundError, NotADirectoryError):
            return Staged({}, {}, [_missing_dir(self._dir)])
        except OSError as exc:
            problem = Problem(
                str(self._dir),
                1,
                f"cannot list the rules directory: {exc.strerror or exc}; "
                "the rules in force stay as they were",
            )
            return Staged(None, None, [problem])
        in_force, problems = _resolve(loaded, self._in_force)
        return Staged(loaded, in_force, problems)

    def publish(self, staged: Staged) -> list[Problem]:
        """Put a staged reload in force at once; return its problems."""
        if staged.loaded is not None and staged.in_force is not None:
            self._loaded = staged.loaded
            self._publish(staged.in_force)
        return staged.problems

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
