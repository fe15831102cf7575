"""A generated day through the real pipeline: the email's figures equal what its attachment holds,
the receipt proves the attachment whole, and Chromium renders the HTML with its status colour."""

from __future__ import annotations

import gzip
import hashlib
import re
import time
from pathlib import Path

import orjson
import pytest
from mailview import attached_content, attachments, bodies, cells, follows, hour_columns, parse
from pipeline_harness import ReportingPipeline
from render import read_png, screenshot
from report_day import (
    BERLIN,
    DAY,
    GeneratedDay,
    expected_per_hour,
    expected_per_rule,
    generate_day,
)
from test_report import FILE_RECEIPT, make_day

from agent.report.build import HTML_BUDGET, build_report

NL = b"\n"


@pytest.fixture(scope="module")
def day(tmp_path_factory: pytest.TempPathFactory) -> GeneratedDay:
    return generate_day(tmp_path_factory.mktemp("day"), broken=3)


def test_generated_day_is_a_real_day(day: GeneratedDay) -> None:
    """The fixture is what the tests need: every rule fires, every hour has events, a rotation."""
    lines = attached_content(parse(day.message)).splitlines()
    assert set(expected_per_rule(lines)) == {
        "failed-logins",
        "backup-failures",
        "big-deletes",
        "quota-exceeded",
        "admin-at-night",
    }
    assert len(expected_per_hour(lines)) >= 20
    assert set(day.logs) == {"events.json", "events.json.1"}


def test_counts_per_rule_in_both_parts_equal_the_attachment(day: GeneratedDay) -> None:
    """Each rule's figure, in the text and in the HTML, is the number of attached events that
    rule selects, recomputed from the attachment by plain Python."""
    msg = parse(day.message)
    lines = attached_content(msg).splitlines()
    text, html = bodies(msg)
    visible = cells(html)
    expected = expected_per_rule(lines)
    for rule, count in expected.items():
        assert re.search(rf"^{rule}\s+{count:,}\s+#+$", text, re.M), rule
        assert any(follows(visible, rule, d, f"{count:,}") for d in visible), rule
    shown = re.findall(
        r"^([a-z-]+)\s+([\d,]+)\s+#+$", text[: text.index("Selected per hour")], re.M
    )
    assert {rule: int(n.replace(",", "")) for rule, n in shown} == expected


def test_counts_per_hour_in_both_parts_equal_the_attachment(day: GeneratedDay) -> None:
    """Every hour's figure in the text, and every column of the HTML chart, is the number of
    attached events of that local hour."""
    msg = parse(day.message)
    lines = attached_content(msg).splitlines()
    text, html = bodies(msg)
    expected = expected_per_hour(lines)
    columns = hour_columns(html)
    assert [key for key, _, _ in columns] == [f"2026-11-19T{h:02d}" for h in range(24)]
    for hour, (key, count, label) in enumerate(columns):
        n = expected.get(key, 0)
        assert count == f"{n:,}"
        assert label == (str(n) if n else "")
        assert re.search(rf"^2026-11-19 {hour:02d}:00 CET\s+{n:,}\b", text, re.M), key
    assert sum(expected.values()) == len(lines)


def test_read_selected_skipped_equal_what_was_written_and_attached(day: GeneratedDay) -> None:
    """Events read = lines written, selected = attached lines, skipped = broken lines written."""
    msg = parse(day.message)
    attached = attached_content(msg).count(b"\n")
    text, html = bodies(msg)
    assert re.search(rf"^Events read\s+{day.written:,}$", text, re.M)
    assert re.search(rf"^Events selected\s+{attached:,}$", text, re.M)
    assert re.search(r"^Lines skipped\s+3$", text, re.M)
    assert follows(
        cells(html), f"{day.written:,}", "Events read", f"{attached:,}", "Events selected", "3"
    )
    assert msg["X-Tailmail-Status"] == "amber"
    assert msg["Subject"] == f"[files-01.example.com] {attached} events selected on 2026-11-19"


