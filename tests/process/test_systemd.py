"""The systemd units (systemd/): what systemd itself says of them, and that the agent works in
the sandbox they ask for.

`systemd-analyze` (Debian's systemd package; the machine need not run systemd) verifies each
unit and rates its exposure offline. verify insists that ExecStart= exists, and the units name
the packaged /usr/bin/tailmail: each is checked as a copy whose ExecStart= names this
checkout's `tailmail` instead, every other line as shipped.

MemoryDenyWriteExecute=yes is kept only because the whole agent works under it: the real
service runs under the same kernel rule (tests/support/mdwe.py) and delivers a report over STARTTLS.
"""

from __future__ import annotations

import email
import email.policy
import gzip
import mmap
import platform
import re
import subprocess
import sys
from email.message import EmailMessage
from pathlib import Path

import orjson
import pytest
from agent_proc import DEADLINE, Agent, tailmail, wait_for, write_config
from debian_tools import need
from smtp_sink import SmtpServer

REPO = Path(__file__).resolve().parents[2]
UNITS = REPO / "systemd"
MDWE = [sys.executable, str(REPO / "tests" / "support" / "mdwe.py")]
MAX_EXPOSURE = 1.5  # issue 6: as tight as systemd's own network daemons (hostnamed: 1.5)
# Keys in which the template differs from tailmail.service; the sandbox must not.
PER_INSTANCE = {"Description", "ExecStart", "StateDirectory", "LogsDirectory", "LoadCredential"}


def checkable(unit: str, tmp_path: Path, name: str | None = None) -> Path:
    """A copy of `unit` whose ExecStart= runs this checkout's tailmail (verify wants it to
    exist); `name` instantiates a template (tailmail@check.service)."""
    entry = Path(sys.executable).with_name("tailmail")
    assert entry.exists(), f"{entry} is missing: run `make test`, which installs the checkout"
    text = (UNITS / unit).read_text(encoding="utf-8")
    assert text.count("ExecStart=/usr/bin/tailmail ") == 1
    copy = tmp_path / (name or unit)
    copy.write_text(text.replace("ExecStart=/usr/bin/tailmail ", f"ExecStart={entry} "))
    return copy


def service_section(unit: str) -> list[tuple[str, str]]:
    pairs, section = [], ""
    for line in (UNITS / unit).read_text(encoding="utf-8").splitlines():
        if line.startswith("["):
            section = line
        elif section == "[Service]" and "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            pairs.append((key, value))
    return pairs


@pytest.mark.parametrize(
    ("unit", "name"), [("tailmail.service", None), ("tailmail@.service", "tailmail@check.service")]
)
def test_systemd_analyze_verify_finds_nothing(tmp_path: Path, unit: str, name: str | None) -> None:
    """`systemd-analyze verify` accepts the unit and prints nothing: no unknown key, no bad value."""
    analyze = need("systemd-analyze", "systemd")
    result = subprocess.run(
        [analyze, "verify", str(checkable(unit, tmp_path, name))],
        capture_output=True,
        text=True,
        timeout=DEADLINE,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout + result.stderr == ""


@pytest.mark.parametrize(
    ("unit", "name"), [("tailmail.service", None), ("tailmail@.service", "tailmail@check.service")]
)
def test_exposure_is_at_most_1_5(tmp_path: Path, unit: str, name: str | None) -> None:
    """`systemd-analyze security --offline=true --threshold=15` passes: exposure at most 1.5."""
    analyze = need("systemd-analyze", "systemd")
    result = subprocess.run(
        [
            analyze,
            "security",
            "--offline=true",
            "--threshold=15",
            str(checkable(unit, tmp_path, name)),
        ],
        capture_output=True,
        text=True,
        timeout=DEADLINE,
    )
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d)", result.stdout)
    assert m, result.stdout + result.stderr
    print(f"{unit}: exposure {m[1]}")
    assert result.returncode == 0, result.stdout + result.stderr
    assert float(m[1]) <= MAX_EXPOSURE


def test_template_has_the_same_sandbox() -> None:
    """tailmail@.service differs from tailmail.service only in what is per instance."""
    main = [p for p in service_section("tailmail.service") if p[0] not in PER_INSTANCE]
    template = [p for p in service_section("tailmail@.service") if p[0] not in PER_INSTANCE]
    assert template == main
    assert ("ExecStart", "/usr/bin/tailmail run -c /etc/tailmail/%i.yaml") in service_section(
        "tailmail@.service"
    )


def test_units_keep_the_promises_of_issue_6() -> None:
    """The directives the service relies on are there: notify with a watchdog, no restart loop
    on a bad config, its own user reading host logs through adm, no capabilities, no W+X."""
    service = dict(service_section("tailmail.service"))
    assert service["Type"] == "notify"
    assert service["WatchdogSec"]
    assert service["Restart"] == "on-failure"
    assert service["RestartPreventExitStatus"] == "2"
    assert (service["User"], service["SupplementaryGroups"]) == ("tailmail", "adm")
    assert service["CapabilityBoundingSet"] == ""
    assert service["MemoryDenyWriteExecute"] == "yes"
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert service["LoadCredential"].startswith("smtp-password:")
    packaged = (REPO / "packaging" / "config.yaml").read_text(encoding="utf-8")
    assert "password_file: ${CREDENTIALS_DIRECTORY:-/etc/tailmail}/smtp-password" in packaged


# ---- MemoryDenyWriteExecute ---------------------------------------------------------------


