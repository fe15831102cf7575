"""Seeded generator of realistic JSON event logs, and the selection the bench filter expects.

The events look like a file-transfer / web server's audit log: nested objects, lists, numbers,
non-ASCII text, escaped quotes, a few lines written by a logger that escapes everything
(`\\u00e9`, even `login\\u002efailed`), and a few bad lines. About 290 bytes a line; the bench
filter (`level` in [error, warning] and `event` starting with `login.`) selects about 10 %.
The same seed always gives the same bytes, so runs and machines compare.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path

import orjson

VERSION = 1  # bump when the output changes, so cached files are remade

LEVELS = ["debug"] * 15 + ["info"] * 60 + ["warning"] * 15 + ["error"] * 10  # 25 % error|warning
LOGIN = ["login.success", "login.failed", "login.locked", "login.mfa_required", "login.expired"]
OTHER = [
    "file.upload",
    "file.download",
    "file.delete",
    "dir.list",
    "session.end",
    "backup.start",
    "backup.done",
    "api.request",
    "config.change",
    "user.login.audit",
    "logon.legacy",
]  # fmt: skip  -- the last two look like logins but do not start with "login."
SERVICES = ["sftp", "ftps", "https", "webdav", "backup", "api"]
USERS = ["alice", "bob", "chloé", "dmitri", "eve", "françois", "gülşen", "hiroshi", "ops-bot"]
GROUPS = ["staff", "admins", "partners", "backup", "finance", "外部"]
PATHS = ["/home/{u}/inbox/", "/srv/share/reports/", "/data/backup/", "/api/v2/items/"]
FILES = ["a.txt", 'Q3 "final".xlsx', "naïve.pdf"]  # quotes become \\" in the JSON
WORDS = [
    "transfer",
    "completed",
    "with",
    "checksum",
    "verified",
    "client",
    "requested",
    "resume",
    "from",
    "offset",
    "quota",
    "near",
    "limit",
    "for",
    "user",
    "password",
    "attempt",
    "rejected",
    "by",
    "policy",
    "Zürich",
    "München",
    "naïve",
    "café",
]


def _event(rng: random.Random, i: int) -> dict[str, object]:
    user = rng.choice(USERS)
    event = rng.choice(LOGIN) if rng.random() < 0.40 else rng.choice(OTHER)
    ms = i * 37 % 86_400_000
    ts = (
        f"2026-11-21T{ms // 3_600_000:02d}:{ms // 60_000 % 60:02d}:{ms // 1000 % 60:02d}"
        f".{ms % 1000:03d}Z"
    )
    words = " ".join(rng.choices(WORDS, k=rng.randrange(3, 9)))
    if rng.random() < 0.08:
        words += ' for file "' + rng.choice(FILES) + '"'
    ev: dict[str, object] = {
        "ts": ts,
        "level": rng.choice(LEVELS),
        "event": event,
        "service": rng.choice(SERVICES),
        "user": {"name": user, "id": rng.randrange(1000, 99999), "groups": rng.sample(GROUPS, 2)},
        "remote_ip": f"{rng.choice([10, 192, 203, 198])}.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}",
        "session": f"{rng.getrandbits(48):012x}",
        "msg": words,
    }
    if event.startswith("file") or event == "api.request":
        ev["request"] = {
            "path": rng.choice(PATHS).format(u=user) + f"{rng.getrandbits(24):06x}.dat",
            "bytes": rng.randrange(0, 10**9),
            "status": rng.choice([200, 200, 200, 201, 204, 403, 404, 500, 503]),
            "duration_ms": round(rng.random() * 900, 2),
        }
    else:
        ev["attempt"] = rng.randrange(1, 6)
        ev["mfa"] = rng.random() < 0.5
    return ev


def lines(count: int, seed: int) -> Iterator[bytes]:
    rng = random.Random(seed)
    for i in range(count):
        r = rng.random()
        if r < 0.0002:
            yield b'{"ts":"2026-11-21T00:00:00Z","level":"error","event":"login.failed","msg":"trunc'
            continue
        if r < 0.0003:
            yield b'["login.failed","error"]'
            continue
        if r < 0.0004:
            yield b""
            continue
        ev = _event(rng, i)
        if r < 0.03:
            # A logger that escapes all non-ASCII (Python's json default); now and then even
            # an ASCII character of the event name, which a careless pre-filter would miss.
            text = json.dumps(ev, separators=(",", ":"))
            if r < 0.0006:
                text = text.replace('"login.', '"login\\u002e')
            yield text.encode()
        else:
            yield orjson.dumps(ev)


def selected(line: bytes) -> bool:
    """The bench filter, written out plainly: the reference every output is checked against."""
    try:
        ev = orjson.loads(line)
    except orjson.JSONDecodeError:
        return False
    if type(ev) is not dict or ev.get("level") not in ("error", "warning"):
        return False
    name = ev.get("event")
    return type(name) is str and name.startswith("login.")


def ensure(directory: Path, count: int, seed: int = 1) -> tuple[Path, Path]:
    """The input file and its expected selection, made once and cached by size, seed, version."""
    directory.mkdir(parents=True, exist_ok=True)
    stem = f"events-{count}-s{seed}-v{VERSION}"
    source, expected = directory / f"{stem}.jsonl", directory / f"{stem}.expected"
    if source.exists() and expected.exists():
        return source, expected
    tmp_s, tmp_e = source.with_suffix(".tmp"), expected.with_suffix(".tmp2")
    with tmp_s.open("wb") as src, tmp_e.open("wb") as exp:
        batch: list[bytes] = []
        chosen: list[bytes] = []
        for line in lines(count, seed):
            batch.append(line)
            if selected(line):
                chosen.append(line)
            if len(batch) >= 10_000:
                src.write(b"\n".join(batch) + b"\n")
                if chosen:
                    exp.write(b"\n".join(chosen) + b"\n")
                batch.clear()
                chosen.clear()
        if batch:
            src.write(b"\n".join(batch) + b"\n")
        if chosen:
            exp.write(b"\n".join(chosen) + b"\n")
    tmp_s.rename(source)
    tmp_e.rename(expected)
    return source, expected


if __name__ == "__main__":
    import sys

    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    s, e = ensure(Path("bench/out/data"), n)
    size, chosen = s.stat().st_size, e.read_bytes().count(b"\n")
    print(f"{s}: {n:,} lines, {size / n:.0f} bytes/line, {chosen:,} selected ({chosen / n:.1%})")
