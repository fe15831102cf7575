"""Following source files: start positions, identity, truncation, rotation, missing files."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from forked import as_ordinary_user
from hypothesis import example, given, settings
from hypothesis import strategies as st

from agent.config.model import SourceConfig
from agent.pipeline.checkpoint import Checkpoint
from agent.tail.files import FP_BYTES, Retired, SourceTailer
from agent.tail.lines import Positions
from agent.tail.state import FileState


def make(
    tmp_path: Path,
    pattern: str = "events*.json",
    start_at: Literal["end", "beginning"] = "end",
    known: dict[str, FileState] | None = None,
    first_start: bool = True,
    max_line: int = 1 << 20,
) -> SourceTailer:
    config = SourceConfig(
        name="app", path=str(tmp_path / pattern), start_at=start_at, max_line_bytes=max_line
    )
    # Released files are let go at once here; the quiet time has a test of its own.
    return SourceTailer(config, dict(known or {}), first_start, release_quiet=0.0)


def drain(
    tailer: SourceTailer, limit: int = 1 << 20, scan: Callable[[], None] | None = None
) -> list[tuple[str, int, bytes]]:
    """Read every open file to its end, as the pipeline's pump does (in rounds, until none has
    more; a scan when a truncation asks for one): (file name, offset, line); sync the states."""
    got: list[tuple[str, int, bytes]] = []
    while True:
        progress = False
        for tailed in list(tailer.files.values()):
            while (chunk := tailer.read(tailed, limit)) is not None:
                positions = Positions(chunk)
                name = Path(tailed.state.path).name
                got.extend((name, positions.at(i), line) for i, line in enumerate(chunk.lines))
                progress = True
        if not progress:
            if not tailer.scan_wanted:
                break
            (scan or tailer.scan)()
    tailer.sync_states()
    return got


def drain_by_file(tailer: SourceTailer) -> dict[str, list[bytes]]:
    """`drain`, with the lines per file key (dev+inode)."""
    got: dict[str, list[bytes]] = {}
    while True:
        progress = False
        for key, tailed in list(tailer.files.items()):
            while (chunk := tailer.read(tailed)) is not None:
                got.setdefault(key, []).extend(chunk.lines)
                progress = True
        if not progress:
            if not tailer.scan_wanted:
                break
            tailer.scan()
    tailer.sync_states()
    return got


def lines_of(got: list[tuple[str, int, bytes]]) -> list[bytes]:
    return [line for _, _, line in got]


def restart(tailer: SourceTailer) -> SourceTailer:
    """Stop (checkpoint through its bytes, close) and start again with what was saved."""
    tailer.sync_states()
    retired = [r.to_dict() for r in tailer.retired]
    saved = Checkpoint(files=dict(tailer.known), started_before=True, retired=retired).to_bytes()
    tailer.close()
    loaded = Checkpoint.from_bytes(saved)
    return SourceTailer(
        tailer.config,
        loaded.files,
        first_start=False,
        retired=[Retired.from_dict(r) for r in loaded.retired],
        release_quiet=tailer.release_quiet,
    )


def append(path: Path, data: bytes) -> None:
    with path.open("ab") as f:
        f.write(data)


def key_of(path: Path) -> str:
    st = os.stat(path)
    return f"app:{st.st_dev}:{st.st_ino}"


def event(n: int, pad: int = 0) -> bytes:
    return b'{"n":%d,"pad":"%s"}\n' % (n, b"x" * pad)


# ---- where reading starts ----------------------------------------------------------------


def test_start_at_end_skips_existing_lines_and_reads_the_partial_last_one_whole(
    tmp_path: Path,
) -> None:
    """First start, start_at end: old lines are skipped; a line being written is read whole."""
    log = tmp_path / "events.json"
    log.write_bytes(b'{"old":1}\n{"old":2}\n{"part')
    tailer = make(tmp_path)
    tailer.scan()
    assert drain(tailer) == []
    append(log, b'ial":3}\n{"new":4}\n')
    assert drain(tailer) == [
        ("events.json", 20, b'{"partial":3}'),
        ("events.json", 34, b'{"new":4}'),
    ]


def test_start_at_end_without_any_newline_starts_at_zero(tmp_path: Path) -> None:
    """A file holding only an unfinished first line is read from 0 once that line ends."""
    log = tmp_path / "events.json"
    log.write_bytes(b'{"a":')
    tailer = make(tmp_path)
    tailer.scan()
    assert drain(tailer) == []
    append(log, b"1}\n")
    assert lines_of(drain(tailer)) == [b'{"a":1}']


def test_start_at_beginning_reads_existing_lines(tmp_path: Path) -> None:
    """First start, start_at beginning: the lines already in the file are read."""
    (tmp_path / "events.json").write_bytes(event(1) + event(2))
    tailer = make(tmp_path, start_at="beginning")
    tailer.scan()
    assert lines_of(drain(tailer)) == [event(1)[:-1], event(2)[:-1]]


def test_file_appearing_after_first_start_is_read_from_zero(tmp_path: Path) -> None:
    """start_at end applies only to files present at the first start; later ones start at 0."""
    (tmp_path / "events-a.json").write_bytes(event(1))
    tailer = make(tmp_path)
    tailer.scan()
    assert drain(tailer) == []
    (tmp_path / "events-b.json").write_bytes(event(2) + event(3))
    assert drain(tailer) == [], "a new file is not read before a scan finds it"
    tailer.scan()
    assert drain(tailer) == [
        ("events-b.json", 0, event(2)[:-1]),
        ("events-b.json", len(event(2)), event(3)[:-1]),
    ]


def test_source_missing_at_first_start_is_read_from_zero_when_it_appears(tmp_path: Path) -> None:
    """A source with no file is flagged missing; the file that appears later is read from 0."""
    tailer = make(tmp_path, pattern="events.json")
    tailer.scan()
    assert tailer.missing
    (tmp_path / "events.json").write_bytes(event(1))
    tailer.scan()
    assert not tailer.missing
    assert lines_of(drain(tailer)) == [event(1)[:-1]]


def test_glob_picks_up_new_files_at_each_scan(tmp_path: Path) -> None:
    """Each scan adds the files newly matching the glob, and only matching files."""
    tailer = make(tmp_path, start_at="beginning")
    tailer.scan()
    for n in range(3):
        (tmp_path / f"events-{n}.json").write_bytes(event(n))
        (tmp_path / f"other-{n}.log").write_bytes(b"not ours\n")
        tailer.scan()
        assert lines_of(drain(tailer)) == [event(n)[:-1]]
    assert sorted(Path(t.state.path).name for t in tailer.files.values()) == [
        "events-0.json",
        "events-1.json",
        "events-2.json",
    ]


# ---- identity ----------------------------------------------------------------------------


def test_same_inode_resumes_at_its_checkpointed_offset(tmp_path: Path) -> None:
    """After a restart, a known file continues where it was left: nothing lost, nothing twice."""
    log = tmp_path / "events.json"
    log.write_bytes(event(1) + event(2))
    tailer = make(tmp_path, start_at="beginning")
    tailer.scan()
    assert lines_of(drain(tailer)) == [event(1)[:-1], event(2)[:-1]]
    append(log, event(3)[:5])  # an unfinished line at the stop
    tailer = restart(tailer)
    append(log, event(3)[5:] + event(4))  # written while stopped
    tailer.scan()
    assert lines_of(drain(tailer)) == [event(3)[:-1], event(4)[:-1]]


def test_restart_inside_an_over_long_line_keeps_skipping_it(tmp_path: Path) -> None:
    """A checkpoint taken inside an over-long line resumes skipping it, without recounting."""
    log = tmp_path / "events.json"
    log.write_bytes(event(1) + b"z" * 100)
    tailer = make(tmp_path, start_at="beginning", max_line=50)
    tailer.scan()
    (tailed,) = tailer.files.values()
    chunk = tailer.read(tailed)
    assert chunk is not None
    assert chunk.too_long == [len(event(1))]
    tailer = restart(tailer)
    (state,) = tailer.known.values()
    assert state.skipping
    append(log, b"z" * 10 + b"\n" + event(2))
    tailer.scan()
    (tailed,) = tailer.files.values()
    chunks = []
    while (c := tailer.read(tailed)) is not None:
        chunks.append(c)
    assert [line for c in chunks for line in c.lines] == [event(2)[:-1]]
    assert [off for c in chunks for off in c.too_long] == []


def test_reused_inode_with_other_first_bytes_starts_at_zero(tmp_path: Path) -> None:
    """A checkpointed dev+inode now holding other content is a new file, read from 0."""
    old = tmp_path / "events.json"
    old.write_bytes(event(1, pad=300) + event(2, pad=300))
    tailer = make(tmp_path, start_at="beginning")
    tailer.scan()
    drain(tailer)
    tailer.sync_states()
    (state,) = tailer.known.values()
    tailer.close()
    old.unlink()
    new = tmp_path / "events.json"
    new.write_bytes(event(7) + event(8))
    # As if the filesystem had given the new file the old one's inode: same key, old fingerprint.
    st = os.stat(new)
    state.dev, state.ino = st.st_dev, st.st_ino
    assert state.offset > new.stat().st_size
    tailer = make(tmp_path, known={key_of(new): state}, first_start=False)
    tailer.scan()
    assert drain(tailer) == [
        ("events.json", 0, event(7)[:-1]),
        ("events.json", len(event(7)), event(8)[:-1]),
    ]


def test_reused_inode_with_other_content_and_larger_size_starts_at_zero(tmp_path: Path) -> None:
    """Inode reuse is caught by the fingerprint even when the new file is longer than the offset."""
    log = tmp_path / "events.json"
    log.write_bytes(event(1))
    tailer = make(tmp_path, start_at="beginning")
    tailer.scan()
    drain(tailer)
    (state,) = tailer.known.values()
    tailer.close()
    log.unlink()
    log.write_bytes(b"".join(event(n) for n in range(10, 20)))
    st = os.stat(log)
    state.dev, state.ino = st.st_dev, st.st_ino
    tailer = make(tmp_path, known={key_of(log): state}, first_start=False)
    tailer.scan()
    assert lines_of(drain(tailer)) == [event(n)[:-1] for n in range(10, 20)]


def test_short_file_fingerprint_settles_when_it_grows(tmp_path: Path) -> None:
    """A file shorter than the fingerprint is read; its fingerprint grows with it up to FP_BYTES."""
    log = tmp_path / "events.json"
    log.write_bytes(event(1))
    tailer = make(tmp_path, start_at="beginning")
    tailer.scan()
    assert lines_of(drain(tailer)) == [event(1)[:-1]]
    (state,) = tailer.known.values()
    assert state.fp_len == len(event(1))
    assert state.fingerprint == hashlib.sha256(event(1)).hexdigest()
    append(log, event(2, pad=FP_BYTES))
    assert lines_of(drain(tailer)) == [event(2, pad=FP_BYTES)[:-1]]
    assert state.fp_len == FP_BYTES
    assert state.fingerprint == hashlib.sha256(log.read_bytes()[:FP_BYTES]).hexdigest()
    # And the settled fingerprint still recognises the file after a restart.
    tailer = restart(tailer)
    append(log, event(3))
    tailer.scan()
    assert lines_of(drain(tailer)) == [event(3)[:-1]]


def test_file_rewritten_before_its_first_read_is_fingerprinted_as_read(tmp_path: Path) -> None:
    """Content replaced between open and first read: the checkpoint describes what was read."""
    log = tmp_path / "events.json"
    log.write_bytes(event(1))
    tailer = make(tmp_path, start_at="beginning")
    tailer.scan()
    with log.open("r+b") as f:  # same inode, same length, other bytes
        f.write(event(2))
    assert lines_of(drain(tailer)) == [event(2)[:-1]]
    tailer = restart(tailer)
    append(log, event(3))
    tailer.scan()
    assert lines_of(drain(tailer)) == [event(3)[:-1]]


def test_empty_file_at_first_start_is_read_when_written(tmp_path: Path) -> None:
    """An empty file (empty fingerprint) is followed; its first lines are read."""
    log = tmp_path / "events.json"
    log.write_bytes(b"")
    tailer = make(tmp_path)
    tailer.scan()
    assert drain(tailer) == []
    append(log, event(1))
    assert lines_of(drain(tailer)) == [event(1)[:-1]]


# ---- truncation --------------------------------------------------------------------------


def test_copytruncate_with_shorter_new_content_restarts_at_zero(tmp_path: Path) -> None:
    """Truncated to 0 and written again (less than before): the new lines are all read."""
    log = tmp_path / "events.json"
    log.write_bytes(b"".join(event(n, pad=20) for n in range(5)))
    tailer = make(tmp_path, start_at="beginning")
    tailer.scan()
    assert len(drain(tailer)) == 5
    os.truncate(log, 0)
    append(log, event(100) + event(101))
    assert drain(tailer) == [
        ("events.json", 0, event(100)[:-1]),
        ("events.json", len(event(100)), event(101)[:-1]),
    ]
    (tailed,) = tailer.files.values()
    assert tailed.truncations == 1


def test_copytruncate_with_longer_new_content_restarts_at_zero(tmp_path: Path) -> None:
    """Truncated and rewritten past the old offset before the next read: nothing is lost."""
    log = tmp_path / "events.json"
    log.write_bytes(event(1) + event(2))
    tailer = make(tmp_path, start_at="beginning")
    tailer.scan()
    assert len(drain(tailer)) == 2
    with log.open("r+b") as f:  # the writer keeps its descriptor (O_APPEND) across the truncate
        f.truncate(0)
    new = [event(n, pad=5) for n in range(100, 110)]
    append(log, b"".join(new))
    assert lines_of(drain(tailer)) == [line[:-1] for line in new]
    (tailed,) = tailer.files.values()
    assert tailed.truncations == 1


def test_truncation_while_stopped_restarts_at_zero(tmp_path: Path) -> None:
    """A known file found shorter than its offset after a restart is read from 0."""
    log = tmp_path / "events.json"
    log.write_bytes(b"".join(event(n, pad=400) for n in range(3)))
    tailer = make(tmp_path, start_at="beginning")
    tailer.scan()
    drain(tailer)
    tailer = restart(tailer)
    os.truncate(log, 0)
    append(log, event(9))
    tailer.scan()
    assert drain(tailer) == [("events.json", 0, event(9)[:-1])]


def test_copytruncate_copy_matching_the_glob_is_not_read_twice(tmp_path: Path) -> None:
    """copytruncate to a name the glob matches: the copy's lines are read once, new lines too."""
    log = tmp_path / "events.json"
    tailer = make(tmp_path, pattern="events.json*", start_at="beginning")
    log.write_bytes(event(1) + event(2))
    tailer.scan()
    assert lines_of(drain(tailer)) == [event(1)[:-1], event(2)[:-1]]
    append(log, event(3))  # written, not yet read when the copy is taken
    copy = tmp_path / "events.json.1"
    copy.write_bytes(log.read_bytes())
    tailer.scan()  # may run between the copy and the truncate
    os.truncate(log, 0)
    append(log, event(4))
    got = drain(tailer)
    tailer.scan()
    got += drain(tailer)
    assert sorted(lines_of(got)) == sorted([event(3)[:-1], event(4)[:-1]])


