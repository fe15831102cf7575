"""The operator's configuration, validated once at the edge into frozen objects.

Every mistake becomes a `Problem` with the file and line where it was written; `load_config`
collects them all and raises `ProblemsError`, so `tailmail check` can show every problem at once.
"""

from __future__ import annotations

import math
import os
import re
import string
from collections.abc import Callable, Mapping
from datetime import time
from pathlib import Path
from typing import Any, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from agent.config.model import (
    DEFAULT_CONFIG,
    DEFAULT_SUBJECT,
    SUBJECT_FIELDS,
    Config,
    LogConfig,
    MiB,
    ReportConfig,
    SmtpConfig,
    SourceConfig,
)
from agent.config.yamlfile import Map, Problem, ProblemsError, Seq, load_yaml
from agent.core.periods import system_timezone


def config_path(arg: str | None) -> Path:
    """-c CONFIG, else $TAILMAIL_CONFIG, else /etc/tailmail/config.yaml."""
    if arg:
        return Path(arg)
    env = os.environ.get("TAILMAIL_CONFIG")
    return Path(env) if env else DEFAULT_CONFIG


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {
    "b": 1, "kb": 1000, "mb": 1000**2, "gb": 1000**3, "tb": 1000**4,
    "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4,
}  # fmt: skip
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


# Sanity caps of the parsers: a larger number is a slip (or hostile), never a setting, and
# refusing it here keeps inf and overflow out of the arithmetic that uses the value later. Each
# key has its own, tighter bound on top (see `_Reader.bounded`).
MAX_SIZE = 1024**4  # 1 TiB
MAX_DURATION = 10 * 365 * 86400.0  # 10 years

# Each key's bounds: beyond them a value is a slip, never a setting anyone meets in earnest.
MAX_LINE_BYTES = 256 * MiB  # a line up to max_line_bytes is held whole in memory while read
MAX_ATTACHMENT_BYTES = 1024 * MiB  # far past what any mail server accepts in one message
MAX_KEEP = 10_000  # rotated files: 27 years of daily reports
MAX_PER_HOUR = 100_000
MAX_TIMEOUT = 3600.0  # an SMTP server silent for an hour is not coming back in this session
MAX_RETRY_FOR = 365 * 86400.0  # a report still undelivered after a year is failed
MAX_RETRY_DELAY = 7 * 86400.0  # retry_initial and retry_max: the wait between two attempts


def parse_size(value: object) -> int:
    """`10485760`, `10MiB`, `512KB` -> bytes."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as 10MiB")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a size cannot be negative")
        number: float = value
    else:
        m = _SIZE.match(str(value))
        if not m:
            raise ValueError(f"{value!r} is not a size; write e.g. 1048576, 512KiB or 10MiB")
        # float() of a long row of digits is inf, and int(inf) raises: compare first.
        number = float(m.group(1)) * _SIZE_UNITS[(m.group(2) or "b").lower()]
    if not number <= MAX_SIZE:
        raise ValueError("that is more than 1 TiB, too large for any size here; write e.g. 10MiB")
    return int(number)


def parse_duration(value: object) -> float:
    """`90`, `90s`, `15m`, `5d` -> seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 90s, 15m or 5d")
    if isinstance(value, int | float):
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{value!r} is not a duration; write e.g. 90s, 15m, 2h or 5d")
        if value < 0:
            raise ValueError("a duration cannot be negative")
        number: float = value
    else:
        m = _DURATION.match(str(value))
        if not m:
            raise ValueError(f"{value!r} is not a duration; write e.g. 90s, 15m, 2h or 5d")
        number = float(m.group(1)) * _DURATION_UNITS[m.group(2) or "s"]
    # Compared before float(): float() of a long int raises OverflowError.
    if not number <= MAX_DURATION:
        raise ValueError("that is more than 10 years, too long for any duration here")
    return float(number)


