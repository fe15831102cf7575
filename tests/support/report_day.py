"""A generated day, run through the real pipeline: event log, rules, a rotation, the report email.

Deterministic (a seeded generator and a clock the caller sets), so the same call gives the same
report. The log has a day's rhythm (busy office hours, a quiet night), a rename-and-create
rotation at noon, and optionally a few broken lines; the rules use most operators and one has a
`when` window. `expected_*` recompute the figures from the attachment with plain Python, apart
from the agent's rule engine, which is what the tests compare the email with.

Run as a script, it renders the sample screenshot of the README (see `make report-sample`).
"""

from __future__ import annotations

import ipaddress
import os
import random
import shutil
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import orjson
from pipeline_harness import ReportingPipeline

from agent.config.model import Config, ReportConfig, SmtpConfig, SourceConfig
from agent.pipeline.pipeline import Pipeline
from agent.rules.load import RuleBook

BERLIN = ZoneInfo("Europe/Berlin")
DAY = datetime(2026, 11, 19, tzinfo=BERLIN)  # a Thursday
HOST_NETWORK = ipaddress.ip_network("10.0.0.0/8")
LOGS = "var/log/app"  # under the test's folder: the paths read like a server's

RULES = {
    "failed-logins.yaml": """\
name: failed-logins
description: Failed logins from outside our network
match:
  all:
    - event: {startswith: "login."}
    - level: {in: [error, warning]}
    - not:
        remote_ip: {cidr: 10.0.0.0/8}
""",
    "storage.yaml": """\
rules:
  - name: backup-failures
    description: Backups that did not finish
    match:
      event: backup.failed
  - name: big-deletes
    description: Deletions of more than 100 MB
    match:
      event: file.delete
      bytes: {gt: 100000000}
  - name: quota-exceeded
    description: Users over their quota
    match:
      event: quota.exceeded
""",
    "admin-at-night.yaml": """\
name: admin-at-night
description: Administrator logins outside office hours
match:
  event: admin.login
when:
  hours: "19:00-07:00"
  timezone: Europe/Berlin
""",
}

USERS = ["alice", "bob", "chloé", "dmitri", "eve", "farah", "günther", "hiro", "ines", "jonas"]
KINDS = [  # (event, level, weight)
    ("login.success", "info", 40), ("login.failed", "warning", 9), ("login.failed", "error", 3),
    ("file.upload", "info", 20), ("file.download", "info", 25), ("file.delete", "warning", 6),
    ("backup.finished", "info", 2), ("backup.failed", "error", 1), ("quota.exceeded", "warning", 2),
    ("admin.login", "info", 1),
]  # fmt: skip
# A share of the day's events per local hour: quiet at night, busy in office hours.
RHYTHM = [1, 1, 1, 1, 1, 2, 4, 8, 14, 16, 15, 14, 10, 14, 15, 14, 12, 8, 5, 4, 3, 2, 2, 1]


@dataclass(frozen=True)
class GeneratedDay:
    message: bytes  # the report email, as queued
    logs: dict[str, bytes]  # the source files at rotation: name -> content
    written: int  # lines written to the source, broken ones included
    config: Config


def config_for(tmp_path: Path, **report: Any) -> Config:
    (tmp_path / "rules.d").mkdir(parents=True, exist_ok=True)
    (tmp_path / LOGS).mkdir(parents=True, exist_ok=True)
    for name, text in RULES.items():
        (tmp_path / "rules.d" / name).write_text(text, encoding="utf-8")
    return Config(
        path=tmp_path / "config.yaml",
        state_dir=tmp_path / "state",
        rules_dir=tmp_path / "rules.d",
        sources=(SourceConfig("app", str(tmp_path / LOGS / "events.json*"), "beginning", "ts"),),
        reports=(
            ReportConfig(
                name="daily",
                store=tmp_path / "var/log/tailmail/daily.jsonl",
                to=("ops@example.com",),
                timezone=BERLIN,
                **report,
            ),
        ),
        smtp=SmtpConfig(host="127.0.0.1", from_addr="tailmail@example.com", security="none"),
    )


def events_of_day(count: int, seed: int) -> list[dict[str, Any]]:
    """`count` events of DAY in time order, with a day's rhythm."""
    rng = random.Random(seed)
    hours = rng.choices(range(24), weights=RHYTHM, k=count)
    times = sorted(
        DAY.replace(hour=h)
        + timedelta(seconds=rng.randrange(3600), milliseconds=rng.randrange(1000))
        for h in hours
    )
    kinds = [(e, lv) for e, lv, _ in KINDS]
    weights = [w for _, _, w in KINDS]
    events = []
    for at in times:
        kind, level = rng.choices(kinds, weights=weights)[0]
        inside = rng.random() < 0.6
        event: dict[str, Any] = {
            "ts": at.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": level,
            "event": kind,
            "user": {"name": rng.choice(USERS[:3] if kind == "login.failed" else USERS)},
            "remote_ip": (
                f"10.0.{rng.randrange(4)}.{rng.randrange(1, 255)}"
                if inside
                else f"203.0.113.{rng.choice([7, 7, 7, 23, 23, 61, rng.randrange(1, 255)])}"
            ),
        }
        if kind.startswith("file."):
            event["bytes"] = rng.choice([rng.randrange(1, 10**7), rng.randrange(10**8, 4 * 10**9)])
            event["path"] = (
                f"/srv/share/{rng.choice(['reports', 'photos', 'exports'])}/f{rng.randrange(99)}.bin"
            )
        if kind == "backup.failed":
            event["target"] = rng.choice(["nas-02", "nas-02", "offsite-1"])
            event["message"] = "no space left on device"
        events.append(event)
    return events


