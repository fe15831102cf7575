"""The task that takes due messages out of the outbox and hands each to the transport of its kind.

It owns when to try (backoff from retry_initial, doubling to retry_max, until retry_for since
queueing; at most max_per_hour sends an hour) and what an attempt's outcome does to the entry
(delivered to some, deferred, failed for good), and records all of it in the outbox. How a
message travels is the transport's (`transport.Transport`); the Sender knows no protocol.

Delivery is at least once: a crash after the server took the message and before the outbox
recorded it sends the message again on restart. No transport offers better; the other way round
would lose reports. The window is kept small: a transport reports acceptance the moment the
server has the message (for SMTP, the 250 to DATA), before it says goodbye, and the outcome is
recorded then. A resend is recognisable by the message's own id (an email's Message-ID, a
webhook's webhook-id), the same in every attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import structlog

from agent.config.model import SmtpConfig
from agent.deliver.outbox import HOUR, Outbox, OutboxEntry
from agent.deliver.transport import (
    ConnectionFailure,
    DeliveryFailure,
    DeliveryResult,
    OnAccepted,
    Outgoing,
    TransientFailure,
    Transport,
    raise_if_cancelled,
)

log = structlog.get_logger("tailmail.mail")

MAIL = "mail"  # the kind of an entry whose meta names none
MAX_SLEEP = 600.0  # re-check the clock at least this often while something waits (clock jumps)


@dataclass(frozen=True, slots=True)
class Policy:
    """When to try again, for how long, and how many sends an hour at most."""

    retry_initial: float
    retry_max: float
    retry_for: float
    max_per_hour: int

    @classmethod
    def of(cls, smtp: SmtpConfig) -> Policy:
        """The operator's settings, which live in the `smtp:` section."""
        return cls(smtp.retry_initial, smtp.retry_max, smtp.retry_for, smtp.max_per_hour)


