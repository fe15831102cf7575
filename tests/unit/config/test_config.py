"""Configuration loading: typed values and defaults, and every mistake reported as FILE:LINE."""

from __future__ import annotations

import math
import re
from datetime import time
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

import agent.config as config_module
from agent.config.load import check_address, config_path, load_config, parse_duration, parse_size
from agent.config.model import DEFAULT_SUBJECT, MiB
from agent.config.yamlfile import ProblemsError
from agent.core.periods import system_timezone

REPO = Path(__file__).resolve().parents[3]
EXAMPLE = REPO / "config.example.yaml"

# The smallest valid configuration, in three blocks that cases replace or extend. Lines:
# 1 sources: / 2-3 the source / 4 reports: / 5-7 the report / 8 smtp: / 9-10 host and from.
SOURCE = "  - name: app\n    path: /var/log/app/events.json\n"
REPORT = "  - name: daily\n    store: daily.jsonl\n    to: [ops@example.com]\n"
SMTP = "  host: smtp.example.com\n  from: tailmail@example.com\n"

# In a case's text, `#!` marks the line where the problem must be reported.
MARK = "#!"


def config_text(
    *, sources: str = SOURCE, reports: str = REPORT, smtp: str = SMTP, top: str = "", end: str = ""
) -> str:
    return f"{top}sources:\n{sources}reports:\n{reports}smtp:\n{smtp}{end}"


