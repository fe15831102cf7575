"""agent/deliver/outbox.py and sender.py: the queue on disk, and the sender driving the SMTP
transport against real SMTP servers on loopback (the sender alone: test_sender.py)."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import structlog
import trustme
from smtp_sink import Fault, SmtpServer, eventually, expired_cert  # fixtures: see conftest.py

from agent.config.model import SmtpConfig
from agent.deliver import Outbox, OutboxEntry, Policy, Sender, SmtpTransport

StartServer = Callable[..., SmtpServer]

T0 = 1_800_000_000.0  # 2027-01-15: any fixed instant will do
MESSAGE = b"From: tailmail@example.com\r\nTo: ops@example.com\r\nSubject: report\r\n\r\nbody\r\n"


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def meta(
    report: str = "daily",
    period: str = "2027-01-14",
    recipients: list[str] | None = None,
    rotated_file: str | None = None,
) -> dict[str, Any]:
    return {
        "report": report,
        "period": period,
        "recipients": recipients or ["ops@example.com"],
        "rotated_file": rotated_file,
        "compress": "gzip",
    }


def smtp_sender(
    outbox: Outbox,
    smtp: SmtpConfig,
    on_delivered: Callable[[OutboxEntry], None],
    clock: Callable[[], float] = time.time,
) -> Sender:
    """A sender of mail through `smtp`, as the service makes it."""
    return Sender(
        outbox, {"mail": SmtpTransport(smtp)}, on_delivered, policy=Policy.of(smtp), clock=clock
    )


class Harness:
    """An outbox, a sender on a fake clock, and what on_delivered was given."""

    def __init__(self, root: Path, smtp: SmtpConfig, clock: Clock | None = None) -> None:
        self.clock = clock or Clock()
        self.outbox = Outbox(root, clock=self.clock)
        self.delivered: list[OutboxEntry] = []
        self.unsent_when_delivered: list[set[str]] = []
        self.delivered_event = asyncio.Event()
        self.sender = smtp_sender(self.outbox, smtp, self._on_delivered, clock=self.clock)

    def _on_delivered(self, entry: OutboxEntry) -> None:
        self.delivered.append(entry)
        self.unsent_when_delivered.append(self.outbox.unsent_files())
        self.delivered_event.set()

    def put(self, id: str = "daily-20270114T230000Z", **kwargs: Any) -> str:
        assert self.outbox.put(id, MESSAGE, meta(**kwargs))
        return id

    def queued(self, id: str) -> dict[str, Any]:
        [entry] = [e for e in self.outbox.entries() if e.id == id]
        return entry.meta


@pytest.fixture
def make(tmp_path: Path) -> Callable[..., Harness]:
    def make(smtp: SmtpConfig, clock: Clock | None = None) -> Harness:
        return Harness(tmp_path / "outbox", smtp, clock)

    return make


def unreachable(port: int) -> SmtpConfig:
    return SmtpConfig(
        host="127.0.0.1", from_addr="tailmail@example.com", port=port, security="none"
    )


# -- the queue on disk --


def test_put_is_idempotent(tmp_path: Path) -> None:
    """A second put of the same id is refused while queued, failed or delivered."""
    outbox = Outbox(tmp_path / "outbox")
    assert outbox.put("daily-1", MESSAGE, meta())
    assert not outbox.put("daily-1", b"other", meta())
    assert outbox.entries()[0].path.read_bytes() == MESSAGE
    entry = outbox.entries()[0]
    outbox.move_to_failed(entry, entry.meta)
    assert not outbox.put("daily-1", MESSAGE, meta()) and outbox.contains("daily-1")
    assert outbox.put("daily-2", MESSAGE, meta())
    delivered = outbox.entries()[0]
    outbox.mark_delivered(delivered, [])
    outbox.remove(delivered)
    assert outbox.entries() == []
    assert not outbox.put("daily-2", MESSAGE, meta()) and outbox.contains("daily-2")


def test_put_writes_message_and_meta(tmp_path: Path) -> None:
    """put writes the .eml and its .json meta, adding the queue's own fields."""
    clock = Clock()
    outbox = Outbox(tmp_path / "outbox", clock=clock)
    outbox.put("daily-20270114T230000Z", MESSAGE, meta(rotated_file="/var/log/x.jsonl"))
    [entry] = outbox.entries()
    assert entry.path == tmp_path / "outbox" / "daily-20270114T230000Z.eml"
    assert entry.meta["queued_at"] == entry.meta["next_attempt"] == T0
    assert entry.meta["attempts"] == 0 and entry.meta["delivered_to"] == []
    assert entry.meta["report"] == "daily" and entry.meta["rotated_file"] == "/var/log/x.jsonl"
    assert (tmp_path / "outbox" / "failed").is_dir()