def test_copytruncate_while_stopped_copy_is_continued_not_reread(tmp_path: Path) -> None:
    """copytruncate while stopped: the copy continues at the old offset, the original from 0."""
    log = tmp_path / "events.json"
    log.write_bytes(event(1) + event(2))
    tailer = make(tmp_path, pattern="events*", start_at="beginning")
    tailer.scan()
    assert len(drain(tailer)) == 2
    tailer = restart(tailer)
    append(log, event(3))
    (tmp_path / "events.1").write_bytes(log.read_bytes())  # sorts before events.json
    os.truncate(log, 0)
    append(log, event(4))
    tailer.scan()
    assert sorted(lines_of(drain(tailer))) == sorted([event(3)[:-1], event(4)[:-1]])


def test_crash_between_seeing_a_truncation_and_finding_the_copy(tmp_path: Path) -> None:
    """The old position of a truncated file is checkpointed: a copy found after a restart
    continues there instead of being read from 0."""
    log = tmp_path / "events.json"
    tailer = make(tmp_path, pattern="events.json*", start_at="beginning")
    log.write_bytes(event(1) + event(2))
    tailer.scan()
    assert len(drain(tailer)) == 2
    append(log, event(3))
    copy_bytes = log.read_bytes()
    os.truncate(log, 0)  # seen before the copy is (the copy is written to a hidden name first)
    append(log, event(4))
    got = lines_of(drain(tailer))
    assert got == [event(4)[:-1]]
    tailer = restart(tailer)  # kill -9 here: only the checkpoint survives
    (tmp_path / "events.json.1").write_bytes(copy_bytes)
    tailer.scan()
    assert lines_of(drain(tailer)) == [event(3)[:-1]]