_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_env(text: str, env: Mapping[str, str]) -> str:
    """Replace `${NAME}`; a missing variable raises KeyError(NAME).

    `${NAME:-default}` takes `default` when NAME is unset or empty, as in the shell. It lets one
    config serve the service and an operator's shell: `${CREDENTIALS_DIRECTORY:-/etc/tailmail}`
    is systemd's credential folder under the unit and the file it was loaded from elsewhere.
    """

    def sub(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(2)
        if default is not None:
            return env.get(name) or default
        if name not in env:
            raise KeyError(name)
        return env[name]

    return _ENV_REF.sub(sub, text)


_ADDR = re.compile(r"^[^@\s<>()\[\],;:\"]+@[A-Za-z0-9.-]+$")
_NAME_ADDR = re.compile(r"^(.*?)\s*<([^<>]*)>$")


def check_address(value: str) -> str | None:
    """Return what is wrong with an address (`a@b` or `Name <a@b>`), or None."""
    if any(c in value for c in "\r\n\0"):
        return "contains a line break or NUL, which could inject mail headers"
    m = _NAME_ADDR.match(value.strip())
    addr = m.group(2).strip() if m else value.strip()
    name = m.group(1).strip() if m else ""
    quoted = len(name) >= 2 and name.startswith('"') and name.endswith('"')
    if name and not quoted and any(c in name for c in ',;:<>@"()[]\\'):
        # Unquoted, "Ops, Team <ops@example.com>" would become two recipients in a To: header.
        return f"display name {name!r} has special characters; put it in double quotes: '\"{name}\" <{addr}>'"
    if not _ADDR.match(addr):
        return f"{value!r} is not an email address"
    return None


def has_header_breaks(value: str) -> bool:
    return any(c in value for c in "\r\n\0")


T = TypeVar("T")


class _Reader:
    """Reads one mapping of the config, recording problems instead of stopping at the first."""

    def __init__(self, file: str, problems: list[Problem], env: Mapping[str, str]) -> None:
        self.file = file
        self.problems = problems
        self.env = env

    def problem(self, line: int, message: str) -> None:
        self.problems.append(Problem(self.file, line, message))

    def mapping(self, value: Any, line: int, what: str) -> Map | None:
        if not isinstance(value, Map):
            self.problem(line, f"{what} must be a mapping of keys to values")
            return None
        return value

    def unknown(self, m: Map, allowed: set[str], where: str) -> None:
        for key in m:
            if key not in allowed:
                hint = ", ".join(sorted(allowed))
                self.problem(m.line_of(key), f"unknown key {key!r} in {where}; known keys: {hint}")

    def string(
        self, m: Map, key: str, default: str | None = None, required: bool = False
    ) -> str | None:
        if key not in m or m[key] is None:
            if required:
                self.problem(m.line, f"missing required key {key!r}")
            return default
        value = m[key]
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            self.problem(m.line_of(key), f"{key} must be a string")
            return default
        text = str(value)
        expanded = self.expand(text, m.line_of(key), key)
        return default if expanded is None else expanded

    def expand(self, text: str, line: int, what: str) -> str | None:
        """`${NAME}` replaced from the environment; None (and a problem) if one is not set."""
        try:
            return expand_env(text, self.env)
        except KeyError as exc:
            self.problem(line, f"{what}: environment variable {exc.args[0]} is not set")
            return None

    def convert(self, m: Map, key: str, parse: Callable[[object], T], default: T) -> T:
        if key not in m or m[key] is None:
            return default
        value = m[key]
        if isinstance(value, str):
            value = self.expand(value, m.line_of(key), key)
            if value is None:
                return default
        try:
            return parse(value)
        except (ValueError, TypeError, ArithmeticError) as exc:
            self.problem(m.line_of(key), f"{key}: {exc}")
            return default

    def at_most(self, m: Map, key: str, value: float, limit: float, shown: str) -> bool:
        """Whether `value` is within `limit`; if not, a problem that says so (as `shown`)."""
        if value <= limit:
            return True
        self.problem(m.line_of(key), f"{key} must be at most {shown}")
        return False

    def boolean(self, m: Map, key: str, default: bool) -> bool:
        if key not in m or m[key] is None:
            return default
        if not isinstance(m[key], bool):
            self.problem(m.line_of(key), f"{key} must be true or false")
            return default
        return bool(m[key])

    def integer(self, m: Map, key: str, default: int, minimum: int, maximum: int) -> int:
        if key not in m or m[key] is None:
            return default
        value = m[key]
        if isinstance(value, str) and "${" in value:  # `port: ${SMTP_PORT}`
            text = self.expand(value, m.line_of(key), key)
            if text is None:
                return default
            # At most 18 digits: int() refuses (ValueError) more than 4,300, and no key takes more.
            value = int(text) if re.fullmatch(r"\s*-?\d{1,18}\s*", text) else value
        if isinstance(value, bool) or not isinstance(value, int):
            self.problem(m.line_of(key), f"{key} must be a whole number")
            return default
        if value < minimum:
            self.problem(m.line_of(key), f"{key} must be at least {minimum}")
            return default
        if value > maximum:
            self.problem(m.line_of(key), f"{key} must be at most {maximum}")
            return default
        return value

    def choice(self, m: Map, key: str, choices: tuple[str, ...], default: str) -> str:
        value = self.string(m, key, default)
        if value not in choices:
            self.problem(
                m.line_of(key), f"{key} must be one of {', '.join(choices)}, not {value!r}"
            )
            return default
        return value

    def path(
        self, m: Map, key: str, base: Path, default: str | None = None, required: bool = False
    ) -> Path | None:
        text = self.string(m, key, default, required)
        if text is None:
            return None
        # normpath: `a/../daily.jsonl` and `daily.jsonl` must compare equal (one store, one owner).
        return Path(os.path.normpath((base / Path(text).expanduser()).absolute()))

    def string_list(self, m: Map, key: str) -> list[tuple[str, int]]:
        """A list of strings (a single string is a list of one), with each item's line."""
        if key not in m or m[key] is None:
            return []
        value = m[key]
        if isinstance(value, str):
            items: list[tuple[Any, int]] = [(value, m.line_of(key))]
        elif isinstance(value, Seq):
            items = [(v, value.line_of(i)) for i, v in enumerate(value)]
        else:
            self.problem(m.line_of(key), f"{key} must be a list of strings")
            return []
        result = []
        for item, line in items:
            if not isinstance(item, str):
                self.problem(line, f"{key}: every item must be a string, not {item!r}")
                continue
            expanded = self.expand(item, line, key)
            if expanded is not None:
                result.append((expanded, line))
        return result


def _parse_rotate_at(value: object) -> time:
    if isinstance(value, int) and not isinstance(value, bool):
        raise ValueError('must be a quoted local time "HH:MM"')
    m = re.match(r"^(\d{1,2}):(\d{2})$", str(value).strip())
    if not m or int(m.group(1)) > 23 or int(m.group(2)) > 59:
        raise ValueError(f'{value!r} is not a time of day; write "HH:MM", e.g. "00:00"')
    return time(int(m.group(1)), int(m.group(2)))


def parse_timezone(value: object) -> ZoneInfo:
    try:
        return ZoneInfo(str(value))
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"unknown time zone {value!r}; use an IANA name such as Europe/Berlin"
        ) from None


