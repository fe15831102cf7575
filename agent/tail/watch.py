"""File-system events (inotify through watchdog) delivered to the asyncio loop.

Watchdog calls us on its own thread; all we do there is hand a tiny note to the loop, so the
tailing code stays single-threaded. Nothing here polls: with no writes, no thread wakes.

An inotify watch dies with its directory (deleted, or renamed away and replaced), and a
directory that does not exist yet cannot be watched. So the parent of each watched directory
(while the directory is missing: its nearest existing ancestor) is its anchor, watched for
directories only (created, deleted, renamed): when one changes, every wanted directory is
watched again as it now is, and the callbacks hear of it as a change of names, which makes the
service rescan at once instead of at its next safety rescan.

inotify keeps one event mask per directory and watchdog's watches share one inotify instance,
so the narrow mask of an anchor would replace the full one of a directory also watched for its
files: a directory watched in full (or inside a recursive watch) is its own anchor.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import structlog
from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver, ObservedWatch

log = structlog.get_logger("tailmail.watch")

# Called on the loop with the changed path and whether names changed (created/moved/deleted).
Callback = Callable[[str, bool], None]
# What an anchor is watched for: watchdog builds the inotify mask from it, so a busy parent such
# as /var/log does not wake us for every write in it.
DIRECTORY_EVENTS: list[type[FileSystemEvent]] = [DirCreatedEvent, DirDeletedEvent, DirMovedEvent]

Want = tuple[Path, bool, int]  # a directory, recursively or not, for a callback (by its id)
Role = tuple[Want, bool]  # a want, and whether the watch serves as its anchor
SlotKey = tuple[Path, bool, bool]  # a directory, recursively or not, directories only or not


@dataclass(slots=True)
class _Slot:
    """One scheduled watch, and the wants it serves."""

    path: Path
    recursive: bool
    directories_only: bool
    watch: ObservedWatch
    identity: tuple[int, int]  # device and inode when scheduled: a replaced directory differs
    users: dict[Role, Callback] = field(default_factory=dict)
    dead: bool = False  # its directory was deleted: the watch went with it

    def covers(self, path: Path) -> bool:
        """Whether this watch sees `path`'s own events: created, deleted or renamed there."""
        if self.directories_only or self.dead:
            return False
        return path == self.path or (self.recursive and self.path in path.parents)


class _Handler(FileSystemEventHandler):
    def __init__(self, watcher: Watcher, key: SlotKey) -> None:
        self._watcher = watcher
        self._key = key
        self._root = str(key[0])

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in ("opened", "closed_no_write"):
            return
        renamed = event.event_type in ("created", "moved", "deleted")
        path = os.fsdecode(event.dest_path if event.event_type == "moved" else event.src_path)
        directory = renamed and event.is_directory
        # The watched directory itself deleted: watchdog stops the watch (IN_DELETE_SELF).
        gone = directory and event.event_type == "deleted" and path == self._root
        # RuntimeError: the loop closed while the observer was stopping.
        with contextlib.suppress(RuntimeError):
            self._watcher.loop.call_soon_threadsafe(
                self._watcher.deliver, self._key, path, renamed, directory, gone
            )


