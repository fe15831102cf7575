"""The pipeline: source files -> events -> rules -> outputs, the one commit point, and the
closing of periods.

One object owns the checkpoint, the open source files and the outputs, and it is only ever
driven from one thread (the service's event loop, or the `rotate` command when no service runs),
so no state here needs a lock. A pump reads a bounded amount, hands what the rules select to the
outputs and commits: outputs flushed first, then the checkpoint that counts their bytes and the
offsets that produced them, in one atomic rename.

Closing a period is cheap and synchronous: its intent is committed, the store renamed, and the
closed period recorded in the checkpoint. Its report is built and queued elsewhere (the
service's reporter), which marks it `reported` here: a report that cannot be built never stops
reading.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Generator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import structlog

from agent.config.model import Config, ReportConfig
from agent.core.errors import write_error
from agent.core.figures import PeriodStats
from agent.core.fs import make_dirs
from agent.core.periods import Period, hour_counts, period_from, period_of, system_timezone
from agent.core.text import display_path
from agent.outputs.base import Output
from agent.outputs.store import ReportStore, rotate_store, rotated_path
from agent.pipeline.checkpoint import (
    Checkpoint,
    ReportState,
    Rotation,
    load_checkpoint,
    save_checkpoint,
)
from agent.rules import Rule, RuleBook
from agent.rules.routes import Route, Router
from agent.tail.eventtime import time_reader
from agent.tail.files import Retired, SourceTailer, Tailed
from agent.tail.lines import TOO_LONG, Chunk, Positions, classify, sample

log = structlog.get_logger("tailmail.pipeline")

PUMP_BYTES = 8 << 20  # per pump: bounded so rotation, delivery and signals are never kept waiting
# While catching up, a commit (three fsyncs) after every pump would cost more than a tenth of the
# time. Between commits the selection is written to the stores but not synced; a crash trims
# them back to the checkpoint and reads the lines again, so at most this much work is redone.
COMMIT_BYTES = 64 << 20
COMMIT_SECONDS = 1.0
LOG_BAD_LINES = 10  # bad lines logged one by one per pump; beyond that, one summary line


def report_id(report: str, start: datetime) -> str:
    """The outbox id (and Message-ID part) of a period: unique per period start.

    Forced rotations can start periods within one second of each other, so a start that is not
    on a whole second carries its microseconds: without them two periods would share an id and
    the second report would be taken for the first, already queued.
    """
    utc = start.astimezone(UTC)
    micro = f"-{utc.microsecond:06d}" if utc.microsecond else ""
    return f"{report}-{utc:%Y%m%dT%H%M%SZ}{micro}"


def _indexes(lines: list[bytes], bad: list[bytes]) -> list[int]:
    """Where the bad lines are in `lines`, looked up only for a chunk that has any, so that the
    hot loop need not count. The first line equal to the next bad one, after the previous bad
    one, is that line: an equal line in between would be bad too, and listed in between."""
    found: list[int] = []
    at = 0
    for line in bad:
        at = lines.index(line, at)  # compares in C; lines of other lengths are skipped at once
        found.append(at)
        at += 1
    return found


def _iso(dt: datetime) -> str:
    return dt.astimezone(UTC).isoformat()


def _parse(iso: str) -> datetime:
    return datetime.fromisoformat(iso)


_TICK = timedelta(microseconds=1)


class Pipeline:
    def __init__(
        self,
        config: Config,
        rulebook: RuleBook,
        clock: Callable[[], float] = time.time,
        id_taken: Callable[[str], bool] = lambda outbox_id: False,
        on_closed: Callable[[], None] = lambda: None,
        make_output: Callable[[ReportConfig, int | None], Output] = ReportStore,
    ) -> None:
        """`id_taken`: whether a report id is known already (queued, failed or delivered), so
        that a new period never gets one; `on_closed`: a period was closed, its report is due;
        `make_output`: the output of a report, given its committed size (None: unknown)."""
        self.config = config
        self.rulebook = rulebook
        self.clock = clock
        self.id_taken = id_taken
        self.on_closed = on_closed
        self.make_output = make_output  # the report store; tests give outputs of their own
        self.local_tz = system_timezone()
        make_dirs(config.state_dir)
        self.checkpoint: Checkpoint = load_checkpoint(config.state_dir, repair=True)
        first = not self.checkpoint.started_before
        self.tailers = [
            SourceTailer(
                src,
                {k: v for k, v in self.checkpoint.files.items() if v.source == src.name},
                first,
                retired=[
                    Retired.from_dict(r)
                    for r in self.checkpoint.retired
                    if r["state"]["source"] == src.name
                ],
            )
            for src in config.sources
        ]
        # One output per report, by name; routes name them by their slot in `outputs`.
        self.stores: dict[str, Output] = {}
        self._routers: dict[str, Router] = {}
        self._rules: tuple[Rule, ...] = ()
        self._rules_version = -1
        self._source_trouble: dict[str, str] = {}
        self._store_trouble: dict[str, str] = {}  # report -> why its store cannot be written
        self._uncommitted = 0  # bytes read since the last commit
        self._committed_at = 0.0  # time.monotonic() of the last commit
        # Forced rotations asked for while the state could not be written: done once it can.
        self._requested: list[str] = []

    # ---- start and stop ------------------------------------------------------------------

    def open(self) -> None:
        """Reconcile stores with the checkpoint, finish interrupted rotations, find the files.

        Only the state directory itself can stop it: a store that cannot be written, or a
        rotation that cannot be finished, is logged and recorded, and retried by every pump
        (which reads nothing until it succeeds), so the service starts and says what is wrong.
        """
        now = self.now()
        if self.checkpoint.recovered:
            log.error(
                "state.checkpoint_recovered",
                damage=self.checkpoint.recovered,
                hint="the previous checkpoint is used: the stores are cut back to it and the "
                "lines since are read again, each stored once",
            )
        for name in list(self.checkpoint.reports):
            if name not in {r.name for r in self.config.reports}:
                del self.checkpoint.reports[name]
        for report in self.config.reports:
            rs = self.checkpoint.reports.get(report.name)
            if rs is None:
                start = period_of(now, report.rotate_at, report.timezone).start
                rs = ReportState(store_size=-1, stats=PeriodStats(start=_iso(start)))
                self.checkpoint.reports[report.name] = rs
            if self.checkpoint.recovered:
                rs.stats.add_problem(
                    {
                        "kind": "notice",
                        "text": f"{self.checkpoint.recovered}: tailmail went back to the "
                        "checkpoint before it; the lines read since were read again and are "
                        "stored once",
                    }
                )
            if rs.rotating is not None:
                try:
                    self._finish_rotation(report)
                except OSError as exc:
                    self._store_failed(report, exc)
                    continue
            self._open_store(report, None if rs.store_size < 0 else rs.store_size)
        self.checkpoint.recovered = None
        for tailer in self.tailers:
            tailer.scan()
        self._note_source_trouble()
        self._note_renames()
        self.checkpoint.started_before = True
        try:
            self.commit()
        except OSError as exc:
            log.error("pipeline.write_failed", error=str(exc))

    def _open_store(self, report: ReportConfig, committed: int | None) -> None:
        """Make the report's store; open its file now if it can be (else the next commit tries)."""
        store = self.stores[report.name] = self.make_output(report, committed)
        rs = self.checkpoint.reports[report.name]
        try:
            store.open()
        except OSError as exc:
            self._store_failed(report, exc)
            return
        rs.store_size = store.size
        self._take_notices(store, rs.stats)
        self._store_ok(report)

    @staticmethod
    def _take_notices(output: Output, stats: PeriodStats) -> None:
        for kind, text in output.notices():
            stats.add_problem({"kind": kind, "text": text})

    def _store_failed(self, report: ReportConfig, exc: OSError) -> None:
        """A store (or its rotation) cannot be written: logged once, a problem of its period."""
        text = f"cannot write the store of report {report.name}: {exc.strerror or exc}"
        if self._store_trouble.get(report.name) != text:
            self._store_trouble[report.name] = text
            log.error("store.write_failed", report=report.name, error=text)
            rs = self.checkpoint.reports.get(report.name)
            if rs is not None:
                rs.stats.add_problem({"kind": "store", "text": text})

    def _store_ok(self, report: ReportConfig) -> None:
        if self._store_trouble.pop(report.name, None) is not None:
            log.info("store.write_recovered", report=report.name)

    @property
    def trouble(self) -> dict[str, str]:
        """What keeps the pipeline from writing now, by report (empty when all is well)."""
        return dict(self._store_trouble)

    def close(self) -> None:
        for tailer in self.tailers:
            tailer.close()
        for store in self.stores.values():
            store.close()
        self.stores.clear()

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), UTC)

    # ---- reading ---------------------------------------------------------------------------

    def rescan(self) -> None:
        for tailer in self.tailers:
            tailer.scan()
        self._note_source_trouble()
        self._note_renames()

    def pump(self, budget: int = PUMP_BYTES) -> bool:
        """Read up to `budget` bytes across all files and store the selection. True if any.

        It commits when every file is read to its end, and while catching up once COMMIT_BYTES
        or COMMIT_SECONDS have passed since the last commit; in between the stores are written
        but the checkpoint does not count those lines yet.
        """
        self.finish_rotations()
        self._refresh_routes()
        progressed = False
        spent = 0
        # The first round looks at every file; the next ones only at those that gave bytes in
        # the round before, so that with thousands of files one busy file does not make every
        # round look at all of them; and the last round at every file again: one written to
        # meanwhile, or held back behind the file it replaced, has bytes now. A pump that
        # returns within its budget has read every file to its end (`rotate` relies on it).
        files, every = self._every_file(), True
        while spent < budget:
            busy: list[tuple[SourceTailer, Tailed]] = []
            for tailer, tailed in files:
                try:
                    chunk = tailer.read(tailed)
                except OSError as exc:
                    log.error(
                        "source.read_failed",
                        source=tailer.config.name,
                        path=tailed.state.path,
                        error=str(exc),
                    )
                    continue
                if chunk is None:
                    continue
                self._process(tailer, tailed, chunk)
                spent += chunk.end - chunk.start
                busy.append((tailer, tailed))
            if not busy:
                if not every:
                    files, every = self._every_file(), True
                    continue
                if not any(tailer.scan_wanted for tailer in self.tailers):
                    break
                # A file was found truncated: its new content waits until a scan has looked for
                # the copy that continues its old content (copytruncate copies first).
                self.rescan()
                files = self._every_file()
                continue
            progressed = True
            files, every = busy, False
        self._uncommitted += spent
        if self._uncommitted:
            if (
                spent < budget  # every file read to its end: commit now
                or self._uncommitted >= COMMIT_BYTES
                or time.monotonic() - self._committed_at >= COMMIT_SECONDS
            ):
                self.commit()
            else:
                for store in self.stores.values():
                    store.write()  # memory stays bounded by one pump
        return progressed

    def _every_file(self) -> list[tuple[SourceTailer, Tailed]]:
        return [(tailer, tailed) for tailer in self.tailers for tailed in tailer.files.values()]

    def behind(self) -> int:
        return sum(t.behind for tailer in self.tailers for t in tailer.files.values())

    @property
    def outputs(self) -> tuple[str, ...]:
        """The outputs selected lines go to, by name, in slot order: one store per report."""
        return tuple(r.name for r in self.config.reports)

    def _refresh_routes(self) -> None:
        if self.rulebook.version == self._rules_version:
            return
        self._rules_version = self.rulebook.version
        self._rules = self.rulebook.rules
        # A route names the outputs a rule feeds by their slot in `outputs`: the hot loop
        # appends to lists by slot.
        names = self.outputs
        self._routers = {}
        for src in self.config.sources:
            routes: list[Route] = []
            keys = []
            for i, rule in enumerate(self._rules):
                if rule.sources is not None and src.name not in rule.sources:
                    continue
                slots = tuple(
                    j for j, n in enumerate(names) if rule.reports is None or n in rule.reports
                )
                if slots:
                    routes.append((i, rule.test, rule.when, slots))
                    keys.append(rule.key)
            self._routers[src.name] = Router(routes, keys)

    def _process(self, tailer: SourceTailer, tailed: Tailed, chunk: Chunk) -> None:
        """The hot path: every line of the chunk through the rules, selected lines to stores."""
        reports = self.config.reports
        router = self._routers[tailer.config.name]
        loads = orjson.loads
        decode_error = orjson.JSONDecodeError
        selected: list[list[bytes]] = [[] for _ in reports]
        rule_hits = [0] * len(self._rules)
        times: list[list[datetime]] = [[] for _ in reports]
        stamp = time_reader(tailer.config.time_field, self.local_tz, self.now)
        bad: list[bytes] = []  # the bad lines themselves; _account finds where they are

        def pick(event: dict[str, Any], found: Sequence[Route], line: bytes) -> None:
            """Try the candidate routes on one event; store the line for the reports it feeds."""
            hit: set[int] | tuple[int, ...] = ()
            when_time: datetime | None = None
            for rule_index, test, when, reps in found:
                if test is None or test(event):
                    if when is not None:
                        if when_time is None:
                            when_time = stamp(event)
                        if not when(when_time):
                            continue
                    rule_hits[rule_index] += 1
                    if not hit:
                        hit = reps
                    elif hit != reps:
                        hit = set(hit).union(reps)
            if hit:
                t = when_time if when_time is not None else stamp(event)
                for j in hit:
                    selected[j].append(line)
                    times[j].append(t)

        if router.simple is not None:
            # One indexed top-level field, looked up inline: the loop is the program here, so
            # every bytecode counts. A value that is not a string finds nothing (the table's
            # keys are strings); an unhashable one (a list, an object) raises TypeError; a JSON
            # value that is not an object has no .get.
            key, table = router.simple
            for line in chunk.lines:
                try:
                    event = loads(line)
                    found = table.get(event.get(key))
                except decode_error:
                    bad.append(line)
                    continue
                except AttributeError:
                    bad.append(line)  # valid JSON, but not an object
                    continue
                except TypeError:
                    continue  # no rule is keyed by a list or an object
                if found is None:
                    continue
                if len(found) == 1 and found[0][2] is None:
                    # The usual case, inline: one candidate rule without a `when` window.
                    rule_index, test, _, reps = found[0]
                    if test is None or test(event):
                        rule_hits[rule_index] += 1
                        t = stamp(event)
                        for j in reps:
                            selected[j].append(line)
                            times[j].append(t)
                else:
                    pick(event, found, line)
        else:
            candidates = router.candidates
            for line in chunk.lines:
                try:
                    event = loads(line)
                except decode_error:
                    bad.append(line)
                    continue
                if type(event) is not dict:
                    bad.append(line)
                    continue
                routes = candidates(event)
                if routes:
                    pick(event, routes, line)
        self._account(tailer, tailed, chunk, selected, times, rule_hits, bad)

    def _account(
        self,
        tailer: SourceTailer,
        tailed: Tailed,
        chunk: Chunk,
        selected: list[list[bytes]],
        times: list[list[datetime]],
        rule_hits: list[int],
        bad: list[bytes],
    ) -> None:
        """Per-chunk bookkeeping: figures, problems and the stores' pending lines."""
        source = tailer.config.name
        path = display_path(tailed.state.path)
        reasons: list[tuple[str, int, str]] = []
        positions = Positions(chunk)
        for index, line in zip(_indexes(chunk.lines, bad), bad, strict=True):
            reason = TOO_LONG if index in chunk.long else classify(line)[0]
            reasons.append((reason, positions.at(index), sample(line)))
        reasons.extend((TOO_LONG, offset, "") for offset in chunk.too_long)
        for n, (reason, offset, text) in enumerate(reasons):
            if n < LOG_BAD_LINES:
                log.warning(
                    "line.skipped",
                    source=source,
                    path=path,
                    offset=offset,
                    reason=reason,
                    sample=text,
                )
        if len(reasons) > LOG_BAD_LINES:
            log.warning(
                "line.skipped_more", source=source, path=path, count=len(reasons) - LOG_BAD_LINES
            )
        read = len(chunk.lines) + len(chunk.too_long)
        # Worked out before any figure changes: the figures of a chunk are added whole or not at
        # all, so the checkpoint's figures always add up.
        hours = [
            hour_counts(times[j], report.timezone) if selected[j] else {}
            for j, report in enumerate(self.config.reports)
        ]
        for j, report in enumerate(self.config.reports):
            stats = self.checkpoint.reports[report.name].stats
            stats.read += read
            for reason, offset, text in reasons:
                stats.skipped[reason] = stats.skipped.get(reason, 0) + 1
                stats.add_problem(
                    {
                        "kind": "line",
                        "source": source,
                        "path": path,
                        "offset": offset,
                        "reason": reason,
                        "sample": text,
                    }
                )
            stats.note_read(tailed.key, tailed.state, chunk.start, chunk.end, read, len(reasons))
            lines = selected[j]
            if not lines:
                continue
            self.stores[report.name].accept(lines)
            stats.selected += len(lines)
            per_hour = stats.per_hour
            for (y, m, d, h), n in hours[j].items():
                # formatted once per hour, not per event
                key = f"{y:04d}-{m:02d}-{d:02d}T{h:02d}"
                per_hour[key] = per_hour.get(key, 0) + n
            for rule_index, hits in enumerate(rule_hits):
                if hits:
                    rule = self._rules[rule_index]
                    if rule.reports is None or report.name in rule.reports:
                        stats.per_rule[rule.name] = stats.per_rule.get(rule.name, 0) + hits

    def _note_losses(self, tailer: SourceTailer) -> None:
        """Bytes a truncation took unread become a problem of every report's period."""
        for loss in tailer.losses:
            path = display_path(loss["path"])
            if loss["bytes"]:
                kind = "source"  # a loss that was seen: the report is red
                text = f"source {loss['source']}: {loss['bytes']:,} bytes of {path} were lost: {loss['why']}"
            else:
                # Nobody can know what was written in the instant between copytruncate's copy and
                # its truncate: the agent only sees it when it happened to look in between. A
                # possible loss is said as one, amber, never as "none".
                kind = "possible_loss"
                text = f"source {loss['source']}: {path}: {loss['why']}"
            for rs in self.checkpoint.reports.values():
                rs.stats.lost_bytes += loss["bytes"]
                rs.stats.add_problem({"kind": kind, "text": text, "path": path})
        tailer.losses.clear()

    def _note_renames(self) -> None:
        """A file renamed since it was read (rename-and-create rotation): the receipts say so.

        Per scan, not per line: a scan is what finds a file under its new name.
        """
        for tailer in self.tailers:
            for tailed in tailer.files.values():
                for rs in self.checkpoint.reports.values():
                    rs.stats.note_name(tailed.key, tailed.state.path)

    def _note_source_trouble(self) -> None:
        """Record a source going missing or unreadable in each report's problems, once."""
        trouble: dict[str, str] = {}
        for tailer in self.tailers:
            name = tailer.config.name
            if tailer.missing:
                trouble[name] = f"source {name}: no file matches {tailer.config.path}"
            for path, error in tailer.unreadable.items():
                trouble[f"{name}:{path}"] = (
                    f"source {name}: cannot read {display_path(path)}: {error}"
                )
        for key, text in trouble.items():
            if self._source_trouble.get(key) != text:
                for rs in self.checkpoint.reports.values():
                    rs.stats.add_problem({"kind": "source", "text": text})
        self._source_trouble = trouble

    # ---- committing ------------------------------------------------------------------------

    def commit(self) -> None:
        """Outputs first (fsync), then the checkpoint that counts them (atomic rename).
        Raises WriteError: nothing is committed then, and what was read stays pending."""
        for report in self.config.reports:
            store = self.stores.get(report.name)
            if store is None:
                continue
            rs = self.checkpoint.reports[report.name]
            try:
                store.flush()
            except OSError as exc:
                self._store_failed(report, exc)
                raise write_error(exc) from exc
            self._store_ok(report)
            self._take_notices(store, rs.stats)
            rs.store_size = store.size
        for tailer in self.tailers:
            tailer.sync_states()
            self._note_losses(tailer)
        self.checkpoint.files = {k: v for tailer in self.tailers for k, v in tailer.known.items()}
        self.checkpoint.retired = [r.to_dict() for tailer in self.tailers for r in tailer.retired]
        save_checkpoint(self.config.state_dir, self.checkpoint)
        self._uncommitted = 0
        self._committed_at = time.monotonic()

    # ---- rotation --------------------------------------------------------------------------

    def period(self, report: ReportConfig) -> Period:
        start = _parse(self.checkpoint.reports[report.name].stats.start)
        return period_from(start, report.rotate_at, report.timezone)

    def next_rotation(self) -> datetime:
        return min(self.period(r).end for r in self.config.reports)

    def rotate_due(self) -> list[Rotation]:
        """Close every report's period that has ended (also periods missed while stopped)."""
        now = self.now()
        closed = []
        for report in self.config.reports:
            period = self.period(report)
            if now >= period.end:
                closed.append(self.rotate(report, period.end))
        return closed

    def marks(self) -> dict[str, int]:
        """How far every source file reaches now: a rotation asked for now closes its period
        after every line written before it (see `close_now`)."""
        self.rescan()  # a file made before the request but not noticed yet belongs to it too
        marks = {}
        for _, tailed in self._every_file():
            with contextlib.suppress(OSError):
                marks[tailed.key] = os.fstat(tailed.fd).st_size
        return marks

    def caught_up(self, marks: dict[str, int]) -> bool:
        """Every marked file still open is read up to its mark (a last line without its
        newline is not counted: it belongs to no period yet)."""
        files = {tailed.key: tailed for _, tailed in self._every_file()}
        return all(
            files[key].splitter.read_pos >= mark for key, mark in marks.items() if key in files
        )

    def close_now(self, reports: Sequence[ReportConfig]) -> Generator[None, None, list[Rotation]]:
        """Close the periods of `reports` after every line written before now, however far
        behind reading is: pumps until caught up, yielding between pumps (the service lets its
        other tasks run there; `rotate` without a service just goes on), then rotates.

        The one implementation of a forced rotation, with the service and without.
        """
        marks = self.marks()
        while not self.caught_up(marks):
            if not self.pump():
                break  # a file shrank or went: nothing more of it can be read
            yield
        return [self.rotate(report) for report in reports]

    def rotate(self, report: ReportConfig, at: datetime | None = None) -> Rotation:
        """Close the report's period at `at` (default now) and start the next one."""
        self.commit()
        now = self.now()
        rs = self.checkpoint.reports[report.name]
        start = _parse(rs.stats.start)
        end = at or now
        if end < start:
            # The clock stepped back past the period's start (an NTP correction, a restored VM):
            # the period ends where it began rather than before, and the next one starts after
            # it, so period starts (and with them report ids) only ever go forward.
            log.warning(
                "clock.behind_period",
                report=report.name,
                period_start=_iso(start),
                now=_iso(now),
                hint="the system clock is earlier than the period's start; was it stepped back?",
            )
            end = start
        day = start.astimezone(report.timezone).date()
        store = self.stores.get(report.name)
        size = store.size if store is not None else rs.store_size
        rs.rotating = rotation = Rotation(
            report=report.name,
            rotated=rotated_path(report, day),
            start=start,
            end=end,
            day=day,
            stats=rs.stats,
            size=size,
            outbox_id=self._fresh_id(report.name, start),
        )
        # The next period starts where this one ends; a period missed while the agent was down
        # is not reported twice: the new period is the one that contains now.
        next_start = max(
            end, period_of(now, report.rotate_at, report.timezone).start, start + _TICK
        )
        rs.stats = PeriodStats(start=_iso(next_start))
        # A source still missing or unreadable is a problem of the next period too.
        for text in self._source_trouble.values():
            rs.stats.add_problem({"kind": "source", "text": text})
        rs.store_size = 0
        try:
            save_checkpoint(self.config.state_dir, self.checkpoint)  # the intent is durable
        except BaseException:
            # Not durable, so not begun: a rotation must never go on from an intent that a
            # crash would forget (the store renamed, its events in no report).
            rs.rotating, rs.stats, rs.store_size = None, rotation.stats, size
            raise
        self._finish_rotation(report)
        return rotation

    def _fresh_id(self, report: str, start: datetime) -> str:
        """The period's report id, never one already known (queued, failed or delivered).

        Starts only go forward, so the id of a period is new by construction; this also holds
        when the state went back to the previous checkpoint, after a report was queued from
        the one that was lost.
        """
        base = candidate = report_id(report, start)
        n = 1
        taken = {c.outbox_id for c in self.checkpoint.closed}
        while candidate in taken or self.id_taken(candidate):
            n += 1
            candidate = f"{base}.{n}"
        if n > 1:
            log.warning("report.id_taken", report=report, id=base, using=candidate)
        return candidate

    def rotating(self, report: ReportConfig) -> bool:
        """Whether the report has a rotation whose intent is durable and that is not finished."""
        return self.checkpoint.reports[report.name].rotating is not None

    @property
    def requested(self) -> tuple[str, ...]:
        return tuple(self._requested)

    def request_rotation(self, report: str) -> None:
        """A forced rotation that failed (the state could not be written): done once it can."""
        if report not in self._requested:
            self._requested.append(report)

    def finish_rotations(self) -> list[Rotation]:
        """Finish rotations that a write error interrupted, then the ones asked for meanwhile
        (no line is read before they are)."""
        for report in self.config.reports:
            if self.checkpoint.reports[report.name].rotating is not None:
                self._finish_rotation(report)
        closed: list[Rotation] = []
        while self._requested:
            closed.append(self.rotate(self.config.report(self._requested[0])))
            del self._requested[0]
        return closed

    def _finish_rotation(self, report: ReportConfig) -> None:
        """Steps of a rotation after its intent was committed; each is safe to repeat."""
        rs = self.checkpoint.reports[report.name]
        rotation = rs.rotating
        assert rotation is not None
        store = self.stores.pop(report.name, None)
        if store is not None:
            store.close()
        try:
            rotate_store(report, rotation.rotated, rotation.size)
        except OSError as exc:
            # Tried again by the next pump; meanwhile the store is not written (reading waits).
            self.stores[report.name] = self.make_output(report, 0)
            raise write_error(exc) from exc
        self._open_store(report, 0)
        if rotation.stats.selected == 0 and not report.send_empty:
            log.info("report.skipped_empty", report=report.name, period=str(rotation.day))
            rotation.rotated.unlink(missing_ok=True)
        elif rotation.outbox_id not in {c.outbox_id for c in self.checkpoint.closed}:
            self.checkpoint.closed.append(rotation)
        rs.rotating = None
        save_checkpoint(self.config.state_dir, self.checkpoint)
        log.info(
            "period.closed",
            report=report.name,
            period=str(rotation.day),
            selected=rotation.stats.selected,
            file=str(rotation.rotated),
            id=rotation.outbox_id,
        )
        self.on_closed()

    # ---- reports of closed periods -----------------------------------------------------

    @property
    def closed(self) -> tuple[Rotation, ...]:
        """Periods closed whose report is not queued yet, oldest first."""
        return tuple(self.checkpoint.closed)

    def reported(self, outbox_id: str) -> None:
        """The closed period's report is queued: forget the period (committed)."""
        before = len(self.checkpoint.closed)
        self.checkpoint.closed = [c for c in self.checkpoint.closed if c.outbox_id != outbox_id]
        if len(self.checkpoint.closed) != before:
            self.commit()

    def report_failed(self, outbox_id: str, error: str) -> None:
        """Building the closed period's report failed: counted with the period (committed with
        the next commit), for status and the next report."""
        for closed in self.checkpoint.closed:
            if closed.outbox_id == outbox_id:
                closed.attempts += 1
                closed.error = error
