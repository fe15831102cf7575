"""The outbox: reports queued on disk until a server has taken them, and the task that sends.

Layout of `state_dir/outbox`:

    <id>.eml, <id>.json      a queued message and its meta; the .json, written last, commits it
    failed/<id>.eml, .json   given up: a permanent refusal, or retry_for ran out
    _history.jsonl           delivery events (delivered / deferred / failed), append-only
    _delivered.json          ids delivered lately, so the same report is never queued twice
    _sent.json               send times of the last hour, so a restart keeps the hourly budget

Every file is written whole (temp file, fsync, rename, fsync of the directory), so `kill -9` at
any instant leaves a queued message either absent or complete; `Sender.run` tidies what an
interrupted step left behind before it sends anything.

Delivery is at least once: a crash after the server accepted DATA and before the outbox recorded
it sends the message again on restart. SMTP offers nothing better; the other way round would
lose reports. The window is kept small: the outcome is recorded as soon as the 250 to DATA is
read, before QUIT. A resend is recognisable by its Message-ID, the same in every attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NotRequired, TypedDict

import msgspec
import orjson
import structlog

from agent.config.model import SmtpConfig
from agent.core.fs import fsync_dir, make_dirs, open_append, write_all, write_atomic

if TYPE_CHECKING:
    from agent.deliver.smtp import DeliveryResult, SmtpFailure

log = structlog.get_logger("tailmail.mail")

FAILED_DIR = "failed"
HISTORY = "_history.jsonl"
DELIVERED = "_delivered.json"
SENT = "_sent.json"
DELIVERED_KEEP = 1000  # ids remembered after delivery: years of daily reports
HISTORY_MAX_BYTES = 1024 * 1024  # then the oldest events are dropped...
HISTORY_KEEP = 2000  # ...down to this many
HOUR = 3600.0
MAX_SLEEP = 600.0  # re-check the clock at least this often while something waits (clock jumps)

_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")
DAMAGED_SUFFIX = ".damaged"  # failed/<id>.json.damaged: a damaged entry's meta as it was found


class _MetaDoc(TypedDict):
    """The shape of an entry's meta, checked before it is used; the meta itself stays as read
    (keys this version does not know are kept)."""

    recipients: list[str]
    queued_at: NotRequired[float]
    attempts: NotRequired[Annotated[int, msgspec.Meta(ge=0)]]
    next_attempt: NotRequired[float]
    last_error: NotRequired[dict[str, Any] | None]
    delivered_to: NotRequired[list[str]]
    rejected: NotRequired[dict[str, list[Any]]]
    report: NotRequired[str | None]
    period: NotRequired[str | None]
    rotated_file: NotRequired[str | None]
    compress: NotRequired[str | None]
    expired: NotRequired[bool]
    failed_at: NotRequired[float]
    damaged: NotRequired[str]


_META = msgspec.json.Decoder(_MetaDoc)
_DELIVERED = msgspec.json.Decoder(dict[str, float])
_SENT = msgspec.json.Decoder(list[float])


def _meta_problem(data: bytes, queued: bool) -> str | None:
    """What is wrong with an entry's meta, or None."""
    try:
        meta = _META.decode(data)
    except msgspec.DecodeError as exc:  # ValidationError is a DecodeError too
        return str(exc)
    if queued and not meta["recipients"]:
        return "it names no recipient"
    return None


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    id: str
    path: Path  # the .eml file
    meta: dict[str, Any]

    @property
    def pending(self) -> list[str]:
        """Recipients that have neither received the message nor refused it for good."""
        done = set(self.meta.get("delivered_to", [])) | set(self.meta.get("rejected", {}))
        return [r for r in self.meta["recipients"] if r not in done]


