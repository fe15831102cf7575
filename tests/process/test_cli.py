"""The command line as an operator meets it: real `tailmail` processes, their output and exit codes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
from agent_proc import Agent, tailmail, wait_for, write_config


def base_config(tmp_path: Path, **smtp: Any) -> dict[str, Any]:
    (tmp_path / "rules.d").mkdir(exist_ok=True)
    (tmp_path / "logs").mkdir(exist_ok=True)
    return {
        "state_dir": str(tmp_path / "state"),
        "rules_dir": str(tmp_path / "rules.d"),
        "sources": [
            {
                "name": "app",
                "path": str(tmp_path / "logs" / "*.json"),
                "start_at": "beginning",
                "time_field": "ts",
            }
        ],
        "reports": [
            {
                "name": "daily",
                "store": str(tmp_path / "store" / "daily.jsonl"),
                "to": ["ops@example.com"],
            }
        ],
        "smtp": {
            "host": "127.0.0.1",
            "port": 2525,
            "security": "none",
            "from": "tailmail@example.com",
            **smtp,
        },
    }


def test_check_accepts_a_valid_setup(tmp_path: Path) -> None:
    """`check` exits 0 and says what it found for a valid config and rule."""
    config = write_config(tmp_path / "config.yaml", base_config(tmp_path))
    (tmp_path / "rules.d" / "errors.yaml").write_text("match:\n  level: error\n")
    result = tailmail("check", "-c", str(config))
    assert result.returncode == 0, result.stderr
    assert "1 source(s), 1 report(s), 1 rule(s)" in result.stdout


def test_check_reports_every_problem_with_file_and_line(tmp_path: Path) -> None:
    """`check` prints each config problem as FILE:LINE: message and exits 2."""
    config = tmp_path / "config.yaml"
    config.write_text(
        "state_dir: /tmp/x\n"
        "colour: blue\n"
        "sources:\n"
        "  - name: app\n"
        "    path: /var/log/app.json\n"
        "    start_at: middle\n"
        "reports:\n"
        "  - name: daily\n"
        "    store: /tmp/x/daily.jsonl\n"
        "    to: [not-an-address]\n"
        "smtp:\n"
        "  host: mail\n"
        "  from: a@b.example\n"
    )
    result = tailmail("check", "-c", str(config))
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert any(line.startswith(f"{config}:2: unknown key 'colour'") for line in lines), (
        result.stderr
    )
    assert any(
        line.startswith(f"{config}:6: start_at must be one of end, beginning") for line in lines
    ), result.stderr
    assert any(
        line.startswith(f"{config}:10: to: ") and "not an email address" in line for line in lines
    ), result.stderr


def test_check_reports_rule_problems_with_file_and_line(tmp_path: Path) -> None:
    """`check` validates rule files too and names the rule file and line."""
    config = write_config(tmp_path / "config.yaml", base_config(tmp_path))
    rule = tmp_path / "rules.d" / "bad.yaml"
    rule.write_text("name: bad\nmatch:\n  message: {regex: '(?=look)ahead'}\n")
    result = tailmail("check", "-c", str(config))
    assert result.returncode == 2
    assert f"{rule}:3:" in result.stderr


def test_missing_environment_variable_is_a_config_error(tmp_path: Path) -> None:
    """A ${VAR} that is not set is reported at its line, exit 2."""
    cfg = base_config(tmp_path)
    cfg["smtp"]["host"] = "${TAILMAIL_TEST_UNSET_HOST}"
    config = write_config(tmp_path / "config.yaml", cfg)
    result = tailmail("check", "-c", str(config))
    assert result.returncode == 2
    assert "environment variable TAILMAIL_TEST_UNSET_HOST is not set" in result.stderr


def test_config_defaults_to_the_environment_variable(tmp_path: Path) -> None:
    """Without -c, $TAILMAIL_CONFIG names the config file."""
    config = write_config(tmp_path / "config.yaml", base_config(tmp_path))
    result = tailmail("check", env={"TAILMAIL_CONFIG": str(config)})
    assert result.returncode == 0, result.stderr
    assert str(config) in result.stdout


def test_missing_config_file_is_exit_2(tmp_path: Path) -> None:
    """A config file that does not exist is a configuration error with its name."""
    result = tailmail("check", "-c", str(tmp_path / "nope.yaml"))
    assert result.returncode == 2
    assert "nope.yaml:1: cannot read" in result.stderr


def test_usage_error_is_exit_2() -> None:
    """An unknown command is a usage error."""
    assert tailmail("frobnicate").returncode == 2


def test_test_rules_counts_matches_per_rule(tmp_path: Path) -> None:
    """`test-rules` prints per rule how many events matched and the first matches, from a file and stdin."""
    config = write_config(tmp_path / "config.yaml", base_config(tmp_path))
    (tmp_path / "rules.d" / "errors.yaml").write_text("match:\n  level: error\n")
    (tmp_path / "rules.d" / "logins.yaml").write_text("match:\n  event: {startswith: login.}\n")
    events = [
        {"level": "error", "event": "login.failed"},
        {"level": "info", "event": "login.success"},
        {"level": "error", "event": "disk.full"},
        {"level": "info", "event": "backup.done"},
    ]
    data = b"\n".join(orjson.dumps(e) for e in events) + b"\nnot json\n"
    sample = tmp_path / "sample.json"
    sample.write_bytes(data)
    for args, stdin in (([str(sample)], None), (["-"], data)):
        result = tailmail("test-rules", "-c", str(config), *args, input=stdin)
        assert result.returncode == 0, result.stderr
        assert "5 line(s) read, 1 skipped, 3 selected by at least one rule" in result.stdout
        assert "errors: 2 match(es)" in result.stdout
        assert "logins: 2 match(es)" in result.stdout
        assert "skipped: malformed JSON" in result.stderr
    assert not (tmp_path / "state").exists(), "test-rules must change nothing"


def test_test_rules_with_an_explicit_rules_path(tmp_path: Path) -> None:
    """`--rules FILE` evaluates that file even without a usable config."""
    rule = tmp_path / "one.yaml"
    rule.write_text("name: big\nmatch:\n  bytes: {gte: 100}\n")
    sample = tmp_path / "s.json"
    sample.write_text('{"bytes": 100}\n{"bytes": "100"}\n{"bytes": 99.5}\n')
    result = tailmail(
        "test-rules", "-c", str(tmp_path / "missing.yaml"), "--rules", str(rule), str(sample)
    )
    assert result.returncode == 0, result.stderr
    assert "big: 1 match(es)" in result.stdout


def test_status_before_and_after_a_rotation(tmp_path: Path) -> None:
    """`status` works without a running service and shows sources, reports and the outbox."""
    config = write_config(tmp_path / "config.yaml", base_config(tmp_path))
    (tmp_path / "rules.d" / "errors.yaml").write_text("match:\n  level: error\n")
    (tmp_path / "logs" / "a.json").write_text('{"level": "error"}\n{"level": "info"}\n')
    result = tailmail("status", "-c", str(config))
    assert result.returncode == 0
    assert "has not run" in result.stdout
    rotated = tailmail("rotate", "-c", str(config))
    assert rotated.returncode == 0, rotated.stderr
    assert "1 report(s) queued" in rotated.stdout
    status = tailmail("status", "-c", str(config))
    assert status.returncode == 0, status.stderr
    assert "service: not running" in status.stdout
    assert "a.json: offset 37, 0 bytes behind" in status.stdout
    assert "daily: period" in status.stdout
    assert "outbox: 1 queued" in status.stdout


def test_rotate_rejects_an_unknown_report(tmp_path: Path) -> None:
    """`rotate --report NAME` with a name not in the config fails with exit 1 and says which exist."""
    config = write_config(tmp_path / "config.yaml", base_config(tmp_path))
    result = tailmail("rotate", "-c", str(config), "--report", "weekly")
    assert result.returncode == 1
    assert "no report named 'weekly'; reports: daily" in result.stderr


def test_logs_are_json_lines_off_a_terminal_and_readable_on_one(tmp_path: Path) -> None:
    """log.format auto: JSON lines when stderr is a pipe, console lines when it is a terminal."""
    import os
    import pty
    import subprocess
    import sys

    config = write_config(tmp_path / "config.yaml", base_config(tmp_path))
    piped = tailmail("rotate", "-c", str(config))
    assert piped.returncode == 0, piped.stderr
    queued = [line for line in piped.stderr.splitlines() if "report.queued" in line]
    assert queued and orjson.loads(queued[0])["event"] == "report.queued"

    primary, secondary = pty.openpty()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "agent", "rotate", "-c", str(config)],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=secondary, timeout=60,
        )  # fmt: skip
        os.close(secondary)
        output = b""
        while True:
            try:
                chunk = os.read(primary, 65536)
            except OSError:  # EIO: the terminal's other side is closed and drained
                break
            if not chunk:
                break
            output += chunk
    finally:
        os.close(primary)
    assert proc.returncode == 0
    text = output.decode(errors="replace")
    assert "report.queued" in text
    assert not text.lstrip().startswith("{"), "a terminal gets console lines, not JSON"


def test_status_counts_bad_lines_per_source(tmp_path: Path) -> None:
    """Bad lines are counted per source; `status` shows the current period's count while it runs."""
    cfg = base_config(tmp_path)
    cfg["sources"].append(
        {"name": "web", "path": str(tmp_path / "logs" / "web.log"), "start_at": "beginning"}
    )
    config = write_config(tmp_path / "config.yaml", cfg)
    app = tmp_path / "logs" / "a.json"
    app.write_text('{"level": "error"}\nnot json\n[1]\n')
    (tmp_path / "logs" / "web.log").write_text('{"ok": true}\n')
    agent = Agent(config, tmp_path).wait_ready()
    try:
        wait_for(
            lambda: (
                "app: 2 bad line(s) skipped this period"
                in tailmail("status", "-c", str(config)).stdout
            ),
            "status to show the skipped lines",
        )
        status = tailmail("status", "-c", str(config)).stdout
        assert "web:" in status and "web: 0 bad" not in status and "web: 1 bad" not in status
        assert f"service: running (pid {agent.proc.pid})" in status
    finally:
        assert agent.stop() == 0


