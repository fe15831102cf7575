"""End to end: the real `tailmail run` process, real files, a real SMTP server with STARTTLS and AUTH."""

from __future__ import annotations

import email
import email.policy
import gzip
import re
import signal
from collections.abc import Callable
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import orjson
import pytest
from agent_proc import Agent, tailmail, wait_for, write_config
from smtp_sink import SmtpServer

USER, PASSWORD = "tailmail", "s3cret-pw"


@pytest.fixture
def server(smtp_server: Callable[..., SmtpServer]) -> SmtpServer:
    return smtp_server(tls="starttls", auth=(USER, PASSWORD), require_auth=True)


def make_config(tmp_path: Path, server: SmtpServer, **report: Any) -> Path:
    for sub in ("rules.d", "logs", "store"):
        (tmp_path / sub).mkdir(exist_ok=True)
    (tmp_path / "password").write_text(PASSWORD + "\n")
    config = {
        "state_dir": str(tmp_path / "state"),
        "rules_dir": str(tmp_path / "rules.d"),
        "sources": [
            {
                "name": "app",
                "path": str(tmp_path / "logs" / "events*.json"),
                "start_at": "beginning",
                "time_field": "ts",
            }
        ],
        "reports": [
            {
                "name": "daily",
                "store": str(tmp_path / "store" / "daily.jsonl"),
                "to": ["ops@example.com", "Second Reader <boss@example.com>"],
                "compress": "gzip",
                **report,
            }
        ],
        "smtp": {
            "host": server.host,
            "port": server.port,
            "security": server.tls,
            "ca_file": str(server.ca_path),
            "username": USER,
            "password_file": str(tmp_path / "password"),
            "from": "tailmail@example.com",
            "timeout": 20,
        },
        "log": {"level": "debug", "format": "json"},
    }
    return write_config(tmp_path / "config.yaml", config)


FAILED_LOGINS = """\
name: failed-logins
match:
  all:
    - event: {startswith: "login."}
    - level: {in: [error, warning]}
    - not:
        remote_ip: {cidr: 10.0.0.0/8}
"""


def failed_login(event: dict[str, Any]) -> bool:
    """The rule above, written independently in Python."""
    return (
        str(event.get("event", "")).startswith("login.")
        and event.get("level") in ("error", "warning")
        and not str(event.get("remote_ip", "")).startswith("10.")
    )


def events(n: int, seed: int = 0) -> list[dict[str, Any]]:
    kinds = ["login.failed", "login.success", "file.upload", "login.locked"]
    levels = ["error", "warning", "info"]
    return [
        {
            "ts": f"2026-11-21T{(i // 60) % 24:02d}:{i % 60:02d}:00Z",
            "event": kinds[(i * 7 + seed) % len(kinds)],
            "level": levels[(i * 5 + seed) % len(levels)],
            "remote_ip": f"10.1.2.{i % 250}" if (i + seed) % 3 == 0 else f"198.51.100.{i % 250}",
            "msg": f'event {i} <b>näive</b> "quoted"',
            "n": i,
        }
        for i in range(n)
    ]


def append(path: Path, items: list[dict[str, Any]], extra: bytes = b"") -> list[bytes]:
    lines = [orjson.dumps(e) for e in items]
    with path.open("ab") as f:
        f.write(b"\n".join(lines) + b"\n" + extra)
    return lines


def received(server: SmtpServer, count: int = 1) -> list[EmailMessage]:
    wait_for(lambda: len(server.messages) >= count, f"{count} message(s) at the SMTP server")
    result = []
    for m in server.messages:
        msg = email.message_from_bytes(m.content, policy=email.policy.default)
        assert isinstance(msg, EmailMessage)
        result.append(msg)
    return result


def attachment_lines(msg: EmailMessage) -> list[bytes]:
    parts = list(msg.iter_attachments())
    assert len(parts) == 1, "the report carries exactly one attachment"
    payload = parts[0].get_payload(decode=True)
    assert isinstance(payload, bytes)
    if parts[0].get_content_type() == "application/gzip":
        payload = gzip.decompress(payload)
    return payload.splitlines()


