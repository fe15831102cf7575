"""Rule sets of realistic variety for the many-rules scenario: 10, 100, 1,000 rules.

What operators write: rules on event names (equal, one of, starting with), on users, services,
paths and sessions, combined with levels, status codes, address ranges, regular expressions,
negations and time windows. Most name values the generated log never holds, as most of a big
rule set watches for rare things; every set also holds the bench filter itself and one rule
with no value to index (a size threshold), which is tried on every event.
"""

from __future__ import annotations

import random
from pathlib import Path

from bench.gen import LOGIN, OTHER, SERVICES, USERS

VERBS = [
    "created", "deleted", "changed", "failed", "denied", "expired", "started", "done", "opened",
    "closed", "renewed", "revoked", "blocked", "queued", "retried", "timeout", "rejected",
    "granted", "moved", "copied", "synced", "locked", "unlocked", "scanned", "quarantined",
]  # fmt: skip
NOUNS = [
    "vpn", "db", "cert", "share", "quota", "token", "key", "mfa", "acl", "mail", "cron", "disk",
    "raid", "snapshot", "replica", "lease", "dns", "proxy", "firewall", "policy", "group",
    "role", "tenant", "invoice", "report", "job", "queue", "webhook", "license", "audit",
    "printer", "badge", "door", "camera", "sensor", "ups", "switch", "router", "ap", "kvm",
]  # fmt: skip
# A thousand event names; the sixteen the generated log holds are among them, so a rule set
# watches mostly for things that do not happen today, as big rule sets do.
EVENT_NAMES = sorted({f"{n}.{v}" for n in NOUNS for v in VERBS} | set(LOGIN) | set(OTHER))
PEOPLE = USERS + [f"user{i:04d}" for i in range(2000)]


def _rule(rng: random.Random, n: int) -> str:
    kind = rng.randrange(8)
    name = f"r{n:04d}"
    if kind == 0:
        match = f"""  all:
    - event: {rng.choice(EVENT_NAMES)}
    - level: {{in: [error, warning]}}"""
    elif kind == 1:
        a, b = rng.sample(EVENT_NAMES, 2)
        match = f"""  event: {{in: [{a}, {b}]}}
  not:
    remote_ip: {{cidr: 10.0.0.0/8}}"""
    elif kind == 2:
        match = f"""  all:
    - user.name: "{rng.choice(PEOPLE)}"
    - event: {{startswith: "login."}}"""
    elif kind == 3:
        match = f"""  request.path: {{startswith: "/srv/{rng.choice(NOUNS)}{rng.randrange(100)}/"}}
  request.status: {{gte: 500}}"""
    elif kind == 4:
        match = f"""  service: {rng.choice(SERVICES)}
  event: {rng.choice(EVENT_NAMES)}
  msg: {{regex: "(?i)quota|denied"}}"""
    elif kind == 5:
        match = f"""  session: "{rng.getrandbits(48):012x}\""""
    elif kind == 6:
        match = f"""  any:
    - event: {rng.choice(EVENT_NAMES)}
    - event: {{startswith: "{rng.choice(NOUNS)}."}}
  user.groups: {{contains: admins}}"""
    else:
        match = f"""  event: {{startswith: "{rng.choice(NOUNS)}.{rng.choice(VERBS)[:3]}"}}
  level: {{ne: debug}}"""
    when = "\nwhen:\n  days: [mon, tue, wed, thu, fri]\n" if rng.random() < 0.1 else "\n"
    return f"name: {name}\nmatch:\n{match}{when}"


BENCH_FILTER = """name: bench-filter
match:
  all:
    - level: {in: [error, warning]}
    - event: {startswith: "login."}
"""

UNINDEXED = """name: big-transfers
match:
  request.bytes: {gt: 999990000}
"""


def write(directory: Path, count: int, seed: int = 7) -> None:
    """`count` rule files in `directory` (the bench filter, the unindexed rule, and the rest)."""
    directory.mkdir(parents=True, exist_ok=True)
    for old in directory.glob("*.yaml"):
        old.unlink()
    (directory / "0000-bench-filter.yaml").write_text(BENCH_FILTER)
    (directory / "0001-big-transfers.yaml").write_text(UNINDEXED)
    rng = random.Random(seed)
    for n in range(2, count):
        (directory / f"{n:04d}.yaml").write_text(_rule(rng, n))
