"""`tailmail run`: the one place that builds the objects, starts the tasks and installs signals.

Three phases as in uvicorn: `startup` (load rules, reconcile the pipeline, close missed
periods), `serve` (tasks in one TaskGroup: tailing, rotation timer, reporter, sender, rule
reloads, rescans, systemd watchdog), `shutdown` (a signal only sets a flag; the current pump
completes and is committed, then the tasks are cancelled). SIGHUP re-reads the configuration
and, when it is valid, runs the three phases again with it, without releasing the state lock.
The control socket lives as long as the process: a command that arrives while a phase starts
waits for it instead of finding no socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import gc
import math
import os
import resource
import signal
import time
from pathlib import Path
from typing import Any

import structlog

from agent import __version__
from agent.config.load import load_config
from agent.config.model import Config, ReportConfig
from agent.config.yamlfile import ProblemsError
from agent.core.errors import WriteError
from agent.deliver.outbox import Outbox, OutboxEntry
from agent.deliver.sender import Policy, Sender
from agent.deliver.transport import LazyTransport, Transport
from agent.pipeline.pipeline import Pipeline
from agent.rules.load import RuleBook
from agent.service import status
from agent.service.control import StateLock, acquire, serve
from agent.service.log import setup as setup_logging
from agent.service.notify import Notifier
from agent.service.reporter import Reporter
from agent.service.retention import tidy
from agent.tail.watch import Watcher

log = structlog.get_logger("tailmail.service")

RESCAN_SECONDS = 30.0  # safety net for events inotify cannot see (NFS, a lost event queue)
# A test hook, not a setting: a huge interval leaves inotify alone to find new files and
# directories (tests/process/test_source_dirs.py), which the safety net would otherwise hide.
RESCAN_ENV = "TAILMAIL_RESCAN_SECONDS"
RULES_SETTLE_SECONDS = 0.2  # editors write a file in several steps: reload once they are done
MAX_TIMER_SECONDS = 60.0  # re-read the wall clock at least this often (suspend, clock steps)
BACKOFF_MAX = 60.0
RETRY_ROTATION_SECONDS = 10.0
STATUS_SECONDS = 5.0
CONTROL_WAIT_SECONDS = 300.0  # a command waits this long for a starting or reloading service


class Service:
    """One serve phase for one configuration."""

    def __init__(self, config: Config, notifier: Notifier) -> None:
        self.config = config
        self.notifier = notifier
        self.stop = asyncio.Event()
        self.reload = asyncio.Event()
        self.data = asyncio.Event()
        self.rules_changed = asyncio.Event()
        self._rescan = False
        self.watcher: Watcher | None = None
        self._status_at = -STATUS_SECONDS
        # Liveness of the tail loop, for the watchdog: when it last came round (or last tried to
        # commit after a write error), and whether it is now parked in a wait that ends by itself.
        self._beat = time.monotonic()
        self._parked = False
        self._write_error = ""  # why the last commit failed, until one works again
        self._vital: list[asyncio.Task[None]] = []
        self.ready = asyncio.Event()  # startup is done: the control socket may use it
        self.rulebook = RuleBook(
            config.rules_dir, [s.name for s in config.sources], [r.name for r in config.reports]
        )
        self.outbox = Outbox(config.state_dir / "outbox")

        def mail() -> Transport:
            # Built at the first delivery: aiosmtplib and email are not imported to start.
            from agent.deliver.smtp import SmtpTransport

            return SmtpTransport(config.smtp)

        self.sender = Sender(
            self.outbox,
            {"mail": LazyTransport(mail)},
            self._delivered,
            policy=Policy.of(config.smtp),
        )
        self.pipeline = Pipeline(
            config, self.rulebook, id_taken=self.outbox.contains, on_closed=self._closed
        )
        self.reporter = Reporter(config, self.pipeline, self.rulebook, self.outbox, self._queued)

    async def run(self) -> None:
        """The three phases: serve until stop or reload is set."""
        await self.startup()
        try:
            await self.serve()
        finally:
            self.shutdown()

    async def startup(self) -> None:
        """Rules, the pipeline reconciled with the checkpoint, missed periods closed, READY."""
        self._log_problems(self.rulebook.reload())
        self.pipeline.open()
        try:
            self.pipeline.rotate_due()
        except WriteError as exc:
            # The tail loop retries the write and the timer the rotation; the service starts.
            log.error("rotation.failed", error=str(exc), retry_in=RETRY_ROTATION_SECONDS)
        self._tidy_rotated()
        self.watcher = Watcher(asyncio.get_running_loop())
        self._watch(self.watcher)
        if not self.config.smtp.verify_tls and self.config.smtp.security != "none":
            log.warning(
                "smtp.tls_unverified", host=self.config.smtp.host, hint="verify_tls is false"
            )
        if not gc.get_freeze_count():
            # What the first start built (modules, config, rules) lives as long as the process:
            # out of the collector's generations, it is not scanned again and again while
            # catching up. Only once: a reload's leftovers stay collectable.
            gc.freeze()
        self.ready.set()
        self.notifier.ready(self._status())
        log.info(
            "service.started",
            version=__version__,
            sources=len(self.config.sources),
            rules=len(self.rulebook.rules),
        )

    async def serve(self) -> None:
        """The tasks, until stop or reload is set; then they are cancelled."""
        assert self.watcher is not None
        async with asyncio.TaskGroup() as tg:
            self._vital = [
                tg.create_task(self._tail()),
                tg.create_task(self._timer()),
                tg.create_task(self.sender.run()),
                tg.create_task(self.reporter.run()),
            ]
            tasks = [
                *self._vital,
                tg.create_task(self._rules()),
                tg.create_task(self._rescan_loop(self.watcher)),
                tg.create_task(self._watchdog()),
            ]
            stop_wait = tg.create_task(self.stop.wait())
            reload_wait = tg.create_task(self.reload.wait())
            await asyncio.wait([stop_wait, reload_wait], return_when=asyncio.FIRST_COMPLETED)
            for task in [*tasks, stop_wait, reload_wait]:
                task.cancel()

    def shutdown(self) -> None:
        """Commit what was read, close every file."""
        self.ready.clear()
        if self.watcher is not None:
            self.watcher.stop()
        with contextlib.suppress(OSError):
            self.pipeline.commit()
        self.pipeline.close()

    # ---- tasks -----------------------------------------------------------------------------

    async def _tail(self) -> None:
        while True:
            self._beat = time.monotonic()
            self.data.clear()
            try:
                if self._rescan:
                    self._rescan = False
                    self.pipeline.rescan()
                    if self.watcher is not None:  # symlinks may now lead into other directories
                        self._watch(self.watcher)
                progressed = self.pipeline.pump()
            except WriteError as exc:
                await self._recover_writes(exc)
                continue
            except Exception as exc:
                # A bug met in a file or an event must not end the service (systemd would start
                # it again on the same input, for ever): logged whole, retried like a write.
                log.exception("pipeline.failed", error=repr(exc))
                await self._recover_writes(WriteError(0, f"the pipeline failed: {exc!r}"))
                continue
            if progressed:
                await asyncio.sleep(0)  # let the other tasks in between big batches
            else:
                self._idle_status()
                self._parked = True
                try:
                    await self.data.wait()
                finally:
                    self._parked = False

    async def _recover_writes(self, exc: OSError) -> None:
        """The store or the state cannot be written (disk full, I/O error, permissions).

        Reading stops here: the lines already read stay pending in memory, their offsets are
        not committed, so nothing is dropped. The commit is retried with backoff until it works.
        """
        backoff = 1.0
        while True:
            self._write_error = str(exc)
            log.error("pipeline.write_failed", error=str(exc), retry_in=backoff)
            self.notifier.status(f"cannot write: {exc}; retrying in {backoff:.0f} s")
            self._parked = True
            try:
                await asyncio.sleep(backoff)
            finally:
                self._parked = False
            self._beat = time.monotonic()
            backoff = min(backoff * 2, BACKOFF_MAX)
            try:
                self.pipeline.commit()
                if self.pipeline.finish_rotations():
                    self.reporter.wake()
            except WriteError as again:
                exc = again
                continue
            except Exception as again:
                log.exception("pipeline.failed", error=repr(again))
                exc = WriteError(0, f"the pipeline failed: {again!r}")
                continue
            self._write_error = ""
            log.info("pipeline.write_recovered")
            self.notifier.status(self._status())
            return

    async def _timer(self) -> None:
        while True:
            try:
                if self.pipeline.rotate_due():
                    self.notifier.status(self._status())
            except WriteError as exc:
                # Nothing is lost: an interrupted rotation is finished by the next pump or start.
                log.error("rotation.failed", error=str(exc), retry_in=RETRY_ROTATION_SECONDS)
                await asyncio.sleep(RETRY_ROTATION_SECONDS)
                continue
            except Exception as exc:  # a bug: logged whole, tried again, the service goes on
                log.exception("rotation.failed", error=repr(exc), retry_in=RETRY_ROTATION_SECONDS)
                await asyncio.sleep(RETRY_ROTATION_SECONDS)
                continue
            delay = (self.pipeline.next_rotation() - self.pipeline.now()).total_seconds()
            await asyncio.sleep(min(max(delay, 0.0), MAX_TIMER_SECONDS))

    async def _rules(self) -> None:
        while True:
            await self.rules_changed.wait()
            await asyncio.sleep(RULES_SETTLE_SECONDS)
            self.rules_changed.clear()
            await self.reload_rules()

    async def reload_rules(self) -> None:
        """Reload the rule files without holding up the event loop.

        Listing, reading and parsing (up to seconds for a big file) run in a worker thread;
        only the swap of the rules in force runs here, in one step of the loop, so the
        pipeline sees the old rules or the new ones, never a half-built set. A failure of the
        reload itself leaves the rules in force as they were.
        """
        before = self.rulebook.version
        try:
            staged = await asyncio.to_thread(self.rulebook.stage)
            problems = self.rulebook.publish(staged)
        except Exception as exc:
            log.exception(
                "rules.reload_failed", error=repr(exc), hint="the rules in force stay as they were"
            )
            return
        self._log_problems(problems)
        if self.rulebook.version != before:
            log.info("rules.reloaded", rules=len(self.rulebook.rules))

    async def _rescan_loop(self, watcher: Watcher) -> None:
        interval = rescan_seconds()
        while True:
            await asyncio.sleep(interval)
            self._watch(watcher)  # directories that did not exist may exist now
            self._rescan = True
            self.data.set()

    async def _watchdog(self) -> None:
        """WATCHDOG=1 only while the pipeline is alive; otherwise systemd restarts the service.

        Pumps, commits and rotations run on the event loop, so one that hangs in a system call
        (a dead NFS server, a disk that stopped answering) blocks this task too and the pings
        stop; no timer elsewhere pings for it. Between its own turns the check is explicit.
        """
        interval = self.notifier.watchdog_interval
        if interval is None:
            return
        withheld = False
        while True:
            await asyncio.sleep(interval)
            if self.alive(within=interval):
                self.notifier.watchdog()
                withheld = False
            elif not withheld:
                withheld = True
                log.error(
                    "watchdog.withheld",
                    since=round(time.monotonic() - self._beat, 1),
                    hint="the tail loop stopped coming round; systemd will restart the service",
                )

    def alive(self, within: float) -> bool:
        """The tail, rotation and delivery tasks are all running, and the tail loop came round
        within `within` seconds or is parked in a wait that ends by itself.

        A wait for new data is idle and healthy. So is the backoff between commit attempts after
        a write error (disk full, I/O error, permissions): each attempt is a turn of the loop,
        the error is logged and in STATUS, the lines read stay in memory, and the first commit
        that works resumes reading. A restart would not free the disk, it would only read the
        same lines again, every WatchdogSec, for as long as the disk is full. A commit attempt
        that hangs instead of failing blocks the event loop and stops the pings.
        """
        if any(task.done() for task in self._vital):
            return False
        return self._parked or time.monotonic() - self._beat < within

    # ---- callbacks -------------------------------------------------------------------------

    def _watch(self, watcher: Watcher) -> None:
        for tailer in self.pipeline.tailers:
            for directory, recursive in tailer.watch_dirs().items():
                watcher.watch(directory, self._on_source_event, recursive=recursive)
        watcher.watch(self.config.rules_dir, self._on_rules_event)

    def _on_source_event(self, path: str, renamed: bool) -> None:
        if renamed:
            self._rescan = True
        self.data.set()

    def _on_rules_event(self, path: str, renamed: bool) -> None:
        self.rules_changed.set()

    def _closed(self) -> None:
        """A period was closed: its report is due."""
        self.reporter.wake()

    def _queued(self) -> None:
        """A report was queued: send it, and apply retention."""
        self.sender.wake()
        self._tidy_rotated()

    def _delivered(self, entry: OutboxEntry) -> None:
        """A report was accepted: its file may now be compressed, and old files pruned."""
        report = next((r for r in self.config.reports if r.name == entry.meta.get("report")), None)
        if report is not None:
            # The outbox still lists the entry while this runs: it is removed right after.
            self._tidy_rotated(report, sent=entry.meta.get("rotated_file"))

    def _tidy_rotated(self, only: ReportConfig | None = None, sent: str | None = None) -> None:
        """Retention, also at start: a run stopped between a delivery and its compression left
        it undone."""
        unsent = (self.outbox.unsent_files() | self.reporter.pending_files()) - {sent}
        tidy(self.config, unsent, only)

    async def control(self, request: dict[str, Any]) -> dict[str, Any]:
        if request.get("cmd") == "rotate":
            name = request.get("report")
            reports = [r for r in self.config.reports if name in (None, r.name)]
            if not reports:
                return {"ok": False, "error": f"no report named {name!r}"}
            return await self._rotate(reports)
        if request.get("cmd") == "ping":
            return {"ok": True, "pid": os.getpid()}
        if request.get("cmd") == "status":
            return {"ok": True, "snapshot": status.to_builtins(self.snapshot())}
        return {"ok": False, "error": f"unknown command {request.get('cmd')!r}"}

    async def _rotate(self, reports: list[ReportConfig]) -> dict[str, Any]:
        """Close the periods of `reports` after every line written before the request, then
        return once their reports are queued (or say why one could not be built)."""
        closing = self.pipeline.close_now(reports)
        try:
            while True:
                next(closing)
                await asyncio.sleep(0)  # catching up: the other tasks run between pumps
        except StopIteration as done:
            closed = done.value
        except WriteError as exc:
            for report in reports:
                # A rotation whose intent is durable is finished by the next pump; the
                # others are kept and done as soon as the state can be written again.
                if not self.pipeline.rotating(report):
                    self.pipeline.request_rotation(report.name)
            self.data.set()  # the tail loop notices the failure too, and retries
            return {
                "ok": False,
                "error": f"cannot rotate now: {exc}; the service rotates as soon as it can "
                "write again",
            }
        ids = [c.outbox_id for c in closed]
        failed = await self.reporter.wait_reported(ids)
        if failed:
            why = "; ".join(f"{i}: {error}" for i, error in failed.items())
            return {
                "ok": False,
                "closed": ids,
                "error": f"the period is closed, but its report could not be built ({why}); "
                "the service tries again, and `tailmail status` shows it",
            }
        return {"ok": True, "queued": ids}

    def _trouble(self) -> list[str]:
        """What is wrong now, in sentences: writes that fail, rotations that wait."""
        trouble = [*self.pipeline.trouble.values()]
        if self._write_error:
            trouble.append(f"cannot write: {self._write_error}; reading waits until it can")
        trouble.extend(
            f"report {name}: a forced rotation waits until the state can be written"
            for name in self.pipeline.requested
        )
        trouble.extend(
            f"report {i} could not be built ({error}); it is tried again"
            for i, error in self.reporter.trouble.items()
        )
        return list(dict.fromkeys(trouble))

    def _idle_status(self) -> None:
        """STATUS when the tail loop goes idle, which under a steady writer is many times a
        second: building it stats every file and reads the outbox, so do it only for a listener,
        and at most every STATUS_SECONDS."""
        now = time.monotonic()
        if self.notifier.enabled and now - self._status_at >= STATUS_SECONDS:
            self._status_at = now
            self.notifier.status(self._status())

    def snapshot(self) -> status.Snapshot:
        """What `tailmail status` shows, from what the service holds now."""
        return status.of_service(
            self.config,
            self.pipeline.checkpoint,
            [tailed.state for tailer in self.pipeline.tailers for tailed in tailer.files.values()],
            self.outbox,
            self._trouble(),
            self.pipeline.behind(),
        )

    def _status(self) -> str:
        return status.summary(self.snapshot())

    def _log_problems(self, problems: list[Any]) -> None:
        for problem in problems:
            log.error("rules.problem", problem=str(problem))


def rescan_seconds() -> float:
    """RESCAN_SECONDS, or the test hook's value (positive, finite) from the environment."""
    text = os.environ.get(RESCAN_ENV, "")
    if not text:
        return RESCAN_SECONDS
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value < math.inf:
        log.warning("service.bad_rescan_interval", variable=RESCAN_ENV, value=text)
        return RESCAN_SECONDS
    return value