def test_bytes_written_between_copy_and_truncate_are_counted_as_lost(tmp_path: Path) -> None:
    """The original seen longer than its copy: the difference is reported lost, with the path."""
    log = tmp_path / "events.json"
    tailer = make(tmp_path, pattern="events.json*", start_at="beginning")
    log.write_bytes(event(1))
    tailer.scan()
    drain(tailer)
    copy_bytes = log.read_bytes()
    append(log, event(2))  # after the copy was taken
    assert drain(tailer) == [("events.json", len(event(1)), event(2)[:-1])]
    append(log, event(3))  # after the copy, and never read
    tailer.read(next(iter(tailer.files.values())), 1)  # a look at the size, reading one byte
    (tmp_path / "events.json.1").write_bytes(copy_bytes)
    os.truncate(log, 0)
    tailer.scan()
    drain(tailer)
    tailer.scan()
    # event(2) was read from the original before the truncate: stored, so not lost.
    assert [(x["path"], x["bytes"]) for x in tailer.losses] == [(str(log), len(event(3)))]


def test_truncated_file_without_a_matching_copy_reports_its_unread_bytes(tmp_path: Path) -> None:
    """A plain path (the copy does not match it): bytes seen but unread before a truncation are lost."""
    log = tmp_path / "events.json"
    tailer = make(tmp_path, pattern="events.json", start_at="beginning")
    log.write_bytes(event(1))
    tailer.scan()
    drain(tailer)
    append(log, event(2))
    tailer.read(next(iter(tailer.files.values())), 1)
    os.truncate(log, 0)
    append(log, event(3))
    assert lines_of(drain(tailer)) == [event(3)[:-1]]
    tailer.scan()
    tailer.scan()
    assert [x["bytes"] for x in tailer.losses] == [len(event(2))]


