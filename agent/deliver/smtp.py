"""Sending one message over SMTP, and saying exactly why it did not go.

Every way a delivery can fail becomes one `SmtpFailure` naming the step (resolve, connect, tls,
ehlo, starttls, auth, mail, rcpt, data), a cause an operator can act on, the server's answer and
whether retrying later can help. `deliver` is what the outbox's sender calls; `test_email` runs
the same steps for `tailmail test-email`, saying each one as it goes.

Security is never opportunistic: `starttls` fails when the server does not offer STARTTLS, before
any AUTH or MAIL, and certificates are verified unless the operator turned that off.
"""

from __future__ import annotations

import asyncio
import base64
import email.policy
import email.utils
import errno
import re
import socket
import ssl
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any, NoReturn, TypeVar

import aiosmtplib
from aiosmtplib import (
    SMTPAuthenticationError,
    SMTPConnectError,
    SMTPException,
    SMTPRecipientRefused,
    SMTPResponseException,
    SMTPServerDisconnected,
    SMTPTimeoutError,
)

from agent import __version__
from agent.config.load import has_header_breaks
from agent.config.model import SmtpConfig

Say = Callable[[str], None]

# Steps before MAIL concern the path to the server or our own configuration, not the message:
# like Postfix (smtp_sasl_auth_soft_bounce, TLS policy failures), the message is deferred and
# retried, so that fixing the configuration is enough to get it delivered.
_SESSION_STEPS = frozenset({"resolve", "connect", "tls", "ehlo", "starttls", "auth"})

# OpenSSL X509_V_ERR_* codes, as carried by ssl.SSLCertVerificationError.verify_code.
_UNTRUSTED = frozenset({2, 18, 19, 20, 21, 27})
_EXPIRED = frozenset({9, 10})  # not yet valid, expired
_HOSTNAME = frozenset({62, 63, 64})  # host name, email, IP address mismatch


class SmtpFailure(Exception):
    """Nothing could be delivered in this attempt; says where, why, and whether to retry."""

    def __init__(
        self,
        step: str,
        cause: str,
        text: str,
        *,
        code: int | None = None,
        transient: bool = True,
        host: str = "",
        port: int = 0,
        result: DeliveryResult | None = None,
    ) -> None:
        super().__init__(step, cause, code, text)
        self.step = step
        self.cause = cause
        self.code = code
        self.text = text
        self.transient = transient
        self.host = host
        self.port = port
        # Set when the failure came after RCPT: which recipients were refused, and how.
        self.result = result

    def __str__(self) -> str:
        code = f"{self.code} " if self.code is not None else ""
        return f"{self.step}: {self.cause}: {code}{self.text}"

    def as_dict(self) -> dict[str, Any]:
        return {"step": self.step, "cause": self.cause, "code": self.code, "text": self.text}

    def advice(self) -> str:
        """One sentence: what went wrong and what to do next."""
        where = f"{self.host} port {self.port}" if self.host else "the SMTP server"
        answer = f"{self.code} {self.text}" if self.code is not None else self.text
        match self.cause:
            case "dns":
                return f"The name {self.host or 'smtp.host'} could not be resolved ({self.text}): check smtp.host for typos and that this machine's DNS works (getent hosts {self.host})."
            case "refused":
                return f"Nothing accepts connections on {where}: check smtp.port (587 for starttls, 465 for ssl, 25 for none) and that the server is running and reachable through the firewall."
            case "unreachable":
                return f"{where} cannot be reached ({self.text}): check this machine's network, routing and firewall."
            case "timeout":
                return f"{where} did not answer in time: a firewall may be dropping the connection, or the port expects other security (ssl on 465, starttls on 587); check smtp.port and smtp.security, or raise smtp.timeout."
            case "disconnected":
                return f"{where} closed the connection unexpectedly ({self.text}): it may be overloaded or limiting clients; reports are kept and retried."
            case "tls_untrusted":
                return f"The certificate of {where} is not signed by a trusted authority ({self.text}): put its CA certificate (PEM) in a file and set smtp.ca_file to it; verify_tls: false is a last resort."
            case "tls_hostname":
                return f"The certificate of {where} is not valid for the name tailmail connects to ({self.text}): set smtp.host to a name the certificate lists."
            case "tls_expired":
                return f"The certificate of {where} is outside its validity period ({self.text}): the server's administrator must renew it; also check this machine's clock."
            case "tls_other":
                return f"TLS with {where} failed ({answer}): check that smtp.security matches the port (ssl for 465, starttls for 587)."
            case "starttls_missing":
                return f"{where} does not offer STARTTLS, so the connection cannot be encrypted: use security: ssl if the port expects TLS at once (465), or the server's submission port (587); tailmail sends in the clear only with security: none."
            case "auth_rejected":
                return f"{where} rejected the login ({answer}): check smtp.username and smtp.password (or password_file)."
            case "auth_required":
                return f"{where} requires a login before it takes mail ({answer}): set smtp.username and smtp.password (or password_file)."
            case "auth_unavailable":
                return f"No authentication is possible with {where} ({self.text}): use security starttls or ssl, or remove smtp.username if the server needs no login."
            case "sender_rejected":
                return f"{where} refused the sender ({answer}): set smtp.from to an address this account may send as."
            case "recipient_rejected":
                return f"{where} refused the recipient ({answer}): check the report's to and cc addresses."
            case "temporary":
                return f"{where} reported a temporary problem ({answer}): nothing needs changing here, reports are kept and retried; if it persists, ask the server's administrator."
            case "permanent":
                return f"{where} refused the message permanently ({answer}): check its size and the server's policy with the mail administrator."
            case _:
                return f"{where} answered unexpectedly at {self.step} ({answer}): check that smtp.host and smtp.port point to an SMTP server."


