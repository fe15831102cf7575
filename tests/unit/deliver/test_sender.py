"""agent/deliver/sender.py over the in-memory transport: the retry logic, in milliseconds, on a
clock the test moves. What the SMTP transport does against real servers: test_outbox.py."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import structlog

from agent.deliver import (
    ConnectionFailure,
    DeliveryResult,
    LazyTransport,
    MemoryTransport,
    Outbox,
    OutboxEntry,
    Outgoing,
    PermanentFailure,
    Policy,
    Sender,
    TransientFailure,
    Transport,
)

T0 = 1_800_000_000.0  # 2027-01-15T08:00:00Z
MESSAGE = b"Subject: report\r\n\r\nbody\r\n"
POLICY = Policy(retry_initial=60.0, retry_max=200.0, retry_for=1000.0, max_per_hour=100)
TRY_LATER = TransientFailure("data", "temporary", "4.3.0 try later", code=451)


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


class Crash(BaseException):
    """The process dies here: nothing after it runs, as with kill -9."""


class World:
    """An outbox on disk, a sender on a fake clock, and what on_delivered was given."""

    def __init__(
        self,
        root: Path,
        transport: Transport,
        policy: Policy = POLICY,
        transports: dict[str, Transport] | None = None,
    ) -> None:
        self.root = root
        self.clock = Clock()
        self.policy = policy
        self.transports = transports or {"mail": transport}
        self.outbox = Outbox(root, clock=self.clock)
        self.delivered: list[OutboxEntry] = []
        self.sender = self.restart()

    def restart(self) -> Sender:
        """A new sender on the same outbox, as after a restart of the service."""
        self.outbox = Outbox(self.root, clock=self.clock)
        self.sender = Sender(
            self.outbox,
            self.transports,
            self.delivered.append,
            policy=self.policy,
            clock=self.clock,
        )
        return self.sender

    def put(
        self, id: str = "daily-1", recipients: tuple[str, ...] = ("ops@x.org",), **meta: Any
    ) -> str:
        meta = {"report": "daily", "period": "2027-01-14", "recipients": list(recipients), **meta}
        assert self.outbox.put(id, MESSAGE, meta)
        return id

    def queued(self, id: str = "daily-1") -> dict[str, Any]:
        [entry] = [e for e in self.outbox.entries() if e.id == id]
        return entry.meta

    async def retry(self, id: str = "daily-1") -> float | None:
        """Move the clock to the entry's next attempt, and let the sender at it."""
        self.clock.now = self.queued(id)["next_attempt"]
        return await self.sender.deliver_due()


def failing(*answers: Exception | DeliveryResult) -> Callable[[Outgoing], DeliveryResult]:
    """A handler that gives these answers in turn, then accepts everything."""
    queue = list(answers)

    def handler(message: Outgoing) -> DeliveryResult:
        if not queue:
            return DeliveryResult(message.recipients)
        answer = queue.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    return handler


async def test_transient_failures_back_off_doubling_to_retry_max(tmp_path: Path) -> None:
    """Each transient failure waits retry_initial, then twice as long each time, up to
    retry_max; the entry stays queued with its last answer, and a retry that works delivers."""
    transport = MemoryTransport(failing(*[TRY_LATER] * 4))
    world = World(tmp_path, transport)
    world.put()
    assert await world.sender.deliver_due() == 60.0
    assert world.queued()["last_error"] == {
        "step": "data", "cause": "temporary", "code": 451, "text": "4.3.0 try later",
    }  # fmt: skip
    waits = []
    for _ in range(3):
        before = world.queued()["next_attempt"]
        await world.retry()
        waits.append(world.queued()["next_attempt"] - before)
    assert waits == [120.0, 200.0, 200.0] and world.queued()["attempts"] == 4
    assert await world.sender.deliver_due() == 200.0  # not due yet: nothing tried
    assert len(transport.sent) == 4
    await world.retry()
    assert [e.id for e in world.delivered] == ["daily-1"] and world.outbox.entries() == []
    assert [e["event"] for e in world.outbox.history()] == ["deferred"] * 4 + ["delivered"]


