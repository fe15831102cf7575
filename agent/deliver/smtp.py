"""The SMTP transport (aiosmtplib): sending one message, and saying exactly why it did not go.

Every way a delivery can fail becomes one `SmtpFailure` naming the step (resolve, connect, tls,
ehlo, starttls, auth, mail, rcpt, data), a cause an operator can act on, the server's answer and,
by its type, whether retrying later can help. `SmtpTransport` is what the Sender drives;
`SmtpSession` is one conversation, which the doctor (`doctor.py`) also runs, hearing each step.

Security is never opportunistic: `starttls` fails when the server does not offer STARTTLS, before
any AUTH or MAIL, and certificates are verified unless the operator turned that off.
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import errno
import re
import socket
import ssl
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn, TypeVar

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

from agent.config.model import SmtpConfig
from agent.deliver.transport import (
    ConnectionFailure,
    DeliveryFailure,
    DeliveryResult,
    OnAccepted,
    Outgoing,
    PermanentFailure,
    TransientFailure,
    raise_if_cancelled,
)

# Steps before MAIL concern the path to the server or our own configuration, not the message:
# like Postfix (smtp_sasl_auth_soft_bounce, TLS policy failures), the message is deferred and
# retried, so that fixing the configuration is enough to get it delivered.
_SESSION_STEPS = frozenset({"resolve", "connect", "tls", "ehlo", "starttls", "auth"})

# OpenSSL X509_V_ERR_* codes, as carried by ssl.SSLCertVerificationError.verify_code; any other
# verification error is tls_other.
_CERTIFICATE_CAUSES = {
    2: "tls_untrusted",  # unable to get issuer certificate
    18: "tls_untrusted",  # self-signed certificate
    19: "tls_untrusted",  # self-signed certificate in chain
    20: "tls_untrusted",  # unable to get local issuer certificate
    21: "tls_untrusted",  # unable to verify the first certificate
    27: "tls_untrusted",  # certificate not trusted
    9: "tls_expired",  # not yet valid
    10: "tls_expired",  # expired
    62: "tls_hostname",  # host name mismatch
    63: "tls_hostname",  # email address mismatch
    64: "tls_hostname",  # IP address mismatch
}

# What to do, per cause: one sentence each. {where} is "HOST port PORT" (or "the SMTP server"),
# {answer} the server's code and text, {text} the text alone.
_ADVICE = {
    "dns": "The name {host_or_key} could not be resolved ({text}): check smtp.host for typos and that this machine's DNS works (getent hosts {host}).",
    "refused": "Nothing accepts connections on {where}: check smtp.port (587 for starttls, 465 for ssl, 25 for none) and that the server is running and reachable through the firewall.",
    "unreachable": "{where} cannot be reached ({text}): check this machine's network, routing and firewall.",
    "timeout": "{where} did not answer in time: a firewall may be dropping the connection, or the port expects other security (ssl on 465, starttls on 587); check smtp.port and smtp.security, or raise smtp.timeout.",
    "disconnected": "{where} closed the connection unexpectedly ({text}): it may be overloaded or limiting clients; reports are kept and retried.",
    "tls_untrusted": "The certificate of {where} is not signed by a trusted authority ({text}): put its CA certificate (PEM) in a file and set smtp.ca_file to it; verify_tls: false is a last resort.",
    "tls_hostname": "The certificate of {where} is not valid for the name tailmail connects to ({text}): set smtp.host to a name the certificate lists.",
    "tls_expired": "The certificate of {where} is outside its validity period ({text}): the server's administrator must renew it; also check this machine's clock.",
    "tls_other": "TLS with {where} failed ({answer}): check that smtp.security matches the port (ssl for 465, starttls for 587).",
    "starttls_missing": "{where} does not offer STARTTLS, so the connection cannot be encrypted: use security: ssl if the port expects TLS at once (465), or the server's submission port (587); tailmail sends in the clear only with security: none.",
    "auth_rejected": "{where} rejected the login ({answer}): check smtp.username and smtp.password (or password_file).",
    "auth_required": "{where} requires a login before it takes mail ({answer}): set smtp.username and smtp.password (or password_file).",
    "auth_unavailable": "No authentication is possible with {where} ({text}): use security starttls or ssl, or remove smtp.username if the server needs no login.",
    "sender_rejected": "{where} refused the sender ({answer}): set smtp.from to an address this account may send as.",
    "recipient_rejected": "{where} refused the recipient ({answer}): check the report's to and cc addresses.",
    "temporary": "{where} reported a temporary problem ({answer}): nothing needs changing here, reports are kept and retried; if it persists, ask the server's administrator.",
    "permanent": "{where} refused the message permanently ({answer}): check its size and the server's policy with the mail administrator.",
}
_ADVICE_OTHERWISE = "{where} answered unexpectedly at {step} ({answer}): check that smtp.host and smtp.port point to an SMTP server."


class SmtpFailure(DeliveryFailure):
    """An SMTP delivery failed; `advice()` says what the operator can do about it."""

    def __init__(
        self,
        step: str,
        cause: str,
        text: str,
        *,
        code: int | None = None,
        host: str = "",
        port: int = 0,
        result: DeliveryResult | None = None,
    ) -> None:
        super().__init__(step, cause, text, code=code, result=result)
        self.host = host
        self.port = port

    def advice(self) -> str:
        """One sentence: what went wrong and what to do next."""
        template = _ADVICE.get(self.cause, _ADVICE_OTHERWISE)
        return template.format(
            where=f"{self.host} port {self.port}" if self.host else "the SMTP server",
            answer=f"{self.code} {self.text}" if self.code is not None else self.text,
            text=self.text,
            step=self.step,
            host=self.host,
            host_or_key=self.host or "smtp.host",
        )


class SmtpTransientFailure(SmtpFailure, TransientFailure):
    """The server answered 4xx, timed out or went away: retried later."""


class SmtpConnectionFailure(SmtpFailure, ConnectionFailure):
    """Resolving, connecting, TLS, EHLO or login failed, before any MAIL: retried later."""


class SmtpPermanentFailure(SmtpFailure, PermanentFailure):
    """The server refused for good (5xx after MAIL), or the message cannot be sent as it is."""


def _failure(
    step: str,
    cause: str,
    text: str,
    *,
    code: int | None = None,
    transient: bool | None = None,
    host: str = "",
    port: int = 0,
    result: DeliveryResult | None = None,
) -> SmtpFailure:
    """The failure of its kind. Unless `transient` says otherwise, the steps before MAIL and
    4xx answers are transient, any other answer permanent."""
    if transient is None:
        transient = step in _SESSION_STEPS or code is None or 400 <= code < 500
    kind: type[SmtpFailure] = SmtpPermanentFailure
    if transient:
        kind = SmtpConnectionFailure if step in _SESSION_STEPS else SmtpTransientFailure
    return kind(step, cause, text, code=code, host=host, port=port, result=result)


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


class SmtpTransport:
    """Mail through the configured server: one session per message, one RCPT per recipient."""

    name = "smtp"

    def __init__(self, smtp: SmtpConfig) -> None:
        self.smtp = smtp
        self.where = {"host": smtp.host, "port": smtp.port}

    async def send(self, message: Outgoing, on_accepted: OnAccepted) -> DeliveryResult:
        """Send the content (CRLF bytes, as-is); see `Transport` for the contract. Raises an
        `SmtpFailure` when nobody got it."""
        session = SmtpSession(self.smtp)
        return await session.run(
            message.content, list(dict.fromkeys(message.recipients)), on_accepted
        )


class Listener:
    """Hears a conversation step by step; the transport's sessions have none, the doctor's
    (`doctor.py`) says each step. Lines are given with every secret already scrubbed."""

    def say(self, line: str) -> None:
        """One step as `step: what happened`."""

    def secured(self, client: aiosmtplib.SMTP) -> str | None:
        """TLS is up (at connect with ssl, after STARTTLS): a line about it, or None."""
        return None

    def ready(self, client: aiosmtplib.SMTP) -> str | None:
        """Logged in (or not, without a username), before MAIL: a line, or None."""
        return None


class SmtpSession:
    """One SMTP conversation: open (resolve .. auth), one transaction, close."""

    def __init__(self, smtp: SmtpConfig, listener: Listener | None = None) -> None:
        self.smtp = smtp
        self.listener = listener
        self.client: aiosmtplib.SMTP | None = None
        self._secrets = _secrets(smtp)

    # -- reporting --

    def say(self, line: str | None) -> None:
        if self.listener is not None and line:
            self.listener.say(self.redact(line))

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
        raise _failure(
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
            raise_if_cancelled()
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
        on_accepted: OnAccepted | None = None,
    ) -> DeliveryResult:
        """Open, send `message` to `recipients`, close; `on_accepted` is called the moment the
        server has the message, before QUIT (see `Transport`)."""
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
            raise_if_cancelled()  # a failure that came with a stop must not hide the stop
            raise
        await self.close(polite=True)
        raise_if_cancelled()
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
        if implicit and self.listener is not None:
            self.say(self.listener.secured(client))

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
            if self.listener is not None:
                self.say(self.listener.secured(client))
            await self.ehlo()
        if smtp.username:
            await self.auth(smtp.username, smtp.password or "")
        elif client.supports_extension("auth"):
            offered = " ".join(m.upper() for m in client.server_auth_methods)
            self.say(f"auth: no smtp.username, so no login (the server offers {offered})")
        else:
            self.say("auth: no smtp.username, so no login")
        if self.listener is not None:
            self.say(self.listener.ready(client))

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
            result = DeliveryResult((), rejected, deferred, step="rcpt")
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

        refused = DeliveryResult((), rejected, deferred, step="rcpt")
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
        return DeliveryResult(tuple(accepted), rejected, deferred, answer, step="rcpt")

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
        return _CERTIFICATE_CAUSES.get(verify.verify_code, "tls_other"), text
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
