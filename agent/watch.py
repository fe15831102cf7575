"""File-system events (inotify through watchdog) delivered to the asyncio loop.

Watchdog calls us on its own thread; all we do there is hand a tiny note to the loop, so the
tailing code stays single-threaded. Nothing here polls: with no writes, no thread wakes.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from pathlib import Path

import structlog
from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver, ObservedWatch

log = structlog.get_logger("tailmail.watch")

# Called on the loop with the changed path and whether names changed (created/moved/deleted).
Callback = Callable[[str, bool], None]


class _Handler(FileSystemEventHandler):
    def __init__(self, loop: asyncio.AbstractEventLoop, callback: Callback) -> None:
        self._loop = loop
        self._callback = callback

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in ("opened", "closed_no_write"):
            return
        renamed = event.event_type in ("created", "moved", "deleted")
        path = event.dest_path if event.event_type == "moved" else event.src_path
        # RuntimeError: the loop closed while the observer was stopping.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._callback, str(path), renamed)


class Watcher:
    """Watches a set of directories; `watch` may be called again as directories appear."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._observer: BaseObserver = Observer()
        self._watches: dict[tuple[Path, bool, int], ObservedWatch] = {}
        self._started = False

    def watch(self, directory: Path, callback: Callback, recursive: bool = False) -> bool:
        """Start watching `directory`; False if it does not exist (yet)."""
        key = (directory, recursive, id(callback))
        if key in self._watches:
            return True
        if not directory.is_dir():
            return False
        try:
            watch = self._observer.schedule(
                _Handler(self._loop, callback), str(directory), recursive=recursive
            )
        except OSError as exc:
            log.warning("watch.failed", directory=str(directory), error=str(exc))
            return False
        self._watches[key] = watch
        if not self._started:
            self._observer.start()
            self._started = True
        return True

    def stop(self) -> None:
        if self._started:
            self._observer.stop()
            self._observer.join(timeout=5)
            self._started = False
