"""The boundary between the outbox and the world: a `Transport` takes one message to its
recipients and says who has it. SMTP is one (`smtp.py`), webhooks will be another (HTTP); the
Sender (`sender.py`) drives either the same way, and `memory.py` stands in for both in tests.

The failures are one family under `DeliveryError`: whether trying again can help is the type
(`TransientFailure`, `PermanentFailure`), as aiosmtplib's `SMTPTimeoutError` is a `TimeoutError`;
a transport's own failures are also its kind (`SmtpFailure`) and carry its advice.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from agent.core.errors import DeliveryError


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One attempt at one queued message, as a transport gets it."""

    id: str  # the outbox id: the same in every attempt, so a receiver can drop a repeat
    content: bytes  # as queued, sent as-is (an email: CRLF lines, headers and all)
    recipients: tuple[str, ...]  # still pending, in order: mail addresses; never empty
    meta: Mapping[str, Any] = field(default_factory=dict)  # the entry's meta as queued

    def __post_init__(self) -> None:
        if not self.recipients:
            raise ValueError("a message to send needs at least one recipient")


@dataclass(frozen=True, slots=True)
class DeliveryResult:
    """Who has the message, and who refused it, each refusal as the server's (code, text)."""

    accepted: tuple[str, ...]
    rejected: dict[str, tuple[int, str]] = field(default_factory=dict)  # for good
    deferred: dict[str, tuple[int, str]] = field(default_factory=dict)  # for now: retried
    # The server's answer to the message, e.g. (250, "2.0.0 Ok: queued as 4XyZ1"), for the log.
    reply: tuple[int, str] | None = field(default=None, compare=False)
    # The step that answered for each recipient (SMTP: "rcpt"), recorded with their refusals.
    step: str = field(default="recipient", compare=False)


OnAccepted = Callable[[DeliveryResult], None]


class DeliveryFailure(DeliveryError):
    """Nobody got the message in this attempt: at which step, why (a cause an operator can act
    on) and the server's answer."""

    def __init__(
        self,
        step: str,
        cause: str,
        text: str,
        *,
        code: int | None = None,
        result: DeliveryResult | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(step, cause, code, text)
        self.step = step
        self.cause = cause
        self.code = code
        self.text = text
        # Set when recipients were answered one by one before the failure: who refused, how.
        self.result = result
        # Seconds the server asked to be left alone (HTTP's Retry-After), at least.
        self.retry_after = retry_after

    def __str__(self) -> str:
        code = f"{self.code} " if self.code is not None else ""
        return f"{self.step}: {self.cause}: {code}{self.text}"

    def as_dict(self) -> dict[str, Any]:
        """What the outbox records as the entry's `last_error`."""
        return {"step": self.step, "cause": self.cause, "code": self.code, "text": self.text}

    def advice(self) -> str:
        """One sentence: what went wrong and what to do next. A transport's own failures say
        more; this is for those that have nothing better."""
        answer = f"{self.code} {self.text}" if self.code is not None else self.text
        retried = "it is kept and retried" if self.transient else "it is kept in the failed folder"
        return f"The message was not delivered at {self.step} ({self.cause}: {answer}): {retried}."


class TransientFailure(DeliveryFailure):
    """Trying again later may help: the message stays queued until retry_for runs out."""

    transient = True


class ConnectionFailure(TransientFailure):
    """The server was not reached, or the session failed before the message was offered."""


class PermanentFailure(DeliveryFailure):
    """Trying again cannot help: the recipients still pending fail at once."""

    transient = False


class Transport(Protocol):
    """Takes one message to its recipients. The contract between the Sender and a transport:

    `send(message, on_accepted)` is called once per attempt, one at a time per transport, with
    an `Outgoing`: the outbox id, the same in every attempt; the content, sent as-is; the
    recipients still pending (at least one; a webhook's is its name); the entry's meta.

    Success: `send` returns a `DeliveryResult` when at least one recipient has the message.
    `accepted` have it, `rejected` refused it for good, `deferred` refused it for now, each with
    the server's (code, text); a recipient in none of the three is tried again later.

    Accepted: the moment the server has the message, before anything that can wait or fail
    (SMTP's QUIT, a TLS close), `send` calls `on_accepted` with the result it will return. The
    Sender records the delivery in that call, so a crash or a cancellation during the goodbye
    cannot send the message again: delivery is at least once, and the window for a repeat is
    only between the server taking the message and this call. It is called once, and never
    when nobody has the message. Whatever `on_accepted` raises, `send` lets through unchanged:
    the delivery was not recorded and will be tried again.

    Failure: when nobody got the message, `send` raises a `DeliveryFailure`. A `TransientFailure`
    (a timeout, a 4xx, a busy server; a `ConnectionFailure` when the server could not be reached
    or the session failed before the message) keeps it queued: retried with backoff, not before
    `retry_after` when set, until retry_for. A `PermanentFailure` fails the pending recipients at
    once. Its `result`, when set, gives the answers of recipients refused one by one; those in
    `rejected` fail whatever the type. A failure's text never holds a secret. Anything else
    raised is a bug: the Sender logs it and tries again later, counting no attempt.

    Cancellation: `send` may be cancelled at any await. It lets CancelledError through, even one
    its library swallowed (`raise_if_cancelled`), and drops its connection without waiting for
    the server.

    `name` prefixes the Sender's log events (`smtp.delivered`); `where` is logged with each of
    them (`host`, `port`) and never holds a secret.
    """

    @property
    def name(self) -> str: ...

    @property
    def where(self) -> Mapping[str, Any]: ...

    async def send(self, message: Outgoing, on_accepted: OnAccepted) -> DeliveryResult: ...


class LazyTransport:
    """A transport built at its first use: the service starts without importing a client
    library (aiosmtplib, an HTTP client) that it may not need for hours."""

    def __init__(self, build: Callable[[], Transport]) -> None:
        self._build = build
        self._transport: Transport | None = None

    def _target(self) -> Transport:
        if self._transport is None:
            self._transport = self._build()
        return self._transport

    @property
    def name(self) -> str:
        return self._target().name

    @property
    def where(self) -> Mapping[str, Any]:
        return self._target().where

    async def send(self, message: Outgoing, on_accepted: OnAccepted) -> DeliveryResult:
        return await self._target().send(message, on_accepted)


def raise_if_cancelled() -> None:
    """Re-raise a cancellation that was swallowed on the way.

    aiosmtplib waits for every reply with asyncio.wait_for, which in Python 3.11 returns the
    reply and drops the CancelledError when both arrive in the same loop iteration. A task that
    was asked to stop must not go on (to MAIL, or back to waiting for work): its TaskGroup, and
    so the service's shutdown, would wait forever.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