async def test_retry_for_expiry_moves_to_failed(tmp_path: Path) -> None:
    """Transient failures are retried until retry_for since queueing, the last attempt exactly
    then, never after; then the message is in failed/ with the reason."""
    transport = MemoryTransport(failing(*[TRY_LATER] * 100))
    world = World(tmp_path, transport)
    world.put()
    await world.sender.deliver_due()
    with structlog.testing.capture_logs() as logs:
        while world.outbox.entries():
            await world.retry()
    # 60, 120, 200, 200, 200, 200, then 20 to reach retry_for, then the expiry
    assert world.clock.now == T0 + 1000.0 and len(transport.sent) == 8
    [failed] = world.outbox.failed()
    assert failed.meta["expired"] is True and failed.path.read_bytes() == MESSAGE
    assert [e["event"] for e in logs][-1] == "memory.final_delivery_failed"
    assert world.outbox.history()[-1]["text"] == (
        "not delivered to ops@x.org: retry_for ran out after 8 attempts; last answer: "
        "data: 451 4.3.0 try later; kept in the outbox's failed folder"
    )
    assert world.delivered == []


async def test_permanent_refusal_fails_at_once(tmp_path: Path) -> None:
    """A permanent failure moves the message to failed/ on the first attempt, never retried."""
    refused = PermanentFailure("data", "permanent", "5.6.0 content rejected", code=554)
    transport = MemoryTransport(failing(refused))
    world = World(tmp_path, transport)
    world.put()
    with structlog.testing.capture_logs() as logs:
        assert await world.sender.deliver_due() is None
    [failed] = world.outbox.failed()
    assert failed.meta["rejected"] == {"ops@x.org": [554, "5.6.0 content rejected"]}
    assert [e["event"] for e in logs] == ["memory.final_delivery_failed"]
    assert world.outbox.entries() == [] and world.delivered == [] and len(transport.sent) == 1


async def test_partial_recipients(tmp_path: Path) -> None:
    """Of three recipients, the one who accepted is never sent it again, the one refused for
    good keeps a copy in failed/, and only the deferred one is tried again."""
    first = DeliveryResult(
        ("a@x.org",),
        rejected={"b@x.org": (550, "no such user")},
        deferred={"c@x.org": (450, "busy")},
    )
    transport = MemoryTransport(failing(first))
    world = World(tmp_path, transport)
    world.put(recipients=("a@x.org", "b@x.org", "c@x.org"))
    await world.sender.deliver_due()
    queued = world.queued()
    assert queued["delivered_to"] == ["a@x.org"]
    assert queued["rejected"] == {"b@x.org": [550, "no such user"]}
    assert queued["last_error"] == {
        "step": "recipient",
        "cause": "temporary",
        "code": 450,
        "text": "busy",
    }
    await world.retry()
    assert [m.recipients for m in transport.sent] == [
        ("a@x.org", "b@x.org", "c@x.org"),
        ("c@x.org",),
    ]
    [entry] = world.delivered
    assert entry.meta["delivered_to"] == ["a@x.org", "c@x.org"]
    [failed] = world.outbox.failed()
    assert failed.meta["recipients"] == ["b@x.org"]


async def test_the_accepted_hook_records_before_a_crash(tmp_path: Path) -> None:
    """A crash after the server has the message and before its goodbye sends nothing again on
    restart: the delivery was recorded in on_accepted."""

    async def crash() -> None:
        raise Crash

    transport = MemoryTransport(goodbye=crash)
    world = World(tmp_path, transport)
    world.put()
    with pytest.raises(Crash):
        await world.sender.deliver_due()
    sender = world.restart()
    assert world.outbox.recover() == []  # what Sender.run does first
    assert await sender.deliver_due() is None
    assert len(transport.sent) == 1
    assert [e["event"] for e in world.outbox.history()] == ["delivered"]
    assert not world.outbox.put("daily-1", MESSAGE, {"recipients": ["ops@x.org"]})