TOP_KEYS = {"state_dir", "rules_dir", "sources", "reports", "smtp", "log"}
SOURCE_KEYS = {"name", "path", "start_at", "time_field", "max_line_bytes"}
REPORT_KEYS = {
    "name", "store", "rotate_at", "timezone", "keep", "compress", "to", "cc", "subject",
    "send_empty", "attach", "max_attachment_bytes", "top_fields",
}  # fmt: skip
SMTP_KEYS = {
    "host", "port", "security", "verify_tls", "ca_file", "username", "password",
    "password_file", "from", "timeout", "max_per_hour", "retry_for", "retry_initial",
    "retry_max", "allow_plaintext_auth",
}  # fmt: skip
LOG_KEYS = {"level", "format"}


def load_config(path: Path, env: Mapping[str, str] | None = None) -> Config:
    """Load and validate the config file; raise ProblemsError listing every problem."""
    env = env if env is not None else os.environ
    file = str(path)
    data, problems = load_yaml(path)
    if problems:
        raise ProblemsError(problems)
    r = _Reader(file, problems, env)
    top = r.mapping(data, 1, "the configuration")
    if top is None:
        raise ProblemsError(problems)
    r.unknown(top, TOP_KEYS, "the configuration")
    base = path.absolute().parent

    state_dir = r.path(top, "state_dir", base, "/var/lib/tailmail")
    rules_dir = r.path(top, "rules_dir", base, "/etc/tailmail/rules.d")
    sources = _sources(r, top, base)
    reports = _reports(r, top, base)
    smtp = _smtp(r, top, base)
    log = _log(r, top)
    if problems or smtp is None or state_dir is None or rules_dir is None:
        raise ProblemsError(problems)
    return Config(
        path=path.absolute(),
        state_dir=state_dir,
        rules_dir=rules_dir,
        sources=tuple(sources),
        reports=tuple(reports),
        smtp=smtp,
        log=log,
        state_dir_line=top.line_of("state_dir"),
    )


def _named_items(r: _Reader, top: Map, key: str) -> list[tuple[Map, int]]:
    value = top.get(key)
    if not isinstance(value, Seq) or not value:
        r.problem(top.line_of(key), f"{key} must be a non-empty list")
        return []
    items = []
    for i, item in enumerate(value):
        m = r.mapping(item, value.line_of(i), f"each item of {key}")
        if m is not None:
            items.append((m, value.line_of(i)))
    return items


