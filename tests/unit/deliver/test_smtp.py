"""agent/deliver/smtp.py (the SMTP transport) and doctor.py (`tailmail test-email`) against real
SMTP servers on loopback (tests/support/smtp_sink.py)."""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import ssl
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import trustme
from smtp_sink import Fault, SmtpServer, expired_cert  # fixtures: see conftest.py

from agent.config.model import SmtpConfig
from agent.core.errors import DeliveryError, TailmailError
from agent.deliver import (
    ConnectionFailure,
    DeliveryResult,
    OnAccepted,
    Outgoing,
    PermanentFailure,
    SmtpFailure,
    SmtpTransport,
    TransientFailure,
    attachment_within,
    doctor,  # doctor.test_email: imported bare, pytest would collect it as a test
    raise_if_cancelled,
    report_size,
    tls_context,
)

StartServer = Callable[..., SmtpServer]

PASSWORD = "correct horse battery staple"
MESSAGE = (
    b"From: Tailmail <tailmail@example.com>\r\n"
    b"To: ops@example.com\r\n"
    b"Subject: daily report\r\n"
    b"\r\n"
    b"first line\r\n"
    b".a line that starts with a dot\r\n"
    b"last line\r\n"
)


async def deliver(
    smtp: SmtpConfig,
    message: bytes,
    recipients: Sequence[str],
    on_accepted: OnAccepted = lambda result: None,
) -> DeliveryResult:
    """One send through the transport, as the sender makes it."""
    return await SmtpTransport(smtp).send(Outgoing("t-1", message, tuple(recipients)), on_accepted)


async def fail(smtp: SmtpConfig, recipients: list[str] | None = None) -> SmtpFailure:
    with pytest.raises(SmtpFailure) as info:
        await deliver(smtp, MESSAGE, recipients or ["ops@example.com"])
    return info.value


# -- delivery over each kind of security --


async def test_starttls_with_auth_delivers(smtp_server: StartServer) -> None:
    """STARTTLS, then EHLO again, then AUTH, then the message exactly as given."""
    server = smtp_server(tls="starttls", auth=("tailmail", PASSWORD), require_auth=True)
    result = await deliver(server.config(), MESSAGE, ["ops@example.com", "Dev <dev@example.com>"])
    assert result == DeliveryResult(("ops@example.com", "Dev <dev@example.com>"), {}, {})
    [received] = server.messages
    assert received.mail_from == "tailmail@example.com"  # display name stripped
    assert received.rcpt_tos == ["ops@example.com", "dev@example.com"]
    assert received.content == MESSAGE
    assert [c.split()[0] for c in server.commands] == [
        "EHLO", "STARTTLS", "EHLO", "AUTH", "MAIL", "RCPT", "RCPT", "DATA", "QUIT",
    ]  # fmt: skip
    assert server.auth_attempts == [("PLAIN", "tailmail", True)]


async def test_ssl_with_auth_delivers(smtp_server: StartServer) -> None:
    """Implicit TLS: the session is encrypted from the first byte, then AUTH and the message."""
    server = smtp_server(tls="ssl", auth=("tailmail", PASSWORD), require_auth=True)
    result = await deliver(server.config(), MESSAGE, ["ops@example.com"])
    assert result.accepted == ("ops@example.com",)
    assert server.messages[0].content == MESSAGE
    assert "STARTTLS" not in server.commands
    assert server.auth_attempts == [("PLAIN", "tailmail", True)]


async def test_login_mechanism_is_used_when_plain_is_not_offered(smtp_server: StartServer) -> None:
    """A server offering only AUTH LOGIN gets a LOGIN."""
    server = smtp_server(tls="ssl", auth=("tailmail", PASSWORD), auth_mechanisms=("LOGIN",))
    await deliver(server.config(), MESSAGE, ["ops@example.com"])
    assert server.auth_attempts == [("LOGIN", "tailmail", True)]


