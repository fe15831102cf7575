"""Run a command under MemoryDenyWriteExecute's rule: `python tests/support/mdwe.py PROGRAM ARG...`.

prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN) (Linux 6.3+) makes the kernel refuse memory that is
writable and executable, or that becomes executable after being writable: the rule systemd's
MemoryDenyWriteExecute=yes enforces (with this very prctl from systemd 257 on, with a seccomp
filter before). It holds for this process and everything it executes. Exit 125 when the kernel
does not have it.
"""

from __future__ import annotations

import ctypes
import os
import sys

PR_SET_MDWE, PR_GET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 66, 1
UNSUPPORTED = 125


def enable() -> bool:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
        return False
    return bool(libc.prctl(PR_GET_MDWE, 0, 0, 0, 0) & PR_MDWE_REFUSE_EXEC_GAIN)


if __name__ == "__main__":
    if not enable():
        print(f"mdwe: PR_SET_MDWE: {os.strerror(ctypes.get_errno())}", file=sys.stderr)
        sys.exit(UNSUPPORTED)
    os.execvp(sys.argv[1], sys.argv[1:])