def generate_day(
    tmp_path: Path,
    *,
    count: int = 3000,
    seed: int = 2026,
    broken: int = 0,
    hostname: str = "files-01.example.com",
    rotation: str = "rename",
    **report: Any,
) -> GeneratedDay:
    """Write DAY's log (rotated at noon by `rename` and create, or by `copytruncate`), run the
    pipeline over it, rotate the report, return the email."""
    config = config_for(tmp_path, **report)
    events = events_of_day(count, seed)
    lines = [orjson.dumps(e) for e in events]
    for i in range(broken):  # as a crashed writer leaves them
        lines.insert((i + 1) * len(lines) // (broken + 1), b'{"ts": "2026-11-19T10:00:00Z", "lev')
    noon = next(
        i
        for i, e in enumerate(events)
        if e["ts"] >= DAY.replace(hour=12).astimezone(UTC).isoformat()[:19]
    )
    clock = _Clock(DAY + timedelta(seconds=30))
    book = RuleBook(config.rules_dir, ["app"], ["daily"])
    assert book.reload() == []
    pipeline = ReportingPipeline(config, book, clock=clock)
    outbox = pipeline.outbox
    pipeline.hostname = hostname  # not this machine's: the same report wherever it is built
    log = tmp_path / LOGS / "events.json"
    try:
        log.write_bytes(b"".join(line + b"\n" for line in lines[:noon]))
        pipeline.open()
        _drain(pipeline)
        if rotation == "rename":  # logrotate's create method
            log.rename(log.with_name("events.json.1"))
        else:  # logrotate's copytruncate
            shutil.copyfile(log, log.with_name("events.json.1"))
            os.truncate(log, 0)
        with log.open("ab") as fh:
            fh.write(b"".join(line + b"\n" for line in lines[noon:]))
        clock.now = DAY.replace(hour=12, minute=0, second=5)
        _drain(pipeline)
        clock.now = DAY + timedelta(days=1, seconds=2)
        [queued] = pipeline.rotate_due()
    finally:
        pipeline.close()
    [entry] = [e for e in outbox.entries() if e.id == queued.outbox_id]
    logs = {p.name: p.read_bytes() for p in sorted((tmp_path / LOGS).iterdir())}
    return GeneratedDay(entry.path.read_bytes(), logs, len(lines), config)


class _Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now.timestamp()


def _drain(pipeline: Pipeline) -> None:
    pipeline.rescan()
    while pipeline.pump():
        pass


# --- the figures, recomputed from the attachment without the agent's rules ------------------


def selected_by(event: dict[str, Any]) -> list[str]:
    """The rules of RULES that select `event`, written out in Python."""
    rules = []
    kind = event.get("event", "")
    if (
        kind.startswith("login.")
        and event.get("level") in ("error", "warning")
        and ipaddress.ip_address(event["remote_ip"]) not in HOST_NETWORK
    ):
        rules.append("failed-logins")
    if kind == "backup.failed":
        rules.append("backup-failures")
    if kind == "file.delete" and event.get("bytes", 0) > 100_000_000:
        rules.append("big-deletes")
    if kind == "quota.exceeded":
        rules.append("quota-exceeded")
    if kind == "admin.login":
        hour = local_time(event).time()
        if hour >= time(19) or hour < time(7):
            rules.append("admin-at-night")
    return rules


def local_time(event: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(event["ts"]).astimezone(BERLIN)


def expected_per_rule(lines: list[bytes]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for line in lines:
        for rule in selected_by(orjson.loads(line)):
            counts[rule] = counts.get(rule, 0) + 1
    return counts


def expected_per_hour(lines: list[bytes]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for line in lines:
        key = local_time(orjson.loads(line)).strftime("%Y-%m-%dT%H")
        counts[key] = counts.get(key, 0) + 1
    return counts


def main(out: Path) -> None:
    """Render the README's sample: a realistic day with two broken lines, as Chromium shows it."""
    import tempfile

    from mailview import bodies, parse
    from render import screenshot

    from agent.config.model import LogConfig
    from agent.service.log import setup

    setup(LogConfig(level="error", format="console"))
    with tempfile.TemporaryDirectory() as tmp:
        day = generate_day(Path(tmp), count=4000, broken=2)
        _, html = bodies(parse(day.message))
        page = Path(tmp) / "report.html"
        # The files were under the temporary folder; the picture shows them where a server has them.
        page.write_text(html.replace(tmp, ""), encoding="utf-8")
        print(f"HTML part: {len(html.encode()):,} bytes")
        screenshot(page, out, 720, 2800, trim=True)
    print(f"wrote {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("docs/report.png"))