class Outbox:
    """The queue on disk. Single writer: the service (or `rotate` while it is not running)."""

    def __init__(
        self, root: Path, clock: Callable[[], float] = time.time, readonly: bool = False
    ) -> None:
        """`readonly`: a reader beside the service (`status`), which creates and moves nothing."""
        self.root = root
        self.failed_dir = root / FAILED_DIR
        self.clock = clock
        self.readonly = readonly
        self.damaged: dict[str, str] = {}  # id -> what was wrong, for entries found damaged
        if not readonly:
            make_dirs(self.failed_dir)

    # -- queueing --

    def put(self, id: str, message: bytes, meta: dict[str, Any]) -> bool:
        """Queue `message` under `id`; False (and nothing written) if `id` was queued before:
        still queued, failed, or delivered."""
        check_id(id)
        recipients = meta.get("recipients")
        if not recipients or not all(isinstance(r, str) for r in recipients):
            raise ValueError("meta['recipients'] must be a non-empty list of addresses")
        if self.contains(id):
            return False
        now = self.clock()
        full = {
            **meta,
            "recipients": list(recipients),
            "queued_at": now,
            "attempts": 0,
            "next_attempt": now,
            "last_error": None,
            "delivered_to": [],
            "rejected": {},
        }
        write_atomic(self.root / f"{id}.eml", message)
        write_atomic(self.root / f"{id}.json", orjson.dumps(full))  # commits the entry
        return True

    def contains(self, id: str) -> bool:
        return (
            (self.root / f"{id}.json").exists()
            or (self.failed_dir / f"{id}.json").exists()
            or id in self._delivered()
        )

    # -- reading --

    def entries(self) -> list[OutboxEntry]:
        """Queued entries (not failed, not delivered), oldest first."""
        delivered = self._delivered()
        return [e for e in self._scan(self.root) if e.id not in delivered]

    def failed(self) -> list[OutboxEntry]:
        return self._scan(self.failed_dir)

    def counts(self, now: float) -> dict[str, int]:
        queued = self.entries()
        due = sum(1 for e in queued if e.meta.get("next_attempt", 0) <= now)
        failed = self.failed()
        damaged = len(self.damaged) + sum(1 for e in failed if e.meta.get("damaged"))
        counts = {"queued": due, "deferred": len(queued) - due, "failed": len(failed)}
        counts["failed"] += len(self.damaged)
        if damaged:
            counts["damaged"] = damaged  # of the failed: entries found damaged
        return counts

    def history(self) -> list[dict[str, Any]]:
        """Delivery events, oldest first."""
        try:
            data = (self.root / HISTORY).read_bytes()
        except FileNotFoundError:
            return []
        events: list[dict[str, Any]] = []
        for line in data.splitlines():
            # A crash in the middle of an append can leave half a line: skip it.
            with contextlib.suppress(orjson.JSONDecodeError):
                event = orjson.loads(line)
                if isinstance(event, dict):
                    events.append(event)
        return events

    def counters(self) -> dict[str, int]:
        """How many of each delivery event the history holds, by their log event names."""
        names = {"delivered": "smtp.delivered", "failed": "smtp.final_delivery_failed"}
        counts = dict.fromkeys(
            [
                "smtp.delivered",
                "smtp.connection_failed",
                "smtp.delivery_failed",
                "smtp.final_delivery_failed",
            ],
            0,
        )
        for event in self.history():
            kind = event.get("event")
            name = (
                event.get("log", "smtp.delivery_failed")
                if kind == "deferred"
                else names.get(str(kind))
            )
            if name in counts:
                counts[name] += 1
        return counts

    def last_delivered(self, report: str) -> dict[str, Any] | None:
        delivered = [
            e for e in self.history() if e.get("event") == "delivered" and e.get("report") == report
        ]
        return delivered[-1] if delivered else None

    def problems_since_last_delivery(self, report: str) -> list[dict[str, Any]]:
        """Delivery problems of `report` after its last delivered message, for the red status
        bar of the next report: one per message, its latest failed or deferred event (a message
        retried ten times is one problem, not ten), each with a `text` sentence."""
        problems: dict[str, dict[str, Any]] = {}
        for event in self.history():
            if event.get("report") != report:
                continue
            if event.get("event") == "delivered":
                problems = {}
            elif event.get("event") in ("failed", "deferred"):
                key = str(event.get("id"))
                problems.pop(key, None)  # re-inserted: ordered by latest event
                problems[key] = event
        return list(problems.values())

    def unsent_files(self) -> set[str]:
        """The rotated files of every queued or failed entry: retention must keep them."""
        files = set()
        for entry in [*self.entries(), *self.failed()]:
            rotated = entry.meta.get("rotated_file")
            if rotated:
                files.add(str(rotated))
        return files

    # -- used by the Sender --

    def recover(self) -> list[OutboxEntry]:
        """Tidy what a crash left behind; return entries recorded as delivered whose
        on_delivered and removal had not run yet."""
        for directory in (self.root, self.failed_dir):
            for tmp in directory.glob(".*.tmp"):
                tmp.unlink(missing_ok=True)
        # A move to failed/ writes failed/<id>.json, then moves the .eml, then removes
        # <id>.json: finish or undo whichever half was done.
        for meta_path in self.failed_dir.glob("*.json"):
            if not meta_path.with_suffix(".eml").exists():
                if (self.root / meta_path.name).exists():
                    meta_path.unlink()  # the move had not started: the entry is still queued
                else:
                    log.error("outbox.orphan_meta", file=str(meta_path))
        for meta_path in self.root.glob("*.json"):
            if meta_path.name.startswith(("_", ".")):
                continue
            if not meta_path.with_suffix(".eml").exists():
                if (self.failed_dir / meta_path.with_suffix(".eml").name).exists():
                    meta_path.unlink()  # moved to failed/ but not yet removed here
                else:
                    log.error("outbox.orphan_meta", file=str(meta_path))
        # An .eml without its .json is a put() that did not finish (its producer does it again)
        # or a removal that did not finish.
        for eml in self.root.glob("*.eml"):
            if not eml.with_suffix(".json").exists():
                eml.unlink()
        fsync_dir(self.root)
        fsync_dir(self.failed_dir)
        delivered = self._delivered()
        return [e for e in self._scan(self.root) if e.id in delivered]

    def update(self, entry: OutboxEntry, meta: dict[str, Any]) -> OutboxEntry:
        write_atomic(self.root / f"{entry.id}.json", orjson.dumps(meta))
        return OutboxEntry(entry.id, entry.path, meta)

    def mark_delivered(self, entry: OutboxEntry, events: Iterable[dict[str, Any]]) -> None:
        """Record that `entry` is delivered (before its files go, so a crash cannot lose it)."""
        delivered = self._delivered()
        delivered[entry.id] = self.clock()
        keep = sorted(delivered.items(), key=lambda kv: kv[1])[-DELIVERED_KEEP:]
        write_atomic(self.root / DELIVERED, orjson.dumps(dict(keep)))
        for event in events:
            self.record(event)

    def remove(self, entry: OutboxEntry) -> None:
        (self.root / f"{entry.id}.json").unlink(missing_ok=True)  # uncommits the entry first
        entry.path.unlink(missing_ok=True)
        fsync_dir(self.root)

    def move_to_failed(self, entry: OutboxEntry, meta: dict[str, Any]) -> OutboxEntry:
        failed_eml = self.failed_dir / f"{entry.id}.eml"
        write_atomic(self.failed_dir / f"{entry.id}.json", orjson.dumps(meta))
        os.replace(entry.path, failed_eml)
        fsync_dir(self.failed_dir)
        fsync_dir(self.root)
        (self.root / f"{entry.id}.json").unlink(missing_ok=True)
        fsync_dir(self.root)
        return OutboxEntry(entry.id, failed_eml, meta)

    def copy_to_failed(self, entry: OutboxEntry, meta: dict[str, Any]) -> None:
        """Keep a copy in failed/ for the recipients who did not get a delivered message."""
        write_atomic(self.failed_dir / f"{entry.id}.eml", entry.path.read_bytes())
        write_atomic(self.failed_dir / f"{entry.id}.json", orjson.dumps(meta))

    def record(self, event: dict[str, Any]) -> None:
        """Append one event to the history (whole line, fsynced)."""
        path = self.root / HISTORY
        now = self.clock()
        line = orjson.dumps({"at": _iso(now), "ts": now, **event}) + b"\n"
        fd, _ = open_append(path)
        try:
            write_all(fd, line)
            os.fsync(fd)
            size = os.fstat(fd).st_size
        finally:
            os.close(fd)
        if size > HISTORY_MAX_BYTES:
            lines = path.read_bytes().splitlines(keepends=True)[-HISTORY_KEEP:]
            write_atomic(path, b"".join(lines))

    def sent_times(self, now: float) -> list[float]:
        """Times of successful sends within the last hour, oldest first."""
        try:
            times = _SENT.decode((self.root / SENT).read_bytes())
        except FileNotFoundError:
            return []
        except msgspec.DecodeError as exc:
            log.error("outbox.damaged_file", file=str(self.root / SENT), error=str(exc))
            return []  # the hourly budget starts again: sending a few more beats sending none
        return sorted(t for t in times if now - HOUR < t <= now)

    def record_send(self, now: float) -> None:
        write_atomic(self.root / SENT, orjson.dumps([*self.sent_times(now), now]))

    # -- internals --

    def _scan(self, directory: Path) -> list[OutboxEntry]:
        """The whole entries of `directory`. A queued entry whose meta is damaged is moved to
        failed/ with the reason (by the writer; a reader only counts it)."""
        entries = []
        queued = directory == self.root
        for meta_path in directory.glob("*.json"):
            if meta_path.name.startswith(("_", ".")) or not _ID.fullmatch(meta_path.stem):
                continue
            eml = meta_path.with_suffix(".eml")
            if not eml.exists():
                continue  # not whole: see recover()
            try:
                data = meta_path.read_bytes()
            except OSError as exc:
                log.error("outbox.unreadable_meta", file=str(meta_path), error=str(exc))
                continue
            wrong = _meta_problem(data, queued)
            if wrong is not None:
                if queued:
                    self._quarantine(meta_path.stem, data, wrong)
                else:
                    self.damaged[meta_path.stem] = wrong
                continue
            entries.append(OutboxEntry(meta_path.stem, eml, orjson.loads(data)))
        entries.sort(key=lambda e: (e.meta.get("queued_at", 0), e.id))
        return entries

    def _quarantine(self, id: str, data: bytes, wrong: str) -> None:
        """Move a queued entry with damaged meta to failed/, keeping what was found, and say so.

        Steps in the order that recover() can finish or undo: the failed meta, a copy of the
        damaged one, the message, then the queued meta goes.
        """
        if self.readonly:
            self.damaged[id] = wrong
            return
        reason = f"its meta ({id}.json) is damaged: {wrong}"
        log.error(
            "outbox.damaged_entry",
            id=id,
            error=reason,
            moved_to=str(self.failed_dir),
            hint="the message is kept in the failed folder, the damaged meta beside it",
        )
        now = self.clock()
        meta = {"recipients": [], "damaged": reason, "failed_at": now, "queued_at": now}
        write_atomic(self.failed_dir / f"{id}.json", orjson.dumps(meta))
        write_atomic(self.failed_dir / f"{id}.json{DAMAGED_SUFFIX}", data)
        os.replace(self.root / f"{id}.eml", self.failed_dir / f"{id}.eml")
        fsync_dir(self.failed_dir)
        (self.root / f"{id}.json").unlink(missing_ok=True)
        fsync_dir(self.root)
        self.record(
            {
                "event": "failed",
                "id": id,
                "recipients": [],
                "text": f"outbox entry {id}: {reason}; moved to the failed folder",
            }
        )

    def _delivered(self) -> dict[str, float]:
        try:
            return _DELIVERED.decode((self.root / DELIVERED).read_bytes())
        except FileNotFoundError:
            return {}
        except msgspec.DecodeError as exc:
            log.error("outbox.damaged_file", file=str(self.root / DELIVERED), error=str(exc))
            return {}