@pytest.mark.parametrize("bad", ["", "../escape", "a/b", ".hidden", "_internal", "x" * 201])
def test_put_refuses_unsafe_ids(tmp_path: Path, bad: str) -> None:
    """Ids must be plain file names: no paths, no hidden or internal names."""
    with pytest.raises(ValueError, match="outbox id"):
        Outbox(tmp_path).put(bad, MESSAGE, meta())


def test_entries_are_oldest_first(tmp_path: Path) -> None:
    """entries() lists queued entries in the order they were queued."""
    clock = Clock()
    outbox = Outbox(tmp_path, clock=clock)
    for id in ["b", "c", "a"]:
        outbox.put(id, MESSAGE, meta())
        clock.advance(1)
    assert [e.id for e in outbox.entries()] == ["b", "c", "a"]


def test_crash_leftovers_are_tidied(tmp_path: Path) -> None:
    """recover() removes temp files and half-written entries and finishes half-done moves."""
    root = tmp_path / "outbox"
    outbox = Outbox(root)
    outbox.put("whole", MESSAGE, meta())
    # kill -9 during write_atomic, during put (after the .eml), during a move to failed/
    (root / ".daily-3.eml.tmp").write_bytes(b"half")
    (root / "failed" / ".x.json.tmp").write_bytes(b"{")
    (root / "no-meta.eml").write_bytes(MESSAGE)
    outbox.put("moving", MESSAGE, meta())
    (root / "failed" / "moving.json").write_bytes((root / "moving.json").read_bytes())
    outbox.put("moved", MESSAGE, meta())
    os.replace(root / "moved.eml", root / "failed" / "moved.eml")
    (root / "failed" / "moved.json").write_bytes((root / "moved.json").read_bytes())

    assert sorted(e.id for e in outbox.entries()) == ["moving", "whole"]  # only whole ones
    assert outbox.recover() == []
    names = sorted(p.name for p in root.iterdir())
    assert names == ["failed", "moving.eml", "moving.json", "whole.eml", "whole.json"]
    assert sorted(p.name for p in (root / "failed").iterdir()) == ["moved.eml", "moved.json"]
    assert [e.id for e in outbox.failed()] == ["moved"]


def test_counts_and_unsent_files(tmp_path: Path) -> None:
    """counts() splits due from deferred; unsent_files() names queued and failed rotated files."""
    clock = Clock()
    outbox = Outbox(tmp_path, clock=clock)
    outbox.put("due", MESSAGE, meta(rotated_file="/log/a.jsonl"))
    outbox.put("later", MESSAGE, meta(rotated_file="/log/b.jsonl"))
    outbox.put("gone", MESSAGE, meta(rotated_file="/log/c.jsonl"))
    outbox.put("empty", MESSAGE, meta(rotated_file=None))
    later = next(e for e in outbox.entries() if e.id == "later")
    outbox.update(later, {**later.meta, "next_attempt": T0 + 60})
    gone = next(e for e in outbox.entries() if e.id == "gone")
    outbox.move_to_failed(gone, gone.meta)
    assert outbox.counts(T0) == {"queued": 2, "deferred": 1, "failed": 1}
    assert outbox.counts(T0 + 60) == {"queued": 3, "deferred": 0, "failed": 1}
    assert outbox.unsent_files() == {"/log/a.jsonl", "/log/b.jsonl", "/log/c.jsonl"}