def test_compressed_rotations_matching_the_glob_are_not_read(tmp_path: Path) -> None:
    """`events.json.2.gz` matched by `events.json*` is skipped: compressed, and already read."""
    (tmp_path / "events.json").write_bytes(event(1))
    (tmp_path / "events.json.2.gz").write_bytes(b"\x1f\x8b" + b"\x00" * 20)
    tailer = make(tmp_path, pattern="events.json*", start_at="beginning")
    tailer.scan()
    assert [Path(t.state.path).name for t in tailer.files.values()] == ["events.json"]


def test_copy_scanned_while_being_written_waits_then_continues(tmp_path: Path) -> None:
    """A copy seen empty or half-written is not read from 0; after the truncate it continues."""
    log = tmp_path / "events.json"
    tailer = make(tmp_path, pattern="events.json*", start_at="beginning")
    lines = [event(n, pad=40) for n in range(10)]
    log.write_bytes(b"".join(lines[:6]))
    tailer.scan()
    assert len(drain(tailer)) == 6
    append(log, b"".join(lines[6:8]))
    content = log.read_bytes()
    copy = tmp_path / "events.json.1"
    copy.write_bytes(b"")
    tailer.scan()  # the 'created' event: the copy is still empty
    assert drain(tailer) == [
        ("events.json", len(b"".join(lines[:6])), lines[6][:-1]),
        ("events.json", len(b"".join(lines[:7])), lines[7][:-1]),
    ]
    append(copy, content[:100])
    assert drain(tailer) == [], "a half-written copy is not read"
    append(copy, content[100:])
    assert drain(tailer) == [], "a whole copy of a file being read is not read"
    append(log, lines[8])  # written after the copy, before the truncate: the documented loss
    os.truncate(log, 0)
    append(log, lines[9])
    assert lines_of(drain(tailer)) == [lines[9][:-1]]
    assert key_of(copy) in tailer.known


def test_copy_shorter_than_the_old_position_adds_nothing(tmp_path: Path) -> None:
    """Lines read from the original after the copy was taken are not read again from the copy."""
    log = tmp_path / "events.json"
    tailer = make(tmp_path, pattern="events.json*", start_at="beginning")
    log.write_bytes(event(1))
    tailer.scan()
    drain(tailer)
    (tmp_path / "events.json.1").write_bytes(log.read_bytes())
    tailer.scan()
    append(log, event(2))
    assert lines_of(drain(tailer)) == [event(2)[:-1]]
    os.truncate(log, 0)
    append(log, event(3))
    assert lines_of(drain(tailer)) == [event(3)[:-1]]
    tailer.scan()
    assert lines_of(drain(tailer)) == []


def test_plain_copy_of_a_live_file_is_never_read(tmp_path: Path) -> None:
    """A copy of a file being read (no truncate) is a duplicate: not read; released when gone."""
    log = tmp_path / "events.json"
    log.write_bytes(event(1, pad=FP_BYTES))
    tailer = make(tmp_path, pattern="events.json*", start_at="beginning")
    tailer.scan()
    drain(tailer)
    copy = tmp_path / "events.json.bak"
    copy.write_bytes(log.read_bytes())
    tailer.scan()
    append(log, event(2))
    assert lines_of(drain(tailer)) == [event(2)[:-1]]
    assert key_of(copy) not in tailer.known, "a waiting copy is not checkpointed"
    copy.unlink()
    tailer.scan()
    assert list(tailer.files) == [key_of(log)]


def test_new_file_sharing_a_first_line_is_read_once_it_differs(tmp_path: Path) -> None:
    """A new file that starts like a live one waits only until its bytes differ; nothing lost."""
    log_a = tmp_path / "events-a.json"
    log_a.write_bytes(b'{"event":"started"}\n' + event(1))
    tailer = make(tmp_path, start_at="beginning")
    tailer.scan()
    drain(tailer)
    log_b = tmp_path / "events-b.json"
    log_b.write_bytes(b'{"event":"started"}\n')
    tailer.scan()
    assert drain(tailer) == []
    append(log_b, event(2))
    assert drain(tailer) == [
        ("events-b.json", 0, b'{"event":"started"}'),
        ("events-b.json", 20, event(2)[:-1]),
    ]


