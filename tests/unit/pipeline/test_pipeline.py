"""The pipeline with real files and a clock the test sets: routing, commits, rotation, recovery."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import pytest
from mailview import bodies, parse
from pipeline_harness import ReportingPipeline

from agent.config.model import Config, ReportConfig, SmtpConfig, SourceConfig
from agent.pipeline import pipeline as pipeline_module
from agent.pipeline.checkpoint import load_checkpoint
from agent.pipeline.pipeline import Pipeline
from agent.rules.load import RuleBook

UTC_ZONE = ZoneInfo("UTC")


class Clock:
    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now.timestamp()

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


def make(
    tmp_path: Path,
    reports: list[ReportConfig] | None = None,
    sources: list[SourceConfig] | None = None,
) -> Config:
    (tmp_path / "rules.d").mkdir(exist_ok=True)
    (tmp_path / "logs").mkdir(exist_ok=True)
    return Config(
        path=tmp_path / "config.yaml",
        state_dir=tmp_path / "state",
        rules_dir=tmp_path / "rules.d",
        sources=tuple(
            sources or [SourceConfig("app", str(tmp_path / "logs" / "*.json"), "beginning", "ts")]
        ),
        reports=tuple(reports or [report(tmp_path, "daily")]),
        smtp=SmtpConfig(
            host="127.0.0.1", from_addr="tailmail@example.com", security="none", port=2525
        ),
    )


def report(tmp_path: Path, name: str, **kw: Any) -> ReportConfig:
    kw.setdefault("timezone", UTC_ZONE)
    return ReportConfig(
        name=name, store=tmp_path / "store" / f"{name}.jsonl", to=("ops@example.com",), **kw
    )


def open_pipeline(config: Config, clock: Clock) -> Pipeline:
    book = RuleBook(
        config.rules_dir, [s.name for s in config.sources], [r.name for r in config.reports]
    )
    assert book.reload() == []
    pipeline = ReportingPipeline(config, book, clock=clock)
    pipeline.open()
    return pipeline


def write(path: Path, *items: Any, raw: bytes = b"") -> list[bytes]:
    lines = [orjson.dumps(i) for i in items]
    with path.open("ab") as f:
        f.write(b"".join(line + b"\n" for line in lines) + raw)
    return lines


def drain(pipeline: Pipeline) -> None:
    pipeline.rescan()  # the service does this on inotify events
    while pipeline.pump():
        pass


@pytest.fixture
def clock() -> Clock:
    return Clock(datetime(2026, 11, 21, 10, 0, tzinfo=UTC))


def test_event_selected_by_several_rules_is_stored_once_per_report(
    tmp_path: Path, clock: Clock
) -> None:
    """Routing by sources/reports; an event stored once per report however many rules select it."""
    cfg = make(
        tmp_path,
        reports=[report(tmp_path, "ops"), report(tmp_path, "sec")],
        sources=[
            SourceConfig("app", str(tmp_path / "logs" / "app.json"), "beginning"),
            SourceConfig("web", str(tmp_path / "logs" / "web.json"), "beginning"),
        ],
    )
    (cfg.rules_dir / "errors.yaml").write_text("match:\n  level: error\n")
    (cfg.rules_dir / "logins.yaml").write_text(
        "reports: [sec]\nsources: [app]\nmatch:\n  event: {startswith: login.}\n"
    )
    app = write(
        tmp_path / "logs" / "app.json",
        {"level": "error", "event": "login.failed"},
        {"level": "info", "event": "login.ok"},
    )
    web = write(
        tmp_path / "logs" / "web.json",
        {"level": "error", "event": "login.failed"},
        {"level": "info"},
    )
    pipeline = open_pipeline(cfg, clock)
    drain(pipeline)
    ops = (tmp_path / "store" / "ops.jsonl").read_bytes().splitlines()
    sec = (tmp_path / "store" / "sec.jsonl").read_bytes().splitlines()
    assert sorted(ops) == sorted([app[0], web[0]])
    assert sorted(sec) == sorted([app[0], app[1], web[0]])
    stats = load_checkpoint(cfg.state_dir).reports
    assert stats["ops"].stats.per_rule == {"errors": 2}
    assert stats["sec"].stats.per_rule == {"errors": 2, "logins": 2}
    assert stats["sec"].stats.selected == 3
    assert stats["ops"].stats.read == 4
    pipeline.close()


def test_bad_lines_are_counted_with_reason_and_offset(tmp_path: Path, clock: Clock) -> None:
    """Malformed, non-object, invalid UTF-8, NUL, empty and over-long lines are counted and located."""
    cfg = make(
        tmp_path,
        sources=[SourceConfig("app", str(tmp_path / "logs" / "a.json"), "beginning", None, 64)],
    )
    (cfg.rules_dir / "all.yaml").write_text("match:\n  n: {exists: true}\n")
    good = orjson.dumps({"n": 1})
    raw = (
        b"{oops\n"
        + b"[1,2]\n"
        + b'{"s":"\xff"}\n'
        + b"\x00\x00\x00\n"
        + b"\n"
        + b'{"x":"'
        + b"y" * 100
        + b'"}\n'
        + good
        + b"\n"
    )
    (tmp_path / "logs" / "a.json").write_bytes(raw)
    pipeline = open_pipeline(cfg, clock)
    drain(pipeline)
    stats = load_checkpoint(cfg.state_dir).reports["daily"].stats
    assert stats.skipped == {
        "malformed JSON": 1, "not a JSON object": 1, "invalid UTF-8": 1, "NUL bytes": 1, "empty": 1, "line too long": 1,
    }  # fmt: skip
    offsets = {p["reason"]: p["offset"] for p in stats.problems}
    assert offsets["malformed JSON"] == 0
    assert offsets["not a JSON object"] == 6
    assert offsets["line too long"] == raw.index(b'{"x"')
    assert (tmp_path / "store" / "daily.jsonl").read_bytes() == good + b"\n"
    pipeline.close()


def test_scheduled_rotation_queues_one_report_and_starts_a_new_period(
    tmp_path: Path, clock: Clock
) -> None:
    """At rotate_at the store becomes the period's file, a report is queued, the next period starts empty."""
    cfg = make(tmp_path)
    (cfg.rules_dir / "all.yaml").write_text("match:\n  n: {exists: true}\n")
    lines = write(
        tmp_path / "logs" / "a.json",
        {"n": 1, "ts": "2026-11-21T09:30:00Z"},
        {"n": 2, "ts": "2026-11-21T09:45:00Z"},
    )
    pipeline = open_pipeline(cfg, clock)
    drain(pipeline)
    assert pipeline.rotate_due() == []
    assert pipeline.next_rotation() == datetime(2026, 11, 22, tzinfo=UTC)
    clock.now = datetime(2026, 11, 22, 0, 0, 1, tzinfo=UTC)
    [queued] = pipeline.rotate_due()
    assert queued.outbox_id == "daily-20261121T000000Z"
    rotated = tmp_path / "store" / "daily-2026-11-21.jsonl"
    assert rotated.read_bytes().splitlines() == lines
    assert (tmp_path / "store" / "daily.jsonl").read_bytes() == b""
    [entry] = pipeline.outbox.entries()
    assert entry.meta["rotated_file"] == str(rotated)
    state = load_checkpoint(cfg.state_dir).reports["daily"]
    assert state.rotating is None
    assert state.stats.start == "2026-11-22T00:00:00+00:00"
    assert state.stats.selected == 0
    assert pipeline.rotate_due() == []
    pipeline.close()