@pytest.fixture
def mdwe() -> list[str]:
    """The command prefix that runs a program under MDWE; skips where the kernel lacks it.

    A kernel without PR_SET_MDWE (before Linux 6.3) is not something `make test` could
    install, so this skips even under CI, naming the kernel."""
    probe = subprocess.run([*MDWE, "true"], capture_output=True, text=True, timeout=DEADLINE)
    if probe.returncode == 125:
        pytest.skip(f"kernel {platform.release()} has no PR_SET_MDWE (Linux 6.3+): {probe.stderr}")
    assert probe.returncode == 0, probe.stderr
    return MDWE


def test_mdwe_is_in_force_after_exec(mdwe: list[str]) -> None:
    """Under tests/mdwe.py a program cannot map memory writable and executable: the rule the
    other tests rely on is really there."""
    script = (
        "import mmap\n"
        "try:\n"
        f"    mmap.mmap(-1, 4096, prot={mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC})\n"
        "except PermissionError:\n"
        "    raise SystemExit(0)\n"
        "raise SystemExit('a writable and executable mapping was allowed')\n"
    )
    result = subprocess.run(
        [*mdwe, sys.executable, "-c", script], capture_output=True, text=True, timeout=DEADLINE
    )
    assert result.returncode == 0, result.stderr


def test_the_service_selects_and_delivers_over_tls_under_mdwe(
    tmp_path: Path, mdwe: list[str], smtp_server: type[SmtpServer]
) -> None:
    """`tailmail run` under MDWE: YAML config and rules, inotify (watchdog), RE2 and glob and
    CIDR rules, orjson, the Jinja2 report, a verified STARTTLS handshake and AUTH (OpenSSL,
    aiosmtplib), sd_notify: one report arrives with exactly the selected lines."""
    server = smtp_server(tls="starttls", auth=("tailmail", "pw-7f3c"), require_auth=True)  # type: ignore[call-arg]
    for sub in ("rules.d", "logs", "store"):
        (tmp_path / sub).mkdir()
    (tmp_path / "rules.d" / "pick.yaml").write_text(
        "rules:\n"
        "  - name: regex\n    match: {msg: {regex: '^disk \\d+ (full|gone)$'}}\n"
        "  - name: glob\n    match: {path: {glob: '/srv/*.bin'}}\n"
        "  - name: cidr\n    match: {ip: {cidr: 203.0.113.0/24}}\n"
    )
    log = tmp_path / "logs" / "events.json"
    log.touch()
    config = write_config(
        tmp_path / "config.yaml",
        {
            "state_dir": str(tmp_path / "state"),
            "rules_dir": str(tmp_path / "rules.d"),
            "sources": [{"name": "app", "path": str(tmp_path / "logs" / "*.json")}],
            "reports": [
                {"name": "daily", "store": str(tmp_path / "store" / "d.jsonl"), "to": ["o@x.org"]}
            ],
            "smtp": {
                "host": server.host,
                "port": server.port,
                "security": "starttls",
                "ca_file": str(server.ca_path),
                "username": "tailmail",
                "password": "pw-7f3c",
                "from": "tailmail@x.org",
                "timeout": 10,
            },
            "log": {"format": "json", "level": "debug"},
        },
    )
    agent = Agent(config, tmp_path, wrap=mdwe).wait_ready()
    try:
        events = [
            {"msg": "disk 2 full"},
            {"msg": "disk 2 fine"},
            {"path": "/srv/a/b.bin"},
            {"path": "/srv/a.txt"},
            {"ip": "203.0.113.9"},
            {"ip": "198.51.100.9"},
        ]
        with log.open("ab") as f:
            f.write(b"".join(orjson.dumps(e) + b"\n" for e in events))
        store = tmp_path / "store" / "d.jsonl"
        wait_for(lambda: store.exists() and store.read_bytes().count(b"\n") == 3, "3 lines stored")
        rotated = tailmail("rotate", "-c", str(config))
        assert rotated.returncode == 0, rotated.stdout + rotated.stderr
        wait_for(lambda: server.messages, "the report over STARTTLS")
        assert agent.proc.poll() is None
    finally:
        code = agent.stop()
    assert code == 0, agent.log()
    assert ("AUTH PLAIN" in server.commands or "AUTH LOGIN" in server.commands) and (
        "STARTTLS" in server.commands
    )
    msg = email.message_from_bytes(server.messages[0].content, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    [part] = list(msg.iter_attachments())
    payload = part.get_payload(decode=True)
    assert isinstance(payload, bytes)
    if part.get_content_type() == "application/gzip":
        payload = gzip.decompress(payload)
    assert payload.splitlines() == [orjson.dumps(events[i]) for i in (0, 2, 4)]
    html = msg.get_body(("html",))
    assert html is not None and "regex" in html.get_content()


def test_demo_runs_under_mdwe(tmp_path: Path, mdwe: list[str]) -> None:
    """`tailmail demo` under MDWE: its aiosmtpd sink and its agent child both work."""
    result = subprocess.run(
        [*mdwe, sys.executable, "-m", "agent", "demo", "--dir", str(tmp_path / "demo")],
        capture_output=True,
        text=True,
        timeout=3 * DEADLINE,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    m = re.search(r"^Report received: (\S+\.eml)$", result.stdout, re.M)
    assert m and Path(m[1]).is_file(), result.stdout


def test_units_let_the_agent_hold_thousands_of_source_files() -> None:
    """LimitNOFILE= is set in both units: their system-call filter forbids the agent to raise
    the soft limit (1024) itself, and every source file is held open."""
    for unit in ("tailmail.service", "tailmail@.service"):
        limit = dict(service_section(unit)).get("LimitNOFILE", "")
        assert limit.isdigit() and int(limit) >= 10_000, f"{unit}: LimitNOFILE={limit!r}"