async def test_cancelled_during_the_goodbye_counts_as_delivered(tmp_path: Path) -> None:
    """A stop while the server says goodbye leaves the message delivered, not queued."""
    goodbye = asyncio.Event()

    async def slow_goodbye() -> None:
        goodbye.set()
        await asyncio.Event().wait()

    world = World(tmp_path, MemoryTransport(goodbye=slow_goodbye))
    world.put()
    task = asyncio.create_task(world.sender.deliver_due())
    async with asyncio.timeout(5):
        await goodbye.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert [e.id for e in world.delivered] == ["daily-1"] and world.outbox.entries() == []


async def test_cancelled_before_acceptance_leaves_the_entry_as_it_was(tmp_path: Path) -> None:
    """A stop while the server has not taken the message changes nothing: no attempt counted,
    nothing recorded, the message still queued and due."""
    started = asyncio.Event()

    async def hang(message: Outgoing) -> DeliveryResult:
        started.set()
        await asyncio.Event().wait()
        raise AssertionError("never answered")

    world = World(tmp_path, MemoryTransport(hang))
    world.put()
    before = world.queued()
    task = asyncio.create_task(world.sender.run())
    async with asyncio.timeout(5):
        await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert world.queued() == before and world.outbox.history() == []


async def test_hourly_budget_holds_back_without_dropping(tmp_path: Path) -> None:
    """Over max_per_hour a due message waits (said once), across a restart too, and goes as
    soon as the oldest send of the hour is an hour old."""
    transport = MemoryTransport()
    world = World(tmp_path, transport, policy=Policy(60.0, 200.0, 86400.0, max_per_hour=2))
    for n in range(3):
        world.put(f"daily-{n}")
        world.clock.now += 10
    with structlog.testing.capture_logs() as logs:
        assert await world.sender.deliver_due() == 3600.0
        world.clock.now += 600
        assert await world.sender.deliver_due() == 3000.0
    assert [e["event"] for e in logs] == ["memory.delivered"] * 2 + ["memory.rate_limited"]
    assert [m.id for m in transport.sent] == ["daily-0", "daily-1"]
    sender = world.restart()
    assert await sender.deliver_due() == 3000.0
    world.clock.now += 3000
    assert await sender.deliver_due() is None
    assert [m.id for m in transport.sent] == ["daily-0", "daily-1", "daily-2"]


async def test_retry_after_is_honoured(tmp_path: Path) -> None:
    """A server that asks for a pause longer than the backoff gets it, but retry_for still ends
    the retries on time."""
    busy = TransientFailure("http", "temporary", "Too Many Requests", code=429, retry_after=900.0)
    world = World(tmp_path, MemoryTransport(failing(busy, busy)))
    world.put()
    await world.sender.deliver_due()
    assert world.queued()["next_attempt"] == T0 + 900.0
    await world.retry()
    assert world.queued()["next_attempt"] == T0 + 1000.0  # retry_for, not T0 + 1800


async def test_connection_failures_and_delivery_failures_are_logged_apart(tmp_path: Path) -> None:
    """A server not reached is `<transport>.connection_failed`, one that answered 4xx is
    `<transport>.delivery_failed`, each with the transport's `where` fields."""
    down = ConnectionFailure("connect", "refused", "connection refused")
    transport = MemoryTransport(
        failing(down, TRY_LATER), name="smtp", where={"host": "h", "port": 25}
    )
    world = World(tmp_path, transport)
    world.put()
    with structlog.testing.capture_logs() as logs:
        await world.sender.deliver_due()
        await world.retry()
    assert [e["event"] for e in logs] == ["smtp.connection_failed", "smtp.delivery_failed"]
    assert all((e["host"], e["port"], e["id"]) == ("h", 25, "daily-1") for e in logs)
    assert world.outbox.counters()["smtp.connection_failed"] == 1