def write(tmp_path: Path, text: str, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def problems_of(path: Path, env: dict[str, str] | None = None) -> list[str]:
    """The problems load_config reports, as the FILE:LINE: message lines `tailmail check` prints."""
    with pytest.raises(ProblemsError) as info:
        load_config(path, env=env or {})  # type: ignore[arg-type]
    assert str(info.value) == "\n".join(str(p) for p in info.value.problems)
    return [str(p) for p in info.value.problems]


def marked_line(text: str) -> int:
    lines = [n for n, line in enumerate(text.splitlines(), 1) if MARK in line]
    assert len(lines) == 1, "a case marks exactly one line"
    return lines[0]


def load(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> config_module.Config:
    return load_config(write(tmp_path, text), env=env or {})  # type: ignore[arg-type]


# --- a valid configuration ------------------------------------------------------------------

FULL = """\
state_dir: state                    # relative: against the config file's directory
rules_dir: /etc/tailmail/rules.d

sources:
  - name: app
    path: /var/log/app/events*.json
    start_at: beginning
    time_field: ts
    max_line_bytes: 64KiB
  - name: web
    path: logs/web.json

reports:
  - name: daily
    store: out/daily.jsonl
    rotate_at: "06:30"
    timezone: Europe/Berlin
    keep: 7
    compress: none
    to: [ops@example.com, "On Call <oncall@example.com>"]
    cc: ["${CC_ADDR}"]
    subject: "[{hostname}] ${ENVNAME}: {selected} of {read} on {date} ({report}, {skipped} skipped)"
    send_empty: false
    attach: false
    max_attachment_bytes: 10MiB
    top_fields: [event, user.name]
  - name: weekly
    store: /var/log/tailmail/weekly.jsonl
    to: boss@example.com

smtp:
  host: ${SMTP_HOST}
  security: ssl
  verify_tls: false
  ca_file: ca.pem
  username: tailmail@example.com
  password_file: secret/smtp-password
  from: Tailmail <tailmail@example.com>
  timeout: 90s
  max_per_hour: 20
  retry_for: 5d
  retry_initial: 15m
  retry_max: 2h
  allow_plaintext_auth: false

log:
  level: debug
  format: json
"""

FULL_ENV = {"SMTP_HOST": "mail.example.com", "CC_ADDR": "audit@example.com", "ENVNAME": "prod"}


def full_config(tmp_path: Path) -> config_module.Config:
    (tmp_path / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\n")
    (tmp_path / "secret").mkdir()
    (tmp_path / "secret" / "smtp-password").write_text("s3cret pass\n")
    return load(tmp_path, FULL, FULL_ENV)


def test_full_config_loads_into_typed_values(tmp_path: Path) -> None:
    """Every key of SPEC (and the extra ones) loads into the right typed value."""
    config = full_config(tmp_path)
    assert config.path == tmp_path / "config.yaml"
    assert config.state_dir == tmp_path / "state"
    assert config.rules_dir == Path("/etc/tailmail/rules.d")

    app, web = config.sources
    assert app == config_module.SourceConfig(
        name="app",
        path="/var/log/app/events*.json",
        start_at="beginning",
        time_field="ts",
        max_line_bytes=64 * 1024,
    )
    assert web == config_module.SourceConfig(name="web", path=str(tmp_path / "logs" / "web.json"))

    daily, weekly = config.reports
    assert daily == config_module.ReportConfig(
        name="daily",
        store=tmp_path / "out" / "daily.jsonl",
        to=("ops@example.com", "On Call <oncall@example.com>"),
        rotate_at=time(6, 30),
        timezone=ZoneInfo("Europe/Berlin"),
        keep=7,
        compress="none",
        cc=("audit@example.com",),
        subject="[{hostname}] prod: {selected} of {read} on {date} ({report}, {skipped} skipped)",
        send_empty=False,
        attach=False,
        max_attachment_bytes=10 * MiB,
        top_fields=("event", "user.name"),
    )
    assert weekly.to == ("boss@example.com",)  # a single string is a list of one
    assert config.report("weekly") is weekly

    assert config.smtp == config_module.SmtpConfig(
        host="mail.example.com",
        from_addr="Tailmail <tailmail@example.com>",
        port=465,
        security="ssl",
        verify_tls=False,
        ca_file=tmp_path / "ca.pem",
        username="tailmail@example.com",
        password="s3cret pass",
        timeout=90.0,
        max_per_hour=20,
        retry_for=5 * 86400.0,
        retry_initial=15 * 60.0,
        retry_max=2 * 3600.0,
        allow_plaintext_auth=False,
    )
    assert config.log == config_module.LogConfig(level="debug", format="json")


def test_password_never_appears_in_repr(tmp_path: Path) -> None:
    """repr() and str() of the config and its smtp section never show the password."""
    config = full_config(tmp_path)
    assert config.smtp.password == "s3cret pass"
    for text in (repr(config), str(config), repr(config.smtp), str(config.smtp)):
        assert "s3cret" not in text


def test_minimal_config_gets_the_documented_defaults(tmp_path: Path) -> None:
    """Keys left out take the defaults the example documents."""
    config = load(tmp_path, config_text())
    assert config.state_dir == Path("/var/lib/tailmail")
    assert config.rules_dir == Path("/etc/tailmail/rules.d")
    assert config.sources == (config_module.SourceConfig("app", "/var/log/app/events.json"),)
    (report,) = config.reports
    assert report.rotate_at == time(0, 0)
    assert report.timezone == system_timezone()
    assert (report.keep, report.compress, report.cc) == (30, "gzip", ())
    assert report.subject == DEFAULT_SUBJECT
    assert (report.send_empty, report.attach) == (True, True)
    assert report.max_attachment_bytes == 10 * MiB
    assert report.top_fields is None
    smtp = config.smtp
    assert (smtp.port, smtp.security, smtp.verify_tls, smtp.ca_file) == (
        587,
        "starttls",
        True,
        None,
    )
    assert (smtp.username, smtp.password) == (None, None)
    assert (smtp.timeout, smtp.max_per_hour) == (30.0, 100)
    assert (smtp.retry_for, smtp.retry_initial, smtp.retry_max) == (5 * 86400.0, 300.0, 3600.0)
    assert smtp.allow_plaintext_auth is False
    assert config.log == config_module.LogConfig(level="info", format="auto")


@pytest.mark.parametrize(("security", "port"), [("starttls", 587), ("ssl", 465), ("none", 25)])
def test_port_defaults_by_security(tmp_path: Path, security: str, port: int) -> None:
    """Without a port, starttls uses 587, ssl 465 and none 25."""
    config = load(tmp_path, config_text(smtp=SMTP + f"  security: {security}\n"))
    assert (config.smtp.security, config.smtp.port) == (security, port)


def test_explicit_port_wins_over_the_default(tmp_path: Path) -> None:
    """A port written in the config is used whatever the security."""
    config = load(tmp_path, config_text(smtp=SMTP + "  security: ssl\n  port: 2465\n"))
    assert config.smtp.port == 2465


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("06:30", time(6, 30)),
        ('"06:30"', time(6, 30)),
        ("6:05", time(6, 5)),
        ("'23:59'", time(23, 59)),
    ],
)
def test_rotate_at_quoted_or_not(tmp_path: Path, text: str, expected: time) -> None:
    """An unquoted 06:30 is the string "06:30" in YAML 1.2 (not 390, as YAML 1.1 would say), so it works like the quoted form."""
    reports = REPORT + f"    rotate_at: {text}\n"
    assert load(tmp_path, config_text(reports=reports)).reports[0].rotate_at == expected


def test_environment_variables_expand_everywhere(tmp_path: Path) -> None:
    """${NAME} is replaced in names, paths, addresses, sizes and durations, from the env argument only."""
    text = config_text(
        sources="  - name: ${SRC}\n    path: ${LOGDIR}/events.json\n",
        reports="  - name: daily\n    store: ${STORE}\n    to: ${TO}\n    max_attachment_bytes: ${MAX}\n",
        smtp=SMTP + "  retry_for: ${RETRY}\n",
    )
    env = {
        "SRC": "app",
        "LOGDIR": "/srv/logs",
        "STORE": "/srv/store/daily.jsonl",
        "TO": "ops@example.com",
        "MAX": "2MiB",
        "RETRY": "2d",
    }
    config = load(tmp_path, text, env)
    assert config.sources[0].name == "app"
    assert config.sources[0].path == "/srv/logs/events.json"
    assert config.reports[0].store == Path("/srv/store/daily.jsonl")
    assert config.reports[0].to == ("ops@example.com",)
    assert config.reports[0].max_attachment_bytes == 2 * MiB
    assert config.smtp.retry_for == 2 * 86400.0


def test_environment_default_applies_when_unset_or_empty(tmp_path: Path) -> None:
    """${NAME:-default} is NAME when set and not empty, else the default; as in the shell."""
    text = config_text(
        sources="  - name: app\n    path: ${LOGDIR:-/var/log/app}/events.json\n",
        reports="  - name: daily\n    store: ${STORE_DIR:-/srv/store}/daily.jsonl\n    to: ${TO:-}ops@example.com\n",
    )
    config = load(tmp_path, text, {"LOGDIR": "/srv/logs", "STORE_DIR": ""})
    assert config.sources[0].path == "/srv/logs/events.json"
    assert config.reports[0].store == Path("/srv/store/daily.jsonl")
    assert config.reports[0].to == ("ops@example.com",)


def test_credentials_directory_with_a_fallback_for_the_shell(tmp_path: Path) -> None:
    """The packaged config's password_file reads systemd's credential under the unit and the
    source file from an operator's shell."""
    (tmp_path / "creds").mkdir()
    (tmp_path / "creds" / "smtp-password").write_text("from-systemd\n", encoding="utf-8")
    (tmp_path / "smtp-password").write_text("from-etc\n", encoding="utf-8")
    smtp = SMTP + (
        "  username: tailmail@example.com\n"
        f"  password_file: ${{CREDENTIALS_DIRECTORY:-{tmp_path}}}/smtp-password\n"
    )
    text = config_text(smtp=smtp)
    under_unit = load(tmp_path, text, {"CREDENTIALS_DIRECTORY": str(tmp_path / "creds")})
    assert under_unit.smtp.password == "from-systemd"
    assert load(tmp_path, text, {}).smtp.password == "from-etc"


def test_password_from_environment(tmp_path: Path) -> None:
    """password: ${SMTP_PASSWORD} takes the password from the environment."""
    smtp = SMTP + "  username: tailmail@example.com\n  password: ${SMTP_PASSWORD}\n"
    config = load(tmp_path, config_text(smtp=smtp), {"SMTP_PASSWORD": "pa$$word"})
    assert config.smtp.password == "pa$$word"


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"s3cret\n", "s3cret"),
        (b"s3cret\r\n", "s3cret"),
        (b"s3cret", "s3cret"),
        (b"  spaced out  \n", "  spaced out  "),
    ],
)
def test_password_file_is_read_without_its_trailing_newline(
    tmp_path: Path, content: bytes, expected: str
) -> None:
    """password_file is read at load; the trailing line break goes, every other character stays."""
    (tmp_path / "pw").write_bytes(content)
    smtp = SMTP + "  username: tailmail@example.com\n  password_file: pw\n"
    assert load(tmp_path, config_text(smtp=smtp)).smtp.password == expected


