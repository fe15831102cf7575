"""Measuring a process from outside: CPU, memory, and when its output is complete.

Everything is read from /proc, so the same helpers measure tailmail, rsyslog and syslog-ng
alike without the process knowing. Read the counters while the process is still alive: a
reaped process has no /proc entry left.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")
POLL_SECONDS = 0.01  # an os.stat every 10 ms costs nothing next to the process measured


def cpu_seconds(pid: int) -> float:
    """User + system CPU of the whole process, all its threads included (/proc/PID/stat)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    # The command name (field 2) is in parentheses and may itself hold spaces or ")":
    # split after the last ")". utime and stime are fields 14 and 15 of the whole line.
    fields = stat[stat.rindex(")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / CLK_TCK


def _status_bytes(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024  # the kernel writes "VmHWM:   12345 kB"
    raise ValueError(f"/proc/{pid}/status has no {key} (a kernel thread or a zombie?)")


def peak_rss(pid: int) -> int:
    """The most resident memory the process has had so far, in bytes (VmHWM)."""
    return _status_bytes(pid, "VmHWM")


def rss(pid: int) -> int:
    """Resident memory now, in bytes (VmRSS)."""
    return _status_bytes(pid, "VmRSS")


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0  # the process has not created its output yet


def wait_for_size(
    path: Path, size: int, proc: subprocess.Popen[bytes], timeout: float, stall: float = 5.0
) -> float:
    """Wait until `path` holds at least `size` bytes; return the monotonic time it got there.

    If the file stops growing for `stall` seconds first (the process lost or refused lines),
    return the time of its last growth: the moment the work really ended. The stall clock
    starts at the call, so a process that never writes returns after `stall` seconds too. Raises
    ChildProcessError if the process exits before, TimeoutError after `timeout` seconds.
    """
    start = time.monotonic()
    last_size, last_growth = -1, start
    while True:
        now = time.monotonic()
        current = _size(path)
        if current >= size:
            return now
        if current != last_size:
            last_size, last_growth = current, now
        elif now - last_growth >= stall:
            return last_growth
        if proc.poll() is not None:
            raise ChildProcessError(
                f"{_program(proc)} exited with {proc.returncode} after writing {current:,} of "
                f"{size:,} bytes to {path}"
            )
        if now - start >= timeout:
            raise TimeoutError(
                f"{path} reached {current:,} of {size:,} bytes in {timeout:g} s; "
                f"raise the timeout or look at why the process is slow"
            )
        time.sleep(POLL_SECONDS)


def _program(proc: subprocess.Popen[bytes]) -> str:
    program = proc.args[0] if isinstance(proc.args, list | tuple) else proc.args
    return f"{Path(str(program)).name} (pid {proc.pid})"


def stop(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> int:
    """SIGTERM, then SIGKILL if it is still running after `timeout` s; reap it; its exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait()