def test_top_values_equal_the_attachment(day: GeneratedDay) -> None:
    """The top remote_ip values of failed-logins are the attachment's, counted by hand."""
    msg = parse(day.message)
    events = [orjson.loads(line) for line in attached_content(msg).splitlines()]
    logins = [e["remote_ip"] for e in events if e["event"].startswith("login.")]
    text, _ = bodies(msg)
    block = text[text.index("failed-logins (") : text.index("big-deletes (")]
    shown = re.findall(r"^    (203\.0\.113\.\d+)\s+(\d+)\s+#+$", block, re.M)
    assert len(shown) == 5
    for ip, count in shown:
        assert logins.count(ip) == int(count)
    assert [int(c) for _, c in shown] == sorted(
        (logins.count(ip) for ip in set(logins)), reverse=True
    )[:5]


def test_receipt_sha256_and_line_count_match_the_attachment(day: GeneratedDay) -> None:
    """The receipt's SHA-256 and line count are those of the attached file, in both parts."""
    msg = parse(day.message)
    data = attached_content(msg)
    sha, lines = hashlib.sha256(data).hexdigest(), f"{data.count(NL):,}"
    text, html = bodies(msg)
    assert f"  Lines: {lines}\n" in text
    assert f"\n    {sha}\n" in text
    assert follows(cells(html), "Lines", lines, "SHA-256", sha)


def test_receipt_matches_after_gunzip_when_the_attachment_is_compressed(tmp_path: Path) -> None:
    """Over max_attachment_bytes the file is gzipped: `gunzip | sha256sum` gives the receipt's
    SHA-256, and the uncompressed line count is the receipt's."""
    day = generate_day(tmp_path, max_attachment_bytes=20_000)
    msg = parse(day.message)
    [part] = attachments(msg)
    assert part.get_content_type() == "application/gzip"
    assert part.get_filename() == "daily-2026-11-19.jsonl.gz"
    data = gzip.decompress(part.get_content())
    text, html = bodies(msg)
    for body in (text, html):
        assert hashlib.sha256(data).hexdigest() in body
        assert "gunzip -c daily-2026-11-19.jsonl.gz | sha256sum" in body
    assert f"  Lines: {data.count(NL):,}\n" in text
    assert len(part.get_content()) <= 20_000


def test_receipt_accounts_for_every_byte_of_both_source_files(day: GeneratedDay) -> None:
    """Each source file is listed by name with the range 0 to its size, in the order read; the
    renamed one says so, and the skipped lines per file add up."""
    text, html = bodies(parse(day.message))
    receipt = text[text.index("Completeness receipt") :]
    files = re.findall(
        r"^  app: (\S+)\n    device \d+:\d+, inode (\d+); fingerprint ([0-9a-f]{16}) .*?\n"
        r"    bytes 0 to ([\d,]+)\n    .*? in ([\d,]+) lines, (\d+) skipped$",
        receipt,
        re.M | re.S,
    )
    assert [Path(f[0]).name for f in files] == ["events.json.1", "events.json"]
    for path, _, fingerprint, end, lines, _ in files:
        content = day.logs[Path(path).name]
        assert int(end.replace(",", "")) == len(content)
        assert int(lines.replace(",", "")) == content.count(b"\n")
        assert hashlib.sha256(content[:256]).hexdigest().startswith(fingerprint)
    assert sum(int(f[5]) for f in files) == 3
    assert re.search(r"renamed: \S+/events\.json\s+->\s+\S+/events\.json\.1", receipt)
    assert "renamed:" in html


