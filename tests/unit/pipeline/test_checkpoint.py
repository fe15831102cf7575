"""Durable state: the checkpoint document and its atomic replacement."""

from __future__ import annotations

import os
from datetime import UTC, date, datetime
from pathlib import Path

import orjson
import pytest
from forked import limit_file_size, with_file_size_limit

from agent.core.figures import MAX_PROBLEMS, PeriodStats
from agent.core.fs import write_atomic
from agent.pipeline.checkpoint import (
    CHECKPOINT,
    Checkpoint,
    ReportState,
    Rotation,
    load_checkpoint,
    save_checkpoint,
)
from agent.tail.state import FileState


def sample_checkpoint() -> Checkpoint:
    stats = PeriodStats(
        start="2026-11-21T00:00:00+00:00",
        read=10,
        selected=3,
        skipped={"malformed JSON": 2},
        per_rule={"failed-logins": 3},
        per_hour={"2026-11-21T10": 3},
        problems=[{"kind": "line", "offset": 7, "text": "bad"}],
        files={"app:1:2": {"path": "/var/log/app/events.json", "lines": 10}},
    )
    rotation = Rotation(
        report="daily",
        rotated=Path("/var/log/tailmail/daily-2026-11-20.jsonl"),
        start=datetime(2026, 11, 20, tzinfo=UTC),
        end=datetime(2026, 11, 21, tzinfo=UTC),
        day=date(2026, 11, 20),
        stats=PeriodStats(start="2026-11-20T00:00:00+00:00", read=4),
        size=100,
        outbox_id="daily-20261120T000000Z",
    )
    return Checkpoint(
        files={
            "app:1:2": FileState(
                source="app",
                path="/var/log/app/events.json",
                dev=1,
                ino=2,
                fingerprint="ab" * 32,
                fp_len=256,
                offset=4096,
                skipping=True,
                successor="app:1:3",
            )
        },
        reports={
            "daily": ReportState(store_size=1234, stats=stats, rotating=rotation, last_sent="x")
        },
        started_before=True,
        closed=[rotation],
    )


def test_checkpoint_round_trips_through_its_bytes(tmp_path: Path) -> None:
    """Everything a checkpoint holds comes back equal after save and load."""
    checkpoint = sample_checkpoint()
    save_checkpoint(tmp_path, checkpoint)
    assert load_checkpoint(tmp_path) == checkpoint
    assert Checkpoint.from_bytes(checkpoint.to_bytes()) == checkpoint


def test_missing_checkpoint_is_a_first_start(tmp_path: Path) -> None:
    """No checkpoint file: an empty checkpoint that has not started before."""
    checkpoint = load_checkpoint(tmp_path)
    assert checkpoint == Checkpoint()
    assert not checkpoint.started_before


def test_checkpoint_without_optional_keys_loads_with_defaults(tmp_path: Path) -> None:
    """Keys added later (skipping, rotating, figures) default when an older document lacks them."""
    document = {
        "files": {
            "app:1:2": {
                "source": "app",
                "path": "/x",
                "dev": 1,
                "ino": 2,
                "fingerprint": "",
                "fp_len": 0,
                "offset": 5,
            }
        },
        "reports": {"daily": {"store_size": 0, "stats": {"start": "2026-11-21T00:00:00+00:00"}}},
    }
    (tmp_path / CHECKPOINT).write_bytes(orjson.dumps(document))
    checkpoint = load_checkpoint(tmp_path)
    assert not checkpoint.started_before
    assert not checkpoint.files["app:1:2"].skipping
    report = checkpoint.reports["daily"]
    assert report.rotating is None
    assert report.last_sent is None
    assert report.stats == PeriodStats(start="2026-11-21T00:00:00+00:00")


def test_write_atomic_replaces_the_content_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    """After write_atomic the file holds the new bytes and no temporary file is left beside it."""
    path = tmp_path / "checkpoint.json"
    path.write_bytes(b"old")
    write_atomic(path, b"new content")
    assert path.read_bytes() == b"new content"
    assert os.listdir(tmp_path) == ["checkpoint.json"]


def test_write_atomic_overwrites_a_stale_temporary_file(tmp_path: Path) -> None:
    """A temporary file left by a crash is overwritten whole, not appended to."""
    path = tmp_path / "checkpoint.json"
    (tmp_path / ".checkpoint.json.tmp").write_bytes(b"x" * 1000)
    write_atomic(path, b"short")
    assert path.read_bytes() == b"short"
    assert os.listdir(tmp_path) == ["checkpoint.json"]


