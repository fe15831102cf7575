"""`tailmail report preview`: the current period's report (or a sample file's) from the real
command, read-only, beside a running service, and with clear errors for bad input."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import orjson
from agent_proc import Agent, tailmail, wait_for, write_config
from mailview import attachments, bodies, cells, follows, parse
from pipeline_harness import ReportingPipeline
from test_cli import base_config

from agent.config.load import load_config
from agent.deliver import Outbox
from agent.pipeline.checkpoint import load_checkpoint
from agent.rules.load import RuleBook

EVENTS = [
    {"ts": "2026-11-19T09:15:00Z", "level": "error", "event": "backup.failed", "target": "nas-02"},
    {"ts": "2026-11-19T09:20:00Z", "level": "info", "event": "login.success"},
    {"ts": "2026-11-19T10:05:00Z", "level": "error", "event": "backup.failed", "target": "nas-02"},
    {"ts": "2026-11-19T14:00:00Z", "level": "error", "event": "disk.full", "target": "nas-01"},
]


def setup(tmp_path: Path) -> Path:
    """A config with two rules and a log of EVENTS plus one broken line."""
    cfg = base_config(tmp_path)
    cfg["reports"][0]["timezone"] = "UTC"
    config = write_config(tmp_path / "config.yaml", cfg)
    (tmp_path / "rules.d" / "errors.yaml").write_text(
        "description: Anything at level error\nmatch:\n  level: error\n"
    )
    (tmp_path / "rules.d" / "backups.yaml").write_text(
        "name: backup-failures\nmatch:\n  event: backup.failed\n"
    )
    lines = [orjson.dumps(e) for e in EVENTS]
    lines.insert(2, b'{"broken": ')
    (tmp_path / "logs" / "a.json").write_bytes(b"\n".join(lines) + b"\n")
    return config


def snapshot(*folders: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under `folders`, with its content and modification time."""
    return {
        str(p): (p.read_bytes(), p.stat().st_mtime_ns)
        for folder in folders
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def read_offline(config: Path) -> None:
    """What a service leaves behind: the log read, the period's figures committed, no rotation."""
    cfg = load_config(config)
    book = RuleBook(cfg.rules_dir, [s.name for s in cfg.sources], [r.name for r in cfg.reports])
    book.reload()
    pipeline = ReportingPipeline(cfg, book)
    try:
        pipeline.open()
        while pipeline.pump():
            pass
    finally:
        pipeline.close()


def test_preview_prints_the_current_period_and_writes_nothing(tmp_path: Path) -> None:
    """Without options it prints the plain-text report of the period so far; no file of the
    state or the store changes."""
    config = setup(tmp_path)
    read_offline(config)
    before = snapshot(tmp_path / "state", tmp_path / "store")
    result = tailmail("report", "preview", "-c", str(config))
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert text.startswith("tailmail report daily on ")
    assert "WARNING: 1 line skipped (malformed JSON 1)" in text
    assert "PREVIEW. The period so far" in text
    assert re.search(r"^Events read\s+5$", text, re.M)
    assert re.search(r"^Events selected\s+3$", text, re.M)
    assert re.search(r"^errors\s+3\s+#+\n    Anything at level error$", text, re.M)
    assert re.search(r"^backup-failures\s+2\s+#+$", text, re.M)
    assert "event = backup.failed (in 2 of 2 events)" in text
    store = (tmp_path / "store" / "daily.jsonl").read_bytes()
    assert hashlib.sha256(store).hexdigest() in text
    assert snapshot(tmp_path / "state", tmp_path / "store") == before


def test_preview_beside_a_running_service_neither_disturbs_nor_is_disturbed(
    tmp_path: Path,
) -> None:
    """While `tailmail run` works, the preview builds the HTML and the whole message of the
    committed period without the service's lock; the service keeps its lock and reads on, and the
    report of its next rotation is complete."""
    config = setup(tmp_path)
    agent = Agent(config, tmp_path).wait_ready()
    try:
        state_dir = tmp_path / "state"
        wait_for(lambda: _selected(state_dir) == 3, "the service to read the log")
        lock = (state_dir / "lock").read_text()
        html, eml = tmp_path / "preview.html", tmp_path / "preview.eml"
        result = tailmail(
            "report", "preview", "-c", str(config), "--out", str(html), "--eml", str(eml)
        )
        assert result.returncode == 0, result.stderr
        assert "report daily: AMBER: 1 line skipped" in result.stdout
        assert f"wrote {html} (" in result.stdout and f"wrote {eml} (" in result.stdout
        page = html.read_text()
        assert page.startswith("<!DOCTYPE html>")
        assert follows(cells(page), "5", "Events read", "3", "Events selected", "1")
        msg = parse(eml.read_bytes())
        [part] = attachments(msg)
        committed = load_checkpoint(state_dir).reports["daily"].store_size
        assert part.get_content() == (tmp_path / "store" / "daily.jsonl").read_bytes()[:committed]
        assert bodies(msg)[1] == page
        assert (state_dir / "lock").read_text() == lock, "the lock is the service's, untouched"
        with (tmp_path / "logs" / "a.json").open("ab") as fh:
            fh.write(orjson.dumps({"level": "error", "event": "late"}) + b"\n")
        wait_for(lambda: _selected(state_dir) == 4, "the service to read on")
        rotated = tailmail("rotate", "-c", str(config))
        assert rotated.returncode == 0, rotated.stderr
        assert "the running service delivers it now" in rotated.stdout
    finally:
        assert agent.stop() == 0, agent.log()
    [queued] = Outbox(state_dir / "outbox").entries() or Outbox(state_dir / "outbox").failed()
    assert parse(queued.path.read_bytes())["Subject"].startswith("[")
    text, _ = bodies(parse(queued.path.read_bytes()))
    assert re.search(r"^Events selected\s+4$", text, re.M)


def _selected(state_dir: Path) -> int:
    try:
        return load_checkpoint(state_dir).reports["daily"].stats.selected
    except (OSError, KeyError, ValueError):
        return -1


def test_preview_of_a_sample_file_needs_no_state(tmp_path: Path) -> None:
    """--sample FILE builds the report a period holding those lines would get, with the
    config's rules; the state directory is not even created."""
    config = setup(tmp_path)
    sample = tmp_path / "logs" / "a.json"
    html = tmp_path / "sample.html"
    result = tailmail(
        "report", "preview", "-c", str(config), "--sample", str(sample), "--out", str(html)
    )
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "state").exists()
    assert not (tmp_path / "store").exists()
    page = html.read_text()
    visible = cells(page)
    assert follows(visible, "5", "Events read", "3", "Events selected", "1")
    assert follows(visible, "backup-failures", "2")
    assert any(f"Built from the sample file {sample}" in c for c in visible)
    assert "2026-11-19 00:00 UTC to 2026-11-20 00:00 UTC (24 hours)" in page, "the sample's day"
    assert "subject: [" in result.stdout and "3 events selected on 2026-11-19" in result.stdout
    text = tailmail("report", "preview", "-c", str(config), "--sample", str(sample)).stdout
    assert re.search(r"^2026-11-19 09:00 UTC\s+1\s+#+$", text, re.M)
    flat = " ".join(text.split())
    assert f"app: {sample}" in flat and f"bytes 0 to {sample.stat().st_size:,}" in flat
    assert "no newline" not in flat
    with sample.open("ab") as fh:
        fh.write(b'{"level": "error", "event": "half written"}')
    text = tailmail("report", "preview", "-c", str(config), "--sample", str(sample)).stdout
    assert re.search(r"^Events selected\s+3$", text, re.M)
    assert "Its last line has no newline: it is not counted" in " ".join(text.split())