def raise_open_files_limit() -> None:
    """Every source file is held open, so a glob of 10,000 files needs 10,000 descriptors; the
    soft limit is often 1024. It goes up to the hard limit (asyncio waits with epoll: no
    select() limit applies). systemd's units set LimitNOFILE= instead: their system-call filter
    forbids this call. Beyond the limit, sources.py opens no more files than leave a reserve."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # An unlimited hard limit is capped by the kernel (fs.nr_open, 1048576 by default).
    want = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft != resource.RLIM_INFINITY and soft >= want:
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    except (OSError, ValueError) as exc:
        log.info("service.open_files_limit", soft=soft, hard=hard, raised=False, error=str(exc))
        return
    log.debug("service.open_files_limit", soft=want, hard=hard, was=soft)


async def run(config_path: Path, config: Config) -> int:
    """The whole service: lock, serve (again after each SIGHUP), release."""
    raise_open_files_limit()
    notifier = Notifier()
    # When the watchdog gives up on a hung service, systemd sends SIGABRT: print every thread's
    # stack to stderr (the journal) before dying, to show where it hung.
    faulthandler.enable()
    lock = StateLock(config.state_dir)
    await acquire(lock, within=10.0)
    loop = asyncio.get_running_loop()
    current: Service | None = None
    changed = asyncio.Event()  # a new service began its startup

    async def control(request: dict[str, Any]) -> dict[str, Any]:
        """Hand a command to the service in force, once it has started (waiting if need be)."""
        async with asyncio.timeout(CONTROL_WAIT_SECONDS):
            while current is None or not current.ready.is_set():
                if current is not None:
                    ready = asyncio.ensure_future(current.ready.wait())
                    other = asyncio.ensure_future(changed.wait())
                    await asyncio.wait([ready, other], return_when=asyncio.FIRST_COMPLETED)
                    ready.cancel()
                    other.cancel()
                else:
                    await changed.wait()
            return await current.control(request)

    server = await serve(config.state_dir, control)

    def on_stop() -> None:
        if current is not None:
            current.stop.set()

    def on_reload() -> None:
        if current is not None:
            current.reload.set()

    loop.add_signal_handler(signal.SIGTERM, on_stop)
    loop.add_signal_handler(signal.SIGINT, on_stop)
    loop.add_signal_handler(signal.SIGHUP, on_reload)
    try:
        while True:
            current = Service(config, notifier)
            changed.set()
            changed.clear()
            await current.run()
            if current.stop.is_set():
                break
            notifier.reloading()
            try:
                new = load_config(config_path)
                if new.state_dir != config.state_dir:
                    log.error(
                        "config.reload_failed",
                        reason="state_dir cannot change on reload; restart the service",
                    )
                else:
                    config = new
                    setup_logging(config.log)
                    log.info("config.reloaded", path=str(config_path))
            except ProblemsError as exc:
                for problem in exc.problems:
                    log.error("config.problem", problem=str(problem))
                log.error("config.reload_failed", hint="keeping the running configuration")
            except Exception as exc:  # defence in depth: a bug met in the new config stops nothing
                log.exception(
                    "config.reload_failed",
                    error=repr(exc),
                    hint="keeping the running configuration",
                )
        notifier.stopping()
        log.info("service.stopped")
        return 0
    finally:
        server.close()
        (config.state_dir / "control.sock").unlink(missing_ok=True)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        lock.close()
        notifier.close()