def test_write_atomic_that_fails_leaves_the_old_content(tmp_path: Path) -> None:
    """A write that fails part-way (file size limit) leaves the old file whole and in place."""
    path = tmp_path / "checkpoint.json"
    write_atomic(path, b"old content")

    def body() -> None:
        limit_file_size(100)
        with pytest.raises(OSError):
            write_atomic(path, b"n" * 1000)
        assert path.read_bytes() == b"old content"

    with_file_size_limit(body)
    assert path.read_bytes() == b"old content"


def test_period_stats_keep_a_capped_number_of_problems() -> None:
    """Problem examples are capped; the counts stay complete."""
    stats = PeriodStats(start="2026-11-21T00:00:00+00:00", skipped={"a": 2, "b": 3})
    for i in range(MAX_PROBLEMS + 10):
        stats.add_problem({"n": i})
    assert len(stats.problems) == MAX_PROBLEMS
    assert stats.problems[-1] == {"n": MAX_PROBLEMS - 1}
    assert stats.skipped_total == 5


def file_state(path: str = "/var/log/app/events.json", fingerprint: str = "ab" * 32) -> FileState:
    return FileState("app", path, 2049, 77, fingerprint, 256, 0)


def test_note_read_keeps_identity_and_one_growing_range_per_file() -> None:
    """Reads that follow each other extend one byte range; identity and amounts are kept."""
    stats = PeriodStats(start="2026-11-21T00:00:00+00:00")
    state = file_state()
    stats.note_read("app:2049:77", state, 1000, 5000, 40, 0)
    stats.note_read("app:2049:77", state, 5000, 9000, 38, 2)
    stats.note_read("app:2049:77", state, 9000, 9000, 0, 0)  # only a partial line: nothing
    receipt = stats.files["app:2049:77"]
    assert receipt["ranges"] == [[1000, 9000]]
    assert (receipt["first_offset"], receipt["last_offset"]) == (1000, 9000)
    assert (receipt["bytes"], receipt["lines"], receipt["skipped"]) == (8000, 78, 2)
    assert (receipt["dev"], receipt["ino"], receipt["source"]) == (2049, 77, "app")
    assert receipt["fingerprint"] == "ab" * 8 and receipt["fp_len"] == 256
    assert receipt["truncations"] == 0 and receipt["names"] == ["/var/log/app/events.json"]


def test_note_read_opens_a_range_after_a_truncation_and_records_renames() -> None:
    """A read starting before the last one ended is a truncation; a new name is a rename."""
    stats = PeriodStats(start="2026-11-21T00:00:00+00:00")
    stats.note_read("k", file_state(), 0, 800, 8, 0)
    stats.note_read("k", file_state(fingerprint="cd" * 32), 0, 100, 1, 0)
    stats.note_read("k", file_state("/var/log/app/events.json.1"), 100, 300, 2, 0)
    receipt = stats.files["k"]
    assert receipt["ranges"] == [[0, 800], [0, 300]]
    assert receipt["truncations"] == 1
    assert receipt["names"] == ["/var/log/app/events.json", "/var/log/app/events.json.1"]
    assert receipt["path"] == "/var/log/app/events.json.1"
    assert receipt["bytes"] == 1100


def test_note_read_keeps_its_lists_bounded() -> None:
    """However often a file is truncated or renamed, the receipt keeps a few ranges and names."""
    stats = PeriodStats(start="2026-11-21T00:00:00+00:00")
    for i in range(100):
        stats.note_read("k", file_state(f"/log/{i}"), 0, 10 + i, 1, 0)
    receipt = stats.files["k"]
    assert len(receipt["ranges"]) == 8 and receipt["ranges"][-1] == [0, 109]
    assert receipt["ranges_dropped"] == 92
    assert receipt["truncations"] == 99
    assert receipt["names"] == ["/log/0", "/log/1", "/log/2", "/log/99"]
    assert len(orjson.dumps(stats.to_dict())) < 2000


def test_note_read_continues_a_receipt_written_by_an_older_version() -> None:
    """A receipt from before ranges were kept is extended from its first and last offsets."""
    stats = PeriodStats(start="2026-11-21T00:00:00+00:00")
    stats.files["k"] = {"source": "app", "path": "/log/a", "first_offset": 0, "last_offset": 50}
    stats.note_read("k", file_state("/log/a"), 50, 90, 1, 0)
    assert stats.files["k"]["ranges"] == [[0, 90]]
    assert stats.files["k"]["bytes"] == 90