def test_next_period_continues_each_file_where_this_receipt_ended(tmp_path: Path) -> None:
    """The byte ranges of consecutive reports join: the next period of a file starts at the
    offset the previous report's range ended at."""
    day = generate_day(tmp_path, count=500)
    log = Path(day.config.sources[0].path).with_name("events.json")
    size = log.stat().st_size
    with log.open("ab") as fh:
        fh.write(orjson.dumps({"ts": "2026-11-20T08:00:00Z", "event": "backup.failed"}) + b"\n")
    from agent.rules.load import RuleBook

    clock_at = DAY.timestamp() + 86_400 + 3600
    book = RuleBook(day.config.rules_dir, ["app"], ["daily"])
    book.reload()
    pipeline = ReportingPipeline(day.config, book, clock=lambda: clock_at)
    outbox = pipeline.outbox
    try:
        pipeline.open()
        while pipeline.pump():
            pass
        queued = pipeline.rotate(day.config.reports[0])
    finally:
        pipeline.close()
    [entry] = [e for e in outbox.entries() if e.id == queued.outbox_id]
    text, _ = bodies(parse(entry.path.read_bytes()))
    first, _ = bodies(parse(day.message))
    assert re.search(rf"^    bytes 0 to {size:,}$", first, re.M)
    assert re.search(rf"^    bytes {size:,} to {log.stat().st_size:,}$", text, re.M)
    assert "events.json.1" not in text[text.index("Completeness receipt") :]


def test_html_of_a_realistic_day_is_small(day: GeneratedDay) -> None:
    """A realistic day's HTML part is well under the 100 KB that mail clients start clipping at."""
    _, html = bodies(parse(day.message))
    assert len(html.encode()) < 60_000 < HTML_BUDGET


# --- rendering ----------------------------------------------------------------------------------


def render(tmp_path: Path, raw: bytes, name: str, width: int = 720, height: int = 480) -> Path:
    _, html = bodies(parse(raw))
    page = tmp_path / f"{name}.html"
    page.write_text(html, encoding="utf-8")
    png = tmp_path / f"{name}.png"
    screenshot(page, png, width, height)
    return png


COLOURS = {"green": (0x1E, 0x7B, 0x34), "amber": (0xF2, 0xB6, 0x00), "red": (0xC6, 0x28, 0x28)}


@pytest.mark.parametrize(
    ("status", "changes"),
    [
        ("green", {}),
        ("amber", {"stats": {"skipped": {"malformed JSON": 3}}}),
        ("red", {"source_problems": ("source app: no file matches /var/log/app/*.json",)}),
    ],
)
def test_chromium_shows_the_status_bar_in_its_colour_at_the_top(
    tmp_path: Path, status: str, changes: dict[str, object]
) -> None:
    """Rendered by headless Chromium, the page is not blank and its first band is the status
    colour, full width of the card, above a white card: green, amber or red as the status is."""
    inp = make_day(tmp_path, **changes).inp
    started = time.monotonic()
    image = read_png(render(tmp_path, build_report(inp), status))
    elapsed = time.monotonic() - started
    colour = COLOURS[status]
    background = image.pixel(2, 2)
    assert background == (0xEE, 0xF0, 0xF3), "the page's background"
    # Down the middle column, the first thing under the page margin is the status bar.
    middle = image.width // 2
    top = next(y for y in range(image.height) if image.pixel(middle, y) != background)
    band = [y for y in range(top, top + 60) if _near(image.pixel(middle, y), colour)]
    assert len(band) >= 30, f"a status bar at least 30 px high in {colour} below y={top}"
    y = band[5]  # above the text line: the bar's own padding
    row = [image.pixel(x, y) for x in range(image.width)]
    coloured = [x for x, p in enumerate(row) if _near(p, colour)]
    assert coloured and coloured[-1] - coloured[0] >= 600, "across the whole card (640 px)"
    assert not any(
        _near(image.pixel(middle, y), colour) for y in range(band[-1] + 40, image.height)
    )
    # Not blank: the card below holds text (many dark pixels) on white.
    below = [
        image.pixel(x, y)
        for y in range(band[-1] + 10, image.height, 2)
        for x in range(0, image.width, 2)
    ]
    assert sum(1 for p in below if p == (255, 255, 255)) > len(below) // 4
    assert sum(1 for p in below if max(p) < 120) > 200, "text is drawn"
    assert elapsed < 60


def _near(pixel: tuple[int, int, int], colour: tuple[int, int, int]) -> bool:
    return all(abs(a - b) <= 6 for a, b in zip(pixel, colour, strict=True))


