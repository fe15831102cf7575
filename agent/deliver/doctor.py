"""`tailmail test-email`: one test message through the configured SMTP server, saying each step
as it goes (resolve, connect, TLS and its certificate, EHLO, STARTTLS, AUTH, the server's SIZE
limit against the biggest report, MAIL, RCPT, DATA) and, on failure, the step and the cause.

The conversation is the transport's own (`smtp.SmtpSession`): what the doctor proves is what
the service will do. Only the telling is added, through a `Listener`.
"""

from __future__ import annotations

import email.policy
import email.utils
import socket
import ssl
import time
from collections.abc import Callable
from email.message import EmailMessage
from typing import Any

import aiosmtplib

from agent import __version__
from agent.config.load import has_header_breaks
from agent.config.model import SmtpConfig
from agent.deliver.smtp import Listener, SmtpFailure, SmtpSession, envelope_address

Say = Callable[[str], None]

# A report's text and HTML parts and headers, quoted-printable: the HTML is kept under 100 KB.
REPORT_OVERHEAD = 256 * 1024


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
    session = SmtpSession(smtp, _Doctor(smtp, say, largest_attachment, warn))
    try:
        await session.run(_test_message(smtp, to), [to])
    except SmtpFailure as failure:
        code = f"{failure.code} " if failure.code is not None else ""
        say(f"{failure.step}: FAILED ({failure.cause}): {code}{failure.text}")
        return failure
    return None


class _Doctor(Listener):
    """Says every step, and what the transport does not need to know: the certificate, and
    whether the biggest report fits the server's SIZE limit."""

    def __init__(
        self,
        smtp: SmtpConfig,
        say: Say,
        largest_attachment: tuple[str, int] | None,
        warn: Say | None,
    ) -> None:
        self.smtp = smtp
        self._say = say
        self._largest = largest_attachment
        self._warn = warn

    def say(self, line: str) -> None:
        self._say(line)

    def secured(self, client: aiosmtplib.SMTP) -> str:
        sslobject = client.get_transport_info("ssl_object")
        cipher = client.get_transport_info("cipher")
        version = sslobject.version() if sslobject is not None else "?"
        name = cipher[0] if cipher else "?"
        cert = client.get_transport_info("peercert")
        if not cert:
            return f"tls: {version} ({name}); certificate not verified (verify_tls: false)"
        subject = _dn(cert.get("subject", ()))
        issuer = _dn(cert.get("issuer", ()))
        expires = "?"
        if "notAfter" in cert:
            not_after = ssl.cert_time_to_seconds(cert["notAfter"])
            days = int((not_after - time.time()) // 86400)
            expires = f"{time.strftime('%Y-%m-%d', time.gmtime(not_after))} (in {days} days)"
        names = ", ".join(v for _, v in cert.get("subjectAltName", ()))
        return (
            f"tls: {version} ({name}); certificate verified: subject {subject}; "
            f"names {names or '-'}; issuer {issuer}; expires {expires}"
        )

    def ready(self, client: aiosmtplib.SMTP) -> str:
        """The server's SIZE limit against the biggest report the configuration can make."""
        announced = client.esmtp_extensions.get("size", "").strip()
        limit = int(announced) if announced.isdigit() else 0  # RFC 1870: 0 is no limit
        if not limit:
            return "size: the server announces no SIZE limit"
        if self._largest is None:
            return (
                f"size: the server takes messages up to {_size(limit)}; no report attaches a file"
            )
        report, attachment = self._largest
        needed = report_size(attachment)
        said = (
            f"size: the server takes messages up to {_size(limit)}; the biggest report the "
            f"config allows is about {_size(needed)} as sent (report {report}: "
            f"max_attachment_bytes {_size(attachment)}, base64-encoded, with the text and HTML)"
        )
        if needed <= limit:
            return f"{said}: it fits"
        if self._warn is not None:
            fits = f"{attachment_within(limit) // 1024}KiB"
            self._warn(
                f"{self.smtp.host} port {self.smtp.port} takes messages up to {_size(limit)} but "
                f"report {report} may send about {_size(needed)}: set its max_attachment_bytes "
                f"to {fits} or less, or ask the mail administrator for a higher limit."
            )
        return f"{said}: WARNING too big"


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


def _size(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


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
