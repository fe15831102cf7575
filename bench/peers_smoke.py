"""Smoke test of bench/peers.py, run by hand: install the peers, run each over a generated log,
check its output line for line, print what it cost.

    .venv/bin/python bench/peers_smoke.py [LINES] [--edges]

Not part of pytest (it downloads from Debian and takes a minute). --edges also runs a few lines
on which JSON parsers disagree, and prints which of them each peer selects unlike orjson.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

import orjson
import peers

BENCH = Path(__file__).resolve().parent
LEVELS = ["debug", "info", "info", "info", "warning", "error"]
EVENTS = ["login.failed", "login.ok", "login.mfa", "file.upload", "file.delete", "http.request"]
CITIES = ["Zürich", "São Paulo", "Kraków", "東京", "Reykjavík ☃", "Montréal"]


def selected(line: bytes) -> bool:
    """The bench filter, in Python: the reference the peers are checked against."""
    try:
        event = orjson.loads(line)
    except orjson.JSONDecodeError:
        return False
    if not isinstance(event, dict):
        return False
    level, name = event.get("level"), event.get("event")
    return level in ("error", "warning") and isinstance(name, str) and name.startswith("login.")


def event_line(rng: random.Random, i: int) -> bytes:
    event = {
        "ts": f"2026-11-21T10:{i // 60000 % 60:02d}:{i // 1000 % 60:02d}.{i % 1000:03d}Z",
        "level": rng.choice(LEVELS),
        "event": rng.choice(EVENTS),
        "host": f"web-{rng.randrange(40):02d}.eu-central",
        "user": {"id": rng.randrange(10**6), "geo": {"city": rng.choice(CITIES)}},
        "req": {
            "method": "POST",
            "path": f"/api/v1/items/{rng.randrange(10**5)}",
            "ms": rng.random() * 900,
        },
        "msg": f'user said "hello {rng.randrange(1000)}" from {rng.choice(CITIES)}',
        "tags": rng.sample(["a", "b", "web", "auth", "edge"], 2),
    }
    return orjson.dumps(event) + b"\n"


def malformed_line(rng: random.Random, i: int) -> bytes:
    whole = event_line(rng, i)
    return rng.choice([whole[: len(whole) // 2] + b"\n", b"not json login.failed error\n"])


def generate(path: Path, lines: int) -> Path:
    """`lines` events (1 in 1,000 malformed) into `path`; the expected selection beside it."""
    rng = random.Random(5)
    expected = path.with_suffix(".expected")
    with path.open("wb") as out, expected.open("wb") as want:
        for i in range(lines):
            line = malformed_line(rng, i) if rng.random() < 0.001 else event_line(rng, i)
            out.write(line)
            if selected(line):
                want.write(line)
    return expected


EDGES = [
    b'{"level":"error","event":"login.tab","msg":"a\tb"}',  # raw control char: invalid JSON
    b'{"level":"error","event":"login.badutf8","msg":"\xff"}',  # invalid UTF-8
    b'{"level":"error","event":"login.surrogate","msg":"\\ud800"}',  # lone surrogate
    b'{"level":"error","event":"login.trailing"} junk',  # text after the object
    b'{"level":["error"],"event":"login.array"}',  # not a string
    b'{"level":"error","event":["login.x"]}',  # not a string
    b'{"level":"info","event":"login.dup","level":"error"}',  # duplicate key: the last wins
    b'  {"level":"error","event":"login.leading_space"}',
    b'{"level":"err\\u006fr","event":"login.e\\u0073caped"}',
    b'{"level":"error","event":"login.long","msg":"' + b"x" * 65000 + b'"}',
]


def main() -> None:
    lines = int(next((a for a in sys.argv[1:] if a.isdigit()), "200000"))
    out = BENCH / "out" / "peers-smoke"
    out.mkdir(parents=True, exist_ok=True)
    cache = BENCH / ".cache"
    installed = peers.install(cache)
    for peer in (installed.rsyslog, installed.syslog_ng):
        print(f"{peer.package} {peer.version}: {', '.join(peer.packages)}")
    inputs = [(out / "events.log", lines)]
    if "--edges" in sys.argv:
        edges = out / "edges.log"
        edges.write_bytes(b"".join(e + b"\n" for e in EDGES))
        inputs.append((edges, len(EDGES)))
    for path, count in inputs:
        if path.name == "edges.log":
            expected = path.with_suffix(".expected")
            expected.write_bytes(b"".join(e + b"\n" for e in EDGES if selected(e)))
        else:
            expected = generate(path, count)
        size = path.stat().st_size
        print(
            f"\n{path.name}: {count:,} lines, {size / 1e6:.1f} MB, {expected.stat().st_size:,} bytes expected"
        )
        for name in peers.PEER_NAMES:
            run = peers.run_peer(installed, name, path, out / name, expected.stat().st_size)
            check = peers.check_output(run.output, expected)
            print(
                f"  {name:16} {count / run.seconds:>10,.0f} events/s  {run.seconds:6.2f} s  "
                f"{run.cpu_seconds / count * 1e6:6.2f} CPU µs/event  "
                f"{run.peak_rss / 2**20:6.1f} MiB peak RSS  {check}"
            )
            if path.name == "edges.log":
                got = set(run.output.read_bytes().splitlines())
                for edge in EDGES:
                    if (edge in got) != selected(edge):
                        print(f"      {'selects' if edge in got else 'drops'} {edge[:60]!r}")


if __name__ == "__main__":
    main()