def test_history_problems_since_last_delivery(tmp_path: Path) -> None:
    """problems_since_last_delivery returns the report's failures after its last delivery, the
    latest one per message."""
    outbox = Outbox(tmp_path)
    outbox.record({"event": "deferred", "report": "daily", "id": "a"})
    outbox.record({"event": "delivered", "report": "daily", "id": "a"})
    outbox.record({"event": "failed", "report": "weekly", "id": "w"})
    outbox.record({"event": "deferred", "report": "daily", "id": "c", "attempt": 1})
    outbox.record({"event": "failed", "report": "daily", "id": "b"})
    outbox.record({"event": "deferred", "report": "daily", "id": "c", "attempt": 2})
    with (tmp_path / "_history.jsonl").open("ab") as f:
        f.write(b'{"event": "deferred", "rep')  # a crash in the middle of an append
    assert [e["id"] for e in outbox.history()] == ["a", "a", "w", "c", "b", "c"]
    problems = outbox.problems_since_last_delivery("daily")
    assert [(e["id"], e.get("attempt")) for e in problems] == [("b", None), ("c", 2)]
    last = outbox.last_delivered("daily")
    assert last is not None and last["id"] == "a" and last["at"].endswith("Z")
    assert outbox.last_delivered("weekly") is None


# -- delivery --


async def test_run_delivers_after_wake(smtp_server: StartServer, make: Any) -> None:
    """Sender.run sends what put() queued once woken, calls on_delivered, then removes it."""
    server = smtp_server(tls="starttls", auth=("tailmail", "secret-password"))
    h: Harness = make(server.config(), Clock())
    async with asyncio.TaskGroup() as tasks:
        runner = tasks.create_task(h.sender.run())
        id = h.put(recipients=["ops@example.com", "dev@example.com"], rotated_file="/log/d.jsonl")
        h.sender.wake()
        async with asyncio.timeout(20):
            await h.delivered_event.wait()
        runner.cancel()
    [entry] = h.delivered
    assert entry.id == id and entry.meta["delivered_to"] == ["ops@example.com", "dev@example.com"]
    assert entry.meta["rotated_file"] == "/log/d.jsonl"
    assert server.messages[0].content == MESSAGE
    assert h.outbox.entries() == [] and not entry.path.exists()
    assert h.unsent_when_delivered == [set()]  # on_delivered may compress the rotated file
    assert h.outbox.unsent_files() == set()
    last = h.outbox.last_delivered("daily")
    assert last is not None and last["id"] == id and last["period"] == "2027-01-14"
    assert not h.outbox.put(id, MESSAGE, meta())  # a crash-restarted rotation cannot resend


