"""Regular expressions and globs as string tests, both run by RE2 in time linear in the input.

RE2 has no lookaround and no backreferences, which is what makes it linear: a pattern it cannot
compile raises `re2.error` (or UnicodeError), which the parser reports with `error_text`.
"""

from __future__ import annotations

from typing import Any, Final

import re2

from agent.rules.values import ValueTest, equal_test

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


FAST_RE2: Final = _fast_re2_available()


def regex_test(pattern: str, whole: bool, fast: bool = FAST_RE2) -> ValueTest:
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


def error_text(exc: Exception) -> str:
    """What RE2 said about a pattern it could not compile, as text."""
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


def glob_test(pattern: str) -> ValueTest:
    """A string test: the value matches the shell-style `pattern` whole (see `glob_to_re2`).

    Globs made of literals and `*` only are the common case; they need no regex.
    """
    if "?" not in pattern and "[" not in pattern:
        parts = pattern.split("*")
        if len(parts) == 1:
            return equal_test(pattern)
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
    return regex_test(glob_to_re2(pattern), whole=True)