def test_preview_errors_are_clear_with_exit_codes(tmp_path: Path) -> None:
    """Bad config, missing sample, unknown report or source: exit 2 with what is wrong; no
    period yet: exit 1 with what to do instead."""
    config = setup(tmp_path)
    cases: list[tuple[list[str], int, str]] = [
        (["--sample", str(tmp_path / "nope.json")], 2, "nope.json: cannot read it: No such file"),
        (["--sample", str(tmp_path)], 2, "cannot read it"),
        (["--report", "weekly"], 2, "--report: no report named 'weekly'; reports: daily"),
        (["--source", "app"], 2, "--source goes with --sample"),
        (["--sample", str(config), "--source", "web"], 2, "no source named 'web'"),
        ([], 1, "has not run with it yet. Try --sample FILE"),
    ]
    for args, code, message in cases:
        result = tailmail("report", "preview", "-c", str(config), *args)
        assert (result.returncode, result.stdout) == (code, ""), (args, result.stderr)
        assert message in result.stderr, (args, result.stderr)
    bad = tmp_path / "bad.yaml"
    bad.write_text("state_dir: /tmp/x\nsources: oops\n")
    result = tailmail("report", "preview", "-c", str(bad), "--sample", str(config))
    assert result.returncode == 2
    assert f"{bad}:2:" in result.stderr


def test_preview_is_in_the_help(tmp_path: Path) -> None:
    """`tailmail --help` names `report preview`, and its own help lists its options."""
    top = tailmail("--help")
    assert re.search(r"report\s+report preview:", top.stdout)
    own = tailmail("report", "preview", "--help")
    assert own.returncode == 0
    for option in ("--out FILE.html", "--eml FILE.eml", "--sample FILE", "--report", "--source"):
        assert option in own.stdout
    bare = tailmail("report")
    assert bare.returncode == 2 and "preview" in bare.stderr