class Sender:
    """Delivers due entries, one at a time; sleeps until wake() or the next due time.

    `transports` maps an entry's kind (its meta's `kind`, "mail" when absent) to the transport
    that sends it. An entry of a kind with no transport (queued by a newer version) fails for
    now at each attempt, so it waits, and lands in failed/ when retry_for runs out.
    """

    def __init__(
        self,
        outbox: Outbox,
        transports: Mapping[str, Transport],
        on_delivered: Callable[[OutboxEntry], None],
        *,
        policy: Policy,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.outbox = outbox
        self.transports = transports
        self.on_delivered = on_delivered
        self.policy = policy
        self.clock = clock
        self._wakeup = asyncio.Event()
        self._held_logged = False

    def wake(self) -> None:
        """Something was queued: look now.

        Call it from the event loop's thread (from elsewhere: loop.call_soon_threadsafe). Entries
        put by another process are noticed only when woken or when something else falls due.
        """
        self._wakeup.set()

    async def run(self) -> None:
        for entry in self.outbox.recover():
            self._finish_delivered(entry)
        while True:
            self._wakeup.clear()
            delay = await self.deliver_due()
            if delay is None:
                await self._wakeup.wait()
                continue
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(delay, MAX_SLEEP)):
                    await self._wakeup.wait()

    async def deliver_due(self) -> float | None:
        """Try every due entry once; return seconds until the next one is due (None: none)."""
        for entry in self.outbox.entries():
            if entry.meta.get("next_attempt", 0) > self.clock():
                continue
            held = self._budget_wait(self.clock())
            if held > 0:
                if not self._held_logged:
                    log.warning(
                        f"{self.transport(entry).name}.rate_limited",
                        max_per_hour=self.policy.max_per_hour,
                        retry_in=round(held),
                        report=entry.meta.get("report"),
                        period=entry.meta.get("period"),
                    )
                    self._held_logged = True
                return held
            self._held_logged = False
            try:
                await self.attempt(entry)
            except Exception:
                # The outbox itself failed (disk full, permissions), or a transport broke its
                # contract: keep the service alive and try again later rather than spin or die;
                # the entry is still queued, and no attempt is counted.
                log.exception("outbox.attempt_failed", id=entry.id)
                return self.policy.retry_initial
            # A stop asked for during the attempt may have been swallowed on the way (3.11's
            # wait_for drops a cancellation that comes with the answer, also with a refusal):
            # honour it here, or the service's shutdown would wait for this task for ever.
            raise_if_cancelled()
        waiting = [float(e.meta.get("next_attempt", 0)) for e in self.outbox.entries()]
        if not waiting:
            return None
        return max(0.0, min(waiting) - self.clock())

    def transport(self, entry: OutboxEntry) -> Transport:
        """The transport for `entry`'s kind."""
        kind = str(entry.meta.get("kind", MAIL))
        return self.transports.get(kind) or _NoTransport(kind)

    def _budget_wait(self, now: float) -> float:
        """Seconds until max_per_hour allows one more send."""
        sent = self.outbox.sent_times(now)
        if len(sent) < self.policy.max_per_hour:
            return 0.0
        return max(0.0, sent[-self.policy.max_per_hour] + HOUR - now)

    async def attempt(self, entry: OutboxEntry) -> None:
        """One delivery attempt of `entry` to its pending recipients."""
        settled = False

        def accepted(result: DeliveryResult) -> None:
            # Recorded the moment the server has the message, before its goodbye: a crash or a
            # stop while a slow server says goodbye must not send the report again.
            nonlocal settled
            settled = True
            self._settle(entry, None, result)

        failure, result = await self._send(entry, entry.pending, accepted)
        if not settled:
            self._settle(entry, failure, result)

    def _settle(
        self, entry: OutboxEntry, failure: DeliveryFailure | None, result: DeliveryResult | None
    ) -> None:
        """Record the outcome of an attempt. Synchronous on purpose: it happens whole, or (if
        the process is killed) not at all."""
        pending = entry.pending
        attempt = int(entry.meta.get("attempts", 0)) + 1
        now = self.clock()
        meta = dict(entry.meta)
        name = self.transport(entry).name
        fields = self._fields(entry, attempt)
        delivered_to: list[str] = list(meta.get("delivered_to", []))
        accepted = list(result.accepted) if result is not None and failure is None else []
        # Recipients that failed for good in this attempt: recipient -> (code, text, step, cause)
        final: dict[str, tuple[int | None, str, str, str]] = {}
        if result is not None:
            for r, (code, text) in result.rejected.items():
                final[r] = (code, text, result.step, "recipient_rejected")
        if failure is not None:
            meta["last_error"] = failure.as_dict()
            if not failure.transient:
                for r in pending:
                    final.setdefault(r, (failure.code, failure.text, failure.step, failure.cause))
        elif result is not None:
            self.outbox.record_send(now)
            delivered_to += [r for r in accepted if r not in delivered_to]
            code, text = result.reply or (250, "")
            log.info(f"{name}.delivered", **fields, recipients=accepted, code=code, text=text)
            if result.deferred:
                code, text = next(iter(result.deferred.values()))
                meta["last_error"] = {
                    "step": result.step, "cause": "temporary", "code": code, "text": text,
                }  # fmt: skip
        still = [r for r in pending if r not in accepted and r not in final]
        deadline = float(meta.get("queued_at", now)) + self.policy.retry_for
        if still and now >= deadline:
            error = meta.get("last_error") or {}
            for r in still:
                final[r] = (
                    error.get("code"),
                    f"retry_for ran out; last answer: {error.get('text')}",
                    str(error.get("step")),
                    str(error.get("cause")),
                )
            meta["expired"] = True
            still = []
        rejected = dict(meta.get("rejected", {}))
        rejected.update({r: [code, text] for r, (code, text, _, _) in final.items()})
        meta.update(attempts=attempt, delivered_to=delivered_to, rejected=rejected)
        entry = OutboxEntry(entry.id, entry.path, meta)
        self._log_final(name, fields, final, expired=bool(meta.get("expired")))

        if still:
            self._defer(entry, attempt, still, now, deadline, failure)
        else:
            self._complete(entry, attempt, now)

    async def _send(
        self, entry: OutboxEntry, pending: list[str], on_accepted: OnAccepted
    ) -> tuple[DeliveryFailure | None, DeliveryResult | None]:
        if not pending:  # everything was settled before a crash: only completion is left
            return None, None
        try:
            content = entry.path.read_bytes()
        except OSError as exc:
            return TransientFailure("queue", "local", f"cannot read {entry.path}: {exc}"), None
        message = Outgoing(entry.id, content, tuple(pending), entry.meta)
        try:
            return None, await self.transport(entry).send(message, on_accepted)
        except DeliveryFailure as exc:
            return exc, exc.result

    def _defer(
        self,
        entry: OutboxEntry,
        attempt: int,
        still: list[str],
        now: float,
        deadline: float,
        failure: DeliveryFailure | None,
    ) -> None:
        """Schedule the next attempt: retry_initial, doubling up to retry_max, not before the
        server asked (retry_after); the last one exactly when retry_for runs out."""
        policy = self.policy
        # The exponent is capped: past 2**1023 the product no longer fits a float (OverflowError),
        # which a small retry_max against a long retry_for reaches after 1,024 attempts.
        delay = min(policy.retry_initial * 2 ** min(attempt - 1, 64), policy.retry_max)
        if failure is not None and failure.retry_after is not None:
            delay = max(delay, failure.retry_after)
        entry.meta["next_attempt"] = min(now + delay, deadline)
        error = entry.meta.get("last_error") or {}
        name = self.transport(entry).name
        outcome = (
            "connection_failed" if isinstance(failure, ConnectionFailure) else "delivery_failed"
        )
        kind = f"{name}.{outcome}"
        log.warning(
            kind,
            **self._fields(entry, attempt),
            step=error.get("step"),
            cause=error.get("cause"),
            code=error.get("code"),
            text=error.get("text"),
            recipients=still,
            retry_at=_iso(entry.meta["next_attempt"]),
        )
        self.outbox.update(entry, entry.meta)
        tries = f"{attempt} attempt{'s' if attempt != 1 else ''}"
        text = (
            f"not yet delivered to {', '.join(still)} after {tries}, retried until "
            f"{_iso(deadline)}; last answer: {_answer(error)}"
        )
        event = self._event("deferred", entry, attempt, still, error, text)
        event["log"] = kind  # which counter it adds to (see Outbox.counters)
        self.outbox.record(event)

    def _complete(self, entry: OutboxEntry, attempt: int, now: float) -> None:
        """No recipient is pending: delivered (to some or all), or failed."""
        meta = entry.meta
        delivered_to = meta["delivered_to"]
        failed = [r for r in meta["recipients"] if r not in delivered_to]
        rejected = {r: meta["rejected"][r] for r in failed if r in meta["rejected"]}
        if meta.get("expired"):
            why = f"retry_for ran out after {attempt} attempts; last answer: {_answer(meta.get('last_error'))}"
        else:
            answers = {r: " ".join(str(x) for x in a if x) for r, a in rejected.items()}
            if len(answers) == 1 and list(answers) == failed:
                said = next(iter(answers.values()))
            else:
                said = "; ".join(f"{r}: {a}" for r, a in answers.items())
            why = f"refused for good: {said or _answer(meta.get('last_error'))}"
        text = f"not delivered to {', '.join(failed)}: {why}; kept in the outbox's failed folder"
        failed_event = self._event("failed", entry, attempt, failed, meta.get("last_error"), text)
        failed_event["rejected"] = rejected
        if failed:
            meta["failed_at"] = now
        if not delivered_to:
            # Recorded first: a crash in between may repeat the event, never lose it.
            self.outbox.record(failed_event)
            self.outbox.move_to_failed(entry, meta)
            return
        if failed:
            # Who did not get it keeps a copy in failed/ (and retention keeps its file).
            self.outbox.copy_to_failed(entry, {**meta, "recipients": failed})
        events = [self._event("delivered", entry, attempt, delivered_to, None)]
        if failed:
            # After the delivered event, so the next report still shows this as a problem.
            events.append(failed_event)
        self.outbox.update(entry, meta)
        self.outbox.mark_delivered(entry, events)
        self._finish_delivered(entry)

    def _log_final(
        self,
        name: str,
        fields: dict[str, Any],
        final: dict[str, tuple[int | None, str, str, str]],
        expired: bool,
    ) -> None:
        """One final_delivery_failed per distinct answer, naming its recipients."""
        groups: dict[tuple[int | None, str, str, str], list[str]] = {}
        for recipient, answer in final.items():
            groups.setdefault(answer, []).append(recipient)
        for (code, text, step, cause), recipients in groups.items():
            log.error(
                f"{name}.final_delivery_failed",
                **fields,
                step=step,
                cause=cause,
                code=code,
                text=text,
                recipients=recipients,
                expired=expired,
            )

    def _finish_delivered(self, entry: OutboxEntry) -> None:
        try:
            self.on_delivered(entry)
        except Exception:
            # Kept (and marked delivered): the next start calls on_delivered again.
            log.exception("outbox.on_delivered_failed", id=entry.id)
            return
        self.outbox.remove(entry)

    def _fields(self, entry: OutboxEntry, attempt: int) -> dict[str, Any]:
        return {
            **self.transport(entry).where,
            "attempt": attempt,
            "id": entry.id,
            "report": entry.meta.get("report"),
            "period": entry.meta.get("period"),
        }

    def _event(
        self,
        kind: str,
        entry: OutboxEntry,
        attempt: int,
        recipients: list[str],
        error: dict[str, Any] | None,
        text: str | None = None,
    ) -> dict[str, Any]:
        event: dict[str, Any] = {
            "event": kind,
            "id": entry.id,
            "report": entry.meta.get("report"),
            "period": entry.meta.get("period"),
            "attempt": attempt,
            "recipients": recipients,
        }
        if error:
            event["error"] = error
        if text:
            event["text"] = text  # one sentence, for the problems list of the next report
        return event


class _NoTransport:
    """Stands for a kind this version cannot send: each attempt fails for now, so the message
    stays queued (a newer version may send it) and ends in failed/, never deleted."""

    def __init__(self, kind: str) -> None:
        self.name = kind
        self.where: Mapping[str, Any] = {}

    async def send(self, message: Outgoing, on_accepted: OnAccepted) -> DeliveryResult:
        raise TransientFailure("queue", "no_transport", f"no transport sends kind {self.name!r}")


def _answer(error: dict[str, Any] | None) -> str:
    """`step: code text`, from a DeliveryFailure.as_dict()."""
    if not error:
        return "no answer recorded"
    code = f"{error['code']} " if error.get("code") is not None else ""
    return f"{error.get('step')}: {code}{error.get('text')}"


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