def test_demo_ends_with_a_report_on_disk(tmp_path: Path) -> None:
    """`tailmail demo` runs the agent against its own SMTP sink and leaves the received .eml."""
    result = tailmail("demo", "--dir", str(tmp_path / "demo"), timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    emls = list((tmp_path / "demo" / "mail").glob("*.eml"))
    assert len(emls) == 1
    assert f"Report received: {emls[0]}" in result.stdout
    assert "Attachment: daily-" in result.stdout


def test_rotate_says_so_when_the_service_hangs_up_without_answering(tmp_path: Path) -> None:
    """A service that dies mid-request: `rotate` exits 1 with a sentence, not a traceback."""
    import fcntl
    import socket
    import threading

    config = write_config(tmp_path / "config.yaml", base_config(tmp_path))
    state = tmp_path / "state"
    state.mkdir()
    lock = open(state / "lock", "w")  # noqa: SIM115 - held for the whole test
    fcntl.flock(lock, fcntl.LOCK_EX)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(state / "control.sock"))
    server.listen(1)

    def hang_up() -> None:
        conn, _ = server.accept()
        conn.recv(4096)  # take the request, then die without answering
        conn.close()

    thread = threading.Thread(target=hang_up)
    thread.start()
    try:
        result = tailmail("rotate", "-c", str(config))
    finally:
        thread.join(timeout=10)
        server.close()
        lock.close()
    assert result.returncode == 1
    assert "closed the connection without answering" in result.stderr
    assert "Traceback" not in result.stderr