def test_rename_and_create_empty_new_file_is_read_as_soon_as_written(tmp_path: Path) -> None:
    """The new, empty file of a rename+create is read once written, without waiting for a scan."""
    log = tmp_path / "events.json"
    log.write_bytes(event(1))
    tailer = make(tmp_path, pattern="events.json", start_at="beginning")
    tailer.scan()
    drain(tailer)
    log.rename(tmp_path / "events.json.1")
    log.write_bytes(b"")
    tailer.scan()
    assert drain(tailer) == []
    append(log, event(2))
    assert drain(tailer) == [("events.json", 0, event(2)[:-1])]


# ---- rotation and removal ----------------------------------------------------------------


def test_rename_and_create_reads_the_renamed_file_to_its_end(tmp_path: Path) -> None:
    """After rename+create the old file is still read (also lines appended after the rename)."""
    log = tmp_path / "events.json"
    log.write_bytes(event(1))
    tailer = make(tmp_path, pattern="events.json", start_at="beginning")
    tailer.scan()
    assert lines_of(drain(tailer)) == [event(1)[:-1]]
    old_key = key_of(log)
    with log.open("ab", buffering=0) as writer:
        writer.write(event(2))
        rotated = tmp_path / "events.json.1"
        log.rename(rotated)
        log.write_bytes(event(10))
        tailer.scan()
        new_key = key_of(log)
        writer.write(event(3))  # the old writer finishes its last lines in the renamed file
        got = drain_by_file(tailer)
    assert got == {old_key: [event(2)[:-1], event(3)[:-1]], new_key: [event(10)[:-1]]}
    # Released only after two scans at its end without growth; the new file stays.
    tailer.scan()
    assert set(tailer.files) == {old_key, new_key}
    tailer.scan()
    assert set(tailer.files) == {new_key}
    assert set(tailer.known) == {new_key}


def test_renamed_file_that_grows_is_not_released(tmp_path: Path) -> None:
    """A renamed file that keeps growing between scans is held open and read."""
    log = tmp_path / "events.json"
    log.write_bytes(event(1))
    tailer = make(tmp_path, pattern="events.json", start_at="beginning")
    tailer.scan()
    drain(tailer)
    rotated = tmp_path / "events.json.1"
    log.rename(rotated)
    for n in range(2, 6):
        tailer.scan()
        append(rotated, event(n))
        tailer.scan()
        assert lines_of(drain(tailer)) == [event(n)[:-1]]
    tailer.scan()
    tailer.scan()
    assert tailer.files == {}
    assert tailer.missing


def test_deleted_file_is_read_then_released(tmp_path: Path) -> None:
    """A deleted file is read to its end through the open descriptor, then let go."""
    log = tmp_path / "events.json"
    tailer = make(tmp_path, start_at="beginning")
    tailer.scan()
    log.write_bytes(event(1) + event(2))
    tailer.scan()
    log.unlink()
    tailer.scan()
    assert lines_of(drain(tailer)) == [event(1)[:-1], event(2)[:-1]]
    tailer.scan()
    tailer.scan()
    assert tailer.files == {}
    assert tailer.known == {}


def test_deleted_file_ending_in_an_unfinished_line_is_released(tmp_path: Path) -> None:
    """A deleted file whose last line never ends is still released, not held open for ever."""
    log = tmp_path / "events.json"
    tailer = make(tmp_path, start_at="beginning")
    tailer.scan()
    log.write_bytes(event(1) + b'{"cut')
    tailer.scan()
    log.unlink()
    assert lines_of(drain(tailer)) == [event(1)[:-1]]
    tailer.scan()
    tailer.scan()
    assert tailer.files == {}


def test_deleted_and_recreated_file_is_read_from_zero(tmp_path: Path) -> None:
    """A source deleted and created again: the new file's lines are all read, once."""
    log = tmp_path / "events.json"
    log.write_bytes(event(1))
    tailer = make(tmp_path, pattern="events.json", start_at="beginning")
    tailer.scan()
    drain(tailer)
    log.unlink()
    log.write_bytes(event(2) + event(3))
    tailer.scan()
    assert lines_of(drain(tailer)) == [event(2)[:-1], event(3)[:-1]]
    tailer.scan()
    tailer.scan()
    assert lines_of(drain(tailer)) == []
    assert list(tailer.known) == [key_of(log)]


# ---- trouble -----------------------------------------------------------------------------


def test_unreadable_file_is_flagged_and_its_position_kept(tmp_path: Path) -> None:
    """chmod 000 flags the file unreadable (not missing); once readable it resumes, not rereads."""

    def body() -> None:
        log = tmp_path / "events.json"
        log.write_bytes(event(1))
        tailer = make(tmp_path, start_at="beginning")
        tailer.scan()
        assert lines_of(drain(tailer)) == [event(1)[:-1]]
        tailer = restart(tailer)
        log.chmod(0)
        try:
            tailer.scan()
            assert list(tailer.unreadable) == [str(log)]
            assert not tailer.missing
            assert tailer.files == {}
            assert key_of(log) in tailer.known, "the checkpointed position is kept"
        finally:
            log.chmod(0o644)
        append(log, event(2))
        tailer.scan()
        assert tailer.unreadable == {}
        assert lines_of(drain(tailer)) == [event(2)[:-1]]

    as_ordinary_user(body)


def test_missing_source_is_flagged_and_cleared(tmp_path: Path) -> None:
    """No file for the source path: `missing`; a file appearing clears it."""
    tailer = make(tmp_path, pattern="events.json")
    tailer.scan()
    assert tailer.missing
    assert tailer.unreadable == {}
    (tmp_path / "events.json").write_bytes(b"")
    tailer.scan()
    assert not tailer.missing