def test_rotation_missed_while_stopped_happens_at_start(tmp_path: Path, clock: Clock) -> None:
    """A period that ended while the agent was down is rotated once at start; the new period is today's."""
    cfg = make(tmp_path)
    (cfg.rules_dir / "all.yaml").write_text("match:\n  n: {exists: true}\n")
    write(tmp_path / "logs" / "a.json", {"n": 1})
    pipeline = open_pipeline(cfg, clock)
    drain(pipeline)
    pipeline.close()
    clock.now = datetime(2026, 11, 24, 8, 0, tzinfo=UTC)  # three days later
    pipeline = open_pipeline(cfg, clock)
    [queued] = pipeline.rotate_due()
    assert queued.day.isoformat() == "2026-11-21"
    state = load_checkpoint(cfg.state_dir).reports["daily"]
    assert state.stats.start == "2026-11-24T00:00:00+00:00"
    assert pipeline.rotate_due() == []
    pipeline.close()


def test_dst_day_period_is_25_hours(tmp_path: Path) -> None:
    """In Europe/Berlin the period of 2026-10-25 ends 25 hours after it starts, at local midnight."""
    berlin = ZoneInfo("Europe/Berlin")
    clock = Clock(datetime(2026, 10, 25, 12, 0, tzinfo=berlin).astimezone(UTC))
    cfg = make(tmp_path, reports=[report(tmp_path, "daily", timezone=berlin, rotate_at=time(0, 0))])
    pipeline = open_pipeline(cfg, clock)
    period = pipeline.period(cfg.reports[0])
    assert period.end - period.start == timedelta(hours=25)
    assert period.end.astimezone(berlin).hour == 0
    clock.now = period.end - timedelta(seconds=1)
    assert pipeline.rotate_due() == []
    clock.now = period.end
    assert len(pipeline.rotate_due()) == 1
    pipeline.close()


