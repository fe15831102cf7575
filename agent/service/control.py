"""Coordination between `tailmail run` and the commands that change its state.

The service holds an exclusive lock on `state_dir/lock` for as long as it runs and answers on
`state_dir/control.sock`. A command such as `tailmail rotate` first tries the lock: if it gets
it, no service is running and the command does the work itself while holding it; if not, it asks
the running service over the socket. Either way only one process ever writes the state.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson

from agent.core.fs import FILE_MODE, make_dirs

LOCK = "lock"
SOCKET = "control.sock"

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


class Busy(Exception):
    """Another tailmail process holds the state directory."""


class StateLock:
    """An exclusive flock on the state directory, released when the process ends (even kill -9)."""

    def __init__(self, state_dir: Path) -> None:
        make_dirs(state_dir)
        self.path = state_dir / LOCK
        self.fd = os.open(
            self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, FILE_MODE
        )

    def try_acquire(self) -> bool:
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{os.getpid()}\n".encode(), 0)
        return True

    def holder(self) -> str:
        try:
            return os.pread(self.fd, 32, 0).decode().strip() or "?"
        except OSError:
            return "?"

    def close(self) -> None:
        os.close(self.fd)  # closing the descriptor releases the flock


async def acquire(lock: StateLock, within: float) -> None:
    """Wait for the lock (a `rotate` run without the service may hold it for a moment)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    delay = 0.05
    while not lock.try_acquire():
        if loop.time() >= deadline:
            raise Busy(
                f"the state directory is in use by another tailmail process (pid {lock.holder()})"
            )
        await asyncio.sleep(delay)
        delay = min(delay * 2, 1.0)


async def serve(state_dir: Path, handler: Handler) -> asyncio.AbstractServer:
    """Answer one JSON request per connection on the control socket."""
    path = state_dir / SOCKET
    path.unlink(missing_ok=True)  # left by a run that was killed; we hold the lock, so it is stale

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = orjson.loads(await reader.readline())
            reply = await handler(request)
        except Exception as exc:  # a bad request must not take the service down
            reply = {"ok": False, "error": str(exc)}
        writer.write(orjson.dumps(reply) + b"\n")
        try:
            await writer.drain()
        finally:
            writer.close()

    server = await asyncio.start_unix_server(on_connect, path=str(path))
    os.chmod(path, 0o600)
    return server


async def request(
    state_dir: Path, message: dict[str, Any], within: float = 300.0
) -> dict[str, Any]:
    """Send one request to the running service and wait for its answer."""
    async with asyncio.timeout(within):
        reader, writer = await asyncio.open_unix_connection(str(state_dir / SOCKET))
        try:
            writer.write(orjson.dumps(message) + b"\n")
            await writer.drain()
            line = await reader.readline()
        finally:
            writer.close()
            await writer.wait_closed()
    if not line:
        raise ConnectionError("the service closed the connection without answering")
    reply: dict[str, Any] = orjson.loads(line)
    return reply


async def ask(
    state_dir: Path, message: dict[str, Any], within: float = 300.0, connect_within: float = 60.0
) -> dict[str, Any]:
    """`request`, to a service that holds the lock: one starting up (or reloading) may not have
    its socket yet, so connecting is tried again until `connect_within` has passed."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + connect_within
    delay = 0.02
    while True:
        try:
            return await request(state_dir, message, within)
        except (FileNotFoundError, ConnectionRefusedError):
            if loop.time() >= deadline:
                raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)