def test_behind_counts_unread_bytes(tmp_path: Path) -> None:
    """`behind` is the bytes written past the committed offset."""
    log = tmp_path / "events.json"
    log.write_bytes(event(1))
    tailer = make(tmp_path, start_at="beginning")
    tailer.scan()
    (tailed,) = tailer.files.values()
    assert tailed.behind == len(event(1))
    drain(tailer)
    assert tailed.behind == 0


def test_small_reads_give_the_same_lines(tmp_path: Path) -> None:
    """Reading in tiny batches yields the same lines and offsets as one big read."""
    log = tmp_path / "events.json"
    log.write_bytes(b"".join(event(n, pad=n) for n in range(30)))
    big = make(tmp_path, start_at="beginning")
    big.scan()
    small = make(tmp_path, start_at="beginning")
    small.scan()
    assert drain(small, limit=7) == drain(big)


def test_watch_dirs_is_the_deepest_fixed_directory(tmp_path: Path) -> None:
    """A glob's watched directory is the deepest one without wildcards, recursive only when
    the wildcards are in directory names."""
    assert make(tmp_path, pattern="events*.json").watch_dirs() == {tmp_path: False}
    assert make(tmp_path, pattern="*/events.json").watch_dirs() == {tmp_path: True}


def test_watch_dirs_include_the_directories_symlinks_lead_to(tmp_path: Path) -> None:
    """A source file that is a symlink into another directory has that directory watched."""
    pods = tmp_path / "pods" / "app"
    pods.mkdir(parents=True)
    (pods / "0.log").write_bytes(event(1))
    (tmp_path / "events.json").symlink_to(pods / "0.log")
    tailer = make(tmp_path, pattern="events.json", start_at="beginning")
    tailer.scan()
    assert tailer.watch_dirs() == {tmp_path: False, pods: False}


def test_renamed_file_is_held_while_its_writer_may_still_write(tmp_path: Path) -> None:
    """Scans in a burst do not let go of a renamed file: it must also have been quiet a while."""
    log = tmp_path / "events.json"
    log.write_bytes(event(1))
    tailer = SourceTailer(
        SourceConfig(name="app", path=str(log), start_at="beginning"), {}, True, release_quiet=3600
    )
    tailer.scan()
    drain(tailer)
    log.rename(tmp_path / "events.json.1")
    for _ in range(5):
        tailer.scan()
    assert len(tailer.files) == 1
    append(tmp_path / "events.json.1", event(2))  # the application had not reopened yet
    assert lines_of(drain(tailer)) == [event(2)[:-1]]


# ---- a replaced file before its replacement ------------------------------------------------


def read_lines(tailer: SourceTailer, path: Path) -> list[bytes] | None:
    """One read of the file now at `path`: its lines, or None (nothing, or held back)."""
    chunk = tailer.read(tailer.files[key_of(path)])
    return None if chunk is None else chunk.lines


def test_new_file_after_a_rename_waits_for_the_rest_of_the_old_one(tmp_path: Path) -> None:
    """rename+create while running: the new file is read only once the old one is read as far
    as its writer got before writing to the new one."""
    log = tmp_path / "events.json"
    log.write_bytes(event(1))
    tailer = make(tmp_path, pattern="events.json*", start_at="beginning")
    tailer.scan()
    drain(tailer)
    rotated = tmp_path / "events.json.1"
    log.rename(rotated)
    log.write_bytes(b"")
    tailer.scan()
    append(rotated, event(2))  # the writer has not reopened yet
    append(log, event(3))  # now it has
    assert read_lines(tailer, log) is None, "the old file's last line comes first"
    assert read_lines(tailer, rotated) == [event(2)[:-1]]
    assert read_lines(tailer, log) == [event(3)[:-1]]
    append(rotated, event(4))  # another process still writing there: no order to keep
    append(log, event(5))
    assert read_lines(tailer, log) == [event(5)[:-1]], "not held back for ever"
    assert read_lines(tailer, rotated) == [event(4)[:-1]]


def test_rename_while_stopped_new_file_waits_for_the_old_one(tmp_path: Path) -> None:
    """Renamed while the agent was down: the new file at the checkpoint's path is read after
    the rest of the old one, though it sorts first."""
    log = tmp_path / "events.json"
    log.write_bytes(event(1))
    tailer = make(tmp_path, pattern="events.json*", start_at="beginning")
    tailer.scan()
    drain(tailer)
    tailer = restart(tailer)
    append(log, event(2))
    log.rename(tmp_path / "events.json.1")
    log.write_bytes(event(3))
    tailer.scan()
    assert list(tailer.files) == [key_of(log), key_of(tmp_path / "events.json.1")]
    assert lines_of(drain(tailer)) == [event(2)[:-1], event(3)[:-1]]


def test_link_to_the_old_file_survives_a_restart(tmp_path: Path) -> None:
    """The new, still empty file seen before a kill -9 is not checkpointed, but its link is:
    after the restart it still waits for the old file."""
    log = tmp_path / "events.json"
    log.write_bytes(event(1))
    tailer = make(tmp_path, pattern="events.json*", start_at="beginning")
    tailer.scan()
    drain(tailer)
    rotated = tmp_path / "events.json.1"
    log.rename(rotated)
    log.write_bytes(b"")
    tailer.scan()
    assert key_of(log) not in tailer.known
    tailer = restart(tailer)
    append(rotated, event(2))
    append(log, event(3))
    tailer.scan()
    assert read_lines(tailer, log) is None
    assert lines_of(drain(tailer)) == [event(2)[:-1], event(3)[:-1]]


