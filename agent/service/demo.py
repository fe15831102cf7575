"""`tailmail demo`: the whole product in one minute, on this machine only.

It writes a generated event log and example rules into a folder, starts an SMTP sink on
127.0.0.1 that saves what it receives as .eml files, runs the real agent (`tailmail run`, as a
child process that reports READY over sd_notify), appends more events while it runs, forces a
rotation and waits for the report to arrive.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import gzip
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any, TextIO

import orjson
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from agent.pipeline.checkpoint import load_checkpoint
from agent.service import control

DEADLINE = 45.0

USERS = ["alice", "bob", "chloé", "dmitri", "eve", "farah", "günther", "hiro"]
EVENTS = [
    ("login.success", "info"), ("login.failed", "warning"), ("login.failed", "error"),
    ("file.upload", "info"), ("file.download", "info"), ("file.delete", "warning"),
    ("backup.finished", "info"), ("backup.failed", "error"), ("quota.exceeded", "warning"),
]  # fmt: skip

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
    "backups.yaml": """\
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
""",
}


def _event(rng: random.Random, when: datetime) -> dict[str, Any]:
    kind, level = rng.choice(EVENTS)
    inside = rng.random() < 0.5
    ip = (
        f"10.0.{rng.randrange(256)}.{rng.randrange(1, 255)}"
        if inside
        else f"203.0.113.{rng.randrange(1, 255)}"
    )
    event: dict[str, Any] = {
        "ts": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "level": level,
        "event": kind,
        "user": {"name": rng.choice(USERS), "id": rng.randrange(1000, 9999)},
        "remote_ip": ip,
        "session": f"{rng.getrandbits(64):016x}",
    }
    if kind.startswith("file."):
        event["bytes"] = rng.randrange(1, 400_000_000)
        event["path"] = (
            f"/srv/share/{rng.choice(['reports', 'photos', 'exports'])}/file-{rng.randrange(99)}.bin"
        )
    if kind == "backup.failed":
        event["message"] = 'disk "backup-02" full: «no space left on device»'
    return event


def _write_events(path: Path, rng: random.Random, start: datetime, count: int, bad: bool) -> None:
    lines = []
    step = timedelta(hours=20) / count
    for i in range(count):
        lines.append(orjson.dumps(_event(rng, start + step * i)))
        if bad and i in (count // 3, 2 * count // 3):
            lines.append(b'{"ts": "broken line, as a crashed writer leaves it"')
    with path.open("ab") as f:
        f.write(b"\n".join(lines) + b"\n")


class _Sink:
    """An aiosmtpd handler that saves each message as an .eml file."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.count = 0

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.count += 1
        content = envelope.original_content or b""
        path = self.folder / f"report-{self.count}.eml"
        path.write_bytes(content)
        return "250 Message accepted for delivery"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _wait(condition: Any, what: str, timeout: float = DEADLINE) -> Any:
    deadline = time.monotonic() + timeout
    delay = 0.05
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up waiting for {what} after {timeout:.0f} s")
        time.sleep(delay)
        delay = min(delay * 1.5, 0.5)


