"""Files the agent writes: never through a symlink, with explicit modes, and only its own.

The service often runs as root beside directories other users can write (a shared log folder,
/tmp). Everything it creates or appends to is opened relative to a descriptor of its directory,
with O_NOFOLLOW, and new and temporary files with O_EXCL, so a name planted by someone else is
refused rather than followed. A file it appends to must be its own: a regular file, owned by the
agent's user, with one link (a hard link to /etc/shadow is a regular file owned by root too), and
not writable by group or others. Anything else raises `UnsafeFile`, before a byte is written.
Modes are set with fchmod, not left to the umask.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from agent.core.errors import UnsafeFile

FILE_MODE = 0o640
DIR_MODE = 0o750
_OPEN_FLAGS = (
    os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK
)  # NONBLOCK: a planted FIFO never hangs us


def make_dirs(path: Path) -> None:
    """Create `path` and missing parents, each DIR_MODE whatever the umask; existing ones stay."""
    missing: list[Path] = []
    at = path
    while not at.exists():
        missing.append(at)
        if at.parent == at:
            break
        at = at.parent
    for directory in reversed(missing):
        with contextlib.suppress(FileExistsError):  # made meanwhile by someone else: checked below
            os.mkdir(directory, DIR_MODE)
            os.chmod(directory, DIR_MODE)


@contextlib.contextmanager
def directory(path: Path) -> Iterator[int]:
    """A descriptor of `path` for the *at() calls: the directory cannot change under us."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield fd
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Make a rename or a new file in `path` durable (the entry lives in the directory)."""
    with directory(path) as fd:
        os.fsync(fd)


def refuse(path: Path | str, exc: OSError) -> UnsafeFile:
    """The UnsafeFile for an open that O_NOFOLLOW or O_NONBLOCK stopped."""
    if exc.errno == errno.ELOOP:
        return UnsafeFile(
            exc.errno,
            f"{path} is a symbolic link; tailmail never writes through one (someone may have "
            "planted it): remove it, or give the file a directory of its own",
        )
    return UnsafeFile(exc.errno or errno.EPERM, f"{path}: {exc.strerror or exc}")


def check_own(st: os.stat_result, path: Path | str) -> None:
    """Raise UnsafeFile unless `st` is a regular file of ours, single-linked, not group/other
    writable."""
    if not stat.S_ISREG(st.st_mode):
        raise UnsafeFile(
            errno.EPERM, f"{path} is not a regular file; remove it or point tailmail elsewhere"
        )
    uid = os.geteuid()
    if st.st_uid != uid:
        raise UnsafeFile(
            errno.EPERM,
            f"{path} belongs to uid {st.st_uid}, not to tailmail's user (uid {uid}): another "
            "user could read or change what tailmail writes there; remove it (tailmail creates "
            "its own) or chown it",
        )
    if st.st_nlink != 1:
        raise UnsafeFile(
            errno.EPERM,
            f"{path} has {st.st_nlink} hard links: writing to it would also change the other "
            "names; remove the other links or the file",
        )
    if st.st_mode & 0o022:
        raise UnsafeFile(
            errno.EPERM,
            f"{path} is writable by group or others (mode {stat.S_IMODE(st.st_mode):04o}); "
            f"chmod {FILE_MODE:04o} it",
        )


def open_append(path: Path, access: int = os.O_WRONLY) -> tuple[int, bool]:
    """Open our own file `path` for appending, creating it FILE_MODE; (fd, created).

    Raises UnsafeFile for a symlink, a FIFO or device, another user's file, a hard-linked or
    group/other-writable one.
    """
    with directory(path.parent) as dir_fd:
        created = True
        try:
            fd = os.open(
                path.name,
                access | os.O_APPEND | os.O_CREAT | os.O_EXCL | _OPEN_FLAGS,
                FILE_MODE,
                dir_fd=dir_fd,
            )
        except FileExistsError:
            created = False
            try:
                fd = os.open(path.name, access | os.O_APPEND | _OPEN_FLAGS, dir_fd=dir_fd)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENXIO):  # a symlink; a FIFO without reader
                    raise refuse(path, exc) from None
                raise
        try:
            if created:
                os.fchmod(fd, FILE_MODE)
            else:
                check_own(os.fstat(fd), path)
            os.set_blocking(fd, True)
        except BaseException:
            os.close(fd)
            raise
    return fd, created


def create_new(dir_fd: int, name: str, where: Path | str, access: int = os.O_WRONLY) -> int:
    """Create `name` in `dir_fd` for writing, FILE_MODE, refusing anything already there except a
    stale temporary file of our own (removed first). `where` names it in messages."""
    with contextlib.suppress(FileNotFoundError):
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        # Only what a crash of ours can leave: a regular file of ours. Anything else there
        # (a symlink, a FIFO, a directory) was put there by hand, and is refused below.
        if stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid():
            os.unlink(name, dir_fd=dir_fd)
    try:
        fd = os.open(name, access | os.O_CREAT | os.O_EXCL | _OPEN_FLAGS, FILE_MODE, dir_fd=dir_fd)
    except FileExistsError:
        raise UnsafeFile(
            errno.EEXIST,
            f"{where} exists and is not tailmail's own file (a symlink, or another user's): "
            "remove it",
        ) from None
    try:
        os.fchmod(fd, FILE_MODE)
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def write_atomic(path: Path, data: bytes, previous: str | None = None) -> None:
    """Replace `path` with `data` so that a crash leaves either the old or the new content.

    With `previous`, the old content is kept under that name (in the same directory).
    """
    tmp = f".{path.name}.tmp"
    with directory(path.parent) as dir_fd:
        fd = create_new(dir_fd, tmp, path.parent / tmp)
        try:
            write_all(fd, data)
            # The data must be on disk before the rename makes it visible: otherwise a power cut
            # can leave a renamed but empty file, and the old content would be gone too.
            os.fsync(fd)
        finally:
            os.close(fd)
        if previous is not None:
            with contextlib.suppress(FileNotFoundError):
                os.replace(path.name, previous, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        os.replace(tmp, path.name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        os.fsync(dir_fd)


def create_empty(path: Path) -> None:
    """Create `path` empty and durable; refuse if anything is there already."""
    with directory(path.parent) as dir_fd:
        os.close(create_new(dir_fd, path.name, path))
        os.fsync(dir_fd)


def open_read(path: Path) -> int:
    """Open a file of ours for reading without following a symlink; refuse anything that is not
    a regular file (a FIFO would block, a device would never end)."""
    try:
        fd = os.open(path, os.O_RDONLY | _OPEN_FLAGS)
    except OSError as exc:
        if exc.errno in (errno.ELOOP,):
            raise refuse(path, exc) from None
        raise
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise UnsafeFile(errno.EPERM, f"{path} is not a regular file")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def writable_by_others(path: Path) -> str | None:
    """Why a directory the agent writes in could let another user plant files there, or None."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o002:
        return f"is writable by every user (mode {mode:04o})"
    if mode & 0o020:
        return f"is writable by its group (mode {mode:04o})"
    return None