def test_copytruncate_original_waits_for_the_rest_of_its_copy(tmp_path: Path) -> None:
    """copytruncate while running: the original's new lines come after the lines the copy
    continues, even when the original is read first."""
    log = tmp_path / "events.json"
    log.write_bytes(event(1, pad=FP_BYTES))
    tailer = make(tmp_path, pattern="events.json*", start_at="beginning")
    tailer.scan()
    drain(tailer)
    append(log, event(2))  # not read before the copy is taken
    copy = tmp_path / "events.json.1"
    copy.write_bytes(log.read_bytes())
    tailer.scan()  # the copy waits: it starts like the file being read
    os.truncate(log, 0)
    append(log, event(3))
    assert read_lines(tailer, log) is None, "truncated: the copy is looked for first"
    assert tailer.scan_wanted
    tailer.scan()
    assert read_lines(tailer, log) is None, "the copy's rest comes first"
    assert lines_of(drain(tailer)) == [event(2)[:-1], event(3)[:-1]]


def test_copytruncate_while_stopped_original_waits_for_its_copy(tmp_path: Path) -> None:
    """copytruncate while the agent was down: the copy's rest, then the original's new lines."""
    log = tmp_path / "events.json"
    log.write_bytes(event(1, pad=FP_BYTES))
    tailer = make(tmp_path, pattern="events.json*", start_at="beginning")
    tailer.scan()
    drain(tailer)
    tailer = restart(tailer)
    append(log, event(2))
    (tmp_path / "events.json.1").write_bytes(log.read_bytes())
    os.truncate(log, 0)
    append(log, event(3))
    tailer.scan()
    assert lines_of(drain(tailer)) == [event(2)[:-1], event(3)[:-1]]


def test_truncation_without_a_copy_holds_the_new_content_for_one_scan_only(
    tmp_path: Path,
) -> None:
    """A truncated file whose copy the path does not match is read after the one scan that
    looks for the copy, which is asked for at once."""
    log = tmp_path / "events.json"
    log.write_bytes(event(1))
    tailer = make(tmp_path, pattern="events.json", start_at="beginning")
    tailer.scan()
    drain(tailer)
    os.truncate(log, 0)
    append(log, event(2))
    assert read_lines(tailer, log) is None
    assert tailer.scan_wanted
    tailer.scan()
    assert read_lines(tailer, log) == [event(2)[:-1]]


def test_other_files_of_the_glob_are_not_held_back(tmp_path: Path) -> None:
    """Only a file's replacement waits for it: another file of the glob is read meanwhile."""
    log = tmp_path / "events.json"
    log.write_bytes(event(1))
    tailer = make(tmp_path, start_at="beginning")  # events*.json
    tailer.scan()
    drain(tailer)
    rotated = tmp_path / "events-old.json"
    log.rename(rotated)
    log.write_bytes(b"")
    other = tmp_path / "events-other.json"
    other.write_bytes(event(10))
    tailer.scan()
    append(rotated, event(2))
    append(log, event(3))
    assert read_lines(tailer, other) == [event(10)[:-1]]
    assert read_lines(tailer, log) is None


def test_files_naming_each_other_as_successor_are_both_read(tmp_path: Path) -> None:
    """Links that would make a loop (a checkpoint from reused inodes) are not followed: no file
    waits for ever."""
    a, b = tmp_path / "events-a.json", tmp_path / "events-b.json"
    a.write_bytes(event(1))
    b.write_bytes(event(2))
    tailer = make(tmp_path, start_at="beginning")
    tailer.scan()
    drain(tailer)
    tailer.known[key_of(a)].successor = key_of(b)
    tailer.known[key_of(b)].successor = key_of(a)
    tailer = restart(tailer)
    append(a, event(3))
    append(b, event(4))
    tailer.scan()
    assert sorted(lines_of(drain(tailer))) == sorted([event(3)[:-1], event(4)[:-1]])


# ---- exactly once through rotations and crashes --------------------------------------------

OPS = st.lists(
    st.one_of(
        st.tuples(st.just("write"), st.integers(1, 4), st.booleans()),
        st.tuples(st.just("write_old"), st.integers(1, 2), st.just(False)),
        st.sampled_from(["rename", "copytruncate", "scan", "read", "commit", "crash"]).map(
            lambda op: (op, 0, False)
        ),
    ),
    max_size=30,
)