def run_demo(folder: Path | None, out: TextIO) -> int:
    folder = (folder or Path(tempfile.mkdtemp(prefix="tailmail-demo-"))).absolute()
    for sub in ("logs", "rules.d", "mail", "state", "store"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    rng = random.Random(2026)
    log_path = folder / "logs" / "events.json"
    log_path.unlink(missing_ok=True)
    now = datetime.now(UTC).replace(microsecond=0)
    _write_events(log_path, rng, now - timedelta(hours=22), 3000, bad=True)
    for name, text in RULES.items():
        (folder / "rules.d" / name).write_text(text, encoding="utf-8")
    port = _free_port()
    config = folder / "config.yaml"
    config.write_text(
        f"""\
# Written by `tailmail demo`. Everything lives in this folder; mail goes to a local sink.
state_dir: {folder / "state"}
rules_dir: {folder / "rules.d"}
sources:
  - name: app
    path: {folder / "logs" / "events*.json"}
    start_at: beginning
    time_field: ts
reports:
  - name: daily
    store: {folder / "store" / "daily.jsonl"}
    rotate_at: "00:00"
    to: [ops@example.com]
    subject: "[{{hostname}}] {{selected}} events selected on {{date}} (tailmail demo)"
smtp:
  host: 127.0.0.1
  port: {port}
  security: none
  from: tailmail@example.com
log:
  format: json
""",
        encoding="utf-8",
    )
    out.write(f"tailmail demo in {folder}\n")
    out.write(f"  event log:  {log_path} (3,000 generated events, 2 broken lines)\n")
    out.write(f"  rules:      {folder / 'rules.d'} ({', '.join(RULES)})\n")
    out.write(f"  config:     {config}\n")

    sink = _Sink(folder / "mail")
    controller = Controller(sink, hostname="127.0.0.1", port=port)
    controller.start()
    agent_log = (folder / "agent.log").open("wb")
    notify_path = folder / "state" / "notify.sock"
    notify_path.unlink(missing_ok=True)
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    notify.settimeout(DEADLINE)
    env = {**os.environ, "NOTIFY_SOCKET": str(notify_path)}
    child = subprocess.Popen(
        [sys.executable, "-m", "agent", "run", "-c", str(config)],
        stdout=agent_log,
        stderr=agent_log,
        env=env,
    )
    try:
        _wait_ready(notify, child)
        out.write(f"  agent:      running (pid {child.pid}), log in {folder / 'agent.log'}\n")
        _write_events(log_path, rng, now - timedelta(minutes=30), 500, bad=False)
        out.write("  appended 500 more events while it runs; waiting for it to catch up\n")
        _wait(lambda: _caught_up(folder / "state", log_path), "the agent to read the log")
        reply = asyncio.run(
            control.request(folder / "state", {"cmd": "rotate", "report": None}, within=DEADLINE)
        )
        if not reply.get("ok"):
            raise RuntimeError(f"rotation failed: {reply.get('error')}")
        out.write(f"  rotated:    queued {', '.join(reply['queued'])}\n")
        eml = _wait(lambda: sorted((folder / "mail").glob("*.eml")), "the report email")[0]
    finally:
        child.send_signal(signal.SIGTERM)
        try:
            child.wait(timeout=20)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
        controller.stop()
        notify.close()
        notify_path.unlink(missing_ok=True)
        agent_log.close()
    _summarize(eml, out)
    return 0 if child.returncode == 0 else 1


def _wait_ready(notify: socket.socket, child: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        if child.poll() is not None:
            raise RuntimeError(f"the agent exited with code {child.returncode} before it was ready")
        try:
            notify.settimeout(0.5)
            data = notify.recv(4096)
        except TimeoutError:
            continue
        if b"READY=1" in data.split(b"\n"):
            return
    raise TimeoutError("the agent did not report READY")


def _caught_up(state_dir: Path, log_path: Path) -> bool:
    try:
        checkpoint = load_checkpoint(state_dir)
    except (OSError, ValueError):
        return False
    size = log_path.stat().st_size
    return any(f.offset == size for f in checkpoint.files.values())


def _summarize(eml: Path, out: TextIO) -> None:
    message = email.message_from_bytes(eml.read_bytes(), policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    out.write(f"\nReport received: {eml}\n")
    out.write(f"  Subject:    {message['Subject']}\n")
    out.write(f"  From/To:    {message['From']} -> {message['To']}\n")
    for part in message.iter_attachments():
        payload = part.get_payload(decode=True)
        assert isinstance(payload, bytes)
        if (part.get_filename() or "").endswith(".gz"):
            payload = gzip.decompress(payload)
        lines = payload.count(b"\n")
        out.write(
            f"  Attachment: {part.get_filename()} ({part.get_content_type()}, {lines} selected events)\n"
        )
    body = message.get_body(("plain",))
    if body is not None:
        text = body.get_content()
        out.write("\n" + "\n".join("  | " + line for line in text.splitlines()[:30]) + "\n")
    out.write(f"\nOpen {eml} in a mail client to see the HTML report.\n")