def caught_up(tmp_path: Path, path: Path) -> bool:
    result = tailmail("status", "-c", str(tmp_path / "config.yaml"))
    return f"{path}: offset {path.stat().st_size}, 0 bytes behind" in result.stdout


def test_selected_lines_arrive_as_the_attachment(
    tmp_path: Path, server: SmtpServer, agents: list[Agent]
) -> None:
    """Events appended to a log come back as exactly the selected lines, in order, in the emailed report."""
    config = make_config(tmp_path, server)
    (tmp_path / "rules.d" / "failed-logins.yaml").write_text(FAILED_LOGINS)
    log = tmp_path / "logs" / "events.json"
    first = events(300)
    lines = append(log, first, extra=b"{broken\n")
    agent = Agent(config, tmp_path).wait_ready()
    agents.append(agent)
    second = events(200, seed=1)
    lines += append(log, second)
    wait_for(lambda: caught_up(tmp_path, log), "the agent to read everything")
    rotated = tailmail("rotate", "-c", str(config))
    assert rotated.returncode == 0, rotated.stderr
    assert "the running service delivers it now" in rotated.stdout
    [msg] = received(server)
    expected = [line for line, e in zip(lines, first + second, strict=True) if failed_login(e)]
    assert expected, "the generated events must select something"
    assert attachment_lines(msg) == expected
    assert server.messages[0].rcpt_tos == ["ops@example.com", "boss@example.com"]
    assert "AUTH PLAIN" in server.commands or "AUTH LOGIN" in server.commands
    assert server.commands.index("STARTTLS") < next(
        i for i, c in enumerate(server.commands) if c.startswith("AUTH")
    )
    text = msg.get_body(("plain",))
    assert text is not None
    body = text.get_content()
    assert "failed-logins" in body
    assert str(len(expected)) in body
    # Delivered: the rotated file is compressed beside the store.
    assert wait_for(
        lambda: list((tmp_path / "store").glob("daily-*.jsonl.gz")),
        "the rotated file to be compressed",
    )
    status = tailmail("status", "-c", str(config)).stdout
    assert re.search(r"last report sent: \d{4}-\d{2}-\d{2} at \d{4}-\d{2}-\d{2}T", status), status
    assert "deliveries (recent history): delivered 1, connection_failed 0" in status, status
    assert agent.stop() == 0
    assert agent.saw("STOPPING=1")
    assert PASSWORD not in agent.log()


def test_restart_resumes_without_loss_or_duplicates(
    tmp_path: Path, server: SmtpServer, agents: list[Agent]
) -> None:
    """Stopping, writing while stopped, and starting again stores every selected line exactly once."""
    config = make_config(tmp_path, server)
    (tmp_path / "rules.d" / "failed-logins.yaml").write_text(FAILED_LOGINS)
    log = tmp_path / "logs" / "events.json"
    batch1, batch2, batch3 = events(200), events(150, seed=2), events(100, seed=4)
    lines = append(log, batch1)
    agent = Agent(config, tmp_path).wait_ready()
    agents.append(agent)
    wait_for(lambda: caught_up(tmp_path, log), "the first batch")
    assert agent.stop() == 0
    lines += append(log, batch2)
    agent = Agent(config, tmp_path).wait_ready()
    agents.append(agent)
    lines += append(log, batch3)
    wait_for(lambda: caught_up(tmp_path, log), "all batches")
    assert tailmail("rotate", "-c", str(config)).returncode == 0
    [msg] = received(server)
    expected = [
        line for line, e in zip(lines, batch1 + batch2 + batch3, strict=True) if failed_login(e)
    ]
    assert attachment_lines(msg) == expected
    agent.stop()