class World:
    """A writer rotating `events.json` (matched with its rotations by `events.json*`) and an
    agent that commits what it read with its checkpoint, or dies and restarts from the last one.

    Besides the lines, it follows what the agent can know of the order of files: each content
    (`gen`) a line went to, which content replaced which by a rename, and which of those pairs
    the agent was in a position to link (the file it last saw at `events.json`, or the one its
    checkpoint has there, is the one the new file replaced). For those, every line written to
    the old file before the new one's first is stored before any line of the new one."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.log = root / "events.json"
        self.log.write_bytes(b"")
        self.rotations = 0
        self.next_line = 0
        self.partial = b""  # the rest of a line the writer has begun
        self.old: Path | None = None  # the latest renamed file, its writer still open
        self.written: list[bytes] = []
        self.stored: list[bytes] = []  # lines committed with a checkpoint
        self.read_since_commit: list[bytes] = []
        self.gen = 0  # the content `events.json` holds now
        self.old_gen = -1  # the content of `self.old`
        self.gens = 1
        self.gen_of: dict[bytes, int] = {}
        self.log_has_bytes = False  # the file now at events.json has had bytes (is settled)
        self.replaced: dict[int, int] = {}  # new content -> the content it replaced (rename)
        self.knows: int | None = None  # the content the agent last saw at events.json
        self.committed: int | None = None  # the one its checkpoint has there
        self.opened: set[int] = set()  # the contents the running agent has found
        self.linked: dict[int, int] = {}  # pairs the running agent could link, not committed
        self.ordered: set[tuple[int, int]] = set()  # pairs whose order is promised
        self.tailer: SourceTailer | None = make(root, pattern="events.json*", start_at="beginning")
        self.scan()
        self.saved = Checkpoint(files={}, started_before=True).to_bytes()

    def line(self, gen: int) -> bytes:
        self.next_line += 1
        text = b'{"n":%06d,"pad":"%s"}' % (self.next_line, b"p" * 90)
        self.written.append(text)
        self.gen_of[text] = gen
        return text + b"\n"

    def write(self, count: int, cut: bool) -> None:
        data = self.partial + b"".join(self.line(self.gen) for _ in range(count))
        self.partial = b""
        if cut:  # leave the last line unfinished for now
            data, self.partial = data[:-40], data[-40:]
        append(self.log, data)
        self.log_has_bytes |= bool(data)

    def write_old(self, count: int) -> None:
        if self.old is not None:
            append(self.old, b"".join(self.line(self.old_gen) for _ in range(count)))

    def rotated(self) -> Path:
        self.rotations += 1
        return self.root / f"events.json.{self.rotations}"

    def new_gen(self) -> int:
        self.gen, self.gens = self.gens, self.gens + 1
        return self.gen

    def scan(self) -> None:
        """A scan by the running agent: it finds what is at events.json now."""
        assert self.tailer is not None
        self.tailer.scan()
        gen = self.gen
        if gen not in self.opened:
            self.opened.add(gen)
            if self.replaced.get(gen, -1) == self.knows:
                self.linked[gen] = self.replaced[gen]
        self.knows = gen

    def running(self) -> SourceTailer:
        """The agent, started again from its last checkpoint if it was killed."""
        if self.tailer is None:
            saved = Checkpoint.from_bytes(self.saved)
            self.tailer = make(
                self.root, pattern="events.json*", known=saved.files, first_start=False
            )
            self.tailer.retired = [Retired.from_dict(r) for r in saved.retired]
            self.scan()
        return self.tailer

    def apply(self, op: str, count: int, cut: bool) -> None:
        if op == "write":
            self.write(count, cut)
        elif op == "write_old":
            self.write_old(count)
        elif op == "rename":
            self.write(0, False)  # the writer finishes its line before it reopens
            self.old = self.rotated()
            self.log.rename(self.old)
            self.log.write_bytes(b"")
            self.log_has_bytes = False
            self.old_gen = self.gen
            self.replaced[self.new_gen()] = self.old_gen
        elif op == "copytruncate":
            self.write(0, False)
            self.rotated().write_bytes(self.log.read_bytes())
            os.truncate(self.log, 0)
            self.new_gen()
        elif op == "scan":
            self.running()
            self.scan()
        elif op == "read":
            self.read_since_commit += lines_of(drain(self.running(), scan=self.scan))
        elif op == "commit":
            self.commit()
        elif op == "crash" and self.tailer is not None:
            # kill -9: what was read since the last commit is not stored; the files written and
            # rotated until the next scan, read or commit are so while the agent is down.
            self.read_since_commit = []
            self.tailer.close()
            self.tailer = None
            self.opened.clear()
            self.linked.clear()
            self.knows = self.committed

    def commit(self) -> None:
        """What the service does: rescan, read, store, then checkpoint."""
        tailer = self.running()
        self.scan()
        self.read_since_commit += lines_of(drain(tailer, scan=self.scan))
        self.stored += self.read_since_commit
        self.read_since_commit = []
        retired = [r.to_dict() for r in tailer.retired]
        saved = Checkpoint(files=dict(tailer.known), started_before=True, retired=retired)
        self.saved = saved.to_bytes()
        self.ordered |= {(old, new) for new, old in self.linked.items()}
        self.linked.clear()
        # An empty new file is not checkpointed (it may yet become a copy of another).
        self.committed = self.gen if self.log_has_bytes else None

    def check_order(self) -> None:
        """Each content's lines in the order written; the promised pairs of contents in order."""
        at = {line: i for i, line in enumerate(self.stored)}
        by_gen: dict[int, list[bytes]] = {}
        for line in self.written:
            by_gen.setdefault(self.gen_of[line], []).append(line)
        for gen, lines in by_gen.items():
            places = [at[line] for line in lines]
            assert places == sorted(places), f"the lines of content {gen} are out of order"
        for old, new in sorted(self.ordered):
            if new not in by_gen:
                continue
            first = self.written.index(by_gen[new][0])
            before = [x for x in self.written[:first] if self.gen_of[x] == old]
            start = min(at[line] for line in by_gen[new])
            late = [x for x in before if at[x] > start]
            assert not late, f"{len(late)} lines of content {old} stored after content {new}'s"


# Rotated while the agent was dead: at the restart the new file sorts first, the old one's rest
# must still come before it.
RENAMED_WHILE_DEAD = [
    ("write", 3, False), ("commit", 0, False), ("crash", 0, False), ("write", 2, True),
    ("rename", 0, False), ("write_old", 1, False), ("write", 2, False), ("read", 0, False),
]  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(ops=OPS)
@example(ops=RENAMED_WHILE_DEAD)
def test_every_line_is_stored_exactly_once_through_rotations_and_crashes(
    ops: list[tuple[str, int, bool]],
) -> None:
    """Writes, rename+create, copytruncate, reads and kill -9 in any order: each line once,
    each file's lines in order, and a renamed file's lines before its replacement's."""
    with tempfile.TemporaryDirectory() as tmp:
        world = World(Path(tmp))
        for op, count, cut in ops:
            world.apply(op, count, cut)
        world.write(0, False)
        for _ in range(3):
            world.commit()
        world.running().close()
        assert sorted(world.stored) == sorted(world.written)
        assert len(set(world.stored)) == len(world.stored)
        world.check_order()
