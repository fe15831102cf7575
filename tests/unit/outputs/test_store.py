"""The report store: durable appends, trimming to the committed size, rotation names, retention."""

from __future__ import annotations

import gzip
import os
import resource
from datetime import date
from pathlib import Path

import pytest
from forked import limit_file_size, with_file_size_limit

from agent.config.model import ReportConfig
from agent.outputs.store import compress, open_store, prune, rotated_files, rotated_path

DAY = date(2026, 11, 21)


def report(tmp_path: Path, name: str = "daily", keep: int = 30) -> ReportConfig:
    return ReportConfig(
        name=name, store=tmp_path / f"{name}.jsonl", to=("ops@example.com",), keep=keep
    )


# ---- appending -------------------------------------------------------------------------------


def test_flush_appends_exactly_the_lines_and_their_newlines(tmp_path: Path) -> None:
    """flush writes each pending line followed by b"\\n", and the size counts those bytes."""
    config = report(tmp_path)
    store = open_store(config, None)
    try:
        assert store.size == 0
        store.accept([b'{"a":1}', b'{"b":2}\r'])
        assert config.store.read_bytes() == b"", "nothing is written before flush"
        store.flush()
        store.accept([b'{"c":3}'])
        store.flush()
        store.flush()  # nothing pending: nothing written
    finally:
        store.close()
    assert config.store.read_bytes() == b'{"a":1}\n{"b":2}\r\n{"c":3}\n'
    assert store.size == len(config.store.read_bytes())
    assert store.pending == []


def test_open_trims_bytes_beyond_the_committed_size(tmp_path: Path) -> None:
    """Bytes written after the last committed size (a run that died) are cut at open."""
    config = report(tmp_path)
    config.store.write_bytes(b'{"kept":1}\n{"uncommitted":2}\n')
    store = open_store(config, len(b'{"kept":1}\n'))
    try:
        assert store.size == len(b'{"kept":1}\n')
        store.accept([b'{"again":2}'])
        store.flush()
    finally:
        store.close()
    assert config.store.read_bytes() == b'{"kept":1}\n{"again":2}\n'


def test_open_without_a_committed_size_keeps_the_content(tmp_path: Path) -> None:
    """committed=None (a store never checkpointed) keeps what the file holds and appends."""
    config = report(tmp_path)
    config.store.write_bytes(b'{"old":1}\n')
    store = open_store(config, None)
    try:
        assert store.size == len(b'{"old":1}\n')
        store.accept([b'{"new":2}'])
        store.flush()
    finally:
        store.close()
    assert config.store.read_bytes() == b'{"old":1}\n{"new":2}\n'


def test_open_of_a_store_shorter_than_committed_counts_what_is_there(tmp_path: Path) -> None:
    """A store found shorter than committed is not padded: its size is what it holds."""
    config = report(tmp_path)
    config.store.write_bytes(b"{}\n")
    store = open_store(config, 100)
    store.close()
    assert store.size == 3
    assert config.store.read_bytes() == b"{}\n"


def test_open_creates_the_store_directory(tmp_path: Path) -> None:
    """A store whose directory does not exist yet gets it created."""
    config = ReportConfig(name="daily", store=tmp_path / "a" / "b" / "daily.jsonl", to=("x@y.z",))
    open_store(config, None).close()
    assert config.store.is_file()


def test_failed_flush_keeps_lines_pending_and_leaves_no_fragment(tmp_path: Path) -> None:
    """A write that fails part-way keeps the lines pending; the retry cuts the fragment first."""
    config = report(tmp_path)

    def body() -> None:
        store = open_store(config, None)
        try:
            store.accept([b'{"a":1}'])
            store.flush()
            store.accept([b'{"b":"' + b"x" * 100 + b'"}'])
            soft, hard = limit_file_size(store.size + 20)
            with pytest.raises(OSError):
                store.flush()
            resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
            assert len(store.pending) == 1
            assert store.size == len(b'{"a":1}\n')
            store.flush()
        finally:
            store.close()

    with_file_size_limit(body)
    assert config.store.read_bytes() == b'{"a":1}\n{"b":"' + b"x" * 100 + b'"}\n'


# ---- rotation names and retention ------------------------------------------------------------


def test_rotated_path_names_the_day_and_numbers_collisions(tmp_path: Path) -> None:
    """daily.jsonl -> daily-DAY.jsonl, then .2, .3; a compressed counterpart also counts."""
    config = report(tmp_path)
    first = rotated_path(config, DAY)
    assert first == tmp_path / "daily-2026-11-21.jsonl"
    first.write_bytes(b"")
    second = rotated_path(config, DAY)
    assert second == tmp_path / "daily-2026-11-21.2.jsonl"
    (tmp_path / "daily-2026-11-21.2.jsonl.gz").write_bytes(b"")
    assert rotated_path(config, DAY) == tmp_path / "daily-2026-11-21.3.jsonl"
    assert rotated_path(config, date(2026, 11, 22)) == tmp_path / "daily-2026-11-22.jsonl"