def test_relative_paths_resolve_against_the_config_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Relative paths mean the same whatever the working directory: they are relative to the config file."""
    conf_dir = tmp_path / "etc"
    conf_dir.mkdir()
    (conf_dir / "ca.pem").write_text("pem\n")
    text = config_text(
        top="state_dir: state\nrules_dir: ./rules.d\n",
        sources="  - name: app\n    path: ../logs/*.json\n",
        smtp=SMTP + "  ca_file: ca.pem\n",
    )
    write(conf_dir, text)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    config = load_config(Path("../etc/config.yaml"), env={})  # type: ignore[arg-type]
    assert config.path.parent.resolve() == conf_dir
    assert config.state_dir.resolve() == conf_dir / "state"
    assert config.rules_dir.resolve() == conf_dir / "rules.d"
    assert Path(config.sources[0].path).parent.resolve() == tmp_path / "logs"
    assert config.reports[0].store.resolve() == conf_dir / "daily.jsonl"
    assert config.smtp.ca_file is not None and config.smtp.ca_file.resolve() == conf_dir / "ca.pem"
    for path in (config.state_dir, config.rules_dir, config.reports[0].store, config.smtp.ca_file):
        assert path.is_absolute()


def test_plaintext_auth_allowed_when_asked(tmp_path: Path) -> None:
    """security: none with a username loads when allow_plaintext_auth is true."""
    smtp = SMTP + "  security: none\n  username: u\n  password: p\n  allow_plaintext_auth: true\n"
    config = load(tmp_path, config_text(smtp=smtp))
    assert (config.smtp.port, config.smtp.allow_plaintext_auth) == (25, True)


def test_report_lookup_by_name(tmp_path: Path) -> None:
    """Config.report(name) finds a report and raises KeyError for an unknown one."""
    config = load(tmp_path, config_text())
    assert config.report("daily").name == "daily"
    with pytest.raises(KeyError):
        config.report("weekly")


def test_example_config_is_valid() -> None:
    """config.example.yaml loads without a problem, so the documented example cannot rot."""
    config = load_config(EXAMPLE, env={"SMTP_PASSWORD": "example"})  # type: ignore[arg-type]
    assert config.sources[0].name == "app"
    assert config.reports[0].name == "daily"
    assert config.reports[0].timezone == ZoneInfo("Europe/Berlin")
    assert config.smtp.password == "example"
    assert config.smtp.ca_file is None  # kept commented out: it must exist to load


def test_example_config_documents_every_key() -> None:
    """Every key load_config accepts appears in config.example.yaml (set or commented out), with a comment."""
    text = EXAMPLE.read_text(encoding="utf-8")
    documented = {}
    for line in text.splitlines():
        m = re.match(r"^\s*(?:#\s*)?(?:-\s+)?([a-z_]+):(.*)$", line)
        if m:
            documented[m.group(1)] = m.group(2)
    accepted = (
        config_module.TOP_KEYS
        | config_module.SOURCE_KEYS
        | config_module.REPORT_KEYS
        | config_module.SMTP_KEYS
        | config_module.LOG_KEYS
    )
    missing = accepted - documented.keys()
    assert not missing, f"config.example.yaml does not document {sorted(missing)}"
    for key in accepted - {"sources", "reports", "smtp", "log"}:
        assert "#" in documented[key], f"{key} has no comment in config.example.yaml"


# --- one problem per bad input, at its line ---------------------------------------------------

# (text, message): the text marks the line with `#!`; $DIR stands for the config's directory.
# Each case must give exactly one problem, which starts with `FILE:LINE: message`.
ONE_PROBLEM = [
    # unknown keys
    pytest.param(
        config_text(top="bogus: 1  #!\n"),
        "unknown key 'bogus' in the configuration; known keys: log, reports, rules_dir, smtp, sources, state_dir",
        id="unknown-top-key",
    ),
    pytest.param(
        config_text(sources=SOURCE + "    follow: true  #!\n"),
        "unknown key 'follow' in a source; known keys: max_line_bytes, name, path, start_at, time_field",
        id="unknown-source-key",
    ),
    pytest.param(
        config_text(reports=REPORT + "    bcc: [x@example.com]  #!\n"),
        "unknown key 'bcc' in a report; known keys: attach, cc, compress, keep, max_attachment_bytes, name, rotate_at, send_empty, store, subject, timezone, to, top_fields",
        id="unknown-report-key",
    ),
    pytest.param(
        config_text(smtp=SMTP + "  tls: true  #!\n"),
        "unknown key 'tls' in smtp; known keys: allow_plaintext_auth, ca_file, from, host, max_per_hour, password, password_file, port, retry_for, retry_initial, retry_max, security, timeout, username, verify_tls",
        id="unknown-smtp-key",
    ),
    pytest.param(
        config_text(end="log:\n  colour: true  #!\n"),
        "unknown key 'colour' in log; known keys: format, level",
        id="unknown-log-key",
    ),
    # missing required keys
    pytest.param(
        f"reports:  #!\n{REPORT}smtp:\n{SMTP}",
        "sources must be a non-empty list",
        id="missing-sources",
    ),
    pytest.param(
        f"sources: []  #!\nreports:\n{REPORT}smtp:\n{SMTP}",
        "sources must be a non-empty list",
        id="empty-sources",
    ),
    pytest.param(
        f"sources:  #!\n{SOURCE}smtp:\n{SMTP}",
        "reports must be a non-empty list",
        id="missing-reports",
    ),
    pytest.param(
        f"sources:  #!\n{SOURCE}reports:\n{REPORT}",
        "missing required section 'smtp'",
        id="missing-smtp",
    ),
    pytest.param(
        config_text(smtp="  from: tailmail@example.com  #!\n"),
        "missing required key 'host'",
        id="missing-smtp-host",
    ),
    pytest.param(
        config_text(smtp="  host: smtp.example.com  #!\n"),
        "missing required key 'from'",
        id="missing-smtp-from",
    ),
    pytest.param(
        config_text(reports="  - name: daily  #!\n    to: [ops@example.com]\n"),
        "missing required key 'store'",
        id="missing-report-store",
    ),
    pytest.param(
        config_text(reports="  - name: daily  #!\n    store: daily.jsonl\n"),
        "missing required key 'to' (the report's recipients)",
        id="missing-report-to",
    ),
    pytest.param(
        config_text(reports="  - store: daily.jsonl  #!\n    to: [ops@example.com]\n"),
        "missing required key 'name'",
        id="missing-report-name",
    ),
    pytest.param(
        config_text(sources="  - name: app  #!\n"),
        "missing required key 'path'",
        id="missing-source-path",
    ),
    pytest.param(
        config_text(sources="  - path: /var/log/app.json  #!\n"),
        "missing required key 'name'",
        id="missing-source-name",
    ),
    pytest.param(
        config_text(reports="  - name: daily\n    store: daily.jsonl\n    to: []  #!\n"),
        "to must name at least one recipient",
        id="empty-to",
    ),
    # wrong types
    pytest.param(
        "- just  #!\n- a list\n",
        "the configuration must be a mapping of keys to values",
        id="top-is-a-list",
    ),
    pytest.param(
        "# only a comment  #!\n",
        "the configuration must be a mapping of keys to values",
        id="empty-file",
    ),
    pytest.param(
        f"sources:  #!\n  name: app\n  path: /x.json\nreports:\n{REPORT}smtp:\n{SMTP}",
        "sources must be a non-empty list",
        id="sources-is-a-mapping",
    ),
    pytest.param(
        f"sources: [app]  #!\nreports:\n{REPORT}smtp:\n{SMTP}",
        "each item of sources must be a mapping of keys to values",
        id="source-is-a-string",
    ),
    pytest.param(
        f"sources:\n{SOURCE}reports:\n{REPORT}smtp: smtp.example.com  #!\n",
        "smtp must be a mapping of keys to values",
        id="smtp-is-a-string",
    ),
    pytest.param(
        config_text(end="log: debug  #!\n"),
        "log must be a mapping of keys to values",
        id="log-is-a-string",
    ),
    pytest.param(
        config_text(top="state_dir: [a, b]  #!\n"),
        "state_dir must be a string",
        id="state-dir-list",
    ),
    pytest.param(
        config_text(smtp="  host: [a, b]  #!\n  from: tailmail@example.com\n"),
        "host must be a string",
        id="host-list",
    ),
    pytest.param(
        config_text(
            reports="  - name: daily\n    store: daily.jsonl\n    to:\n      - ops@example.com\n      - 42  #!\n"
        ),
        "to: every item must be a string, not 42",
        id="to-item-number",
    ),
    pytest.param(
        config_text(reports=REPORT + "    send_empty: yes  #!\n"),
        "send_empty must be true or false",
        id="yes-is-not-a-boolean",
    ),
    pytest.param(
        config_text(reports=REPORT + "    attach: 1  #!\n"),
        "attach must be true or false",
        id="attach-number",
    ),
    pytest.param(
        config_text(smtp=SMTP + '  verify_tls: "true"  #!\n'),
        "verify_tls must be true or false",
        id="verify-tls-string",
    ),
    pytest.param(
        config_text(reports=REPORT + '    keep: "30"  #!\n'),
        "keep must be a whole number",
        id="keep-string",
    ),
    pytest.param(
        config_text(reports=REPORT + "    keep: 0  #!\n"),
        "keep must be at least 1",
        id="keep-zero",
    ),
    pytest.param(
        config_text(smtp=SMTP + '  port: "587"  #!\n'),
        "port must be a whole number",
        id="port-string",
    ),
    pytest.param(
        config_text(smtp=SMTP + "  port: 0  #!\n"),
        "port must be at least 1",
        id="port-zero",
    ),
    pytest.param(
        config_text(smtp=SMTP + "  port: 70000  #!\n"),
        "port must be at most 65535",
        id="port-too-big",
    ),
    pytest.param(
        config_text(smtp=SMTP + "  max_per_hour: 0  #!\n"),
        "max_per_hour must be at least 1",
        id="max-per-hour-zero",
    ),
    pytest.param(
        config_text(sources='  - name: "my app"  #!\n    path: /x.json\n'),
        "source name 'my app' may use only letters, digits, '.', '_' and '-'",
        id="source-name-with-space",
    ),
    # bad enum values
    pytest.param(
        config_text(sources=SOURCE + "    start_at: middle  #!\n"),
        "start_at must be one of end, beginning, not 'middle'",
        id="start-at",
    ),
    pytest.param(
        config_text(smtp=SMTP + "  security: tls  #!\n"),
        "security must be one of starttls, ssl, none, not 'tls'",
        id="security",
    ),
    pytest.param(
        config_text(smtp=SMTP + "  security: off  #!\n"),
        "security must be one of starttls, ssl, none, not 'off'",
        id="security-off",
    ),
    pytest.param(
        config_text(reports=REPORT + "    compress: bzip2  #!\n"),
        "compress must be one of none, gzip, not 'bzip2'",
        id="compress",
    ),
    pytest.param(
        config_text(end="log:\n  level: verbose  #!\n"),
        "level must be one of debug, info, warning, error, not 'verbose'",
        id="log-level",
    ),
    pytest.param(
        config_text(end="log:\n  format: text  #!\n"),
        "format must be one of auto, json, console, not 'text'",
        id="log-format",
    ),
    # bad sizes and durations
    pytest.param(
        config_text(reports=REPORT + "    max_attachment_bytes: 10 parsecs  #!\n"),
        "max_attachment_bytes: '10 parsecs' is not a size; write e.g. 1048576, 512KiB or 10MiB",
        id="size-unit",
    ),
    pytest.param(
        config_text(sources=SOURCE + "    max_line_bytes: -1  #!\n"),
        "max_line_bytes: a size cannot be negative",
        id="size-negative",
    ),
    pytest.param(
        config_text(sources=SOURCE + "    max_line_bytes: 10  #!\n"),
        "max_line_bytes must be at least 64",
        id="max-line-bytes-tiny",
    ),
    pytest.param(
        config_text(smtp=SMTP + "  retry_for: forever  #!\n"),
        "retry_for: 'forever' is not a duration; write e.g. 90s, 15m, 2h or 5d",
        id="duration-word",
    ),
    pytest.param(
        config_text(smtp=SMTP + "  retry_max: 1y  #!\n"),
        "retry_max: '1y' is not a duration; write e.g. 90s, 15m, 2h or 5d",
        id="duration-unit",
    ),
    pytest.param(
        config_text(smtp=SMTP + "  timeout: -5  #!\n"),
        "timeout: a duration cannot be negative",
        id="duration-negative",
    ),
    pytest.param(
        config_text(smtp=SMTP + "  timeout: 0s  #!\n"),
        "timeout must be more than 0",
        id="timeout-zero",
    ),
    # rotate_at and timezone
    pytest.param(
        config_text(reports=REPORT + '    rotate_at: "25:00"  #!\n'),
        'rotate_at: \'25:00\' is not a time of day; write "HH:MM", e.g. "00:00"',
        id="rotate-at-hour",
    ),
    pytest.param(
        config_text(reports=REPORT + '    rotate_at: "06:60"  #!\n'),
        'rotate_at: \'06:60\' is not a time of day; write "HH:MM", e.g. "00:00"',
        id="rotate-at-minute",
    ),
    pytest.param(
        config_text(reports=REPORT + "    rotate_at: 06:30:00  #!\n"),
        'rotate_at: \'06:30:00\' is not a time of day; write "HH:MM", e.g. "00:00"',
        id="rotate-at-seconds",
    ),
    pytest.param(
        config_text(reports=REPORT + "    rotate_at: 0630  #!\n"),
        'rotate_at: must be a quoted local time "HH:MM"',
        id="rotate-at-number",
    ),
    pytest.param(
        config_text(reports=REPORT + "    timezone: Mars/Olympus_Mons  #!\n"),
        "timezone: unknown time zone 'Mars/Olympus_Mons'; use an IANA name such as Europe/Berlin",
        id="timezone-unknown",
    ),
    pytest.param(
        config_text(reports=REPORT + "    timezone: ../../etc/passwd  #!\n"),
        "timezone: unknown time zone '../../etc/passwd'; use an IANA name such as Europe/Berlin",
        id="timezone-path",
    ),
    pytest.param(
        config_text(reports=REPORT + "    timezone: CEST  #!\n"),
        "timezone: unknown time zone 'CEST'; use an IANA name such as Europe/Berlin",
        id="timezone-abbreviation",
    ),
    # environment variables
    pytest.param(
        config_text(smtp="  host: ${SMTP_HOST}  #!\n  from: tailmail@example.com\n"),
        "host: environment variable SMTP_HOST is not set",
        id="env-missing",
    ),
    pytest.param(
        config_text(
            reports="  - name: daily\n    store: daily.jsonl\n    to:\n      - ops@example.com\n      - ${ONCALL}  #!\n"
        ),
        "to: environment variable ONCALL is not set",
        id="env-missing-in-list",
    ),
    pytest.param(
        config_text(reports=REPORT + "    max_attachment_bytes: ${MAX_BYTES}  #!\n"),
        "max_attachment_bytes: environment variable MAX_BYTES is not set",
        id="env-missing-in-size",
    ),
    # credentials
    pytest.param(
        config_text(smtp=SMTP + "  password_file: missing  #!\n"),
        "password_file $DIR/missing: No such file or directory",
        id="password-file-missing",
    ),
    pytest.param(
        config_text(smtp=SMTP + "  password_file: .  #!\n"),
        "password_file $DIR: Is a directory",
        id="password-file-directory",
    ),
    pytest.param(
        config_text(smtp=SMTP + "  username: u\n  password: p\n  password_file: config.yaml  #!\n"),
        "give either password or password_file, not both",
        id="password-and-password-file",
    ),
    pytest.param(
        config_text(smtp=SMTP + "  username: tailmail@example.com  #!\n"),
        "username is set but neither password nor password_file is",
        id="username-without-password",
    ),
    pytest.param(
        config_text(smtp=SMTP + "  security: none  #!\n  username: u\n  password: p\n"),
        "security: none would send the password unencrypted; use starttls or ssl, or set allow_plaintext_auth: true if you really mean it",
        id="plaintext-auth",
    ),
    pytest.param(
        config_text(smtp=SMTP + "  ca_file: nope.pem  #!\n"),
        "ca_file $DIR/nope.pem does not exist or is not a file",
        id="ca-file-missing",
    ),
    # header injection: CR, LF or NUL in anything that becomes a header
    pytest.param(
        config_text(reports=REPORT + '    subject: "Report\\r\\nBcc: evil@example.com"  #!\n'),
        "subject contains a line break or NUL, which could inject mail headers",
        id="subject-crlf",
    ),
    pytest.param(
        config_text(reports=REPORT + '    subject: "Report\\nBcc: evil@example.com"  #!\n'),
        "subject contains a line break or NUL, which could inject mail headers",
        id="subject-lf",
    ),
    pytest.param(
        config_text(reports=REPORT + '    subject: "Report\\0"  #!\n'),
        "subject contains a line break or NUL, which could inject mail headers",
        id="subject-nul",
    ),
    pytest.param(
        config_text(reports=REPORT + "    subject: |  #!\n      two\n      lines\n"),
        "subject contains a line break or NUL, which could inject mail headers",
        id="subject-block-scalar",
    ),
    pytest.param(
        config_text(
            reports='  - name: daily\n    store: daily.jsonl\n    to: [ops@example.com, "oncall@example.com\\r\\nBcc: evil@example.com"]  #!\n'
        ),
        "to: contains a line break or NUL, which could inject mail headers",
        id="to-crlf",
    ),
    pytest.param(
        config_text(reports=REPORT + '    cc: ["audit@example.com\\nBcc: evil@example.com"]  #!\n'),
        "cc: contains a line break or NUL, which could inject mail headers",
        id="cc-lf",
    ),
    pytest.param(
        config_text(
            smtp='  host: smtp.example.com\n  from: "Tailmail\\r\\nBcc: evil@example.com <t@example.com>"  #!\n'
        ),
        "from: contains a line break or NUL, which could inject mail headers",
        id="from-crlf",
    ),
    pytest.param(
        config_text(
            smtp=SMTP + '  username: "u\\r\\nRCPT TO: <x@example.com>"  #!\n  password: p\n'
        ),
        "username contains a line break or NUL",
        id="username-crlf",
    ),
    # addresses and subject
    pytest.param(
        config_text(reports=REPORT + "    cc: [not-an-address]  #!\n"),
        "cc: 'not-an-address' is not an email address",
        id="cc-invalid",
    ),
    pytest.param(
        config_text(
            reports="  - name: daily\n    store: daily.jsonl\n    to:\n      - ops@example.com\n      - ops at example.com  #!\n"
        ),
        "to: 'ops at example.com' is not an email address",
        id="to-invalid",
    ),
    pytest.param(
        config_text(reports=REPORT + '    cc: ["a@b@example.com"]  #!\n'),
        "cc: 'a@b@example.com' is not an email address",
        id="cc-two-at-signs",
    ),
    pytest.param(
        config_text(smtp="  host: smtp.example.com\n  from: tailmail  #!\n"),
        "from: 'tailmail' is not an email address",
        id="from-invalid",
    ),
    pytest.param(
        config_text(reports=REPORT + '    subject: "{host} report"  #!\n'),
        "subject: unknown placeholder {host}; known: {date}, {hostname}, {read}, {report}, {selected}, {skipped}",
        id="subject-placeholder",
    ),
    pytest.param(
        config_text(reports=REPORT + '    subject: "{hostname.__class__}"  #!\n'),
        "subject: unknown placeholder {hostname.__class__}; known: ",
        id="subject-attribute",
    ),
    pytest.param(
        config_text(reports=REPORT + '    subject: "{selected} events }"  #!\n'),
        "subject: Single '}' encountered in format string; write {{ and }} for literal braces",
        id="subject-brace",
    ),
    # duplicates
    pytest.param(
        config_text(sources=SOURCE + "  - name: app  #!\n    path: /var/log/other.json\n"),
        "duplicate source name 'app' (first at line 2)",
        id="duplicate-source",
    ),
    pytest.param(
        config_text(
            reports=REPORT
            + "  - name: daily  #!\n    store: other.jsonl\n    to: [ops@example.com]\n"
        ),
        "duplicate report name 'daily' (first at line 5)",
        id="duplicate-report",
    ),
    pytest.param(
        config_text(
            reports=REPORT
            + "  - name: weekly\n    store: ./daily.jsonl  #!\n    to: [ops@example.com]\n"
        ),
        "store $DIR/daily.jsonl is already used by another report (line 6)",
        id="shared-store",
    ),
]


@pytest.mark.parametrize(("text", "message"), ONE_PROBLEM)
def test_bad_input_is_one_problem_at_its_line(tmp_path: Path, text: str, message: str) -> None:
    """Each mistake is reported once, as FILE:LINE: message, at the line where it was written."""
    path = write(tmp_path, text)
    expected = f"{path}:{marked_line(text)}: {message.replace('$DIR', str(tmp_path))}"
    problems = problems_of(path)
    assert len(problems) == 1, problems
    assert problems[0].startswith(expected), problems


def test_to_of_the_wrong_type_is_reported_first(tmp_path: Path) -> None:
    """`to` given as a mapping is reported as such (then, redundantly, as naming no recipient)."""
    text = config_text(reports="  - name: daily\n    store: daily.jsonl\n    to: {ops: x}\n")
    path = write(tmp_path, text)
    problems = problems_of(path)
    assert problems[0] == f"{path}:7: to must be a list of strings"


def test_header_breaks_from_the_environment_are_caught(tmp_path: Path) -> None:
    """A line break that arrives through ${VAR} is caught too: the check runs after expansion."""
    reports = REPORT + '    subject: "${SUBJECT}"\n'
    path = write(tmp_path, config_text(reports=reports))
    assert problems_of(path, {"SUBJECT": "Hi\r\nBcc: evil@example.com"}) == [
        f"{path}:8: subject contains a line break or NUL, which could inject mail headers"
    ]


def test_yaml_syntax_error_reports_its_line(tmp_path: Path) -> None:
    """A YAML syntax error is a problem at the line where the parser noticed it."""
    path = write(tmp_path, config_text(smtp="  host: [smtp.example.com\n  from: t@example.com\n"))
    assert problems_of(path) == [f"{path}:10: YAML syntax error: expected ',' or ']', but got ':'"]


def test_duplicate_yaml_keys_are_reported(tmp_path: Path) -> None:
    """A key written twice is a problem naming both lines, not a silent override."""
    path = write(tmp_path, config_text(smtp=SMTP + "  host: other.example.com\n"))
    assert problems_of(path) == [f"{path}:11: duplicate key 'host' (first at line 9)"]


def test_several_problems_are_reported_at_once(tmp_path: Path) -> None:
    """load_config collects every problem of the file instead of stopping at the first."""
    text = (
        "stat_dir: /var/lib/tailmail\n"  # 1
        "sources:\n"  # 2
        "  - name: app\n"  # 3
        "    path: /var/log/app.json\n"  # 4
        "    start_at: start\n"  # 5
        "reports:\n"  # 6
        "  - name: daily\n"  # 7
        "    store: daily.jsonl\n"  # 8
        "    to: [ops@example.com]\n"  # 9
        "    timezone: Europe/Berln\n"  # 10
        "smtp:\n"  # 11
        "  host: smtp.example.com\n"  # 12
        "  from: tailmail@example.com\n"  # 13
        "  username: tailmail@example.com\n"  # 14
        "log:\n"  # 15
        "  level: loud\n"  # 16
    )
    path = write(tmp_path, text)
    problems = problems_of(path)
    assert [p.split(": ", 1)[0] for p in problems] == [
        f"{path}:1",
        f"{path}:5",
        f"{path}:10",
        f"{path}:14",
        f"{path}:16",
    ]
    assert problems[0].startswith(f"{path}:1: unknown key 'stat_dir' in the configuration")
    assert problems[1] == f"{path}:5: start_at must be one of end, beginning, not 'start'"
    assert problems[2].startswith(f"{path}:10: timezone: unknown time zone 'Europe/Berln'")
    assert problems[3] == f"{path}:14: username is set but neither password nor password_file is"
    assert problems[4] == f"{path}:16: level must be one of debug, info, warning, error, not 'loud'"


def test_missing_config_file_is_a_problem(tmp_path: Path) -> None:
    """A config file that does not exist is a problem at line 1, not a traceback."""
    path = tmp_path / "nope.yaml"
    assert problems_of(path) == [f"{path}:1: cannot read: No such file or directory"]


# --- bugs found while writing these tests (they fail until config.py is fixed) ----------------


def test_non_utf8_password_file_is_a_problem(tmp_path: Path) -> None:
    """A password_file that is not UTF-8 is a problem at its line, not a UnicodeDecodeError."""
    (tmp_path / "pw").write_bytes(b"\xffs3cret\n")
    text = config_text(smtp=SMTP + "  password_file: pw  #!\n")
    path = write(tmp_path, text)
    problems = problems_of(path)
    assert len(problems) == 1
    assert problems[0].startswith(f"{path}:{marked_line(text)}: password_file {tmp_path / 'pw'}")


def test_smtp_problems_are_all_reported_when_host_is_missing(tmp_path: Path) -> None:
    """A missing smtp.host does not hide the other smtp mistakes: every problem is reported at once."""
    smtp = (
        "  from: tailmail@example.com\n"  # 9
        "  verify_tls: maybe\n"  # 10
        "  max_per_hour: 0\n"  # 11
        "  retry_for: forever\n"  # 12
        "  retry_initial: soon\n"  # 13
        "  retry_max: later\n"  # 14
    )
    path = write(tmp_path, config_text(smtp=smtp))
    lines = [int(p.removeprefix(f"{path}:").split(":")[0]) for p in problems_of(path)]
    assert sorted(lines) == [9, 10, 11, 12, 13, 14]


def test_nan_is_not_a_duration(tmp_path: Path) -> None:
    """timeout: .nan is refused; NaN compares false with everything, so `timeout <= 0` let it through."""
    text = config_text(smtp=SMTP + "  timeout: .nan  #!\n")
    path = write(tmp_path, text)
    problems = problems_of(path)
    assert len(problems) == 1
    assert problems[0].startswith(f"{path}:{marked_line(text)}: timeout")


def test_one_address_item_cannot_hold_two_recipients(tmp_path: Path) -> None:
    """An unquoted comma in a display name ("Ops, Team <ops@example.com>") would make one item two recipients in the To: header."""
    text = config_text(
        reports="  - name: daily\n    store: daily.jsonl\n    to:\n      - Ops, Team <ops@example.com>  #!\n"
    )
    path = write(tmp_path, text)
    problems = problems_of(path)
    assert problems
    assert problems[0].startswith(f"{path}:{marked_line(text)}: to: ")


# --- numbers out of all proportion -----------------------------------------------------------

# Every numeric key, where it is written (`SOURCE`, `REPORT` or `SMTP` block) and what it holds.
NUMERIC_KEYS = {
    "max_line_bytes": ("sources", "size"),
    "keep": ("reports", "integer"),
    "max_attachment_bytes": ("reports", "size"),
    "port": ("smtp", "integer"),
    "timeout": ("smtp", "duration"),
    "max_per_hour": ("smtp", "integer"),
    "retry_for": ("smtp", "duration"),
    "retry_initial": ("smtp", "duration"),
    "retry_max": ("smtp", "duration"),
}
HUGE = {  # what an operator (or a planted environment variable) could write
    "400-digits": "1" * 400,
    "400-digits-with-unit": "1" * 400 + "{unit}",
    "float-max": "1.7e308",
    "inf": ".inf",
    "5000-digits-from-env": "${HUGE}",
    "5000-digits": "1" * 5000,
}
MAXIMA = {"integer": {"keep": 10000, "port": 65535, "max_per_hour": 100000}}


def huge_message(key: str, kind: str, case: str) -> str:
    """What `check` says about `key: HUGE[case]`."""
    if case == "5000-digits":
        return (
            "invalid value: the number 111111111111… is too long: a number has at most 4300 "
            "digits; quote it if it is text"
        )
    if kind == "integer":
        if case == "400-digits":
            return f"{key} must be at most {MAXIMA['integer'][key]}"
        return f"{key} must be a whole number"
    noun = {
        "size": "a size; write e.g. 1048576, 512KiB or 10MiB",
        "duration": "a duration; write e.g. 90s, 15m, 2h or 5d",
    }[kind]
    if case == "inf":
        return f"{key}: inf is not {noun}"
    if kind == "size" and case == "float-max":
        return f"{key}: 1.7e+308 is not {noun}"
    if kind == "size":
        return f"{key}: that is more than 1 TiB, too large for any size here; write e.g. 10MiB"
    return f"{key}: that is more than 10 years, too long for any duration here"


@pytest.mark.parametrize("case", sorted(HUGE))
@pytest.mark.parametrize("key", sorted(NUMERIC_KEYS))
def test_huge_numbers_are_one_located_problem(tmp_path: Path, key: str, case: str) -> None:
    """Every numeric key refuses numbers past all reason (400 or 5,000 digits, 1.7e308, .inf, a huge ${VAR}) with one problem at its line, never another exception."""
    block, kind = NUMERIC_KEYS[key]
    unit = {"size": "MiB", "duration": "s"}.get(kind, "MiB")
    value = HUGE[case].replace("{unit}", unit)
    line = f"  {key}: {value}  #!\n"
    if block == "sources":
        text = config_text(sources=SOURCE + "  " + line)
    elif block == "reports":
        text = config_text(reports=REPORT + "  " + line)
    else:
        text = config_text(smtp=SMTP + line)
    path = write(tmp_path, text)
    assert problems_of(path, {"HUGE": "9" * 5000}) == [
        f"{path}:{marked_line(text)}: {huge_message(key, kind, case)}"
    ]


@pytest.mark.parametrize(
    ("block", "key", "largest", "over", "message"),
    [
        ("sources", "max_line_bytes", "256MiB", "257MiB", "max_line_bytes must be at most 256MiB"),
        (
            "reports",
            "max_attachment_bytes",
            "1GiB",
            "1025MiB",
            "max_attachment_bytes must be at most 1GiB",
        ),
        ("reports", "keep", "10000", "10001", "keep must be at most 10000"),
        ("smtp", "port", "65535", "65536", "port must be at most 65535"),
        ("smtp", "max_per_hour", "100000", "100001", "max_per_hour must be at most 100000"),
        ("smtp", "timeout", "1h", "3601s", "timeout must be at most 1h"),
        ("smtp", "retry_for", "365d", "366d", "retry_for must be at most 365d"),
        ("smtp", "retry_initial", "7d", "8d", "retry_initial must be at most 7d"),
        ("smtp", "retry_max", "1w", "169h", "retry_max must be at most 7d"),
    ],
)
def test_each_numeric_key_has_an_upper_bound(
    tmp_path: Path, block: str, key: str, largest: str, over: str, message: str
) -> None:
    """Each numeric key accepts its largest sensible value and refuses the next one up with a message naming the bound."""

    def text(value: str) -> str:
        line = f"  {key}: {value}  #!\n"
        if block == "sources":
            return config_text(sources=SOURCE + "  " + line)
        if block == "reports":
            return config_text(reports=REPORT + "  " + line)
        return config_text(smtp=SMTP + line)

    load(tmp_path, text(largest))
    path = write(tmp_path, text(over))
    assert problems_of(path) == [f"{path}:{marked_line(text(over))}: {message}"]


# --- the helpers ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, 0),
        (10485760, 10 * MiB),
        ("10485760", 10 * MiB),
        ("10MiB", 10 * MiB),
        ("10 MiB", 10 * MiB),
        ("10mib", 10 * MiB),
        ("512KiB", 512 * 1024),
        ("512KB", 512_000),
        ("1.5KiB", 1536),
        ("2GiB", 2 * 1024**3),
        ("100B", 100),
    ],
)
def test_parse_size(value: object, expected: int) -> None:
    """Sizes are bytes, or a number with a binary (KiB, MiB) or decimal (KB, MB) unit."""
    assert parse_size(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        -1,
        True,
        "10 parsecs",
        "MiB",
        "-5MiB",
        "",
        "1e6",
        10**400,
        "1" * 400,
        "2TiB",
        "1" * 400 + "MiB",
    ],
)
def test_parse_size_rejects(value: object) -> None:
    """Negative numbers, booleans, text that is not a size, and sizes over 1 TiB raise ValueError (never OverflowError)."""
    with pytest.raises(ValueError):
        parse_size(value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (90, 90.0),
        (1.5, 1.5),
        ("90", 90.0),
        ("90s", 90.0),
        ("250ms", 0.25),
        ("15m", 900.0),
        ("2h", 7200.0),
        ("5d", 432000.0),
        ("1w", 604800.0),
        ("1.5h", 5400.0),
    ],
)
def test_parse_duration(value: object, expected: float) -> None:
    """Durations are seconds, or a number with ms, s, m, h, d or w."""
    assert parse_duration(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        -1,
        False,
        "forever",
        "5 days",
        "1y",
        "-5s",
        "",
        "5D",
        10**400,
        1e308,
        math.inf,
        math.nan,
        "1" * 400,
        "3651d",
    ],
)
def test_parse_duration_rejects(value: object) -> None:
    """Negative numbers, booleans, text that is not a duration, and durations over 10 years or not finite raise ValueError (never OverflowError)."""
    with pytest.raises(ValueError):
        parse_duration(value)


@pytest.mark.parametrize(
    "value",
    ["ops@example.com", "Ops <ops@example.com>", '"Ops, Team" <ops@example.com>', "root@localhost"],
)
def test_check_address_accepts(value: str) -> None:
    """A bare address or Name <address> is accepted."""
    assert check_address(value) is None


@pytest.mark.parametrize(
    "value", ["", "ops", "ops@", "@example.com", "ops@exa mple.com", "a@b@example.com", "x <y>"]
)
def test_check_address_rejects(value: str) -> None:
    """Anything that is not one address is described, not accepted."""
    assert check_address(value) == f"{value!r} is not an email address"


def test_config_path_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    """-c wins over $TAILMAIL_CONFIG, which wins over /etc/tailmail/config.yaml."""
    monkeypatch.setenv("TAILMAIL_CONFIG", "/srv/tailmail.yaml")
    assert config_path("/tmp/c.yaml") == Path("/tmp/c.yaml")
    assert config_path(None) == Path("/srv/tailmail.yaml")
    monkeypatch.delenv("TAILMAIL_CONFIG")
    assert config_path(None) == Path("/etc/tailmail/config.yaml")


def test_whole_number_keys_take_environment_variables(tmp_path: Path) -> None:
    """`port: ${SMTP_PORT}` is expanded and read as a number, as SPEC says for any string."""
    text = config_text(
        smtp="  host: mail.example.com\n  from: t@example.com\n  port: ${SMTP_PORT}\n"
    )
    assert load(tmp_path, text, env={"SMTP_PORT": "2525"}).smtp.port == 2525


def test_subject_format_specs_are_refused(tmp_path: Path) -> None:
    """`{date:%Y}` in a subject is a check error rather than a silently different subject."""
    text = config_text(
        reports="  - name: daily\n    store: d.jsonl\n    to: [a@example.com]\n    subject: 'x {date:%Y}'\n"
    )
    path = write(tmp_path, text)
    assert any("without a format or conversion" in p for p in problems_of(path))


def test_same_store_through_dot_dot_is_caught(tmp_path: Path) -> None:
    """Two reports naming one store file by different spellings are refused."""
    text = config_text(
        reports=(
            "  - name: a\n    store: daily.jsonl\n    to: [a@example.com]\n"
            "  - name: b\n    store: sub/../daily.jsonl\n    to: [a@example.com]\n"
        )
    )
    path = write(tmp_path, text)
    assert any("is already used by another report" in p for p in problems_of(path))
