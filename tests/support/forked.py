"""Run a piece of a test in a forked child, for faults that must not touch pytest's own process."""

from __future__ import annotations

import ctypes
import os
import resource
import signal
import traceback
from collections.abc import Callable


def in_child(body: Callable[[], None], setup: Callable[[], object] = lambda: None) -> None:
    """Run `setup` then `body` in a forked child; fail if anything in it fails."""
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 1
        try:
            setup()
            body()
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the check in the child failed (see its stderr)"


def with_file_size_limit(body: Callable[[], None]) -> None:
    """Run `body` in a child process where RLIMIT_FSIZE makes big writes fail with EFBIG.

    The limit applies to every file the process writes, pytest's captured output and a stdout
    redirected to a file included, so it is set only in a child; SIGXFSZ is ignored there so the
    write fails instead of killing it. `body` sets the limit itself (it knows the sizes)."""
    in_child(body, lambda: signal.signal(signal.SIGXFSZ, signal.SIG_IGN))


def limit_file_size(size: int) -> tuple[int, int]:
    """Set the soft limit; return the previous (soft, hard) pair."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, hard))
    return soft, hard


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


def _drop_permission_override() -> None:
    """Lower CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH (capset(2)) so file modes bind root too."""
    libc = ctypes.CDLL(None, use_errno=True)
    header = _CapHeader(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3
    data = (_CapData * 2)()
    if libc.capget(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capget failed")
    data[0].effective &= ~((1 << 1) | (1 << 2))
    if libc.capset(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capset failed")


def as_ordinary_user(body: Callable[[], None]) -> None:
    """Run `body` where file permissions hold: directly for a normal user; for root, in a child
    without the capabilities that let root read a chmod 000 file."""
    if os.geteuid() != 0:
        body()
        return
    in_child(body, _drop_permission_override)