class Watcher:
    """Watches a set of directories. `watch` may be called again at any time, and is cheap;
    directories that appear, go or are replaced are followed by themselves."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._observer: BaseObserver = Observer()
        self._wants: dict[Want, Callback] = {}
        self._slots: dict[SlotKey, _Slot] = {}
        self._anchors: dict[Want, SlotKey] = {}
        self._changes = 0  # watches scheduled or dropped: others may need to follow
        self._started = False

    def watch(self, directory: Path, callback: Callback, recursive: bool = False) -> bool:
        """Watch `directory` from now on; whether it is watched now (False while it does not
        exist: it is watched once it is created)."""
        want = (directory, recursive, id(callback))
        self._wants[want] = callback
        before = self._changes
        watched = self._follow(want)
        if self._changes != before:
            self.refresh()  # a watch dropped or superseded may have served other wants
        return watched

    def refresh(self) -> None:
        """Watch every wanted directory as it is now (after one appeared, went or moved)."""
        for _ in range(3):  # until nothing changes; a change of one can move another's anchor
            before = self._changes
            for want in list(self._wants):
                self._follow(want)
            if self._changes == before:
                return

    def deliver(self, key: SlotKey, path: str, renamed: bool, directory: bool, gone: bool) -> None:
        """An event of one watch, on the loop: to the callbacks of the wants it serves."""
        slot = self._slots.get(key)
        if slot is None:
            return  # dropped meanwhile: the watch that replaced it reports what happens there
        callbacks = {
            id(callback): callback
            for (_, as_anchor), callback in slot.users.items()
            if directory or not as_anchor
        }
        if gone:
            slot.dead = True
        if directory:
            self.refresh()
        for callback in callbacks.values():
            callback(path, renamed)

    def _follow(self, want: Want) -> bool:
        """Schedule (again) the watch of a wanted directory and of its anchor: the parent, to
        see the directory deleted or renamed and another one created in its place, or while it
        is missing the nearest ancestor that exists, to see it created."""
        directory, recursive, _ = want
        callback = self._wants[want]
        watched: SlotKey | None = None
        # Each turn finds more of the path, if it is being created meanwhile (mkdir -p).
        for _ in range(len(directory.parts) + 1):
            watched = self._attach((directory, recursive, False), (want, False), callback)
            anchor = directory.parent if watched is not None else _nearest_existing(directory)
            if anchor != directory:  # the root has no parent to watch
                key = self._attach((anchor, False, True), (want, True), callback)
                old = self._anchors.pop(want, None)
                if old is not None and old != key:
                    self._detach(old, (want, True))
                if key is not None:
                    self._anchors[want] = key
            if watched is not None or _nearest_existing(directory) == anchor:
                break
        return watched is not None

    def _attach(self, key: SlotKey, role: Role, callback: Callback) -> SlotKey | None:
        """Serve `role` from the watch of `key`, scheduling it if needed; the key of the watch
        that serves it, None when there is no directory to watch."""
        path, _, directories_only = key
        identity = _identity(path)
        slot = self._slots.get(key)
        if slot is not None and (slot.dead or slot.identity != identity):
            self._drop(key)  # its directory was deleted, or another one is in its place
            slot = None
        if identity is None:
            return None
        if directories_only:
            covering = next((k for k, s in self._slots.items() if s.covers(path)), None)
            if covering is not None:
                if slot is not None:
                    self._drop(key)
                self._slots[covering].users[role] = callback
                return covering
        if slot is None:
            slot = self._schedule(key, identity)
            if slot is None:
                return None
        slot.users[role] = callback
        return key

    def _schedule(self, key: SlotKey, identity: tuple[int, int]) -> _Slot | None:
        path, recursive, directories_only = key
        if not self._started:
            self._observer.start()
            self._started = True
        try:
            watch = self._observer.schedule(
                _Handler(self, key),
                str(path),
                recursive=recursive,
                event_filter=DIRECTORY_EVENTS if directories_only else None,
            )
        except OSError as exc:
            if not isinstance(exc, FileNotFoundError | NotADirectoryError):
                log.warning("watch.failed", directory=str(path), error=str(exc))
            return None
        self._changes += 1
        slot = self._slots[key] = _Slot(path, recursive, directories_only, watch, identity)
        if not directories_only:
            # Anchors it covers move onto it: it sees their events, and their narrow watch
            # must not be scheduled again on a directory it watches in full.
            for other, anchor in list(self._slots.items()):
                if anchor.directories_only and slot.covers(anchor.path):
                    slot.users.update(anchor.users)
                    for want, anchored in list(self._anchors.items()):
                        if anchored == other:
                            self._anchors[want] = key
                    self._drop(other)
        return slot

    def _detach(self, key: SlotKey, role: Role) -> None:
        slot = self._slots.get(key)
        if slot is not None:
            slot.users.pop(role, None)
            if not slot.users:
                self._drop(key)

    def _drop(self, key: SlotKey) -> None:
        slot = self._slots.pop(key)
        self._changes += 1
        # KeyError: watchdog already forgot it; OSError: the kernel already removed it.
        with contextlib.suppress(KeyError, OSError):
            self._observer.unschedule(slot.watch)

    def stop(self) -> None:
        if self._started:
            self._observer.stop()
            self._observer.join(timeout=5)
            self._started = False


def _identity(path: Path) -> tuple[int, int] | None:
    """Device and inode of a directory; None when there is none at `path`."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return (st.st_dev, st.st_ino) if stat.S_ISDIR(st.st_mode) else None


def _nearest_existing(directory: Path) -> Path:
    """`directory` or the nearest of its ancestors that is a directory now."""
    for candidate in (directory, *directory.parents):
        if _identity(candidate) is not None:
            return candidate
    return Path(directory.anchor or "/")
