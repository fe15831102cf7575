"""sd_notify against a real unix datagram socket."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from agent.service.notify import Notifier


@pytest.fixture
def listener(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> socket.socket:
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(0.5)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    return sock


def received(sock: socket.socket) -> list[str]:
    got = []
    sock.settimeout(0.05)
    while True:
        try:
            got.append(sock.recv(4096).decode())
        except TimeoutError:
            return got


def test_ready_and_status_reach_the_socket(listener: socket.socket) -> None:
    """READY carries STATUS and MAINPID; a repeated STATUS is sent once."""
    notifier = Notifier()
    notifier.ready("ok")
    notifier.status("reading")
    notifier.status("reading")
    notifier.status("idle")
    got = received(listener)
    assert got[0].split("\n")[:2] == ["READY=1", "STATUS=ok"]
    assert got[1:] == ["STATUS=reading", "STATUS=idle"]
    notifier.close()
    listener.close()


def test_a_listener_that_never_reads_does_not_block_the_agent(listener: socket.socket) -> None:
    """With the socket's queue full, sending returns at once instead of blocking the service."""
    notifier = Notifier()
    for i in range(5000):  # far more than a unix datagram queue holds
        notifier.status(f"status {i}")
    notifier.watchdog()
    notifier.close()
    listener.close()


def test_without_notify_socket_nothing_is_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    """No NOTIFY_SOCKET: the notifier is off and every call is a no-op."""
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    notifier = Notifier()
    assert not notifier.enabled
    notifier.ready("x")
    notifier.stopping()


def test_watchdog_interval_is_half_of_watchdog_usec(
    listener: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    """WATCHDOG_USEC=2s: ping every second; a WATCHDOG_PID for another process disables it."""
    monkeypatch.setenv("WATCHDOG_USEC", "2000000")
    on = Notifier()
    assert on.watchdog_interval == 1.0
    on.close()
    monkeypatch.setenv("WATCHDOG_PID", "1")
    off = Notifier()
    assert off.watchdog_interval is None
    off.close()
    listener.close()