async def test_server_reply_to_data_is_kept(smtp_server: StartServer) -> None:
    """The result carries the server's answer to the message (its queue id, for the log)."""
    server = smtp_server()
    result = await deliver(server.config(), MESSAGE, ["ops@example.com"])
    assert result.reply == (250, "2.0.0 OK queued")


async def test_plaintext_delivers(smtp_server: StartServer) -> None:
    """security: none sends in the clear, without login when no username is set."""
    server = smtp_server(tls="none")
    result = await deliver(server.config(), MESSAGE, ["ops@example.com"])
    assert result.accepted == ("ops@example.com",)
    assert server.messages[0].content == MESSAGE
    assert not any(c.startswith(("STARTTLS", "AUTH")) for c in server.commands)


async def test_duplicate_recipients_get_one_rcpt(smtp_server: StartServer) -> None:
    """A recipient listed twice is sent one RCPT."""
    server = smtp_server()
    await deliver(server.config(), MESSAGE, ["ops@example.com", "ops@example.com"])
    assert server.messages[0].rcpt_tos == ["ops@example.com"]


# -- TLS and its failures --


async def test_starttls_not_offered_fails_before_auth_and_mail(smtp_server: StartServer) -> None:
    """starttls against a server without STARTTLS fails; the server saw no AUTH and no MAIL."""
    server = smtp_server(tls="none", auth=("tailmail", PASSWORD), offer_auth_in_clear=True)
    failure = await fail(server.config(security="starttls"))
    assert (failure.step, failure.cause, failure.transient) == (
        "starttls",
        "starttls_missing",
        True,
    )
    assert [c.split()[0] for c in server.commands] == ["EHLO"]
    assert server.auth_attempts == []
    assert server.messages == []


@pytest.mark.parametrize("tls", ["starttls", "ssl"])
async def test_untrusted_ca_is_refused(smtp_server: StartServer, tls: str) -> None:
    """A certificate from a CA the system does not trust fails as tls_untrusted."""
    server = smtp_server(tls=tls)
    failure = await fail(server.config(ca_file=None))
    assert (failure.step, failure.cause) == ("tls", "tls_untrusted")
    assert "MAIL" not in " ".join(server.commands)


@pytest.mark.parametrize("tls", ["starttls", "ssl"])
async def test_wrong_host_name_is_refused(smtp_server: StartServer, tls: str) -> None:
    """A trusted certificate for another name fails as tls_hostname."""
    server = smtp_server(tls=tls, cert_names=("mail.example.test",))
    failure = await fail(server.config())
    assert (failure.step, failure.cause) == ("tls", "tls_hostname")
    assert "127.0.0.1" in failure.text


async def test_expired_certificate_is_refused(smtp_server: StartServer, ca: trustme.CA) -> None:
    """An expired certificate fails as tls_expired."""
    server = smtp_server(tls="ssl", cert=expired_cert(ca))
    failure = await fail(server.config())
    assert (failure.step, failure.cause) == ("tls", "tls_expired")


async def test_ca_file_trusts_a_private_ca(smtp_server: StartServer, ca_file: Path) -> None:
    """With verify_tls true, ca_file adds the private CA to the trusted ones."""
    server = smtp_server(tls="starttls")
    smtp = server.config(ca_file=ca_file, verify_tls=True)
    assert (await deliver(smtp, MESSAGE, ["ops@example.com"])).accepted == ("ops@example.com",)


async def test_verify_tls_false_accepts_any_certificate(smtp_server: StartServer) -> None:
    """verify_tls: false still encrypts but accepts an untrusted certificate for another name."""
    server = smtp_server(tls="ssl", cert_names=("mail.example.test",))
    smtp = server.config(ca_file=None, verify_tls=False)
    assert (await deliver(smtp, MESSAGE, ["ops@example.com"])).accepted == ("ops@example.com",)


