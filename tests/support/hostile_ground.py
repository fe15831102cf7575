"""Hostile ground for the real agent: another user on the machine, shared directories, damaged
state. Tests that need root (to be two users at once) skip without it, and fail under CI=true.

The other user is a bare uid (no account needed): `setpriv` runs a command as it, as it would
run for a local user who can write to a world-writable directory such as /tmp.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from agent_proc import write_config
from debian_tools import unavailable

INTRUDER = 65534  # nobody: the other user who plants files
AGENT_USER = 4242  # an unprivileged uid to run the agent as, where that matters


def need_root() -> None:
    if os.geteuid() != 0:
        unavailable("needs root, to be the agent's user and another user at once")


def as_user(uid: int, *command: str) -> subprocess.CompletedProcess[str]:
    """Run `command` as `uid` (its own group, no others); raise if it fails."""
    return subprocess.run(
        ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--", *command],
        check=True,
        capture_output=True,
        text=True,
    )


def user_wrap(uid: int) -> list[str]:
    """The prefix that runs the agent as `uid` (for agent_proc.Agent's `wrap`)."""
    return ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--"]


@dataclass
class Ground:
    """A directory tree every user can reach: `base` (0755, the agent's) and `public` inside it
    (1777, like /tmp), where another user can plant names but not remove the agent's files."""

    base: Path
    public: Path
    secret: Path  # a file of root's (the agent's user) that a planted link points at

    def config(self, store_dir: Path | None = None, **report: Any) -> Path:
        """Source `logs/*.json` from the beginning, one report `daily` stored in `store_dir`
        (default: the public directory), mail to a closed port."""
        for sub in ("rules.d", "logs"):
            (self.base / sub).mkdir(exist_ok=True)
        (self.base / "rules.d" / "events.yaml").write_text("name: events\nmatch:\n  kind: event\n")
        store_dir = store_dir or self.public
        config = {
            "state_dir": str(self.base / "state"),
            "rules_dir": str(self.base / "rules.d"),
            "sources": [
                {"name": "app", "path": str(self.base / "logs" / "*.json"), "start_at": "beginning"}
            ],
            "reports": [
                {
                    "name": "daily",
                    "store": str(store_dir / "daily.jsonl"),
                    "to": ["ops@example.com"],
                    "compress": "none",
                    **report,
                }
            ],
            "smtp": {"host": "127.0.0.1", "port": 9, "security": "none", "from": "t@example.com"},
            "log": {"level": "info", "format": "json"},
        }
        return write_config(self.base / "config.yaml", config)


@pytest.fixture
def ground() -> Iterator[Ground]:
    need_root()
    base = Path(tempfile.mkdtemp(prefix="tailmail-hostile-", dir="/tmp"))
    try:
        os.chmod(base, 0o755)
        public = base / "public"
        public.mkdir()
        os.chmod(public, 0o1777)
        secret = base / "secret"
        secret.write_bytes(b"root:precious:1:0:99999:7:::\n")
        os.chmod(secret, 0o640)
        yield Ground(base, public, secret)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def event_lines(n: int, start: int = 0) -> bytes:
    return b"".join(
        orjson.dumps({"kind": "event", "seq": i}) + b"\n" for i in range(start, start + n)
    )


def append(path: Path, data: bytes) -> None:
    with path.open("ab") as f:
        f.write(data)


def log_events(log: str, name: str) -> list[dict[str, Any]]:
    """The agent's JSON log records named `name`."""
    found = []
    for line in log.splitlines():
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if isinstance(record, dict) and record.get("event") == name:
            found.append(record)
    return found