def test_rule_files_are_hot_reloaded(
    tmp_path: Path, server: SmtpServer, agents: list[Agent]
) -> None:
    """A rule file added while running selects new events; a broken edit keeps the previous version."""
    config = make_config(tmp_path, server)
    log = tmp_path / "logs" / "events.json"
    log.write_bytes(b"")
    agent = Agent(config, tmp_path).wait_ready()
    agents.append(agent)
    rule = tmp_path / "rules.d" / "errors.yaml"
    rule.write_text("name: errors\nmatch:\n  level: error\n")
    wait_for(lambda: '"rules.reloaded"' in agent.log(), "the new rule to load")
    append(log, [{"level": "error", "n": 1}, {"level": "info", "n": 2}])
    wait_for(lambda: caught_up(tmp_path, log), "the first events")
    rule.write_text("name: errors\nmatch:\n  level: {in: not-a-list}\n")
    wait_for(
        lambda: "rules.problem" in agent.log() and f"{rule}:3" in agent.log(),
        "the broken rule to be reported with its line",
    )
    append(log, [{"level": "error", "n": 3}, {"level": "warning", "n": 4}])
    wait_for(lambda: caught_up(tmp_path, log), "the second events")
    assert tailmail("rotate", "-c", str(config)).returncode == 0
    [msg] = received(server)
    assert [orjson.loads(x)["n"] for x in attachment_lines(msg)] == [1, 3]
    agent.stop()


def test_sighup_reloads_config_and_rules(
    tmp_path: Path, server: SmtpServer, agents: list[Agent]
) -> None:
    """SIGHUP re-reads the config: a new rules_dir takes effect without a restart."""
    config = make_config(tmp_path, server)
    (tmp_path / "rules.d" / "errors.yaml").write_text("match:\n  level: error\n")
    other = tmp_path / "other-rules"
    other.mkdir()
    (other / "warnings.yaml").write_text("match:\n  level: warning\n")
    log = tmp_path / "logs" / "events.json"
    append(log, [{"level": "error", "n": 1}, {"level": "warning", "n": 2}])
    agent = Agent(config, tmp_path).wait_ready()
    agents.append(agent)
    wait_for(lambda: caught_up(tmp_path, log), "the first events")
    text = config.read_text().replace(str(tmp_path / "rules.d"), str(other))
    config.write_text(text)
    agent.signal(signal.SIGHUP)
    wait_for(lambda: '"config.reloaded"' in agent.log(), "the config reload")
    wait_for(lambda: agent.saw("RELOADING=1"), "RELOADING=1")
    append(log, [{"level": "error", "n": 3}, {"level": "warning", "n": 4}])
    wait_for(lambda: caught_up(tmp_path, log), "the second events")
    assert tailmail("rotate", "-c", str(config)).returncode == 0
    [msg] = received(server)
    assert [orjson.loads(x)["n"] for x in attachment_lines(msg)] == [1, 4]
    assert agent.proc.poll() is None, "SIGHUP must not stop the agent"
    assert agent.stop() == 0


def test_new_files_matching_the_glob_are_read_from_the_start(
    tmp_path: Path, server: SmtpServer, agents: list[Agent]
) -> None:
    """A file that appears after start and matches the source glob is picked up and read whole."""
    config = make_config(tmp_path, server)
    (tmp_path / "rules.d" / "all.yaml").write_text("match:\n  n: {exists: true}\n")
    first = tmp_path / "logs" / "events-1.json"
    append(first, [{"n": 1}])
    agent = Agent(config, tmp_path).wait_ready()
    agents.append(agent)
    second = tmp_path / "logs" / "events-2.json"
    append(second, [{"n": 2}, {"n": 3}])
    wait_for(
        lambda: caught_up(tmp_path, second) and caught_up(tmp_path, first),
        "the new file to be read",
    )
    assert tailmail("rotate", "-c", str(config)).returncode == 0
    [msg] = received(server)
    assert sorted(orjson.loads(x)["n"] for x in attachment_lines(msg)) == [1, 2, 3]
    agent.stop()


def test_rotate_without_service_queues_and_the_service_delivers(
    tmp_path: Path, server: SmtpServer, agents: list[Agent]
) -> None:
    """`tailmail rotate` with no service running queues the report; the service sends it when it starts."""
    config = make_config(tmp_path, server)
    (tmp_path / "rules.d" / "all.yaml").write_text("match:\n  n: {gte: 2}\n")
    append(tmp_path / "logs" / "events.json", [{"n": 1}, {"n": 2}, {"n": 3}])
    result = tailmail("rotate", "-c", str(config))
    assert result.returncode == 0, result.stderr
    assert "when it next runs" in result.stdout
    assert not server.messages
    agent = Agent(config, tmp_path).wait_ready()
    agents.append(agent)
    [msg] = received(server)
    assert [orjson.loads(x)["n"] for x in attachment_lines(msg)] == [2, 3]
    agent.stop()