async def test_ssl_to_a_plaintext_port_is_a_tls_failure(smtp_server: StartServer) -> None:
    """security: ssl against a server that speaks plain SMTP fails at TLS, not with a hang."""
    server = smtp_server(tls="none")
    failure = await fail(server.config(security="ssl"))
    assert (failure.step, failure.cause) == ("tls", "tls_other")


def test_tls_context_verifies_by_default(ca_file: Path) -> None:
    """tls_context verifies certificate and host name unless verify_tls is false."""
    smtp = SmtpConfig(host="h", from_addr="a@b", ca_file=ca_file)
    strict = tls_context(smtp)
    assert strict.verify_mode == ssl.CERT_REQUIRED and strict.check_hostname
    loose = tls_context(SmtpConfig(host="h", from_addr="a@b", verify_tls=False))
    assert loose.verify_mode == ssl.CERT_NONE and not loose.check_hostname


# -- connection failures --


async def test_closed_port_is_refused(smtp_server: StartServer, closed_port: int) -> None:
    """Nothing listening: cause refused, transient."""
    server = smtp_server()
    failure = await fail(server.config(port=closed_port))
    assert (failure.step, failure.cause, failure.transient) == ("connect", "refused", True)


@pytest.mark.parametrize("security", ["none", "starttls", "ssl"])
async def test_silent_server_times_out(
    smtp_server: StartServer, silent_port: int, security: str
) -> None:
    """A server that never speaks: cause timeout after smtp.timeout, transient."""
    server = smtp_server()
    failure = await fail(server.config(port=silent_port, security=security, timeout=0.3))
    assert (failure.cause, failure.transient) == ("timeout", True)


async def test_unknown_host_is_a_dns_failure(smtp_server: StartServer) -> None:
    """A host name that does not resolve fails at resolve with cause dns."""
    server = smtp_server()
    failure = await fail(server.config(host="no-such-host.invalid"))
    assert (failure.step, failure.cause, failure.transient) == ("resolve", "dns", True)


async def test_cancelled_delivery_leaves_nothing_open(silent_port: int) -> None:
    """Cancelling deliver mid-connection closes the connection (no ResourceWarning)."""
    smtp = SmtpConfig(
        host="127.0.0.1", from_addr="a@example.com", port=silent_port, security="none"
    )
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(deliver(smtp, MESSAGE, ["ops@example.com"]), 0.2)