@dataclass(frozen=True, slots=True)
class DeliveryResult:
    accepted: tuple[str, ...]
    rejected: dict[str, tuple[int, str]] = field(default_factory=dict)  # permanent
    deferred: dict[str, tuple[int, str]] = field(default_factory=dict)  # transient
    # The server's answer to the message, e.g. (250, "2.0.0 Ok: queued as 4XyZ1"), for the log.
    reply: tuple[int, str] | None = field(default=None, compare=False)


def tls_context(smtp: SmtpConfig) -> ssl.SSLContext:
    """The system's trust store plus `ca_file`; certificates and host names verified unless
    `verify_tls` is false."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    if smtp.ca_file is not None:
        context.load_verify_locations(cafile=str(smtp.ca_file))
    if not smtp.verify_tls:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def ehlo_name() -> str:
    """This host's name for EHLO; `getfqdn` is avoided because it may wait on slow DNS."""
    name = socket.gethostname()
    return name if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9.-]*", name) else "localhost"


def envelope_address(addr: str) -> str:
    """`Name <a@b>` -> `a@b`."""
    return email.utils.parseaddr(addr)[1] or addr.strip()


async def deliver(
    smtp: SmtpConfig,
    message: bytes,
    recipients: Sequence[str],
    *,
    on_accepted: Callable[[DeliveryResult], None] | None = None,
) -> DeliveryResult:
    """Send `message` (CRLF bytes, as-is) to `recipients`, one RCPT each.

    Returns who accepted it, and who refused it permanently or for now, once the server has
    accepted the DATA. Raises SmtpFailure when nothing could be delivered.

    `on_accepted` is called with the same result the moment the server accepts the DATA, before
    QUIT: a caller cancelled during the goodbye still knows the message went.
    """
    if not recipients:
        raise ValueError("deliver needs at least one recipient")
    session = _Session(smtp, None)
    return await session.run(message, list(dict.fromkeys(recipients)), on_accepted)


async def test_email(
    smtp: SmtpConfig,
    to: str,
    say: Say,
    *,
    largest_attachment: tuple[str, int] | None = None,
    warn: Say | None = None,
) -> SmtpFailure | None:
    """Send a short test message to `to`, saying each step as `step: what happened`; return
    the failure, or None. A failed step is said as `step: FAILED (cause): answer`; the caller
    prints `failure.advice()` and chooses the exit code.

    `largest_attachment` is (report name, max_attachment_bytes) of the report that may send the
    biggest file: the server's SIZE limit is compared with the message it makes. A problem that
    does not stop the test message (a SIZE limit too small for reports) is said as a step and
    given to `warn` as one sentence.
    """
    if has_header_breaks(to):
        raise ValueError("the recipient contains a line break or NUL")
    session = _Session(smtp, say, largest_attachment, warn)
    try:
        await session.run(_test_message(smtp, to), [to])
    except SmtpFailure as failure:
        code = f"{failure.code} " if failure.code is not None else ""
        say(f"{failure.step}: FAILED ({failure.cause}): {code}{failure.text}")
        return failure
    return None