def test_empty_period_sends_a_mail_that_says_so(
    tmp_path: Path, server: SmtpServer, agents: list[Agent]
) -> None:
    """A period with nothing selected gets a report with no attachment that says so."""
    config = make_config(tmp_path, server)
    (tmp_path / "rules.d" / "none.yaml").write_text("match:\n  level: fatal\n")
    append(tmp_path / "logs" / "events.json", [{"level": "info"}])
    agent = Agent(config, tmp_path).wait_ready()
    agents.append(agent)
    assert tailmail("rotate", "-c", str(config)).returncode == 0
    [msg] = received(server)
    assert not list(msg.iter_attachments())
    body = msg.get_body(("plain",))
    assert body is not None
    assert "no event" in body.get_content().lower()
    agent.stop()


def test_sd_notify_ready_status_and_stopping(
    tmp_path: Path, server: SmtpServer, agents: list[Agent]
) -> None:
    """With NOTIFY_SOCKET set the agent sends READY, STATUS and, on SIGTERM, STOPPING, then exits 0."""
    config = make_config(tmp_path, server)
    agent = Agent(config, tmp_path, env={"WATCHDOG_USEC": "400000"}).wait_ready()
    agents.append(agent)
    assert agent.saw("STATUS=")
    assert agent.saw("MAINPID=")
    wait_for(lambda: agent.saw("WATCHDOG=1"), "a watchdog ping")
    assert agent.stop() == 0
    assert agent.saw("STOPPING=1")


def test_second_instance_on_the_same_state_is_refused(
    tmp_path: Path, server: SmtpServer, agents: list[Agent]
) -> None:
    """Two services on one state_dir would race: the second waits for the lock, then exits 1 saying why."""
    config = make_config(tmp_path, server)
    agent = Agent(config, tmp_path).wait_ready()
    agents.append(agent)
    second = tailmail("run", "-c", str(config), timeout=90)
    assert second.returncode == 1
    assert "in use by another tailmail process" in second.stderr
    agent.stop()


def test_test_email_reports_each_step(tmp_path: Path, server: SmtpServer) -> None:
    """`test-email` through STARTTLS and AUTH prints its steps, exits 0 and the server gets the message."""
    config = make_config(tmp_path, server)
    result = tailmail("test-email", "-c", str(config), "--to", "check@example.com")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "STARTTLS" in result.stdout
    assert PASSWORD not in result.stdout + result.stderr
    wait_for(lambda: server.messages, "the test message")
    assert server.messages[0].rcpt_tos == ["check@example.com"]


def test_test_email_names_the_cause_of_a_failure(tmp_path: Path, server: SmtpServer) -> None:
    """`test-email` with a wrong password exits 1 and says authentication was rejected."""
    config = make_config(tmp_path, server)
    (tmp_path / "password").write_text("wrong\n")
    result = tailmail("test-email", "-c", str(config))
    assert result.returncode == 1
    assert "auth" in result.stderr.lower()
    assert "wrong" not in result.stdout + result.stderr


def test_sigint_stops_cleanly_and_commits(
    tmp_path: Path, server: SmtpServer, agents: list[Agent]
) -> None:
    """SIGINT (Ctrl-C) drains like SIGTERM: exit 0, and what was read is committed."""
    config = make_config(tmp_path, server)
    (tmp_path / "rules.d" / "all.yaml").write_text("match:\n  n: {exists: true}\n")
    log = tmp_path / "logs" / "events.json"
    agent = Agent(config, tmp_path).wait_ready()
    agents.append(agent)
    append(log, [{"n": i} for i in range(100)])
    wait_for(lambda: caught_up(tmp_path, log), "the events to be read")
    agent.signal(signal.SIGINT)
    assert agent.proc.wait(timeout=60) == 0
    agent.close()
    store = tmp_path / "store" / "daily.jsonl"
    assert len(store.read_bytes().splitlines()) == 100
