"""Delivery as an operator lives it (issue 4): the real `tailmail run`, `test-email`, `check` and
`status` processes against real SMTP servers on loopback (tests/support/smtp_sink.py), no mocks.

A server that is "down" is a socket bound to its port and not listening (connections refused);
it "comes back" when the SMTP server is started on that very socket, so the port is the same.
"""

from __future__ import annotations

import base64
import email
import email.policy
import gzip
import re
import signal
import socket
from collections.abc import Callable, Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import orjson
import pytest
import trustme
from agent_proc import Agent, tailmail, wait_for, write_config
from smtp_sink import Fault, SmtpServer, bind_port, expired_cert

StartServer = Callable[..., SmtpServer]

USER = "tailmail"
PASSWORD = "Zq9-unique-Pw-7f3c"  # distinctive: searched for in everything the agent writes
SECRET_FORMS = (
    PASSWORD,
    base64.b64encode(PASSWORD.encode()).decode(),
    base64.b64encode(f"\0{USER}\0{PASSWORD}".encode()).decode(),
)
FAST_RETRY = {"retry_initial": "1s", "retry_max": "1s"}


def make_config(
    tmp_path: Path,
    port: int,
    *,
    security: str = "starttls",
    ca_file: Path | None = None,
    smtp: dict[str, Any] | None = None,
    report: dict[str, Any] | None = None,
) -> Path:
    """A config for one source (logs/events.json, every event selected) and one report."""
    for sub in ("rules.d", "logs", "store"):
        (tmp_path / sub).mkdir(exist_ok=True)
    (tmp_path / "rules.d" / "all.yaml").write_text("match:\n  n: {exists: true}\n")
    smtp_section: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": port,
        "security": security,
        "username": USER,
        "password": PASSWORD,
        "from": "Tailmail <tailmail@example.com>",
        "timeout": 10,
    }
    if ca_file is not None:
        smtp_section["ca_file"] = str(ca_file)
    config = {
        "state_dir": str(tmp_path / "state"),
        "rules_dir": str(tmp_path / "rules.d"),
        "sources": [
            {"name": "app", "path": str(tmp_path / "logs" / "events.json"), "start_at": "beginning"}
        ],
        "reports": [
            {
                "name": "daily",
                "store": str(tmp_path / "store" / "daily.jsonl"),
                "to": ["ops@example.com"],
                "compress": "gzip",
                **(report or {}),
            }
        ],
        "smtp": {**smtp_section, **(smtp or {})},
        "log": {"level": "debug", "format": "json"},
    }
    return write_config(tmp_path / "config.yaml", config)


def append(tmp_path: Path, *numbers: int) -> list[bytes]:
    lines = [orjson.dumps({"n": n, "msg": f"event {n}"}) for n in numbers]
    with (tmp_path / "logs" / "events.json").open("ab") as f:
        f.write(b"".join(line + b"\n" for line in lines))
    return lines


def rotate(config: Path) -> str:
    """`tailmail rotate`; returns the id of the one report it queued."""
    result = tailmail("rotate", "-c", str(config))
    assert result.returncode == 0, result.stdout + result.stderr
    [outbox_id] = re.findall(r"^queued (\S+)$", result.stdout, re.M)
    return outbox_id


def logged(agent: Agent, event: str) -> list[dict[str, Any]]:
    """The agent's JSON log lines for `event`."""
    found = []
    for line in agent.log().splitlines():
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if isinstance(record, dict) and record.get("event") == event:
            found.append(record)
    return found


def outbox_counts(config: Path) -> tuple[int, int, int]:
    """(queued, deferred, failed) as `tailmail status` shows them."""
    result = tailmail("status", "-c", str(config))
    m = re.search(r"^outbox: (\d+) queued, (\d+) deferred, (\d+) failed$", result.stdout, re.M)
    assert m, result.stdout + result.stderr
    return int(m[1]), int(m[2]), int(m[3])