def _unique_name(r: _Reader, m: Map, seen: dict[str, int], what: str) -> str | None:
    name = r.string(m, "name", required=True)
    if name is None:
        return None
    # fullmatch: a `$` would also match before a final newline, and `"daily\n"` would pass.
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        r.problem(
            m.line_of("name"),
            f"{what} name {name!r} may use only letters, digits, '.', '_' and '-'",
        )
        return None
    if name in seen:
        r.problem(m.line_of("name"), f"duplicate {what} name {name!r} (first at line {seen[name]})")
        return None
    seen[name] = m.line_of("name")
    return name


def _sources(r: _Reader, top: Map, base: Path) -> list[SourceConfig]:
    seen: dict[str, int] = {}
    result = []
    for m, _ in _named_items(r, top, "sources"):
        r.unknown(m, SOURCE_KEYS, "a source")
        name = _unique_name(r, m, seen, "source")
        path = r.path(m, "path", base, required=True)
        start_at = r.choice(m, "start_at", ("end", "beginning"), "end")
        time_field = r.string(m, "time_field")
        max_line = r.convert(m, "max_line_bytes", parse_size, MiB)
        if max_line < 64:
            r.problem(m.line_of("max_line_bytes"), "max_line_bytes must be at least 64")
        r.at_most(m, "max_line_bytes", max_line, MAX_LINE_BYTES, "256MiB")
        if name and path:
            result.append(SourceConfig(name, str(path), start_at, time_field, max_line))  # type: ignore[arg-type]
    return result


def _reports(r: _Reader, top: Map, base: Path) -> list[ReportConfig]:
    seen: dict[str, int] = {}
    stores: dict[Path, int] = {}
    result = []
    for m, line in _named_items(r, top, "reports"):
        r.unknown(m, REPORT_KEYS, "a report")
        name = _unique_name(r, m, seen, "report")
        store = r.path(m, "store", base, required=True)
        if store is not None:
            if store in stores:
                r.problem(
                    m.line_of("store"),
                    f"store {store} is already used by another report (line {stores[store]})",
                )
            stores[store] = m.line_of("store")
        before = len(r.problems)
        to = _addresses(r, m, "to")
        if "to" in m and not to and len(r.problems) == before:
            r.problem(m.line_of("to"), "to must name at least one recipient")
        elif "to" not in m:
            r.problem(line, "missing required key 'to' (the report's recipients)")
        cc = _addresses(r, m, "cc")
        subject = r.string(m, "subject", DEFAULT_SUBJECT) or DEFAULT_SUBJECT
        _check_subject(r, m.line_of("subject"), subject)
        top_fields = r.string_list(m, "top_fields") if "top_fields" in m else None
        max_attachment = r.convert(m, "max_attachment_bytes", parse_size, 10 * MiB)
        r.at_most(m, "max_attachment_bytes", max_attachment, MAX_ATTACHMENT_BYTES, "1GiB")
        report = ReportConfig(
            name=name or "?",
            store=store or Path("/"),
            to=tuple(to),
            rotate_at=r.convert(m, "rotate_at", _parse_rotate_at, time(0, 0)),
            timezone=r.convert(m, "timezone", parse_timezone, system_timezone()),
            keep=r.integer(m, "keep", 30, minimum=1, maximum=MAX_KEEP),
            compress=r.choice(m, "compress", ("none", "gzip"), "gzip"),  # type: ignore[arg-type]
            cc=tuple(cc),
            subject=subject,
            send_empty=r.boolean(m, "send_empty", True),
            attach=r.boolean(m, "attach", True),
            max_attachment_bytes=max_attachment,
            top_fields=tuple(f for f, _ in top_fields) if top_fields is not None else None,
            store_line=m.line_of("store"),
        )
        if name and store:
            result.append(report)
    return result


def _addresses(r: _Reader, m: Map, key: str) -> list[str]:
    result = []
    for addr, line in r.string_list(m, key):
        wrong = check_address(addr)
        if wrong:
            r.problem(line, f"{key}: {wrong}")
        else:
            result.append(addr.strip())
    return result


def _check_subject(r: _Reader, line: int, subject: str) -> None:
    if has_header_breaks(subject):
        r.problem(line, "subject contains a line break or NUL, which could inject mail headers")
        return
    try:
        fields = [
            (f, spec, conv)
            for _, f, spec, conv in string.Formatter().parse(subject)
            if f is not None
        ]
    except ValueError as exc:
        r.problem(line, f"subject: {exc}; write {{{{ and }}}} for literal braces")
        return
    for name, spec, conversion in fields:
        if spec or conversion:
            r.problem(line, f"subject: write {{{name}}} without a format or conversion")
            continue
        if name not in SUBJECT_FIELDS:
            known = ", ".join("{" + f + "}" for f in sorted(SUBJECT_FIELDS))
            r.problem(line, f"subject: unknown placeholder {{{name}}}; known: {known}")