@pytest.mark.parametrize("tls", ["starttls", "ssl"])
async def test_cancelled_goodbye_drops_the_connection_at_once(
    smtp_server: StartServer, tls: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sender cancelled after the server took the message (the service stopping) drops the
    TLS connection at once: a polite close would wait for the server's close_notify, and a loop
    that stops meanwhile leaves the socket open."""
    server = smtp_server(tls=tls)
    loop = asyncio.get_running_loop()
    connect = loop.create_connection
    sockets = []

    async def create_connection(*args: Any, **kwargs: Any) -> Any:
        transport, protocol = await connect(*args, **kwargs)
        sockets.append(transport.get_extra_info("socket"))
        return transport, protocol

    monkeypatch.setattr(loop, "create_connection", create_connection)

    def accepted(result: DeliveryResult) -> None:
        assert sockets[0].fileno() != -1
        task.cancel()  # lands in the QUIT that follows

    task = asyncio.create_task(deliver(server.config(), MESSAGE, ["ops@example.com"], accepted))
    with pytest.raises(asyncio.CancelledError):
        await task
    for _ in range(3):  # no waiting on the server: a few turns of the loop are enough
        await asyncio.sleep(0)
    [sock] = sockets
    assert sock.fileno() == -1
    assert len(server.messages) == 1


async def test_a_swallowed_cancellation_is_raised_again() -> None:
    """A cancel that asyncio.wait_for (3.11) dropped because the reply came at the same time is
    raised again, so a stopping sender does not carry on to the next command or wait forever."""

    async def body() -> None:
        task = asyncio.current_task()
        assert task is not None
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(10)  # as wait_for does when its future is already done
        raise_if_cancelled()
        raise AssertionError("carried on after a cancellation")

    with pytest.raises(asyncio.CancelledError):
        await asyncio.create_task(body())


# -- authentication --


async def test_wrong_password_is_auth_rejected(smtp_server: StartServer) -> None:
    """A refused login is auth_rejected with the server's answer, and never shows the password."""
    server = smtp_server(tls="starttls", auth=("tailmail", PASSWORD))
    failure = await fail(server.config(password="not the password at all"))
    assert (failure.step, failure.cause, failure.code) == ("auth", "auth_rejected", 535)
    assert failure.transient  # fixing the password is enough: the report waits for it
    assert "not the password" not in f"{failure} {failure.advice()} {failure!r}"
    assert "MAIL" not in " ".join(server.commands)


async def test_no_auth_offered_is_auth_unavailable(smtp_server: StartServer) -> None:
    """A username for a server that offers no AUTH is auth_unavailable."""
    server = smtp_server(tls="none")  # aiosmtpd offers AUTH only after TLS
    smtp = server.config(username="tailmail", password=PASSWORD, allow_plaintext_auth=True)
    failure = await fail(smtp)
    assert (failure.step, failure.cause) == ("auth", "auth_unavailable")


async def test_plaintext_login_needs_allow_plaintext_auth(smtp_server: StartServer) -> None:
    """With security none, the password is not sent unless allow_plaintext_auth is set."""
    server = smtp_server(tls="none", auth=("tailmail", PASSWORD), offer_auth_in_clear=True)
    failure = await fail(server.config(username="tailmail", password=PASSWORD))
    assert (failure.step, failure.cause) == ("auth", "auth_unavailable")
    assert server.auth_attempts == []
    allowed = server.config(username="tailmail", password=PASSWORD, allow_plaintext_auth=True)
    assert (await deliver(allowed, MESSAGE, ["ops@example.com"])).accepted
    assert server.auth_attempts == [("PLAIN", "tailmail", True)]


async def test_password_is_scrubbed_from_server_answers(smtp_server: StartServer) -> None:
    """Even a server that echoes the password back never gets it into a failure."""
    server = smtp_server(faults=[Fault("MAIL", f"550 5.7.1 you said {PASSWORD}")])
    failure = await fail(server.config(username=None, password=PASSWORD))
    assert PASSWORD not in str(failure) and "********" in failure.text


# -- the server's answers to MAIL, RCPT and DATA --


@pytest.mark.parametrize(
    ("reply", "cause", "transient"),
    [
        ("421 4.3.2 shutting down", "temporary", True),
        ("451 4.3.0 try later", "temporary", True),
        ("550 5.7.1 not your address", "sender_rejected", False),
        ("552 5.3.4 message too big", "sender_rejected", False),
    ],
)
async def test_answers_to_mail(
    smtp_server: StartServer, reply: str, cause: str, transient: bool
) -> None:
    """4xx to MAIL is temporary, 5xx is a permanent sender rejection."""
    server = smtp_server(faults=[Fault("MAIL", reply)])
    failure = await fail(server.config())
    assert (failure.step, failure.cause, failure.code) == ("mail", cause, int(reply[:3]))
    assert failure.transient is transient


@pytest.mark.parametrize(
    ("reply", "deferred"),
    [
        ("450 4.2.0 mailbox busy", True),
        ("451 4.3.0 try later", True),
        ("452 4.5.3 too many recipients", True),
        ("552 5.5.3 too many recipients", True),  # RFC 5321 4.5.3.1.10: a 452 in disguise
        ("550 5.1.1 no such user", False),
        ("554 5.7.1 relay denied", False),
    ],
)
async def test_answers_to_rcpt(smtp_server: StartServer, reply: str, deferred: bool) -> None:
    """A refused recipient is deferred (4xx, 552) or rejected (5xx); the others get the message."""
    server = smtp_server(faults=[Fault("RCPT", reply, recipients={"bad@example.com"})])
    result = await deliver(server.config(), MESSAGE, ["ops@example.com", "bad@example.com"])
    answer = {"bad@example.com": (int(reply[:3]), reply[4:])}
    assert result.accepted == ("ops@example.com",)
    assert (result.deferred, result.rejected) == ((answer, {}) if deferred else ({}, answer))
    assert server.messages[0].rcpt_tos == ["ops@example.com"]


async def test_every_recipient_refused_raises(smtp_server: StartServer) -> None:
    """When no recipient is accepted nothing is sent, and the failure carries each answer."""
    server = smtp_server(
        faults=[
            Fault("RCPT", "550 5.1.1 no such user", recipients={"a@example.com"}),
            Fault("RCPT", "451 4.3.0 try later", recipients={"b@example.com"}),
        ]
    )
    failure = await fail(server.config(), ["a@example.com", "b@example.com"])
    assert (failure.step, failure.cause, failure.transient) == ("rcpt", "temporary", True)
    assert failure.result == DeliveryResult(
        (),
        {"a@example.com": (550, "5.1.1 no such user")},
        {"b@example.com": (451, "4.3.0 try later")},
    )
    assert "DATA" not in server.commands

    server = smtp_server(faults=[Fault("RCPT", "550 5.1.1 no such user")])
    failure = await fail(server.config())
    assert (failure.cause, failure.code, failure.transient) == ("recipient_rejected", 550, False)


async def test_421_to_rcpt_ends_the_session(smtp_server: StartServer) -> None:
    """421 to RCPT means the server is closing: a temporary failure, nothing delivered."""
    server = smtp_server(faults=[Fault("RCPT", "421 4.3.2 closing", recipients={"b@example.com"})])
    failure = await fail(server.config(), ["a@example.com", "b@example.com"])
    assert (failure.step, failure.cause, failure.code) == ("rcpt", "temporary", 421)
    assert server.messages == []


@pytest.mark.parametrize(
    ("reply", "cause", "transient"),
    [
        ("421 4.3.2 closing", "temporary", True),
        ("451 4.3.0 local error", "temporary", True),
        ("552 5.3.4 message too big", "permanent", False),  # at DATA, 552 is final
        ("554 5.6.0 content rejected", "permanent", False),
    ],
)
async def test_answers_to_data(
    smtp_server: StartServer, reply: str, cause: str, transient: bool
) -> None:
    """4xx after the content is temporary; 5xx (552 included) is permanent."""
    server = smtp_server(faults=[Fault("DATA", reply)])
    failure = await fail(server.config())
    assert (failure.step, failure.cause, failure.code) == ("data", cause, int(reply[:3]))
    assert failure.transient is transient
    assert server.messages == []


@pytest.mark.parametrize(
    ("case", "kind"),
    [
        ("refused", ConnectionFailure),
        ("auth", ConnectionFailure),
        ("451-mail", TransientFailure),
        ("450-rcpt", TransientFailure),
        ("550-rcpt", PermanentFailure),
        ("554-data", PermanentFailure),
    ],
)
async def test_the_failure_type_says_whether_to_retry(
    smtp_server: StartServer, closed_port: int, case: str, kind: type[SmtpFailure]
) -> None:
    """Every SMTP failure is a DeliveryError, a TailmailError and, by its type, a failure before
    MAIL (retried), a temporary one (retried) or a permanent one: what the sender goes by."""
    faults = {
        "451-mail": Fault("MAIL", "451 4.3.0 try later"),
        "450-rcpt": Fault("RCPT", "450 4.2.0 mailbox busy"),
        "550-rcpt": Fault("RCPT", "550 5.1.1 no such user"),
        "554-data": Fault("DATA", "554 5.6.0 content rejected"),
    }
    if case == "auth":
        server = smtp_server(tls="starttls", auth=("tailmail", PASSWORD))
        smtp = server.config(password="not it")
    else:
        server = smtp_server(faults=[faults[case]] if case in faults else [])
        smtp = server.config(port=closed_port) if case == "refused" else server.config()
    failure = await fail(smtp)
    assert isinstance(failure, kind) and isinstance(failure, DeliveryError | TailmailError)
    assert failure.transient is (kind is not PermanentFailure)
    assert isinstance(failure, ConnectionFailure) is (kind is ConnectionFailure)


# -- test-email --


async def test_test_email_says_every_step(smtp_server: StartServer) -> None:
    """test_email says resolve, connect, TLS certificate, EHLO, STARTTLS, AUTH, MAIL, RCPT, DATA."""
    server = smtp_server(tls="starttls", auth=("tailmail", PASSWORD), require_auth=True)
    lines: list[str] = []
    assert await doctor.test_email(server.config(), "ops@example.com", lines.append) is None
    steps = [line.split(":")[0] for line in lines]
    assert steps == [
        "resolve", "connect", "ehlo", "starttls", "tls", "ehlo", "auth", "auth", "size",
        "mail", "rcpt", "data",
    ]  # fmt: skip
    tls = next(line for line in lines if line.startswith("tls:"))
    assert "subject" in tls and "issuer O=trustme" in tls and "expires" in tls
    assert "STARTTLS" in lines[2] and "AUTH" in lines[5]
    assert "PLAIN" in lines[6]
    assert all(PASSWORD not in line for line in lines)
    [received] = server.messages
    parsed = email.message_from_bytes(received.content, policy=email.policy.default)
    assert parsed["To"] == "ops@example.com" and "test message" in parsed["Subject"]


@pytest.mark.parametrize(
    ("limit", "fits"),
    [(32 * 1024 * 1024, True), (1024 * 1024, False)],
)
async def test_test_email_compares_size_with_the_biggest_report(
    smtp_server: StartServer, limit: int, fits: bool
) -> None:
    """The doctor says the server's SIZE limit against the biggest report the config allows,
    and warns (without failing) when such a report would be refused."""
    server = smtp_server(data_size_limit=limit)
    lines: list[str] = []
    warnings: list[str] = []
    largest = ("daily", 10 * 1024 * 1024)
    failure = await doctor.test_email(
        server.config(), "ops@example.com", lines.append, largest_attachment=largest,
        warn=warnings.append,
    )  # fmt: skip
    assert failure is None and len(server.messages) == 1
    [size] = [line for line in lines if line.startswith("size:")]
    assert f"up to {limit / 1024 / 1024:.1f} MiB" in size
    assert "report daily" in size and "max_attachment_bytes 10.0 MiB" in size
    assert "about 13.9 MiB" in size  # base64 and the text and HTML parts
    if fits:
        assert size.endswith(": it fits") and warnings == []
    else:
        assert size.endswith("WARNING too big")
        [warning] = warnings
        within = attachment_within(limit)
        assert f"max_attachment_bytes to {within // 1024}KiB or less" in warning
        assert report_size(within) <= limit < report_size(within + 3)


async def test_test_email_without_username_says_it_does_not_log_in(
    smtp_server: StartServer,
) -> None:
    """With no username the doctor says so and names the mechanisms the server offers."""
    server = smtp_server(tls="starttls", auth=("tailmail", PASSWORD))
    lines: list[str] = []
    smtp = server.config(username=None, password=None)
    assert await doctor.test_email(smtp, "ops@example.com", lines.append) is None
    [auth] = [line for line in lines if line.startswith("auth:")]
    assert auth.startswith("auth: no smtp.username, so no login (the server offers ")
    assert "PLAIN" in auth and "LOGIN" in auth


async def test_authentication_required_is_its_own_cause(smtp_server: StartServer) -> None:
    """530 to MAIL (no login configured for a server that needs one) is retried and says so."""
    server = smtp_server(tls="starttls", auth=("tailmail", PASSWORD), require_auth=True)
    failure = await fail(server.config(username=None, password=None))
    assert (failure.step, failure.cause, failure.code, failure.transient) == (
        "mail", "auth_required", 530, True,
    )  # fmt: skip
    assert "set smtp.username and smtp.password" in failure.advice()


async def test_test_email_refuses_a_recipient_with_a_line_break() -> None:
    """A recipient with CR or LF never reaches a header or an SMTP command."""
    smtp = SmtpConfig(host="127.0.0.1", from_addr="a@example.com", port=1, security="none")
    with pytest.raises(ValueError, match="line break"):
        await doctor.test_email(smtp, "ops@example.com\r\nBcc: x@example.com", print)


@pytest.mark.parametrize(
    ("case", "step", "cause"),
    [
        ("dns", "resolve", "dns"),
        ("refused", "connect", "refused"),
        ("timeout", "connect", "timeout"),
        ("untrusted", "tls", "tls_untrusted"),
        ("hostname", "tls", "tls_hostname"),
        ("expired", "tls", "tls_expired"),
        ("no_starttls", "starttls", "starttls_missing"),
        ("auth", "auth", "auth_rejected"),
        ("sender", "mail", "sender_rejected"),
        ("recipient", "rcpt", "recipient_rejected"),
    ],
)
async def test_test_email_names_the_cause(
    smtp_server: StartServer,
    ca: trustme.CA,
    closed_port: int,
    silent_port: int,
    case: str,
    step: str,
    cause: str,
) -> None:
    """Each failure class comes back with its step and cause, said as the last line."""
    auth = ("tailmail", PASSWORD)
    setups: dict[str, tuple[dict[str, object], dict[str, object]]] = {
        "dns": ({}, {"host": "no-such-host.invalid"}),
        "refused": ({}, {"port": closed_port}),
        "timeout": ({}, {"port": silent_port, "timeout": 0.3}),
        "untrusted": ({"tls": "starttls"}, {"ca_file": None}),
        "hostname": ({"tls": "starttls", "cert_names": ("mail.example.test",)}, {}),
        "expired": ({"tls": "ssl", "cert": expired_cert(ca)}, {}),
        "no_starttls": ({}, {"security": "starttls"}),
        "auth": ({"tls": "ssl", "auth": auth}, {"password": "wrong password"}),
        "sender": ({"faults": [Fault("MAIL", "553 5.7.1 not yours")]}, {}),
        "recipient": ({"faults": [Fault("RCPT", "550 5.1.1 no such user")]}, {}),
    }
    server_options, overrides = setups[case]
    server = smtp_server(**server_options)
    lines: list[str] = []
    failure = await doctor.test_email(server.config(**overrides), "ops@example.com", lines.append)
    assert failure is not None
    assert (failure.step, failure.cause) == (step, cause)
    assert lines[-1].startswith(f"{step}: FAILED ({cause})")
    assert failure.advice().endswith(".")
    assert all(PASSWORD not in line and "wrong password" not in line for line in lines)
    assert "wrong password" not in failure.advice()


@pytest.mark.parametrize(
    "cause",
    [
        "dns", "refused", "unreachable", "timeout", "disconnected", "tls_untrusted",
        "tls_hostname", "tls_expired", "tls_other", "starttls_missing", "auth_rejected",
        "auth_unavailable", "auth_required", "sender_rejected", "recipient_rejected", "temporary",
        "permanent", "protocol",
    ],
)  # fmt: skip
def test_every_cause_has_advice(cause: str) -> None:
    """advice() is one sentence naming what to do, for every cause."""
    failure = SmtpFailure("connect", cause, "text", code=None, host="smtp.example.com", port=587)
    advice = failure.advice()
    assert advice.endswith(".") and advice.count(". ") == 0 and "smtp.example.com" in advice