def parse(content: bytes) -> EmailMessage:
    msg = email.message_from_bytes(content, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def attachment_lines(msg: EmailMessage) -> list[bytes]:
    [part] = list(msg.iter_attachments())
    payload = part.get_payload(decode=True)
    assert isinstance(payload, bytes)
    if part.get_content_type() == "application/gzip":
        payload = gzip.decompress(payload)
    return payload.splitlines()


def plain_text(msg: EmailMessage) -> str:
    """The plain-text part with its wrapped lines joined, for searching."""
    body = msg.get_body(("plain",))
    assert body is not None
    return " ".join(body.get_content().split())


def message_id(outbox_id: str) -> str:
    """The deterministic Message-ID of a report (agent/pipeline/pipeline.py)."""
    return f"<tailmail.{outbox_id}@{socket.gethostname()}>"


@pytest.fixture
def down_port() -> Iterator[socket.socket]:
    """A loopback port where the SMTP server is down (refused), to be started later on it."""
    sock = bind_port()
    yield sock
    sock.close()


def start(agents: list[Agent], config: Path, tmp_path: Path) -> Agent:
    agent = Agent(config, tmp_path).wait_ready()
    agents.append(agent)
    return agent


# -- nothing lost: kill -9 at every moment of a delivery --------------------------------------


def test_report_queued_while_server_down_survives_kill_9_and_arrives_once(
    tmp_path: Path,
    smtp_server: StartServer,
    ca_file: Path,
    down_port: socket.socket,
    agents: list[Agent],
) -> None:
    """A report queued while the server is down survives kill -9 between retries, during a
    connection and in the middle of DATA; once the server is back on its port it is received
    exactly once, its Message-ID the same in every attempt, and only then is its file compressed."""
    port = down_port.getsockname()[1]
    config = make_config(tmp_path, port, ca_file=ca_file, smtp=FAST_RETRY)
    lines = append(tmp_path, 1, 2, 3)
    agent = start(agents, config, tmp_path)
    store = tmp_path / "store" / "daily.jsonl"
    wait_for(lambda: store.exists() and b"event 3" in store.read_bytes(), "the events stored")
    outbox_id = rotate(config)

    # Refused, retried, then killed between two attempts.
    wait_for(lambda: len(logged(agent, "smtp.connection_failed")) >= 2, "two refused attempts")
    assert logged(agent, "smtp.connection_failed")[0]["cause"] == "refused"
    agent.kill()
    assert sum(outbox_counts(config)[:2]) == 1 and outbox_counts(config)[2] == 0
    [rotated] = list((tmp_path / "store").glob("daily-*.jsonl"))
    assert not list((tmp_path / "store").glob("*.gz")), "compressed before it was delivered"

    # The port listens but nobody speaks: killed while it waits for the greeting.
    down_port.listen(8)
    agent = start(agents, config, tmp_path)
    down_port.settimeout(30)
    connection, _ = down_port.accept()
    agent.kill()
    connection.close()

    # The server is back on the same port, and stalls at the end of DATA: killed there.
    server = smtp_server(
        tls="starttls", auth=(USER, PASSWORD), require_auth=True, sock=down_port, stall_data=1
    )
    assert server.port == port
    agent = start(agents, config, tmp_path)
    wait_for(lambda: server.data_attempts, "the message to reach the end of DATA")
    agent.kill()
    assert server.messages == [], "a DATA without its 250 was not taken"
    assert rotated.exists() and not rotated.with_name(rotated.name + ".gz").exists()

    # Restarted: delivered once, then the rotated file is compressed.
    agent = start(agents, config, tmp_path)
    wait_for(lambda: logged(agent, "smtp.delivered"), "the delivery")
    wait_for(lambda: rotated.with_name(rotated.name + ".gz").exists(), "compression after it")
    assert outbox_counts(config) == (0, 0, 0)
    assert agent.stop() == 0
    [received] = server.messages
    msg = parse(received.content)
    assert msg["Message-ID"] == message_id(outbox_id)
    assert attachment_lines(msg) == lines
    attempts = [parse(content)["Message-ID"] for content in server.data_attempts]
    assert attempts == [msg["Message-ID"]] * 2
    assert received.rcpt_tos == ["ops@example.com"]
    assert not any(form in agent.log() for form in SECRET_FORMS)


def test_lost_250_resends_the_same_message_recognisably(
    tmp_path: Path, smtp_server: StartServer, agents: list[Agent]
) -> None:
    """Killed after the server took the DATA but before its 250 arrived, the agent sends the
    report again after the restart: byte for byte the same, same Message-ID, so the resend is
    recognisable (SMTP offers nothing better than at least once)."""
    server = smtp_server(tls="starttls", auth=(USER, PASSWORD), lose_reply=1)
    config = make_config(tmp_path, server.port, ca_file=server.ca_path)
    append(tmp_path, 1)
    agent = start(agents, config, tmp_path)
    outbox_id = rotate(config)
    wait_for(lambda: server.messages, "the message, taken without an answer")
    agent.kill()
    agent = start(agents, config, tmp_path)
    wait_for(lambda: logged(agent, "smtp.delivered"), "the resend")
    assert agent.stop() == 0
    first, second = server.messages
    assert first.content == second.content
    assert parse(first.content)["Message-ID"] == message_id(outbox_id)
    history = (tmp_path / "state" / "outbox" / "_history.jsonl").read_bytes().splitlines()
    assert [orjson.loads(line)["event"] for line in history] == ["delivered"]


def test_kill_9_while_the_server_says_goodbye_does_not_resend(
    tmp_path: Path, smtp_server: StartServer, agents: list[Agent]
) -> None:
    """The outcome is recorded the moment the server accepts DATA: killed while a slow server
    answers QUIT, the restarted agent does not send the report again (and compresses its file)."""
    server = smtp_server(tls="starttls", auth=(USER, PASSWORD), quit_delay=30.0)
    config = make_config(tmp_path, server.port, ca_file=server.ca_path)
    append(tmp_path, 1)
    agent = start(agents, config, tmp_path)
    first = rotate(config)
    wait_for(lambda: "QUIT" in server.commands, "the goodbye")
    agent.kill()
    agent = start(agents, config, tmp_path)
    append(tmp_path, 2)
    second = rotate(config)  # sent after anything older still queued: proves nothing was
    wait_for(lambda: len(server.messages) >= 2, "the second report")
    wait_for(lambda: outbox_counts(config) == (0, 0, 0), "an empty outbox")
    assert agent.stop() == 0
    ids = [parse(m.content)["Message-ID"] for m in server.messages]
    assert ids == [message_id(first), message_id(second)]
    assert len(list((tmp_path / "store").glob("daily-*.jsonl.gz"))) == 2


# -- the next report tells of earlier delivery problems ----------------------------------------


@pytest.mark.parametrize(
    ("fault", "event", "said"),
    [
        (Fault("DATA", "554 5.6.0 content rejected", times=1), "smtp.final_delivery_failed",
         "not delivered to ops@example.com: refused for good: 554 5.6.0 content rejected"),
        (Fault("DATA", "451 4.3.0 local error", times=1), "smtp.delivery_failed",
         "not yet delivered to ops@example.com after 1 attempt"),
    ],
)  # fmt: skip
def test_next_report_lists_delivery_problems_and_is_red(
    tmp_path: Path,
    smtp_server: StartServer,
    agents: list[Agent],
    fault: Fault,
    event: str,
    said: str,
) -> None:
    """A report that failed (5xx) or is still being retried (4xx) is listed in the next report,
    which is red; the report after a successful one is green again."""
    server = smtp_server(faults=[fault])
    retry = {"retry_initial": "1h", "retry_max": "1h"}  # the deferred one stays deferred
    config = make_config(
        tmp_path, server.port, security="none", smtp={"username": None, "password": None, **retry}
    )
    agent = start(agents, config, tmp_path)
    append(tmp_path, 1)
    first = rotate(config)
    wait_for(lambda: logged(agent, event), event)
    append(tmp_path, 2)
    rotate(config)
    wait_for(lambda: server.messages, "the second report")
    second = parse(server.messages[0].content)
    assert second["X-Tailmail-Status"] == "red"
    text = plain_text(second)
    assert "1 earlier report delivery failed" in text
    assert said in text
    assert first in (tmp_path / "state" / "outbox" / "_history.jsonl").read_text()
    if event == "smtp.final_delivery_failed":
        append(tmp_path, 3)
        rotate(config)
        wait_for(lambda: len(server.messages) == 2, "the third report")
        assert parse(server.messages[1].content)["X-Tailmail-Status"] == "green"
    assert agent.stop() == 0


# -- TLS and credentials ------------------------------------------------------------------------


def test_stripped_starttls_sends_no_auth_mail_or_data(
    tmp_path: Path, smtp_server: StartServer, agents: list[Agent]
) -> None:
    """With security: starttls and a server (or an attacker) not offering STARTTLS, the running
    agent sends nothing after EHLO: no AUTH, MAIL or DATA; the report stays queued."""
    server = smtp_server(
        tls="none", auth=(USER, PASSWORD), offer_auth_in_clear=True, require_auth=True
    )
    config = make_config(tmp_path, server.port, smtp=FAST_RETRY)
    append(tmp_path, 1)
    rotate(config)
    agent = start(agents, config, tmp_path)
    wait_for(lambda: len(logged(agent, "smtp.connection_failed")) >= 2, "two attempts")
    failure = logged(agent, "smtp.connection_failed")[0]
    assert (failure["step"], failure["cause"]) == ("starttls", "starttls_missing")
    assert agent.stop() == 0
    assert {c.split()[0] for c in server.commands} == {"EHLO"}
    assert server.auth_attempts == [] and server.data_attempts == []
    assert sum(outbox_counts(config)[:2]) == 1


def test_plaintext_login_needs_allow_plaintext_auth_at_check_and_at_run(
    tmp_path: Path, smtp_server: StartServer, agents: list[Agent]
) -> None:
    """security: none with a username is refused by `check` and by `run` (nothing is sent);
    only allow_plaintext_auth: true lets the password go in the clear."""
    server = smtp_server(tls="none", auth=(USER, PASSWORD), offer_auth_in_clear=True)
    config = make_config(tmp_path, server.port, security="none")
    checked = tailmail("check", "-c", str(config))
    assert checked.returncode == 2
    assert "security: none would send the password unencrypted" in checked.stderr
    ran = tailmail("run", "-c", str(config))
    assert ran.returncode == 2 and "allow_plaintext_auth" in ran.stderr
    assert server.commands == []

    config = make_config(
        tmp_path, server.port, security="none", smtp={"allow_plaintext_auth": True}
    )
    assert tailmail("check", "-c", str(config)).returncode == 0
    append(tmp_path, 1)
    agent = start(agents, config, tmp_path)
    rotate(config)
    wait_for(lambda: server.messages, "the report, sent as explicitly allowed")
    assert server.auth_attempts == [("PLAIN", USER, True)]
    assert agent.stop() == 0


def test_verify_tls_false_warns_at_every_start(
    tmp_path: Path, smtp_server: StartServer, agents: list[Agent]
) -> None:
    """verify_tls: false logs a warning at every start and reload; mail still goes encrypted."""
    untrusted = trustme.CA()  # neither the system nor the config trusts it
    server = smtp_server(tls="ssl", ca=untrusted, cert_names=("mail.example.test",))
    config = make_config(
        tmp_path, server.port, security="ssl", smtp={"verify_tls": False, "username": None, "password": None}
    )  # fmt: skip
    agent = start(agents, config, tmp_path)
    assert len(logged(agent, "smtp.tls_unverified")) == 1
    agent.signal(signal.SIGHUP)
    wait_for(lambda: len(logged(agent, "smtp.tls_unverified")) == 2, "the warning after reload")
    append(tmp_path, 1)
    rotate(config)
    wait_for(lambda: server.messages, "the report over unverified TLS")
    assert agent.stop() == 0
    agent = start(agents, config, tmp_path)
    assert agent.stop() == 0
    warnings = logged(agent, "smtp.tls_unverified")  # the log holds all three runs
    assert len(warnings) == 3 and {w["level"] for w in warnings} == {"warning"}
    doctor = tailmail("test-email", "-c", str(config))
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    assert "certificate not verified (verify_tls: false)" in doctor.stdout


@pytest.mark.parametrize("path", ["auth-rejected", "echoed-by-server"])
def test_password_never_appears_in_logs_errors_status_or_files(
    tmp_path: Path, smtp_server: StartServer, agents: list[Agent], path: str
) -> None:
    """Through a rejected login, or a server that echoes the password in its answer, neither
    the password nor its base64 forms reach the log, `status`, `test-email`, the state files or
    the next report."""
    if path == "auth-rejected":
        server = smtp_server(tls="starttls", auth=(USER, "the-server-wants-another"))
        event = "smtp.connection_failed"
    else:
        echo = f"550 5.7.1 not for {' '.join(SECRET_FORMS)}"
        server = smtp_server(
            tls="starttls", auth=(USER, PASSWORD), faults=[Fault("MAIL", echo, times=2)]
        )
        event = "smtp.final_delivery_failed"
    config = make_config(tmp_path, server.port, ca_file=server.ca_path, smtp=FAST_RETRY)
    append(tmp_path, 1)
    agent = start(agents, config, tmp_path)
    rotate(config)
    wait_for(lambda: logged(agent, event), event)
    outputs = [agent.log()]
    for command in ("status", "test-email", "check"):
        result = tailmail(command, "-c", str(config))
        outputs += [result.stdout, result.stderr]
    if path == "echoed-by-server":
        assert "********" in outputs[-4]  # test-email's step line, scrubbed
        append(tmp_path, 2)
        rotate(config)
        wait_for(lambda: server.messages, "the next report, which lists the failure")
        outputs.append(server.messages[0].content.decode())
        assert "********" in plain_text(parse(server.messages[0].content))
    assert agent.stop() == 0
    outputs.append(agent.log())
    for file in (tmp_path / "state").rglob("*"):
        if file.is_file():
            outputs.append(file.read_bytes().decode("utf-8", "replace"))
    for form in SECRET_FORMS:
        assert not any(form in text for text in outputs), f"{form!r} leaked"


# -- headers and addresses ---------------------------------------------------------------------


def test_line_breaks_never_reach_a_header_or_command(
    tmp_path: Path, smtp_server: StartServer, agents: list[Agent]
) -> None:
    """A store file name with CR LF gives a clean attachment name and no extra header;
    `test-email --to` with a line break is a usage error and nothing is sent."""
    server = smtp_server(tls="none")
    store = tmp_path / "store" / "daily\r\nBcc: evil@example.com.jsonl"
    config = make_config(
        tmp_path, server.port, security="none",
        smtp={"username": None, "password": None}, report={"store": str(store)},
    )  # fmt: skip
    doctor = tailmail("test-email", "-c", str(config), "--to", "ops@example.com\r\nBcc: x@y.org")
    assert doctor.returncode == 2 and "line break" in doctor.stderr
    assert server.commands == []
    append(tmp_path, 1)
    agent = start(agents, config, tmp_path)
    rotate(config)
    wait_for(lambda: server.messages, "the report")
    assert agent.stop() == 0
    [received] = server.messages
    msg = parse(received.content)
    assert received.rcpt_tos == ["ops@example.com"]
    assert msg["Bcc"] is None and not re.search(rb"^Bcc:", received.content, re.M | re.I)
    [part] = list(msg.iter_attachments())
    assert part.get_filename().startswith("daily Bcc: evil@example.com-")


# -- the SMTP doctor -----------------------------------------------------------------------------


def test_doctor_prints_every_step_and_compares_size(
    tmp_path: Path, smtp_server: StartServer
) -> None:
    """`tailmail test-email` says resolve, connect, the certificate's subject, issuer and expiry,
    EHLO and its extensions, STARTTLS, AUTH mechanisms, the SIZE limit against the biggest
    report, MAIL, RCPT and DATA; a limit too small is a warning naming what to set."""
    server = smtp_server(
        tls="starttls", auth=(USER, PASSWORD), require_auth=True, data_size_limit=4 * 1024 * 1024
    )
    config = make_config(
        tmp_path, server.port, ca_file=server.ca_path, report={"max_attachment_bytes": "10MiB"}
    )
    result = tailmail("test-email", "-c", str(config), "--to", "check@example.com")
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout.splitlines()
    assert [line.split(":")[0] for line in out] == [
        "resolve", "connect", "ehlo", "starttls", "tls", "ehlo", "auth", "auth", "size",
        "mail", "rcpt", "data", "OK",
    ]  # fmt: skip
    assert out[0] == "resolve: 127.0.0.1 -> 127.0.0.1"
    tls = out[4]
    assert "certificate verified: subject" in tls and "issuer O=trustme" in tls
    assert re.search(r"expires \d{4}-\d{2}-\d{2} \(in \d+ days\)", tls)
    assert "STARTTLS" in out[2] and "SIZE 4194304" in out[2]
    assert "AUTH" in out[5] and "PLAIN" in out[6] and f"logged in as {USER}" in out[7]
    assert "up to 4.0 MiB" in out[8] and "report daily" in out[8] and "WARNING" in out[8]
    assert out[9].startswith("mail: FROM:<tailmail@example.com> -> 250")
    assert out[10].startswith("rcpt: TO:<check@example.com> -> 250")
    assert out[11].startswith("data: ") and "-> 250" in out[11]
    assert "set its max_attachment_bytes to" in result.stderr
    assert not any(form in result.stdout + result.stderr for form in SECRET_FORMS)
    assert server.messages[0].rcpt_tos == ["check@example.com"]


# Each failure class of issue 4 item 7: server options, smtp overrides, the failed step and
# cause, and words of the final sentence.
DOCTOR: dict[str, tuple[dict[str, Any], dict[str, Any], str, str, str]] = {
    "dns": ({}, {"host": "no-such-host.invalid"}, "resolve", "dns", "could not be resolved"),
    "refused": ({}, {"port": "closed"}, "connect", "refused", "Nothing accepts connections"),
    "timeout": ({}, {"port": "silent", "timeout": 1}, "connect", "timeout", "did not answer in time"),
    "no-starttls": ({"tls": "none"}, {}, "starttls", "starttls_missing", "does not offer STARTTLS"),
    "untrusted": ({}, {"ca_file": None}, "tls", "tls_untrusted", "not signed by a trusted authority"),
    "hostname": ({"cert_names": ("mail.example.test",)}, {}, "tls", "tls_hostname", "not valid for the name"),
    "expired": ({"cert": "expired"}, {}, "tls", "tls_expired", "outside its validity period"),
    "auth": ({}, {"password": "not-" + PASSWORD}, "auth", "auth_rejected", "rejected the login"),
    "sender": ({"faults": [Fault("MAIL", "553 5.7.1 not yours")]}, {}, "mail", "sender_rejected", "refused the sender"),
    "recipient": ({"faults": [Fault("RCPT", "550 5.1.1 no such user")]}, {}, "rcpt", "recipient_rejected", "refused the recipient"),
    "temporary": ({"faults": [Fault("DATA", "451 4.3.0 try later")]}, {}, "data", "temporary", "reported a temporary problem"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(DOCTOR))
def test_doctor_names_the_cause_of_each_failure_class(
    tmp_path: Path,
    smtp_server: StartServer,
    ca: trustme.CA,
    closed_port: int,
    silent_port: int,
    case: str,
) -> None:
    """`tailmail test-email` exits 1, prints the failed step with its cause and ends with one
    sentence naming the cause and what to do; no password in its output."""
    options, overrides, step, cause, words = DOCTOR[case]
    options = {"tls": "starttls", "auth": (USER, PASSWORD), **options}
    if options.get("cert") == "expired":
        options["cert"] = expired_cert(ca)
    server = smtp_server(**options)
    smtp = {"ca_file": str(server.ca_path), "port": server.port, **overrides}
    smtp["port"] = {"closed": closed_port, "silent": silent_port}.get(smtp["port"], smtp["port"])
    if smtp["ca_file"] is None:
        del smtp["ca_file"]
    config = make_config(tmp_path, server.port, smtp=smtp)
    result = tailmail("test-email", "-c", str(config))
    assert result.returncode == 1, result.stdout + result.stderr
    out = result.stdout.splitlines()
    assert out[-1].startswith(f"{step}: FAILED ({cause})"), result.stdout
    [sentence] = result.stderr.splitlines()
    assert sentence.startswith("FAILED: ") and words in sentence and sentence.endswith(".")
    assert sentence.count(". ") == 0, "one sentence"
    assert not any(form in result.stdout + result.stderr for form in SECRET_FORMS)
    if step in ("starttls", "tls"):
        assert not any(c.startswith(("AUTH", "MAIL")) for c in server.commands)
