"""Run the real `tailmail` process in tests: config writing, start with sd_notify, waiting."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")
DEADLINE = 60.0  # generous: the suite must pass on a loaded 2-core machine


def wait_for(condition: Callable[[], T], what: str, timeout: float = DEADLINE) -> T:
    """Poll `condition` until it returns something truthy; fail with `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    delay = 0.02
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 1.5, 0.25)


def tailmail(
    *args: str,
    env: dict[str, str] | None = None,
    input: bytes | None = None,
    timeout: float = DEADLINE,
) -> subprocess.CompletedProcess[str]:
    """Run one `tailmail` command to completion."""
    return subprocess.run(
        [sys.executable, "-m", "agent", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        input=input.decode() if input is not None else None,
        timeout=timeout,
    )


def write_config(path: Path, config: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


class Agent:
    """`tailmail run` as a child process, with a real sd_notify socket to hear it."""

    def __init__(
        self,
        config: Path,
        workdir: Path,
        env: dict[str, str] | None = None,
        wrap: Sequence[str] = (),
        notify_mode: int | None = None,
    ) -> None:
        """`notify_mode`: chmod the notify socket, for an agent run as another user."""
        self.config = config
        self.notify_path = workdir / f"notify-{time.monotonic_ns()}.sock"
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(str(self.notify_path))
        if notify_mode is not None:
            os.chmod(self.notify_path, notify_mode)
        self.notify.settimeout(0.2)
        self.messages: list[str] = []
        self.log_path = workdir / "agent.log"
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [*wrap, sys.executable, "-m", "agent", "run", "-c", str(config)],
            stdout=self._log,
            stderr=self._log,
            env={**os.environ, "NOTIFY_SOCKET": str(self.notify_path), **(env or {})},
        )

    def _drain(self) -> None:
        while True:
            try:
                data = self.notify.recv(65536)
            except (TimeoutError, BlockingIOError):
                return
            self.messages.extend(data.decode().split("\n"))
            self.notify.settimeout(0.01)

    def saw(self, field: str) -> bool:
        """Whether the agent has sent this sd_notify field (e.g. READY=1)."""
        if self.notify.fileno() >= 0:
            self.notify.settimeout(0.2)
            self._drain()
        return any(m == field or m.startswith(field) for m in self.messages)

    def wait_ready(self) -> Agent:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"agent exited with {self.proc.returncode}:\n{self.log()}")
            return self.saw("READY=1")

        wait_for(ready, "READY=1 from the agent")
        return self

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def signal(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    def stop(self, timeout: float = DEADLINE) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"agent did not stop on SIGTERM:\n{self.log()}") from None
        self.close()
        return self.proc.returncode

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self.close()

    def close(self) -> None:
        if self.notify.fileno() < 0:
            return
        self._drain()
        self.notify.close()
        self.notify_path.unlink(missing_ok=True)
        self._log.close()