def test_chromium_draws_the_hour_chart_and_rule_bars(tmp_path: Path) -> None:
    """The bars are table cells: Chromium draws the busiest hour's column taller than a quiet
    hour's, in the chart's blue, and every rule bar in the rules' blue."""
    day = make_day(tmp_path, report={"timezone": BERLIN})
    png = render(tmp_path, build_report(day.inp), "chart", 720, 1400)
    image = read_png(png)
    rule_blue, hour_blue = (0x2F, 0x6D, 0xB5), (0x4F, 0x8F, 0xD6)
    rule_rows = {
        y
        for y in range(image.height)
        for x in range(0, image.width, 3)
        if _near(image.pixel(x, y), rule_blue)
    }
    assert rule_rows, "rule bars drawn"
    heights: dict[int, int] = {}
    for x in range(0, image.width):
        heights[x] = sum(1 for y in range(image.height) if _near(image.pixel(x, y), hour_blue))
    tallest = max(heights.values())
    per_hour = day.inp.stats.per_hour
    top = max(per_hour.values())
    assert 60 <= tallest <= 75, "the busiest hour is the chart's full height (72 px)"
    lowest = min(h for h in heights.values() if h)
    assert lowest <= tallest * (min(per_hour.values()) / top) + 3


def test_html_with_every_section_renders_within_the_card(tmp_path: Path) -> None:
    """A red day with every section filled renders: nothing is wider than the window (no
    horizontal overflow from long paths or values)."""
    day = make_day(
        tmp_path,
        stats={
            "skipped": {"malformed JSON": 2},
            "files": {"k": {**FILE_RECEIPT, "path": "/" + "p" * 300}},
        },
        source_problems=("source app: /" + "x" * 300 + " is missing",),
        notices=("source app: copytruncate " + "n" * 200,),
    )
    png = render(tmp_path, build_report(day.inp), "full", 720, 2600)
    image = read_png(png)
    background = image.pixel(2, 2)
    right_margin = [image.pixel(x, y) for y in range(0, image.height, 5) for x in range(700, 716)]
    assert all(p == background for p in right_margin), "the card stays 640 px wide"


def test_without_chromium_the_rendering_test_skips_but_fails_under_ci(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Chromium missing: a visible skip on a developer's machine, a failure when CI=true."""
    import render

    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(
        pytest.skip.Exception, match="chromium not found: install Debian's chromium"
    ):
        render.require_chromium()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(
        pytest.fail.Exception, match="chromium not found: install Debian's chromium"
    ):
        render.require_chromium()


def test_copytruncate_is_a_possible_loss_and_a_truncation_in_the_receipt(tmp_path: Path) -> None:
    """Rotated by copytruncate: the report says honestly that lines written between the copy
    and the truncate may be lost (amber: nobody can know), the receipt shows the file read
    again from 0 after its truncation, and the figures still equal the attachment."""
    day = generate_day(tmp_path, rotation="copytruncate")
    msg = parse(day.message)
    assert msg["X-Tailmail-Status"] == "amber"
    text, html = bodies(msg)
    flat = " ".join(text.split())
    assert (
        "1 truncation of a source file (copytruncate): lines written in the instant before may be lost"
        in flat
    )
    assert "Possible losses: - source app: " in flat and "saw none go but cannot know" in flat
    assert "Possible losses" in cells(html)
    receipt = flat[flat.index("Completeness receipt") :]
    size = len(day.logs["events.json.1"])
    assert (
        f"bytes 0 to {size:,} after the truncation, bytes 0 to {len(day.logs['events.json']):,}"
        in receipt
    )
    assert "truncated once" in receipt
    lines = attached_content(msg).splitlines()
    assert re.search(rf"^Events selected\s+{len(lines):,}$", text, re.M)
    renamed = generate_day(tmp_path / "renamed")  # the same day, the other rotation
    assert lines == attached_content(parse(renamed.message)).splitlines(), "none lost or twice"