def test_rotated_path_counts_a_gz_of_the_first_name(tmp_path: Path) -> None:
    """Once the day's first file is compressed, a second rotation still gets .2."""
    config = report(tmp_path)
    (tmp_path / "daily-2026-11-21.jsonl.gz").write_bytes(b"")
    assert rotated_path(config, DAY) == tmp_path / "daily-2026-11-21.2.jsonl"


def make_rotated(config: ReportConfig, days: list[date]) -> list[Path]:
    paths = []
    for day in days:
        path = rotated_path(config, day)
        path.write_bytes(b"{}\n")
        paths.append(path)
    return paths


def test_rotated_files_are_newest_first_and_only_this_reports(tmp_path: Path) -> None:
    """Rotated files come newest period first; the store and other reports' files are not ours."""
    config = report(tmp_path)
    config.store.write_bytes(b"")
    old, new, again = make_rotated(
        config, [date(2026, 11, 20), date(2026, 11, 21), date(2026, 11, 21)]
    )
    old_gz = compress(old)  # compressing renews the mtime: the order must not change
    other = report(tmp_path, name="daily-security")
    other.store.write_bytes(b"live store of another report\n")
    make_rotated(other, [date(2026, 11, 19)])
    (tmp_path / "daily-notes.txt").write_bytes(b"")
    assert rotated_files(config) == [again, new, old_gz]
    assert rotated_files(other) == [tmp_path / "daily-security-2026-11-19.jsonl"]


def test_prune_keeps_the_newest_and_never_deletes_a_protected_file(tmp_path: Path) -> None:
    """prune removes files beyond `keep`, oldest first, but keeps every unsent (protected) one."""
    config = report(tmp_path, keep=2)
    paths = make_rotated(config, [date(2026, 11, d) for d in range(10, 16)])
    unsent_plain = paths[0]
    unsent_gz = compress(paths[1])
    removed = prune(config, {str(unsent_plain), str(paths[1])})
    assert sorted(removed) == sorted(paths[2:4])
    assert rotated_files(config) == [paths[5], paths[4], unsent_gz, unsent_plain]


def test_prune_with_keep_zero_keeps_only_protected(tmp_path: Path) -> None:
    """keep: 0 deletes every sent rotated file and still no unsent one."""
    config = report(tmp_path, keep=0)
    paths = make_rotated(config, [date(2026, 11, 10), date(2026, 11, 11)])
    assert prune(config, {str(paths[1])}) == [paths[0]]
    assert rotated_files(config) == [paths[1]]


def test_prune_leaves_another_reports_store_alone(tmp_path: Path) -> None:
    """A report whose name extends another's (daily, daily-security) never loses files to it."""
    config = report(tmp_path, keep=0)
    other = report(tmp_path, name="daily-security")
    other.store.write_bytes(b'{"live":1}\n')
    theirs = make_rotated(other, [date(2026, 11, 10)])
    ours = make_rotated(config, [date(2026, 11, 10)])
    assert prune(config, set()) == ours
    assert other.store.read_bytes() == b'{"live":1}\n'
    assert theirs[0].exists()


def test_prune_without_a_store_directory_does_nothing(tmp_path: Path) -> None:
    """A report whose directory does not exist has no rotated files and prunes nothing."""
    config = ReportConfig(name="daily", store=tmp_path / "none" / "daily.jsonl", to=("x@y.z",))
    assert rotated_files(config) == []
    assert prune(config, set()) == []


# ---- compression -----------------------------------------------------------------------------


def test_compress_writes_a_valid_gzip_and_removes_the_original(tmp_path: Path) -> None:
    """compress leaves only NAME.gz, a gzip stream of exactly the original bytes."""
    path = tmp_path / "daily-2026-11-21.jsonl"
    content = b"".join(b'{"n":%d}\r\n' % n for n in range(5000))
    path.write_bytes(content)
    target = compress(path)
    assert target == tmp_path / "daily-2026-11-21.jsonl.gz"
    assert not path.exists()
    assert gzip.decompress(target.read_bytes()) == content
    with gzip.open(target) as f:
        assert f.read() == content
    assert sorted(os.listdir(tmp_path)) == ["daily-2026-11-21.jsonl.gz"], "no temporary file left"


def test_compress_of_an_empty_file(tmp_path: Path) -> None:
    """An empty rotated file compresses to a valid, empty gzip stream."""
    path = tmp_path / "daily-2026-11-21.jsonl"
    path.write_bytes(b"")
    assert gzip.decompress(compress(path).read_bytes()) == b""


def test_rotated_path_never_reuses_a_number_that_pruning_freed(tmp_path: Path) -> None:
    """With .1 pruned and .2, .3 still there, the next name is .4: names sort in period order."""
    config = report(tmp_path)
    for name in ("daily-2026-11-21.2.jsonl", "daily-2026-11-21.3.jsonl.gz"):
        (tmp_path / name).write_bytes(b"")
    assert rotated_path(config, DAY) == tmp_path / "daily-2026-11-21.4.jsonl"