async def test_run_is_idle_until_woken_and_cancellable(tmp_path: Path, closed_port: int) -> None:
    """With nothing queued, run() waits without attempting anything and stops on cancel."""
    outbox = Outbox(tmp_path)
    sender = smtp_sender(outbox, unreachable(closed_port), lambda e: None)
    task = asyncio.create_task(sender.run())
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(asyncio.shield(task), 0.2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert outbox.history() == []


@pytest.mark.parametrize("reply", ["421 4.3.2 closing", "451 4.3.0 try later"])
async def test_transient_failure_backs_off(smtp_server: StartServer, make: Any, reply: str) -> None:
    """A 4xx keeps the entry queued, retried after retry_initial, then doubling up to retry_max."""
    server = smtp_server(faults=[Fault("DATA", reply, times=3)])
    h: Harness = make(server.config(retry_initial=60.0, retry_max=200.0))
    id = h.put()
    with structlog.testing.capture_logs() as logs:
        assert await h.sender.deliver_due() == pytest.approx(60.0)
    queued = h.queued(id)
    assert queued["attempts"] == 1 and queued["next_attempt"] == T0 + 60
    assert queued["last_error"] == {
        "step": "data", "cause": "temporary", "code": int(reply[:3]), "text": reply[4:],
    }  # fmt: skip
    [log] = [e for e in logs if e["event"] == "smtp.delivery_failed"]
    assert (log["code"], log["attempt"], log["report"], log["period"]) == (
        int(reply[:3]), 1, "daily", "2027-01-14",
    )  # fmt: skip
    assert log["host"] == "127.0.0.1" and log["port"] == server.port

    assert await h.sender.deliver_due() == pytest.approx(60.0)  # not due yet: no attempt
    assert h.queued(id)["attempts"] == 1
    for attempt, backoff in [(2, 120.0), (3, 200.0)]:
        h.clock.now = h.queued(id)["next_attempt"]
        await h.sender.deliver_due()
        assert h.queued(id)["attempts"] == attempt
        assert h.queued(id)["next_attempt"] == h.clock.now + backoff
    assert [e["event"] for e in h.outbox.history()] == ["deferred"] * 3
    [problem] = h.outbox.problems_since_last_delivery("daily")  # one message: one problem
    assert (problem["id"], problem["attempt"]) == (id, 3)
    assert problem["text"] == (
        f"not yet delivered to ops@example.com after 3 attempts, retried until "
        f"2027-01-20T08:00:00Z; last answer: data: {reply}"
    )

    h.clock.now = h.queued(id)["next_attempt"]
    await h.sender.deliver_due()
    assert [e.id for e in h.delivered] == [id] and len(server.messages) == 1
    assert h.outbox.problems_since_last_delivery("daily") == []


async def test_connection_failure_stays_queued(make: Any, closed_port: int) -> None:
    """A refused connection is logged as smtp.connection_failed and retried later."""
    h: Harness = make(unreachable(closed_port))
    id = h.put()
    with structlog.testing.capture_logs() as logs:
        await h.sender.deliver_due()
    [log] = [e for e in logs if e["event"] == "smtp.connection_failed"]
    assert log["cause"] == "refused" and log["port"] == closed_port
    assert h.queued(id)["last_error"]["cause"] == "refused"
    assert h.outbox.counts(h.clock.now) == {"queued": 0, "deferred": 1, "failed": 0}


@pytest.mark.parametrize(
    ("fault", "code"),
    [
        (Fault("RCPT", "550 5.1.1 no such user"), 550),
        (Fault("DATA", "554 5.6.0 content rejected"), 554),
        (Fault("DATA", "552 5.3.4 message too big"), 552),
        (Fault("MAIL", "553 5.7.1 sender not allowed"), 553),
    ],
)
async def test_permanent_failure_moves_to_failed(
    smtp_server: StartServer, make: Any, fault: Fault, code: int
) -> None:
    """A 5xx moves the entry into failed/ at once, with the server's answer, and logs it."""
    server = smtp_server(faults=[fault])
    h: Harness = make(server.config())
    id = h.put(rotated_file="/log/e.jsonl")
    with structlog.testing.capture_logs() as logs:
        assert await h.sender.deliver_due() is None
    assert h.outbox.entries() == [] and h.delivered == []
    [failed] = h.outbox.failed()
    assert failed.id == id and failed.path.read_bytes() == MESSAGE
    assert failed.meta["last_error"]["code"] == code
    assert failed.meta["last_error"]["text"] == fault.reply[4:]
    assert failed.meta["rejected"] == {"ops@example.com": [code, fault.reply[4:]]}
    assert [e["event"] for e in logs if e["event"].startswith("smtp.")] == [
        "smtp.final_delivery_failed"
    ]
    [event] = h.outbox.history()
    assert (event["event"], event["id"], event["error"]["code"]) == ("failed", id, code)
    assert h.outbox.unsent_files() == {"/log/e.jsonl"}  # retention keeps it
    assert not h.outbox.put(id, MESSAGE, meta())


# Every failure class of issue 4 (items 2, 5 and 7) against a real server: where the message
# ends, the event logged and its fields. server options, config overrides, step, cause, code.
AUTH = ("tailmail", "secret-password")
CLASSES: dict[str, tuple[dict[str, Any], dict[str, Any], str, str, int | None]] = {
    "refused": ({}, {"port": "closed"}, "connect", "refused", None),
    "timeout": ({}, {"port": "silent", "timeout": 0.3}, "connect", "timeout", None),
    "starttls-missing": ({"auth": AUTH, "offer_auth_in_clear": True}, {"security": "starttls"}, "starttls", "starttls_missing", None),
    "tls-untrusted": ({"tls": "starttls"}, {"ca_file": None}, "tls", "tls_untrusted", None),
    "tls-hostname": ({"tls": "ssl", "cert_names": ("mail.example.test",)}, {}, "tls", "tls_hostname", None),
    "tls-expired": ({"tls": "ssl", "cert": "expired"}, {}, "tls", "tls_expired", None),
    "auth-rejected": ({"tls": "ssl", "auth": AUTH}, {"password": "wrong"}, "auth", "auth_rejected", 535),
    "421-mail": ({"faults": [Fault("MAIL", "421 4.3.2 shutting down")]}, {}, "mail", "temporary", 421),
    "451-mail": ({"faults": [Fault("MAIL", "451 4.3.0 try later")]}, {}, "mail", "temporary", 451),
    "450-rcpt": ({"faults": [Fault("RCPT", "450 4.2.0 mailbox busy")]}, {}, "rcpt", "temporary", 450),
    "452-rcpt": ({"faults": [Fault("RCPT", "452 4.5.3 too many recipients")]}, {}, "rcpt", "temporary", 452),
    "552-rcpt": ({"faults": [Fault("RCPT", "552 5.5.3 too many recipients")]}, {}, "rcpt", "temporary", 552),
    "421-data": ({"faults": [Fault("DATA", "421 4.3.2 closing")]}, {}, "data", "temporary", 421),
    "451-data": ({"faults": [Fault("DATA", "451 4.3.0 local error")]}, {}, "data", "temporary", 451),
    "550-mail": ({"faults": [Fault("MAIL", "550 5.7.1 not your address")]}, {}, "mail", "sender_rejected", 550),
    "553-mail": ({"faults": [Fault("MAIL", "553 5.7.1 sender not allowed")]}, {}, "mail", "sender_rejected", 553),
    "550-rcpt": ({"faults": [Fault("RCPT", "550 5.1.1 no such user")]}, {}, "rcpt", "recipient_rejected", 550),
    "554-rcpt": ({"faults": [Fault("RCPT", "554 5.7.1 relay denied")]}, {}, "rcpt", "recipient_rejected", 554),
    "552-data": ({"faults": [Fault("DATA", "552 5.3.4 message too big")]}, {}, "data", "permanent", 552),
    "554-data": ({"faults": [Fault("DATA", "554 5.6.0 content rejected")]}, {}, "data", "permanent", 554),
}  # fmt: skip
SESSION_STEPS = {"connect", "tls", "starttls", "auth"}


@pytest.mark.parametrize("case", list(CLASSES))
async def test_every_failure_class_ends_where_rfc5321_says(
    smtp_server: StartServer,
    make: Any,
    ca: trustme.CA,
    closed_port: int,
    silent_port: int,
    case: str,
) -> None:
    """Connection failures, timeouts, TLS and login failures, 4xx and 552 to RCPT are deferred;
    550/553/554 and 552 to DATA move the message to failed/ at once; each logs its event with
    host, port, attempt, code, text, report and period."""
    options, overrides, step, cause, code = CLASSES[case]
    if options.get("cert") == "expired":
        options = {**options, "cert": expired_cert(ca)}
    ports = {"closed": closed_port, "silent": silent_port}
    overrides = {k: ports.get(v, v) if k == "port" else v for k, v in overrides.items()}
    server = smtp_server(**options)
    smtp = server.config(**overrides)
    h: Harness = make(smtp)
    id = h.put()
    with structlog.testing.capture_logs() as logs:
        await h.sender.deliver_due()
    transient = cause not in {"sender_rejected", "recipient_rejected", "permanent"}
    if transient:
        queued = h.queued(id)
        assert queued["last_error"]["step"] == step and queued["last_error"]["cause"] == cause
        assert queued["next_attempt"] == T0 + smtp.retry_initial and h.outbox.failed() == []
        event = "smtp.connection_failed" if step in SESSION_STEPS else "smtp.delivery_failed"
    else:
        [failed] = h.outbox.failed()
        assert failed.id == id and failed.path.read_bytes() == MESSAGE
        assert h.outbox.entries() == []
        event = "smtp.final_delivery_failed"
    [logged] = [e for e in logs if e["event"].startswith("smtp.")]
    assert logged["event"] == event
    assert (logged["step"], logged["cause"], logged["code"]) == (step, cause, code)
    assert (logged["host"], logged["port"], logged["attempt"]) == ("127.0.0.1", smtp.port, 1)
    assert (logged["report"], logged["period"], logged["id"]) == ("daily", "2027-01-14", id)
    assert logged["text"] and "secret-password" not in str(logs)
    if "faults" in options:
        assert logged["text"] == options["faults"][0].reply[4:]  # the server's own words
    if case in ("starttls-missing", "tls-untrusted", "tls-hostname", "tls-expired"):
        # Nothing but the greeting and EHLO went over a connection that is not trusted.
        assert not any(c.startswith(("AUTH", "MAIL", "RCPT", "DATA")) for c in server.commands)
        assert server.auth_attempts == [] and server.messages == []


async def test_552_is_transient_at_rcpt_and_permanent_at_data(
    smtp_server: StartServer, make: Any
) -> None:
    """552 to RCPT (too many recipients) is retried; 552 after DATA (too big) fails."""
    server = smtp_server(faults=[Fault("RCPT", "552 5.5.3 too many recipients", times=1)])
    h: Harness = make(server.config())
    id = h.put()
    await h.sender.deliver_due()
    assert h.queued(id)["attempts"] == 1 and h.outbox.failed() == []
    h.clock.advance(60)
    await h.sender.deliver_due()
    assert [e.id for e in h.delivered] == [id]

    server = smtp_server(faults=[Fault("DATA", "552 5.3.4 too big")])
    h2: Harness = make(server.config())
    id2 = h2.put("daily-2")
    await h2.sender.deliver_due()
    assert [e.id for e in h2.outbox.failed()] == [id2]


async def test_recipients_already_accepted_are_not_sent_again(
    smtp_server: StartServer, make: Any
) -> None:
    """Recipients that accepted are not sent the message again when another one is retried."""
    server = smtp_server(faults=[Fault("RCPT", "451 4.2.1 busy", recipients={"b@x.org"}, times=1)])
    h: Harness = make(server.config())
    id = h.put(recipients=["a@x.org", "b@x.org", "c@x.org"])
    with structlog.testing.capture_logs() as logs:
        await h.sender.deliver_due()
    assert h.queued(id)["delivered_to"] == ["a@x.org", "c@x.org"]
    assert [e["event"] for e in logs] == ["smtp.delivered", "smtp.delivery_failed"]
    assert h.delivered == []
    h.clock.now = h.queued(id)["next_attempt"]
    await h.sender.deliver_due()
    assert [m.rcpt_tos for m in server.messages] == [["a@x.org", "c@x.org"], ["b@x.org"]]
    [entry] = h.delivered
    assert entry.meta["delivered_to"] == ["a@x.org", "c@x.org", "b@x.org"]


async def test_one_recipient_rejected_others_delivered(smtp_server: StartServer, make: Any) -> None:
    """A refused recipient does not stop the others; failed/ keeps a copy for it, reported next."""
    server = smtp_server(
        faults=[Fault("RCPT", "550 5.1.1 no such user", recipients={"typo@x.org"})]
    )
    h: Harness = make(server.config())
    id = h.put(recipients=["ops@x.org", "typo@x.org"], rotated_file="/log/f.jsonl")
    await h.sender.deliver_due()
    assert [m.rcpt_tos for m in server.messages] == [["ops@x.org"]]
    [entry] = h.delivered
    assert entry.meta["delivered_to"] == ["ops@x.org"]
    assert h.outbox.entries() == []
    [failed] = h.outbox.failed()
    assert failed.meta["recipients"] == ["typo@x.org"]
    assert failed.meta["rejected"] == {"typo@x.org": [550, "5.1.1 no such user"]}
    assert [e["event"] for e in h.outbox.history()] == ["delivered", "failed"]
    assert h.outbox.unsent_files() == {"/log/f.jsonl"}  # kept for the one who did not get it
    [problem] = h.outbox.problems_since_last_delivery("daily")
    assert problem["recipients"] == ["typo@x.org"] and problem["id"] == id
    assert problem["text"] == (
        "not delivered to typo@x.org: refused for good: 550 5.1.1 no such user; "
        "kept in the outbox's failed folder"
    )


async def test_retry_for_expiry_moves_to_failed(make: Any, closed_port: int) -> None:
    """Transient failures are retried until retry_for since queueing, then the entry fails."""
    smtp = unreachable(closed_port)
    h: Harness = make(replace(smtp, retry_for=1000.0, retry_max=600.0))
    id = h.put()
    attempts = 0
    while h.outbox.entries():
        attempts += 1
        assert attempts < 20
        h.clock.now = h.queued(id)["next_attempt"]
        with structlog.testing.capture_logs() as logs:
            await h.sender.deliver_due()
    # 300, 600 and a last attempt at exactly retry_for: never past it
    assert h.clock.now == T0 + 1000.0 and attempts == 4
    [failed] = h.outbox.failed()
    assert failed.meta["expired"] is True and failed.meta["last_error"]["cause"] == "refused"
    assert [e["event"] for e in logs] == ["smtp.final_delivery_failed"]
    assert h.outbox.history()[-1]["event"] == "failed"
    assert h.outbox.history()[-1]["text"] == (
        "not delivered to ops@example.com: retry_for ran out after 4 attempts; last answer: "
        "connect: connection refused; kept in the outbox's failed folder"
    )


async def test_max_per_hour_holds_back_without_dropping(
    smtp_server: StartServer, make: Any
) -> None:
    """Over max_per_hour a message waits (logged once, never dropped), across restarts too."""
    server = smtp_server()
    smtp = server.config(max_per_hour=1)
    h: Harness = make(smtp)
    h.put("first")
    h.clock.advance(1)
    h.put("second")
    with structlog.testing.capture_logs() as logs:
        assert await h.sender.deliver_due() == pytest.approx(3600.0)
        h.clock.advance(1800)
        assert await h.sender.deliver_due() == pytest.approx(1800.0)
    assert [e.id for e in h.delivered] == ["first"]
    assert [e["event"] for e in logs] == ["smtp.delivered", "smtp.rate_limited"]
    assert [e.id for e in h.outbox.entries()] == ["second"]

    restarted = smtp_sender(h.outbox, smtp, h._on_delivered, clock=h.clock)
    assert await restarted.deliver_due() == pytest.approx(1800.0)
    assert len(server.messages) == 1
    h.clock.advance(1800)
    assert await restarted.deliver_due() is None
    assert [e.id for e in h.delivered] == ["first", "second"] and len(server.messages) == 2


async def test_on_delivered_failure_is_retried_at_start(
    smtp_server: StartServer, make: Any
) -> None:
    """If on_delivered raises, the entry is kept unsent and the next run calls it again."""
    server = smtp_server()
    h: Harness = make(server.config())
    calls: list[str] = []

    def broken(entry: OutboxEntry) -> None:
        calls.append(entry.id)
        raise OSError("disk full")

    sender = smtp_sender(h.outbox, server.config(), broken, clock=h.clock)
    id = h.put()
    await sender.deliver_due()
    assert calls == [id] and h.outbox.entries() == []
    assert (h.outbox.root / f"{id}.eml").exists()  # kept for the retry of on_delivered
    assert await sender.deliver_due() is None and len(server.messages) == 1

    async with asyncio.TaskGroup() as tasks:
        runner = tasks.create_task(h.sender.run())
        async with asyncio.timeout(20):
            await h.delivered_event.wait()
        runner.cancel()
    assert [e.id for e in h.delivered] == [id] and not (h.outbox.root / f"{id}.eml").exists()
    assert len(server.messages) == 1


async def test_cancelled_during_quit_counts_as_delivered(
    smtp_server: StartServer, make: Any
) -> None:
    """Cancelled after the server took the DATA (while saying goodbye): recorded, not resent."""
    server = smtp_server(quit_delay=30.0)
    h: Harness = make(server.config())
    id = h.put()
    task = asyncio.create_task(h.sender.attempt(h.outbox.entries()[0]))
    await eventually(lambda: "QUIT" in server.commands)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert [e.id for e in h.delivered] == [id] and h.outbox.entries() == []
    assert not h.outbox.put(id, MESSAGE, meta())
    assert [e["event"] for e in h.outbox.history()] == ["delivered"]


async def test_backoff_after_a_thousand_attempts_is_still_retry_max(
    make: Any, closed_port: int
) -> None:
    """The 1,100th attempt is deferred by retry_max like the tenth: the doubling never overflows a float."""
    smtp = replace(unreachable(closed_port), retry_initial=1.0, retry_max=60.0)
    h: Harness = make(smtp)
    id = h.put()
    [entry] = h.outbox.entries()
    h.outbox.update(entry, {**entry.meta, "attempts": 1099})
    with structlog.testing.capture_logs() as logs:
        assert await h.sender.deliver_due() == 60.0
    assert "outbox.attempt_failed" not in [e["event"] for e in logs]
    assert h.queued(id)["attempts"] == 1100 and h.queued(id)["next_attempt"] == T0 + 60.0


async def test_outbox_write_failure_does_not_stop_the_sender(
    smtp_server: StartServer, make: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If recording an attempt fails (disk full), the entry stays queued and is retried later."""
    server = smtp_server(faults=[Fault("DATA", "451 4.3.0 try later", times=1)])
    h: Harness = make(server.config())
    id = h.put()

    def disk_full(*args: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(h.outbox, "update", disk_full)
    with structlog.testing.capture_logs() as logs:
        assert await h.sender.deliver_due() == h.sender.policy.retry_initial
    assert "outbox.attempt_failed" in [e["event"] for e in logs]
    monkeypatch.undo()
    assert [e.id for e in h.outbox.entries()] == [id]
    await h.sender.deliver_due()
    assert [e.id for e in h.delivered] == [id]


async def test_counters_count_each_delivery_event_kind(
    tmp_path: Path, smtp_server: Any, closed_port: int
) -> None:
    """Connection failures, delivery failures, final failures and deliveries are counted by kind."""
    outbox = Outbox(tmp_path / "outbox")
    outbox.put(
        "r-1",
        b"Subject: x\r\n\r\nbody\r\n",
        {"report": "daily", "period": "2026-11-21", "recipients": ["a@example.com"]},
    )
    down = SmtpConfig(
        host="127.0.0.1", from_addr="t@example.com", port=closed_port, security="none", timeout=5
    )
    sender = smtp_sender(outbox, down, lambda entry: None)
    await sender.attempt(outbox.entries()[0])
    server = smtp_server(faults=[Fault("RCPT", "550 5.1.1 no such user")])
    outbox.put(
        "r-2",
        b"Subject: y\r\n\r\nbody\r\n",
        {"report": "daily", "period": "2026-11-21", "recipients": ["b@example.com"]},
    )
    sender = smtp_sender(outbox, server.config(), lambda entry: None)
    await sender.attempt(next(e for e in outbox.entries() if e.id == "r-2"))
    counters = outbox.counters()
    assert counters["smtp.connection_failed"] == 1
    assert counters["smtp.final_delivery_failed"] == 1
    assert counters["smtp.delivered"] == 0
