"""Real SMTP servers for tests: aiosmtpd on loopback, recording what they receive.

A server runs in its own thread (aiosmtpd's Controller), so it serves async tests, plain tests
and `tailmail` subprocesses alike. Faults are injected by the handler answering a chosen reply,
never by mocking the client.

    def test_x(smtp_server):
        server = smtp_server(tls="starttls", auth=("user", "secret"))
        smtp = server.config()            # an SmtpConfig that reaches it, trusting the test CA
        ...
        assert server.messages[0].rcpt_tos == ["ops@example.com"]

A server can be started on a socket the test bound earlier (`bind_port`): while nothing listens on
it, connections are refused, so "the server is down, then comes back on the same port" needs no
race for the port. `stall_data` and `lose_reply` make DATA hang (before or after the message is
taken) so a client can be killed in the middle of it.

Import the fixtures in conftest.py: `from smtp_sink import ca, ca_file, closed_port,
silent_port, smtp_server`.
"""

from __future__ import annotations

import asyncio
import datetime
import socket
import ssl
import threading
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import pytest
import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import MISSING, SMTP, AuthResult, Envelope, LoginPassword, Session

from agent.config.model import SmtpConfig

__all__ = [
    "Fault",
    "Received",
    "SmtpServer",
    "bind_port",
    "ca",
    "ca_file",
    "closed_port",
    "eventually",
    "expired_cert",
    "silent_port",
    "smtp_server",
    "start_smtp_server",
    "write_ca_pem",
]

LOOPBACK = "127.0.0.1"
Tls = Literal["none", "starttls", "ssl"]


@dataclass(slots=True)
class Fault:
    """Answer `reply` to `command` instead of accepting it.

    `command` is MAIL, RCPT or DATA (DATA answers after the content was received). For RCPT,
    `recipients` limits the fault to those addresses. `times` limits it to the first N matching
    commands; after that the server accepts as usual.
    """

    command: Literal["MAIL", "RCPT", "DATA"]
    reply: str
    recipients: Collection[str] | None = None
    times: int | None = None

    def applies(self, command: str, address: str | None = None) -> bool:
        if command != self.command or self.times == 0:
            return False
        if self.recipients is not None and address not in self.recipients:
            return False
        if self.times is not None:
            self.times -= 1
        return True


@dataclass(frozen=True, slots=True)
class Received:
    mail_from: str
    rcpt_tos: list[str]
    content: bytes  # as received, CRLF line endings, dot-unstuffed
    mail_options: list[str]


@dataclass(slots=True)
class _Record:
    messages: list[Received] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)
    auth_attempts: list[tuple[str, str, bool]] = field(default_factory=list)
    data_attempts: list[bytes] = field(default_factory=list)


