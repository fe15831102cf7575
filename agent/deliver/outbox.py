"""The outbox: messages queued on disk until a server has taken them. It knows nothing of how
they travel: the Sender (`sender.py`) takes them out and hands them to a transport.

Layout of `state_dir/outbox`:

    <id>.eml, <id>.json      a queued message and its meta; the .json, written last, commits it
    failed/<id>.eml, .json   given up: a permanent refusal, or retry_for ran out
    _history.jsonl           delivery events (delivered / deferred / failed), append-only
    _delivered.json          ids delivered lately, so the same report is never queued twice
    _sent.json               send times of the last hour, so a restart keeps the hourly budget

An entry's meta names its `kind` ("mail" when absent), which chooses the transport.

Every file is written whole (temp file, fsync, rename, fsync of the directory), so `kill -9` at
any instant leaves a queued message either absent or complete; `recover()`, which the Sender
runs before it sends anything, tidies what an interrupted step left behind.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, NotRequired, TypedDict

import msgspec
import orjson
import structlog

from agent.core.fs import fsync_dir, make_dirs, open_append, write_all, write_atomic

log = structlog.get_logger("tailmail.mail")

FAILED_DIR = "failed"
HISTORY = "_history.jsonl"
DELIVERED = "_delivered.json"
SENT = "_sent.json"
DELIVERED_KEEP = 1000  # ids remembered after delivery: years of daily reports
HISTORY_MAX_BYTES = 1024 * 1024  # then the oldest events are dropped...
HISTORY_KEEP = 2000  # ...down to this many
HOUR = 3600.0

_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")
DAMAGED_SUFFIX = ".damaged"  # failed/<id>.json.damaged: a damaged entry's meta as it was found


class _MetaDoc(TypedDict):
    """The shape of an entry's meta, checked before it is used; the meta itself stays as read
    (keys this version does not know are kept)."""

    recipients: list[str]
    kind: NotRequired[str]
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
        """How many of each delivery event the history holds, by their log event names.

        Mail is the one channel there is, and history events name none: every event counts
        under `smtp.`. Webhooks will need their channel recorded in each event first.
        """
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
