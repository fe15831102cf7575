"""Run a piece of a test in a forked child, for faults that must not touch pytest's own process."""

from __future__ import annotations

import os
import resource
import signal
import traceback
from collections.abc import Callable


def with_file_size_limit(body: Callable[[], None]) -> None:
    """Run `body` in a child process where RLIMIT_FSIZE makes big writes fail with EFBIG.

    The limit applies to every file the process writes, pytest's captured output and a stdout
    redirected to a file included, so it is set only in a child; SIGXFSZ is ignored there so the
    write fails instead of killing it. `body` sets the limit itself (it knows the sizes)."""
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 1
        try:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            body()
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, (
        "the check in the child process failed (see stderr)"
    )


def limit_file_size(size: int) -> tuple[int, int]:
    """Set the soft limit; return the previous (soft, hard) pair."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, hard))
    return soft, hard