def test_crash_during_rotation_is_finished_at_start(
    tmp_path: Path, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash after the rotation's intent is committed leaves exactly one queued report with every line."""
    cfg = make(tmp_path)
    (cfg.rules_dir / "all.yaml").write_text("match:\n  n: {exists: true}\n")
    lines = write(tmp_path / "logs" / "a.json", *({"n": i} for i in range(50)))
    pipeline = open_pipeline(cfg, clock)
    drain(pipeline)

    class Crash(BaseException):
        pass

    def crash(self: Pipeline, report: ReportConfig) -> None:
        raise Crash

    with monkeypatch.context() as m:
        m.setattr(Pipeline, "_finish_rotation", crash)
        with pytest.raises(Crash):
            pipeline.rotate(cfg.reports[0])
    pipeline.close()
    assert load_checkpoint(cfg.state_dir).reports["daily"].rotating is not None
    again = open_pipeline(cfg, clock)
    [entry] = again.outbox.entries()
    rotated = Path(entry.meta["rotated_file"])
    assert rotated.read_bytes().splitlines() == lines
    assert (tmp_path / "store" / "daily.jsonl").read_bytes() == b""
    assert again.rotate_due() == []
    again.close()
    # Opening once more changes nothing: the rotation is finished for good.
    third = open_pipeline(cfg, clock)
    assert len(third.outbox.entries()) == 1
    third.close()


def test_uncommitted_store_tail_is_cut_and_stored_again_once(tmp_path: Path, clock: Clock) -> None:
    """Bytes in the store beyond the committed size (a run that died before its checkpoint) are cut on start."""
    cfg = make(tmp_path)
    (cfg.rules_dir / "all.yaml").write_text("match:\n  n: {exists: true}\n")
    lines = write(tmp_path / "logs" / "a.json", {"n": 1})
    pipeline = open_pipeline(cfg, clock)
    drain(pipeline)
    pipeline.close()
    store = tmp_path / "store" / "daily.jsonl"
    with store.open("ab") as f:
        f.write(b'{"n": 2}\n')  # as if stored but never committed
    lines += write(tmp_path / "logs" / "a.json", {"n": 2})
    pipeline = open_pipeline(cfg, clock)
    drain(pipeline)
    assert store.read_bytes().splitlines() == lines
    pipeline.close()


def test_catching_up_commits_in_batches_and_a_crash_in_between_redoes_the_lines_once(
    tmp_path: Path, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pump that stops short of the end writes the store but commits only every COMMIT_BYTES:
    a crash in between trims the store to the checkpoint and reads those lines again, once."""
    monkeypatch.setattr(pipeline_module, "COMMIT_BYTES", 1_500_000)  # between 1 and 2 reads
    monkeypatch.setattr(pipeline_module, "COMMIT_SECONDS", 3600.0)
    cfg = make(tmp_path)
    (cfg.rules_dir / "all.yaml").write_text("match:\n  n: {exists: true}\n")
    lines = write(tmp_path / "logs" / "a.json", *({"n": n, "pad": "x" * 90} for n in range(30_000)))
    store = tmp_path / "store" / "daily.jsonl"

    def committed() -> int:
        return load_checkpoint(cfg.state_dir).reports["daily"].store_size

    pipeline = open_pipeline(cfg, clock)
    pipeline.rescan()
    assert pipeline.pump(budget=1)  # one read of 1 MiB: written, not yet counted
    assert store.stat().st_size > 0 and committed() == 0
    assert pipeline.pump(budget=1)  # 2 reads: committed
    assert committed() == store.stat().st_size > 0
    assert pipeline.pump(budget=1)
    assert store.stat().st_size > committed()
    pipeline.close()  # a crash: no commit

    pipeline = open_pipeline(cfg, clock)
    assert store.stat().st_size == committed()  # the uncounted tail was cut
    drain(pipeline)
    assert store.read_bytes().splitlines() == lines
    assert committed() == store.stat().st_size  # the end of the file commits at once
    pipeline.close()


def test_empty_period_without_send_empty_queues_nothing(tmp_path: Path, clock: Clock) -> None:
    """With send_empty false, a period with no selected event sends no mail and leaves no file."""
    cfg = make(tmp_path, reports=[report(tmp_path, "daily", send_empty=False)])
    pipeline = open_pipeline(cfg, clock)
    assert pipeline.rotate(cfg.reports[0])
    assert pipeline.outbox.entries() == []
    assert list((tmp_path / "store").glob("daily-*")) == []
    pipeline.close()


def test_retention_never_deletes_the_file_of_an_unsent_report(tmp_path: Path, clock: Clock) -> None:
    """keep: 1 prunes old rotated files only once their reports have left the outbox."""
    cfg = make(tmp_path, reports=[report(tmp_path, "daily", keep=1)])
    (cfg.rules_dir / "all.yaml").write_text("match:\n  n: {exists: true}\n")
    pipeline = open_pipeline(cfg, clock)
    for i in range(3):
        write(tmp_path / "logs" / "a.json", {"n": i})
        drain(pipeline)
        pipeline.rotate(cfg.reports[0])
        clock.advance(minutes=1)
    assert len(list((tmp_path / "store").glob("daily-*"))) == 3
    for entry in pipeline.outbox.entries():
        pipeline.outbox.remove(entry)
    write(tmp_path / "logs" / "a.json", {"n": 9})
    drain(pipeline)
    pipeline.rotate(cfg.reports[0])
    remaining = list((tmp_path / "store").glob("daily-*"))
    assert len(remaining) == 1
    assert remaining[0].read_bytes() == b'{"n":9}\n'
    pipeline.close()


class Crash(BaseException):
    """Stands for kill -9 at one instruction: nothing after it in the run happens."""


def test_crash_at_any_step_of_a_rotation_leaves_exactly_one_report(
    tmp_path: Path, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Crash before each file-system step of a rotation in turn: after a restart there is exactly one
    queued report for the period, holding every line of it, and an empty store for the next."""
    import os

    steps = ("write", "fsync", "fdatasync", "replace", "truncate", "ftruncate", "unlink", "rename")
    k = 0
    while True:
        k += 1
        root = tmp_path / f"run{k}"
        root.mkdir()
        cfg = make(root)
        (cfg.rules_dir / "all.yaml").write_text("match:\n  n: {exists: true}\n")
        lines = write(root / "logs" / "a.json", *({"n": i} for i in range(20)))
        pipeline = open_pipeline(cfg, clock)
        drain(pipeline)
        calls = 0

        def counting(real, crash_at=k):  # type: ignore[no-untyped-def]
            def step(*args, **kwargs):  # type: ignore[no-untyped-def]
                nonlocal calls
                calls += 1
                if calls == crash_at:
                    raise Crash
                return real(*args, **kwargs)

            return step

        crashed = False
        with monkeypatch.context() as m:
            for name in steps:
                m.setattr(os, name, counting(getattr(os, name)))
            try:
                pipeline.rotate(cfg.reports[0])
            except Crash:
                crashed = True
        for tailer in pipeline.tailers:
            tailer.close()
        for store in pipeline.stores.values():
            store.close()
        again = open_pipeline(cfg, clock)
        if not again.outbox.entries():
            again.rotate(cfg.reports[0])  # the crash came before the rotation was decided
        entries = again.outbox.entries()
        assert len(entries) == 1, f"crash at step {k}: {len(entries)} reports queued"
        rotated = Path(entries[0].meta["rotated_file"])
        assert rotated.read_bytes().splitlines() == lines, f"crash at step {k}"
        assert (root / "store" / "daily.jsonl").read_bytes() == b"", f"crash at step {k}"
        assert sorted(p.name for p in (root / "store").iterdir()) == [
            "daily-2026-11-21.jsonl",
            "daily.jsonl",
        ]
        again.close()
        if not crashed:
            break
    print(f"a rotation took {k - 1} crashable steps; each was crashed once")
    assert k > 10, "the rotation has many steps; each was crashed at once"


def test_two_forced_rotations_within_a_second_queue_two_reports(
    tmp_path: Path, clock: Clock
) -> None:
    """Periods started less than a second apart still get distinct reports (ids carry microseconds)."""
    cfg = make(tmp_path)
    (cfg.rules_dir / "all.yaml").write_text("match:\n  n: {exists: true}\n")
    pipeline = open_pipeline(cfg, clock)
    firsts = []
    for i in range(3):
        write(tmp_path / "logs" / "a.json", {"n": i})
        drain(pipeline)
        firsts.append(pipeline.rotate(cfg.reports[0]))
        clock.advance(seconds=0.25)
    ids = [q.outbox_id for q in firsts]
    assert len(set(ids)) == 3, ids
    assert len(pipeline.outbox.entries()) == 3
    pipeline.close()


def test_a_source_still_missing_at_rotation_is_a_problem_of_the_next_period_too(
    tmp_path: Path, clock: Clock
) -> None:
    """A source that went missing yesterday and is still missing turns today's report red too."""
    cfg = make(tmp_path, sources=[SourceConfig("app", str(tmp_path / "logs" / "*.json"))])
    pipeline = open_pipeline(cfg, clock)
    clock.now = datetime(2026, 11, 22, 0, 0, 1, tzinfo=UTC)
    pipeline.rotate_due()
    clock.now = datetime(2026, 11, 23, 0, 0, 1, tzinfo=UTC)
    [queued] = pipeline.rotate_due()
    pipeline.close()
    [entry] = [e for e in pipeline.outbox.entries() if e.id == queued.outbox_id]
    msg = parse(entry.path.read_bytes())
    assert msg["X-Tailmail-Status"] == "red"
    text, _ = bodies(msg)
    assert f"no file matches {tmp_path}/logs/*.json" in " ".join(text.split())


def test_receipt_records_a_rename_found_by_a_scan_after_the_last_read(
    tmp_path: Path, clock: Clock
) -> None:
    """A file read to its end and then renamed (rename-and-create) is named under both names."""
    cfg = make(
        tmp_path, sources=[SourceConfig("app", str(tmp_path / "logs" / "a.json*"), "beginning")]
    )
    (cfg.rules_dir / "all.yaml").write_text("match:\n  n: {exists: true}\n")
    log = tmp_path / "logs" / "a.json"
    write(log, {"n": 1}, {"n": 2})
    pipeline = open_pipeline(cfg, clock)
    drain(pipeline)
    log.rename(log.with_name("a.json.1"))
    write(log, {"n": 3})
    drain(pipeline)
    files = pipeline.checkpoint.reports["daily"].stats.files
    pipeline.close()
    old, new = files.values()
    assert old["names"] == [str(log), str(log.with_name("a.json.1"))]
    assert old["renames"] == 1 and old["ranges"] == [[0, 16]]
    assert new["names"] == [str(log)] and new["ranges"] == [[0, 8]]
    assert old["ino"] != new["ino"]
    saved = load_checkpoint(cfg.state_dir).reports["daily"].stats.files
    assert list(saved.values()) == [old, new], "committed with the offsets"


def test_one_pump_reads_every_file_to_its_end_also_one_held_back_behind_another(
    tmp_path: Path, clock: Clock
) -> None:
    """A single pump (what `rotate` does before closing the period) stores every line there is:
    a new file waiting for the rest of the file it replaced is read in the same pump, after it."""
    cfg = make(
        tmp_path, sources=[SourceConfig("app", str(tmp_path / "logs" / "a.json*"), "beginning")]
    )
    (cfg.rules_dir / "all.yaml").write_text("match:\n  n: {exists: true}\n")
    log = tmp_path / "logs" / "a.json"
    first = write(log, {"n": 1})
    pipeline = open_pipeline(cfg, clock)
    drain(pipeline)
    rotated = log.with_name("a.json.1")
    log.rename(rotated)
    log.touch()
    pipeline.rescan()
    # More than one read (1 MiB): the old file is still being read when the new one is first
    # looked at, so the new one is held back, then read in a later round of the same pump.
    late = write(rotated, *({"n": 2, "pad": "x" * 100} for _ in range(12_000)))
    new = write(log, {"n": 3})
    pipeline.rescan()
    assert pipeline.pump()
    stored = cfg.reports[0].store.read_bytes().splitlines()
    pipeline.close()
    assert stored == first + late + new