def check_id(id: str) -> None:
    if not _ID.fullmatch(id):
        raise ValueError(
            f"outbox id {id!r} must be 1-200 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Sender:
    """Delivers due entries, one at a time; sleeps until wake() or the next due time."""

    def __init__(
        self,
        outbox: Outbox,
        smtp: SmtpConfig,
        on_delivered: Callable[[OutboxEntry], None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.outbox = outbox
        self.smtp = smtp
        self.on_delivered = on_delivered
        self.clock = clock
        self._wakeup = asyncio.Event()
        self._held_logged = False

    def wake(self) -> None:
        """Something was queued, or `smtp` was replaced by a reloaded config: look now.

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
                        "smtp.rate_limited",
                        max_per_hour=self.smtp.max_per_hour,
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
                # The outbox itself failed (disk full, permissions): keep the service alive and
                # try again later rather than spin or die; the entry is still queued.
                log.exception("outbox.attempt_failed", id=entry.id)
                return self.smtp.retry_initial
            # A stop asked for during the attempt may have been swallowed on the way (3.11's
            # wait_for drops a cancellation that comes with the answer): honour it here, or the
            # service's shutdown would wait for this task for ever.
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise asyncio.CancelledError
        waiting = [float(e.meta.get("next_attempt", 0)) for e in self.outbox.entries()]
        if not waiting:
            return None
        return max(0.0, min(waiting) - self.clock())

    def _budget_wait(self, now: float) -> float:
        """Seconds until max_per_hour allows one more send."""
        sent = self.outbox.sent_times(now)
        if len(sent) < self.smtp.max_per_hour:
            return 0.0
        return max(0.0, sent[-self.smtp.max_per_hour] + HOUR - now)

    async def attempt(self, entry: OutboxEntry) -> None:
        """One delivery attempt of `entry` to its pending recipients."""
        settled = False

        def accepted(result: DeliveryResult) -> None:
            # Recorded the moment the server has the message, before QUIT: a crash or a stop
            # while a slow server says goodbye must not send the report again.
            nonlocal settled
            settled = True
            self._settle(entry, None, result)

        failure, result = await self._send(entry, entry.pending, accepted)
        if not settled:
            self._settle(entry, failure, result)

    def _settle(
        self, entry: OutboxEntry, failure: SmtpFailure | None, result: DeliveryResult | None
    ) -> None:
        """Record the outcome of an attempt. Synchronous on purpose: it happens whole, or (if
        the process is killed) not at all."""
        pending = entry.pending
        attempt = int(entry.meta.get("attempts", 0)) + 1
        now = self.clock()
        meta = dict(entry.meta)
        fields = self._fields(entry, attempt)
        delivered_to: list[str] = list(meta.get("delivered_to", []))
        accepted = list(result.accepted) if result is not None and failure is None else []
        # Recipients that failed for good in this attempt: recipient -> (code, text, step, cause)
        final: dict[str, tuple[int | None, str, str, str]] = {}
        if result is not None:
            for r, (code, text) in result.rejected.items():
                final[r] = (code, text, "rcpt", "recipient_rejected")
        if failure is not None:
            meta["last_error"] = failure.as_dict()
            if not failure.transient:
                for r in pending:
                    final.setdefault(r, (failure.code, failure.text, failure.step, failure.cause))
        elif result is not None:
            self.outbox.record_send(now)
            delivered_to += [r for r in accepted if r not in delivered_to]
            code, text = result.reply or (250, "")
            log.info("smtp.delivered", **fields, recipients=accepted, code=code, text=text)
            if result.deferred:
                code, text = next(iter(result.deferred.values()))
                meta["last_error"] = {
                    "step": "rcpt", "cause": "temporary", "code": code, "text": text,
                }  # fmt: skip
        still = [r for r in pending if r not in accepted and r not in final]
        deadline = float(meta.get("queued_at", now)) + self.smtp.retry_for
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
        self._log_final(fields, final, expired=bool(meta.get("expired")))

        if still:
            self._defer(entry, attempt, still, now, deadline, transport=failure is not None)
        else:
            self._complete(entry, attempt, now)

    async def _send(
        self,
        entry: OutboxEntry,
        pending: list[str],
        on_accepted: Callable[[DeliveryResult], None],
    ) -> tuple[SmtpFailure | None, DeliveryResult | None]:
        # Imported at the first delivery: aiosmtplib, ssl and email are not needed to start.
        from agent.deliver.smtp import SmtpFailure, deliver

        if not pending:  # everything was settled before a crash: only completion is left
            return None, None
        try:
            message = entry.path.read_bytes()
        except OSError as exc:
            return SmtpFailure("queue", "local", f"cannot read {entry.path}: {exc}"), None
        try:
            return None, await deliver(self.smtp, message, pending, on_accepted=on_accepted)
        except SmtpFailure as exc:
            return exc, exc.result

    def _defer(
        self,
        entry: OutboxEntry,
        attempt: int,
        still: list[str],
        now: float,
        deadline: float,
        transport: bool,
    ) -> None:
        """Schedule the next attempt: retry_initial, doubling up to retry_max; the last one
        exactly when retry_for runs out."""
        # The exponent is capped: past 2**1023 the product no longer fits a float (OverflowError),
        # which a small retry_max against a long retry_for reaches after 1,024 attempts.
        delay = min(self.smtp.retry_initial * 2 ** min(attempt - 1, 64), self.smtp.retry_max)
        entry.meta["next_attempt"] = min(now + delay, deadline)
        error = entry.meta.get("last_error") or {}
        session = error.get("step") not in ("mail", "rcpt", "data", "queue")
        kind = "smtp.connection_failed" if transport and session else "smtp.delivery_failed"
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
        fields: dict[str, Any],
        final: dict[str, tuple[int | None, str, str, str]],
        expired: bool,
    ) -> None:
        """One smtp.final_delivery_failed per distinct answer, naming its recipients."""
        groups: dict[tuple[int | None, str, str, str], list[str]] = {}
        for recipient, answer in final.items():
            groups.setdefault(answer, []).append(recipient)
        for (code, text, step, cause), recipients in groups.items():
            log.error(
                "smtp.final_delivery_failed",
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
            "host": self.smtp.host,
            "port": self.smtp.port,
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


def _answer(error: dict[str, Any] | None) -> str:
    """`step: code text`, from an SmtpFailure.as_dict()."""
    if not error:
        return "no answer recorded"
    code = f"{error['code']} " if error.get("code") is not None else ""
    return f"{error.get('step')}: {code}{error.get('text')}"