def _smtp(r: _Reader, top: Map, base: Path) -> SmtpConfig | None:
    if "smtp" not in top:
        r.problem(top.line, "missing required section 'smtp'")
        return None
    m = r.mapping(top["smtp"], top.line_of("smtp"), "smtp")
    if m is None:
        return None
    r.unknown(m, SMTP_KEYS, "smtp")
    host = r.string(m, "host", required=True)
    from_addr = r.string(m, "from", required=True)
    if from_addr is not None:
        wrong = check_address(from_addr)
        if wrong:
            r.problem(m.line_of("from"), f"from: {wrong}")
    security = r.choice(m, "security", ("starttls", "ssl", "none"), "starttls")
    default_port = {"starttls": 587, "ssl": 465, "none": 25}[security]
    port = r.integer(m, "port", default_port, minimum=1, maximum=65535)
    ca_file = r.path(m, "ca_file", base)
    if ca_file is not None and not ca_file.is_file():
        r.problem(m.line_of("ca_file"), f"ca_file {ca_file} does not exist or is not a file")
    username = r.string(m, "username")
    password = r.string(m, "password")
    if "password_file" in m:
        if "password" in m:
            r.problem(m.line_of("password_file"), "give either password or password_file, not both")
        pw_path = r.path(m, "password_file", base)
        if pw_path is not None:
            try:
                password = pw_path.read_text(encoding="utf-8").rstrip("\r\n")
            except UnicodeDecodeError:
                r.problem(m.line_of("password_file"), f"password_file {pw_path} is not UTF-8 text")
            except OSError as exc:
                r.problem(
                    m.line_of("password_file"), f"password_file {pw_path}: {exc.strerror or exc}"
                )
    if password is not None and not username and "password" in m:
        r.problem(
            m.line_of("password"),
            "password is set but username is not; without a username tailmail does not log in",
        )
    if (
        username
        and password is None
        and not any(p.line == m.line_of("password") for p in r.problems)
    ):
        r.problem(
            m.line_of("username"), "username is set but neither password nor password_file is"
        )
    if username is not None and has_header_breaks(username):
        r.problem(m.line_of("username"), "username contains a line break or NUL")
    allow_plain = r.boolean(m, "allow_plaintext_auth", False)
    if username and security == "none" and not allow_plain:
        r.problem(
            m.line_of("security"),
            "security: none would send the password unencrypted; use starttls or ssl, "
            "or set allow_plaintext_auth: true if you really mean it",
        )
    timeout = r.convert(m, "timeout", parse_duration, 30.0)
    if timeout <= 0:
        r.problem(m.line_of("timeout"), "timeout must be more than 0")
    r.at_most(m, "timeout", timeout, MAX_TIMEOUT, "1h")
    verify_tls = r.boolean(m, "verify_tls", True)
    max_per_hour = r.integer(m, "max_per_hour", 100, minimum=1, maximum=MAX_PER_HOUR)
    retry_for = r.convert(m, "retry_for", parse_duration, 5 * 86400.0)
    r.at_most(m, "retry_for", retry_for, MAX_RETRY_FOR, "365d")
    retry_initial = r.convert(m, "retry_initial", parse_duration, 300.0)
    r.at_most(m, "retry_initial", retry_initial, MAX_RETRY_DELAY, "7d")
    retry_max = r.convert(m, "retry_max", parse_duration, 3600.0)
    r.at_most(m, "retry_max", retry_max, MAX_RETRY_DELAY, "7d")
    if host is None or from_addr is None:
        return None
    return SmtpConfig(
        host=host,
        from_addr=from_addr,
        port=port,
        security=security,  # type: ignore[arg-type]
        verify_tls=verify_tls,
        ca_file=ca_file,
        username=username or None,
        password=password,
        timeout=timeout,
        max_per_hour=max_per_hour,
        retry_for=retry_for,
        retry_initial=retry_initial,
        retry_max=retry_max,
        allow_plaintext_auth=allow_plain,
    )


def _log(r: _Reader, top: Map) -> LogConfig:
    if "log" not in top or top["log"] is None:
        return LogConfig()
    m = r.mapping(top["log"], top.line_of("log"), "log")
    if m is None:
        return LogConfig()
    r.unknown(m, LOG_KEYS, "log")
    return LogConfig(
        level=r.choice(m, "level", ("debug", "info", "warning", "error"), "info"),  # type: ignore[arg-type]
        format=r.choice(m, "format", ("auto", "json", "console"), "auto"),  # type: ignore[arg-type]
    )