class _Handler:
    """aiosmtpd handler: records everything, answers faults, checks logins."""

    def __init__(
        self,
        record: _Record,
        faults: list[Fault],
        credentials: tuple[str, str] | None,
        require_auth: bool,
        quit_delay: float,
        stall_data: int = 0,
        lose_reply: int = 0,
    ) -> None:
        self.record = record
        self.faults = faults
        self.credentials = credentials
        self.require_auth = require_auth
        self.quit_delay = quit_delay
        # How many of the next DATA still stall unanswered ("stall") or lose their 250 ("lose").
        self.countdown = {"stall": stall_data, "lose": lose_reply}
        self.lock = threading.Lock()

    def _fault(self, command: str, address: str | None = None) -> str | None:
        with self.lock:
            for fault in self.faults:
                if fault.applies(command, address):
                    return fault.reply
        return None

    async def handle_EHLO(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        self.record.commands.append(f"EHLO {hostname}")
        session.host_name = hostname
        return responses

    def handle_STARTTLS(self, server: SMTP, session: Session, envelope: Envelope) -> bool:
        self.record.commands.append("STARTTLS")
        return True

    async def handle_AUTH(
        self, server: SMTP, session: Session, envelope: Envelope, args: list[str]
    ) -> Any:
        # args[1:] would hold the encoded credentials: only the mechanism is recorded.
        self.record.commands.append(f"AUTH {args[0].upper()}")
        return MISSING  # let aiosmtpd run the mechanism, which calls `authenticate`

    def authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        assert isinstance(data, LoginPassword)
        login = data.login.decode("utf-8", "replace")
        ok = self.credentials is not None and (login, data.password.decode()) == self.credentials
        self.record.auth_attempts.append((mechanism, login, ok))
        return AuthResult(success=ok, handled=False)

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        self.record.commands.append(f"MAIL {address}")
        if self.require_auth and not session.authenticated:
            return "530 5.7.0 Authentication required"
        reply = self._fault("MAIL", address)
        if reply:
            return reply
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        self.record.commands.append(f"RCPT {address}")
        reply = self._fault("RCPT", address)
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return "250 OK"

    async def handle_QUIT(self, server: SMTP, session: Session, envelope: Envelope) -> Any:
        self.record.commands.append("QUIT")
        if self.quit_delay:
            await asyncio.sleep(self.quit_delay)  # a server slow to say goodbye
        return MISSING

    def _take(self, counter: str) -> bool:
        with self.lock:
            left = self.countdown[counter]
            self.countdown[counter] = max(0, left - 1)
            return left > 0

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.record.commands.append("DATA")
        content = bytes(envelope.original_content or b"")
        self.record.data_attempts.append(content)
        if self._take("stall"):
            # The content is in, the answer never comes: the client waits at the end of DATA.
            # aiosmtpd cancels this when the client goes away; the message was not taken.
            await asyncio.Event().wait()
        reply = self._fault("DATA")
        if reply:
            return reply
        self.record.messages.append(
            Received(
                str(envelope.mail_from),
                list(envelope.rcpt_tos),
                content,
                list(envelope.mail_options),
            )
        )
        if self._take("lose"):
            await asyncio.Event().wait()  # taken, but the 250 never reaches the client
        return "250 2.0.0 OK queued"


class _Controller(Controller):
    """Controller on a socket we bound ourselves (port 0: no race for a free port), which
    closes its client connections before stopping so no transport is left to a finaliser."""

    def __init__(self, handler: _Handler, sock: socket.socket, **kwargs: Any) -> None:
        self._sock = sock
        self._sessions: list[SMTP] = []
        super().__init__(handler, hostname=LOOPBACK, port=sock.getsockname()[1], **kwargs)

    def factory(self) -> SMTP:
        smtpd = SMTP(self.handler, loop=self.loop, **self.SMTP_kwargs)
        self._sessions.append(smtpd)
        return smtpd

    def _create_server(self) -> Any:
        return self.loop.create_server(self._factory_invoker, sock=self._sock, ssl=self.ssl_context)

    async def _close_sessions(self) -> None:
        if self.server is not None:
            self.server.close()
        tasks = []
        for smtpd in self._sessions:
            if smtpd.transport is not None:
                smtpd.transport.close()
            if smtpd._handler_coroutine is not None:
                tasks.append(smtpd._handler_coroutine)
        if tasks:
            await asyncio.wait(tasks, timeout=5)

    def stop(self, no_assert: bool = False) -> None:
        if self._thread is not None and self.loop.is_running():
            done = asyncio.run_coroutine_threadsafe(self._close_sessions(), self.loop)
            done.result(timeout=10)
        super().stop(no_assert)


@dataclass
class SmtpServer:
    """A running test server and what it has seen (read it from any thread)."""

    host: str
    port: int
    tls: Tls
    credentials: tuple[str, str] | None
    ca_path: Path | None
    _record: _Record
    _controller: _Controller

    @property
    def messages(self) -> list[Received]:
        return list(self._record.messages)

    @property
    def commands(self) -> list[str]:
        """Commands in arrival order: `EHLO name`, `STARTTLS`, `AUTH PLAIN`, `MAIL a`, `RCPT b`,
        `DATA`, `QUIT` (never credentials)."""
        return list(self._record.commands)

    @property
    def auth_attempts(self) -> list[tuple[str, str, bool]]:
        """(mechanism, login, accepted) of each login tried."""
        return list(self._record.auth_attempts)

    @property
    def data_attempts(self) -> list[bytes]:
        """The content of every DATA received, taken or not (stalled, refused by a fault)."""
        return list(self._record.data_attempts)

    def config(self, **overrides: Any) -> SmtpConfig:
        """An SmtpConfig that reaches this server: its security, login and test CA."""
        username, password = self.credentials or (None, None)
        smtp = SmtpConfig(
            host=self.host,
            from_addr="Tailmail <tailmail@example.com>",
            port=self.port,
            security=self.tls,
            ca_file=self.ca_path,
            username=username,
            password=password,
            timeout=10.0,
            retry_initial=60.0,
            retry_max=600.0,
        )
        return replace(smtp, **overrides)

    def stop(self) -> None:
        self._controller.stop(no_assert=True)


async def eventually(condition: Callable[[], bool], within: float = 10.0) -> None:
    """Wait until `condition()` holds (e.g. the server thread has recorded something); raise
    TimeoutError after `within` seconds."""
    async with asyncio.timeout(within):
        while not condition():  # noqa: ASYNC110 - the server's thread offers no awaitable
            await asyncio.sleep(0.01)


def write_ca_pem(ca: trustme.CA, path: Path) -> Path:
    """Write the CA certificate (PEM) to `path`, for `SmtpConfig.ca_file`."""
    ca.cert_pem.write_to_path(str(path))
    return path


def expired_cert(ca: trustme.CA, *names: str) -> trustme.LeafCert:
    """A server certificate from `ca` that expired yesterday."""
    now = datetime.datetime.now(datetime.UTC)
    return ca.issue_cert(
        *(names or ("localhost", LOOPBACK)),
        not_before=now - datetime.timedelta(days=30),
        not_after=now - datetime.timedelta(days=1),
    )


def bind_port(port: int = 0) -> socket.socket:
    """A loopback socket bound to `port` (0: a free one) and not listening: connections to it are
    refused until a server is started on it (`start_smtp_server(sock=...)`). Close it when done."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((LOOPBACK, port))
    except OSError:
        sock.close()
        raise
    return sock


def start_smtp_server(
    *,
    tls: Tls = "none",
    auth: tuple[str, str] | None = None,
    require_auth: bool = False,
    offer_auth_in_clear: bool = False,
    auth_mechanisms: Collection[str] = ("PLAIN", "LOGIN"),
    faults: Collection[Fault] = (),
    quit_delay: float = 0.0,
    ca: trustme.CA | None = None,
    ca_path: Path | None = None,
    cert_names: tuple[str, ...] = ("localhost", LOOPBACK),
    cert: trustme.LeafCert | None = None,
    data_size_limit: int | None = 32 * 1024 * 1024,
    stall_data: int = 0,
    lose_reply: int = 0,
    sock: socket.socket | None = None,
) -> SmtpServer:
    """Start a server on 127.0.0.1 and a free port; stop it with `.stop()`.

    tls: "none" (plaintext, no STARTTLS offered), "starttls" (offered and required before
    MAIL), "ssl" (TLS from the first byte). The certificate is issued by `ca` for `cert_names`,
    or is `cert`. auth: the one (user, password) accepted; AUTH PLAIN and LOGIN are offered
    after TLS, or also in the clear with offer_auth_in_clear; auth_mechanisms narrows them.
    require_auth: MAIL before a login gets 530. quit_delay: seconds before answering QUIT.
    stall_data: the first N DATA get no answer (the message is not taken); lose_reply: the
    next N DATA are taken but never answered (a lost 250). sock: serve on this socket (from
    `bind_port`, which the caller still closes) instead of a new one on a free port.
    """
    record = _Record()
    handler = _Handler(record, list(faults), auth, require_auth, quit_delay, stall_data, lose_reply)
    server_ctx: ssl.SSLContext | None = None
    if tls != "none":
        if ca is None:
            ca = trustme.CA()
        server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        (cert or ca.issue_cert(*cert_names)).configure_cert(server_ctx)
    kwargs: dict[str, Any] = {
        "server_hostname": "localhost",  # else aiosmtpd asks getfqdn(), which can be slow
        "data_size_limit": data_size_limit,
        "authenticator": handler.authenticate,
        "auth_exclude_mechanism": {"PLAIN", "LOGIN"} - {m.upper() for m in auth_mechanisms},
        # aiosmtpd cannot tell implicit TLS from none: it would hide AUTH on an ssl port.
        "auth_require_tls": not (offer_auth_in_clear or tls == "ssl"),
        "ready_timeout": 10.0,
    }
    if tls == "starttls":
        kwargs.update(tls_context=server_ctx, require_starttls=True)
    elif tls == "ssl":
        kwargs.update(ssl_context=server_ctx)
    # A given socket is duplicated: the server closes its copy when stopped, the caller its own,
    # in whichever order (a close under the server's feet would break its event loop).
    sock = bind_port() if sock is None else sock.dup()
    controller = _Controller(handler, sock, **kwargs)
    try:
        controller.start()
    except BaseException:
        controller.stop(no_assert=True)
        sock.close()
        raise
    return SmtpServer(LOOPBACK, controller.port, tls, auth, ca_path, record, controller)


# -- fixtures --


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    """A test certificate authority (trustme) that the system does not trust."""
    return trustme.CA()


@pytest.fixture
def ca_file(ca: trustme.CA, tmp_path: Path) -> Path:
    """The test CA's certificate as a PEM file, for SmtpConfig.ca_file."""
    return write_ca_pem(ca, tmp_path / "test-ca.pem")


@pytest.fixture
def smtp_server(ca: trustme.CA, ca_file: Path) -> Iterator[Callable[..., SmtpServer]]:
    """Factory: `smtp_server(**options)` starts a server (see start_smtp_server) whose
    certificates come from the `ca` fixture; all are stopped after the test."""
    servers: list[SmtpServer] = []

    def start(**options: Any) -> SmtpServer:
        options.setdefault("ca", ca)
        options.setdefault("ca_path", ca_file if options["ca"] is ca else None)
        server = start_smtp_server(**options)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A loopback port that accepts connections and never says a word (for timeouts)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        sock.listen(16)  # the kernel completes the handshakes; nobody ever accept()s
        yield sock.getsockname()[1]


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port where connections are refused; held bound so nobody else takes it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))  # bound, not listening: connecting gets ECONNREFUSED
        yield sock.getsockname()[1]