def _test_message(smtp: SmtpConfig, to: str) -> bytes:
    host = socket.gethostname()
    msg = EmailMessage()
    msg["From"] = smtp.from_addr  # validated by `check`, like every configured address
    msg["To"] = to
    msg["Subject"] = f"[{host}] tailmail test message"
    msg["Date"] = email.utils.formatdate(localtime=True)
    msg["Message-ID"] = email.utils.make_msgid(domain=_msgid_domain(smtp.from_addr))
    msg.set_content(
        f"This is a test message from tailmail {__version__} on {host}.\n"
        f"It was sent through {smtp.host} port {smtp.port} (security: {smtp.security}).\n"
        "If you can read this, the reports will reach you too.\n"
    )
    return msg.as_bytes(policy=email.policy.SMTP)


def _msgid_domain(from_addr: str) -> str:
    _, _, domain = envelope_address(from_addr).rpartition("@")
    return domain or "localhost"


class _Session:
    """One SMTP conversation: open (resolve .. auth), one transaction, close."""

    def __init__(
        self,
        smtp: SmtpConfig,
        say: Say | None,
        largest_attachment: tuple[str, int] | None = None,
        warn: Say | None = None,
    ) -> None:
        self.smtp = smtp
        self._say = say
        self._largest = largest_attachment
        self._warn = warn
        self.client: aiosmtplib.SMTP | None = None
        self._secrets = _secrets(smtp)

    # -- reporting --

    def say(self, line: str) -> None:
        if self._say is not None:
            self._say(self.redact(line))

    def redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "********")
        return text

    def fail(
        self,
        step: str,
        cause: str,
        text: str,
        *,
        code: int | None = None,
        transient: bool | None = None,
        result: DeliveryResult | None = None,
    ) -> NoReturn:
        if transient is None:
            transient = step in _SESSION_STEPS or code is None or 400 <= code < 500
        raise SmtpFailure(
            step,
            cause,
            self.redact(text.strip()) or "(no details)",
            code=code,
            transient=transient,
            host=self.smtp.host,
            port=self.smtp.port,
            result=result,
        )

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        """Turn whatever the client raises during `name` into an SmtpFailure."""
        try:
            yield
            _raise_if_cancelled()
        except SmtpFailure:
            raise
        except SMTPResponseException as exc:
            cause = "temporary" if 400 <= exc.code < 500 else "permanent"
            if not 400 <= exc.code < 600:
                cause = "protocol"
            self.fail(name, cause, exc.message, code=exc.code)
        except (SMTPTimeoutError, TimeoutError) as exc:
            tls = _tls_failure(exc)
            if tls:
                self.fail("tls", tls[0], tls[1])
            self.fail(name, "timeout", f"no answer within {self.smtp.timeout:g} seconds")
        except (SMTPConnectError, SMTPServerDisconnected, OSError) as exc:
            tls = _tls_failure(exc)
            if tls:
                self.fail("tls", tls[0], tls[1])
            os_error = _os_error(exc)
            if isinstance(os_error, socket.gaierror):
                self.fail("resolve", "dns", os_error.strerror or str(os_error))
            if _refused(os_error):
                self.fail(name, "refused", "connection refused")
            if os_error is not None and os_error.errno == errno.ETIMEDOUT:
                self.fail(name, "timeout", os_error.strerror or str(os_error))
            if isinstance(os_error, ConnectionAbortedError) and name in {"tls", "starttls"}:
                self.fail("tls", "timeout", str(os_error))
            if (
                name == "connect"
                and os_error is not None
                and not isinstance(os_error, ConnectionResetError)
            ):
                self.fail(name, "unreachable", os_error.strerror or str(os_error))
            self.fail(name, "disconnected", _message(exc) or "the server closed the connection")
        except SMTPException as exc:
            self.fail(name, "protocol", _message(exc))
        except (ValueError, UnicodeError) as exc:
            self.fail(name, "protocol", str(exc), transient=False)

    # -- the conversation --

    async def run(
        self,
        message: bytes,
        recipients: list[str],
        on_accepted: Callable[[DeliveryResult], None] | None = None,
    ) -> DeliveryResult:
        try:
            await self.open()
            result = await self.transaction(message, recipients)
            if on_accepted is not None:
                on_accepted(result)
        except asyncio.CancelledError:
            self.abort()  # nothing to await while being cancelled
            raise
        except BaseException:
            await self.close(polite=False)
            _raise_if_cancelled()  # a failure that came with a stop must not hide the stop
            raise
        await self.close(polite=True)
        _raise_if_cancelled()
        return result

    async def open(self) -> None:
        smtp = self.smtp
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(smtp.timeout):
                infos = await loop.getaddrinfo(smtp.host, smtp.port, type=socket.SOCK_STREAM)
        except TimeoutError:
            self.fail("resolve", "dns", f"no answer from DNS within {smtp.timeout:g} seconds")
        except OSError as exc:
            self.fail("resolve", "dns", exc.strerror or str(exc))
        addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
        self.say(f"resolve: {smtp.host} -> {', '.join(addresses)}")

        context: ssl.SSLContext | None = None
        if smtp.security != "none":
            try:
                context = await asyncio.to_thread(tls_context, smtp)
            except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
                self.fail("tls", "tls_other", f"cannot load ca_file {smtp.ca_file}: {exc}")
        if smtp.username and smtp.security == "none" and not smtp.allow_plaintext_auth:
            self.fail(
                "auth",
                "auth_unavailable",
                "security: none would send the password unencrypted and allow_plaintext_auth is not set",
            )

        implicit = smtp.security == "ssl"
        self.client = client = aiosmtplib.SMTP(
            hostname=smtp.host,
            port=smtp.port,
            local_hostname=ehlo_name(),
            use_tls=implicit,
            start_tls=False,  # never opportunistic: STARTTLS is checked and done below
            tls_context=context if implicit else None,
            timeout=smtp.timeout,
        )
        with self.step("connect"):
            greeting = await client.connect()
        self.say(f"connect: {smtp.host} port {smtp.port} -> {_reply(greeting)}")
        if implicit:
            self.say_tls()

        await self.ehlo()
        if smtp.security == "starttls":
            if not client.supports_extension("starttls"):
                offered = ", ".join(k.upper() for k in client.esmtp_extensions) or "nothing"
                self.fail(
                    "starttls",
                    "starttls_missing",
                    f"the server does not offer STARTTLS (its EHLO offers: {offered})",
                )
            with self.step("starttls"):
                reply = await client.starttls(server_hostname=smtp.host, tls_context=context)
            self.say(f"starttls: {_reply(reply)}")
            self.say_tls()
            await self.ehlo()
        if smtp.username:
            await self.auth(smtp.username, smtp.password or "")
        elif client.supports_extension("auth"):
            offered = " ".join(m.upper() for m in client.server_auth_methods)
            self.say(f"auth: no smtp.username, so no login (the server offers {offered})")
        else:
            self.say("auth: no smtp.username, so no login")
        self.say_size()

    async def ehlo(self) -> None:
        client = self._client()
        with self.step("ehlo"):
            try:
                reply = await client.ehlo()
            except SMTPResponseException:
                # A server without ESMTP can still take mail in the clear, without login.
                if self.smtp.security != "none" or self.smtp.username:
                    raise
                reply = await client.helo()
                self.say(f"ehlo: not supported; HELO -> {_reply(reply)}")
                return
        lines = reply.message.splitlines()
        extensions = ", ".join(line.strip() for line in lines[1:]) or "no extensions"
        self.say(f"ehlo: {client.local_hostname} -> {lines[0] if lines else ''}: {extensions}")

    async def auth(self, username: str, password: str) -> None:
        client = self._client()
        if not client.supports_extension("auth"):
            self.fail("auth", "auth_unavailable", "the server does not offer AUTH")
        offered = " ".join(m.upper() for m in client.server_auth_methods)
        usable = client.supported_auth_methods
        if not usable:
            self.fail(
                "auth",
                "auth_unavailable",
                f"the server offers AUTH {offered}; tailmail can use CRAM-MD5, PLAIN and LOGIN",
            )
        self.say(f"auth: the server offers {offered}")
        last: SMTPAuthenticationError | None = None
        for mechanism in usable:
            method = getattr(client, f"auth_{mechanism.replace('-', '')}")
            with self.step("auth"):
                try:
                    reply = await method(username, password)
                except SMTPAuthenticationError as exc:
                    last = exc
                    # 535 and 4xx say the credentials or the server are the problem, not the
                    # mechanism: trying the next one would only add a failed login.
                    if exc.code == 535 or 400 <= exc.code < 500:
                        break
                    continue
            self.say(f"auth: logged in as {username} with {mechanism.upper()} -> {_reply(reply)}")
            return
        assert last is not None
        cause = "temporary" if 400 <= last.code < 500 else "auth_rejected"
        self.fail("auth", cause, last.message, code=last.code)

    async def transaction(self, message: bytes, recipients: list[str]) -> DeliveryResult:
        client = self._client()
        sender = envelope_address(self.smtp.from_addr)
        options: list[str] = []
        if client.supports_extension("size"):
            options.append(f"SIZE={len(message)}")
        if not message.isascii() and client.supports_extension("8bitmime"):
            options.append("BODY=8BITMIME")
        addresses = {r: envelope_address(r) for r in recipients}
        encoding = "ascii"
        international = not all(a.isascii() for a in [sender, *addresses.values()])
        if international and client.supports_extension("smtputf8"):
            options.append("SMTPUTF8")
            encoding = "utf-8"

        with self.step("mail"):
            try:
                reply = await client.mail(sender, options=options, encoding=encoding)
            except SMTPResponseException as exc:
                cause = "sender_rejected" if exc.code >= 500 else "temporary"
                if exc.code == 530:
                    # "Authentication required": our configuration, not the message, so it is
                    # retried like a rejected login until the operator adds one.
                    self.fail("mail", "auth_required", exc.message, code=exc.code, transient=True)
                self.fail("mail", cause, exc.message, code=exc.code)
        self.say(f"mail: FROM:<{sender}> -> {_reply(reply)}")

        accepted: list[str] = []
        rejected: dict[str, tuple[int, str]] = {}
        deferred: dict[str, tuple[int, str]] = {}
        for recipient in recipients:
            with self.step("rcpt"):
                try:
                    reply = await client.rcpt(addresses[recipient], encoding=encoding)
                except SMTPRecipientRefused as exc:
                    if exc.code == 421 or not client.is_connected:
                        raise  # the server is closing the session: nothing was delivered
                    answer = (exc.code, self.redact(exc.message))
                    # RFC 5321 4.5.3.1.10: 552 to RCPT is "too many recipients", a 452.
                    if 400 <= exc.code < 500 or exc.code == 552:
                        deferred[recipient] = answer
                    else:
                        rejected[recipient] = answer
                    self.say(f"rcpt: TO:<{addresses[recipient]}> -> {exc.code} {exc.message}")
                    continue
            accepted.append(recipient)
            self.say(f"rcpt: TO:<{addresses[recipient]}> -> {_reply(reply)}")

        if not accepted:
            result = DeliveryResult((), rejected, deferred)
            first, (code, text) = next(iter({**deferred, **rejected}.items()))
            cause = "temporary" if deferred else "recipient_rejected"
            self.fail(
                "rcpt",
                cause,
                f"{first}: {text}" if len(recipients) > 1 else text,
                code=code,
                transient=bool(deferred),
                result=result,
            )

        refused = DeliveryResult((), rejected, deferred)
        with self.step("data"):
            try:
                reply = await client.data(message)
            except SMTPResponseException as exc:
                cause = "temporary" if 400 <= exc.code < 500 else "permanent"
                self.fail("data", cause, exc.message, code=exc.code, result=refused)
            except (SMTPServerDisconnected, SMTPTimeoutError) as exc:
                # The server may or may not have taken it; sending again is the safe side.
                cause = "timeout" if isinstance(exc, SMTPTimeoutError) else "disconnected"
                self.fail("data", cause, _message(exc), result=refused)
        self.say(f"data: {len(message)} bytes -> {_reply(reply)}")
        answer = (reply.code, self.redact(reply.message))
        return DeliveryResult(tuple(accepted), rejected, deferred, answer)

    async def close(self, polite: bool) -> None:
        """QUIT (when `polite`), close, and wait a moment for the connection to be gone, so
        that a TLS close_notify exchange finishes instead of being cut off by the caller.
        Cancelled meanwhile (the service stopping), it drops the connection at once."""
        client = self.client
        if client is None:
            return
        protocol = client.protocol
        try:
            try:
                if polite and client.is_connected:
                    await client.quit(timeout=min(self.smtp.timeout, 5.0))
            except (SMTPException, OSError, TimeoutError):
                pass  # a slow or rude goodbye never fails a delivery
            finally:
                client.close()
            if protocol is not None:
                # SMTPProtocol.transport turns None in connection_lost, after the socket closed.
                # aiosmtplib offers no event for that, hence the short, bounded poll.
                deadline = time.monotonic() + min(self.smtp.timeout, 2.0)
                while protocol.transport is not None and time.monotonic() < deadline:  # noqa: ASYNC110
                    await asyncio.sleep(0.005)
        except asyncio.CancelledError:
            if protocol is not None:
                _abort(protocol.transport)
            raise

    def abort(self) -> None:
        """Drop the connection without a goodbye. A TLS transport's close() would wait for the
        server's close_notify, and the loop may stop before it comes: the socket would leak."""
        client = self.client
        if client is None:
            return
        transport = client.transport
        client.close()
        _abort(transport)

    # -- helpers --

    def _client(self) -> aiosmtplib.SMTP:
        assert self.client is not None
        return self.client

    def say_size(self) -> None:
        """The server's SIZE limit against the biggest report the configuration can make."""
        if self._say is None:
            return
        client = self._client()
        announced = client.esmtp_extensions.get("size", "").strip()
        limit = int(announced) if announced.isdigit() else 0  # RFC 1870: 0 is no limit
        if not limit:
            self.say("size: the server announces no SIZE limit")
            return
        if self._largest is None:
            self.say(
                f"size: the server takes messages up to {_size(limit)}; no report attaches a file"
            )
            return
        report, attachment = self._largest
        needed = report_size(attachment)
        said = (
            f"size: the server takes messages up to {_size(limit)}; the biggest report the "
            f"config allows is about {_size(needed)} as sent (report {report}: "
            f"max_attachment_bytes {_size(attachment)}, base64-encoded, with the text and HTML)"
        )
        if needed <= limit:
            self.say(f"{said}: it fits")
            return
        fits = f"{attachment_within(limit) // 1024}KiB"
        self.say(f"{said}: WARNING too big")
        if self._warn is not None:
            self._warn(
                f"{self.smtp.host} port {self.smtp.port} takes messages up to {_size(limit)} but "
                f"report {report} may send about {_size(needed)}: set its max_attachment_bytes "
                f"to {fits} or less, or ask the mail administrator for a higher limit."
            )

    def say_tls(self) -> None:
        if self._say is None:
            return
        client = self._client()
        sslobject = client.get_transport_info("ssl_object")
        cipher = client.get_transport_info("cipher")
        version = sslobject.version() if sslobject is not None else "?"
        name = cipher[0] if cipher else "?"
        cert = client.get_transport_info("peercert")
        if not cert:
            self.say(f"tls: {version} ({name}); certificate not verified (verify_tls: false)")
            return
        subject = _dn(cert.get("subject", ()))
        issuer = _dn(cert.get("issuer", ()))
        expires = "?"
        if "notAfter" in cert:
            not_after = ssl.cert_time_to_seconds(cert["notAfter"])
            days = int((not_after - time.time()) // 86400)
            expires = f"{time.strftime('%Y-%m-%d', time.gmtime(not_after))} (in {days} days)"
        names = ", ".join(v for _, v in cert.get("subjectAltName", ()))
        self.say(
            f"tls: {version} ({name}); certificate verified: subject {subject}; "
            f"names {names or '-'}; issuer {issuer}; expires {expires}"
        )


# A report's text and HTML parts and headers, quoted-printable: the HTML is kept under 100 KB.
REPORT_OVERHEAD = 256 * 1024


def report_size(attachment: int) -> int:
    """Bytes on the wire of a report whose attachment is `attachment` bytes: base64 makes 4
    of 3, in lines of 76 characters and CRLF; the rest of the report is REPORT_OVERHEAD at most."""
    encoded = 4 * -(-attachment // 3)
    return encoded + 2 * -(-encoded // 76) + REPORT_OVERHEAD


def attachment_within(limit: int) -> int:
    """The largest attachment whose report_size is at most `limit`."""
    room = max(0, limit - REPORT_OVERHEAD)
    guess = room * 3 * 76 // (4 * 78)
    while guess > 0 and report_size(guess) > limit:
        guess -= 1
    return guess


def _size(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def _raise_if_cancelled() -> None:
    """Re-raise a cancellation that was swallowed on the way.

    aiosmtplib waits for every reply with asyncio.wait_for, which in Python 3.11 returns the
    reply and drops the CancelledError when both arrive in the same loop iteration. A task that
    was asked to stop must not go on (to MAIL, or back to waiting for work): its TaskGroup, and
    so the service's shutdown, would wait forever.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def _secrets(smtp: SmtpConfig) -> list[str]:
    """The password and the forms it travels in, to scrub from anything shown."""
    password = smtp.password or ""
    if len(password) < 3:  # shorter would mangle ordinary text; such a password is moot
        return []
    user = smtp.username or ""
    forms = [
        password,
        base64.b64encode(password.encode()).decode(),
        base64.b64encode(f"\0{user}\0{password}".encode()).decode(),
    ]
    return sorted(set(forms), key=len, reverse=True)


E = TypeVar("E", bound=BaseException)


def _find(exc: BaseException, kind: type[E]) -> E | None:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, kind):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def _os_error(exc: BaseException) -> OSError | None:
    """The operating system's error under aiosmtplib's (which are OSErrors themselves)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, OSError) and not isinstance(current, SMTPException):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def _tls_failure(exc: BaseException) -> tuple[str, str] | None:
    verify = _find(exc, ssl.SSLCertVerificationError)
    if verify is not None:
        text = verify.verify_message or verify.reason or str(verify)
        if verify.verify_code in _HOSTNAME:
            return "tls_hostname", text
        if verify.verify_code in _EXPIRED:
            return "tls_expired", text
        if verify.verify_code in _UNTRUSTED:
            return "tls_untrusted", text
        return "tls_other", text
    error = _find(exc, ssl.SSLError)
    if error is not None:
        return "tls_other", error.reason or str(error)
    return None


def _refused(error: OSError | None) -> bool:
    if error is None:
        return False
    if isinstance(error, ConnectionRefusedError) or error.errno == errno.ECONNREFUSED:
        return True
    # Several addresses, all refused: asyncio sums them up as "Multiple exceptions: ...".
    text = str(error)
    return text.startswith("Multiple exceptions") and text.count("[Errno 111]") == text.count(
        "[Errno"
    )


def _message(exc: BaseException) -> str:
    return exc.message if isinstance(exc, SMTPException) else str(exc)


def _abort(transport: asyncio.BaseTransport | None) -> None:
    if isinstance(transport, asyncio.Transport):
        transport.abort()


def _reply(response: aiosmtplib.SMTPResponse) -> str:
    first = response.message.splitlines()[0] if response.message else ""
    return f"{response.code} {first}".strip()


_DN_NAMES = {
    "commonName": "CN",
    "organizationName": "O",
    "organizationalUnitName": "OU",
    "countryName": "C",
    "stateOrProvinceName": "ST",
    "localityName": "L",
}


def _dn(rdns: Any) -> str:
    parts = [f"{_DN_NAMES.get(k, k)}={v}" for rdn in rdns for k, v in rdn]
    return ", ".join(parts) or "?"
