"""Rule files and the rules directory: reading them safely, and reloading them (`RuleBook`).

Rule files hold one rule or a `rules:` list (parsed by `agent.rules.rule`); a directory's
`*.yaml` and `*.yml` files are loaded in sorted order. A file with any problem loads no rule;
`RuleBook` then keeps that file's previous version in force, and the other files load normally.

A rule file is limited in size (MAX_RULE_FILE_BYTES, checked before it is read) and in what its
YAML may cost (see `agent.config.yamlfile`), so one planted file cannot exhaust memory or time; a
reload's scan and parse can run in a worker thread (`RuleBook.stage`) while only the swap of the
rules in force (`RuleBook.publish`) runs where the pipeline reads them.
"""

from __future__ import annotations

import hashlib
import math
import os
import stat
import time
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from agent.config.yamlfile import Problem, parse_yaml
from agent.rules.rule import Rule, parse_rules

_MiB: Final = 1024 * 1024
# 1,000 rules of ~200 bytes are 0.2 MiB; a file past this limit is refused before it is read.
# Parsing costs ~3 s of CPU per MiB: the limit also bounds how long one reload can take.
MAX_RULE_FILE_BYTES: Final = 1 * _MiB


def _frozen(names: Collection[str] | None) -> frozenset[str] | None:
    return frozenset(names) if names is not None else None


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


def read_bounded(path: Path, limit: int) -> bytes | None:
    """At most `limit + 1` bytes of the regular file at `path` (more than `limit`: too big), or
    None when it is not a regular file. Raises OSError.

    Opened without blocking: a FIFO swapped in after the stat would hang open(2) otherwise.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    with open(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return f.read(limit + 1)


def is_rule_file_name(name: str) -> bool:
    """*.yaml and *.yml; not hidden files (.x.yaml, editors' .#x.yaml locks), not backups (x~)."""
    return not name.startswith(".") and not name.endswith("~") and name.endswith((".yaml", ".yml"))


@dataclass(slots=True)
class _Loaded:
    """One parse of one file's content."""

    file: str
    rules: tuple[Rule, ...]
    problems: list[Problem]
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
        content = read_bounded(path, MAX_RULE_FILE_BYTES)
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
    rules, loaded.problems = parse_rules(
        data, file, path.stem, source_names=source_names, report_names=report_names
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
                    r.name_line,
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
                taken[r.name] = f"{r.file}:{r.name_line}"
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