async def test_the_kind_chooses_the_transport(tmp_path: Path) -> None:
    """An entry goes through the transport of its meta's kind, "mail" when it names none."""
    mail, webhook = MemoryTransport(name="smtp"), MemoryTransport(name="webhook")
    world = World(tmp_path, mail, transports={"mail": mail, "webhook": webhook})
    world.put("report-1")
    world.put("alert-1", recipients=("ops-chat",), kind="webhook")
    assert await world.sender.deliver_due() is None
    assert [m.id for m in mail.sent] == ["report-1"] and [m.id for m in webhook.sent] == ["alert-1"]
    assert webhook.sent[0].meta["kind"] == "webhook" and webhook.sent[0].content == MESSAGE


async def test_a_kind_without_transport_waits_and_is_never_lost(tmp_path: Path) -> None:
    """An entry of a kind this version cannot send (a newer one queued it) is deferred like a
    transient failure, and ends in failed/ when retry_for runs out."""
    world = World(tmp_path, MemoryTransport())
    world.put(recipients=("ops-chat",), kind="pager")
    with structlog.testing.capture_logs() as logs:
        await world.sender.deliver_due()
    assert [e["event"] for e in logs] == ["pager.delivery_failed"]
    assert world.queued()["last_error"]["cause"] == "no_transport"
    while world.outbox.entries():
        await world.retry()
    [failed] = world.outbox.failed()
    assert failed.meta["expired"] is True


async def test_a_transport_that_breaks_the_contract_counts_no_attempt(tmp_path: Path) -> None:
    """An exception that is not a DeliveryFailure is logged, leaves the entry as it was and is
    tried again after retry_initial."""

    def broken(message: Outgoing) -> DeliveryResult:
        raise RuntimeError("a bug")

    world = World(tmp_path, MemoryTransport(broken))
    world.put()
    with structlog.testing.capture_logs() as logs:
        assert await world.sender.deliver_due() == 60.0
    assert [e["event"] for e in logs] == ["outbox.attempt_failed"]
    assert world.queued()["attempts"] == 0 and world.outbox.history() == []


async def test_lazy_transport_is_built_at_its_first_use(tmp_path: Path) -> None:
    """LazyTransport builds its transport when a message is due, once, not when the sender is
    made or while it waits."""
    built: list[MemoryTransport] = []

    def build() -> Transport:
        built.append(MemoryTransport(name="smtp"))
        return built[-1]

    world = World(tmp_path, LazyTransport(build))
    assert await world.sender.deliver_due() is None and built == []
    world.put("daily-1")
    world.put("daily-2")
    await world.sender.deliver_due()
    [transport] = built
    assert [m.id for m in transport.sent] == ["daily-1", "daily-2"]


def test_starting_the_service_imports_no_mail_library() -> None:
    """Importing the service and the deliver package loads neither aiosmtplib nor email: they
    come with the first delivery. (ssl is asyncio's own import.)"""
    code = (
        "import sys, agent.service.service, agent.deliver, agent.cli\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('aiosmtplib', 'email')"
        " or m in ('agent.deliver.smtp', 'agent.deliver.doctor')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


async def test_memory_transport_refuses_a_result_that_delivers_nothing() -> None:
    """A handler that accepts nobody must raise a failure instead, as the contract says."""
    transport = MemoryTransport(lambda m: DeliveryResult((), deferred={"a@x.org": (450, "busy")}))
    called: list[DeliveryResult] = []
    with pytest.raises(ValueError, match="raises a DeliveryFailure"):
        await transport.send(Outgoing("x", MESSAGE, ("a@x.org",)), called.append)
    assert called == []
