"""`tailmail rotate`: close periods now, with the service or without it, the same way.

With the service running (it holds the state lock), the command asks it over the control
socket, waiting for a service that is still starting. Without it, the command takes the lock
and does what the service would: the same `Pipeline.close_now` (every line written before the
command goes into the closing period, however far behind reading is), then the reports built
and queued at once; the service sends them when it next runs.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from agent.config.model import Config
from agent.deliver.outbox import Outbox
from agent.pipeline.pipeline import Pipeline
from agent.rules.load import RuleBook
from agent.service import control
from agent.service.reporter import report_closed

ASK_WITHIN = 3600.0  # a service far behind may take a while to catch up before it rotates


@dataclass(frozen=True, slots=True)
class Rotated:
    queued: list[str]  # report ids queued
    by_service: bool  # the running service did it (and delivers now)
    problems: list[str] = field(default_factory=list)  # rule files that failed to load, offline
    failed: dict[str, str] = field(default_factory=dict)  # id -> why its report was not built


class RotateFailed(Exception):
    """The periods could not be closed, or a report not built; the message says why."""


def rotate(config: Config, only: str | None) -> Rotated:
    lock = control.StateLock(config.state_dir)
    try:
        if lock.try_acquire():
            return _offline(config, only)
        try:
            reply = asyncio.run(
                control.ask(config.state_dir, {"cmd": "rotate", "report": only}, ASK_WITHIN)
            )
        except (OSError, TimeoutError) as exc:
            raise RotateFailed(
                f"the running service (pid {lock.holder()}) did not answer: {exc}"
            ) from None
    finally:
        lock.close()
    if not reply.get("ok"):
        raise RotateFailed(str(reply.get("error")))
    return Rotated(list(reply.get("queued", [])), by_service=True)


def _offline(config: Config, only: str | None) -> Rotated:
    rulebook = RuleBook(
        config.rules_dir, [s.name for s in config.sources], [r.name for r in config.reports]
    )
    problems = [str(p) for p in rulebook.reload()]
    outbox = Outbox(config.state_dir / "outbox")
    pipeline = Pipeline(config, rulebook, id_taken=outbox.contains)
    try:
        pipeline.open()
        pipeline.rotate_due()
        closing = pipeline.close_now([r for r in config.reports if only in (None, r.name)])
        try:
            while True:
                next(closing)
        except StopIteration as done:
            closed = done.value
        queued, failed = report_closed(config, pipeline, rulebook, outbox)
    except OSError as exc:
        raise RotateFailed(f"cannot rotate: {exc}; nothing was rotated") from None
    finally:
        pipeline.close()
    mine = {c.outbox_id for c in closed}
    return Rotated(
        [i for i in queued if i in mine] + [i for i in queued if i not in mine],
        by_service=False,
        problems=problems,
        failed=failed,
    )
