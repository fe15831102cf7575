"""The systemd watchdog (agent/service/service.py `_watchdog`): the real `tailmail run` with a real
NOTIFY_SOCKET and WATCHDOG_USEC, as systemd starts it under `WatchdogSec=`.

WATCHDOG=1 must follow the pipeline, not a clock: it keeps coming while the agent is idle or
retrying a failed write, and stops while a commit hangs in a system call that never returns.
The hang is real: strace holds the agent's fdatasync(2) for a while, as a write to a dead NFS
server or a dying disk would.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import orjson
from agent_proc import Agent, wait_for, write_config
from debian_tools import need

WATCHDOG_SEC = 2.0  # WatchdogSec=2s: the agent pings every second
TMP_CHECKPOINT = ".checkpoint.json.tmp"  # what agent/core/fs.py write_atomic opens for writing


def start(tmp_path: Path, agents: list[Agent], closed_port: int) -> Agent:
    for sub in ("rules.d", "logs", "store"):
        (tmp_path / sub).mkdir(exist_ok=True)
    (tmp_path / "rules.d" / "all.yaml").write_text("match:\n  n: {exists: true}\n")
    (tmp_path / "logs" / "events.json").touch()
    config = write_config(
        tmp_path / "config.yaml",
        {
            "state_dir": str(tmp_path / "state"),
            "rules_dir": str(tmp_path / "rules.d"),
            "sources": [
                {
                    "name": "app",
                    "path": str(tmp_path / "logs" / "events.json"),
                    "start_at": "beginning",
                }
            ],
            "reports": [
                {
                    "name": "daily",
                    "store": str(tmp_path / "store" / "daily.jsonl"),
                    "to": ["ops@example.com"],
                }
            ],
            "smtp": {
                "host": "127.0.0.1",
                "port": closed_port,
                "security": "none",
                "from": "t@x.org",
            },
            "log": {"level": "debug", "format": "json"},
        },
    )
    env = {"WATCHDOG_USEC": str(int(WATCHDOG_SEC * 1e6))}
    agent = Agent(config, tmp_path, env=env)
    agents.append(agent)
    return agent.wait_ready()


def pings(agent: Agent, seconds: float) -> list[float]:
    """Listen for `seconds`; the times at which WATCHDOG=1 arrived."""
    times: list[float] = []
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        agent.notify.settimeout(min(left, 0.1))
        try:
            data = agent.notify.recv(65536)
        except TimeoutError:
            continue
        fields = data.decode().split("\n")
        agent.messages.extend(fields)
        if "WATCHDOG=1" in fields:
            times.append(time.monotonic())
    return times


def append(log: Path, n: int, start: int = 0) -> None:
    with log.open("ab") as f:
        f.write(b"".join(orjson.dumps({"n": i}) + b"\n" for i in range(start, start + n)))


def committed(state: Path, log: Path) -> bool:
    try:
        checkpoint = orjson.loads((state / "checkpoint.json").read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return False
    size = log.stat().st_size
    return any(f.get("offset") == size for f in checkpoint.get("files", {}).values())


def traced(pid: int) -> bool:
    """Whether a tracer (strace) is attached to `pid`'s main thread."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("TracerPid:"):
            return line.split()[1] != "0"
    return False


def test_pings_stop_while_a_commit_hangs_and_resume_when_it_returns(
    tmp_path: Path, agents: list[Agent], closed_port: int
) -> None:
    """Idle: pings. A commit blocked in fdatasync(2) (strace holds the call, as a dead NFS
    server or a dying disk would): no ping for three intervals, process alive. The call
    returns: pings come again and the line is committed."""
    strace = need("strace", "strace")
    agent = start(tmp_path, agents, closed_port)
    log, state = tmp_path / "logs" / "events.json", tmp_path / "state"
    assert len(pings(agent, 3 * WATCHDOG_SEC)) >= 3, "an idle, healthy agent pings"

    hang = 6 * WATCHDOG_SEC
    # The call must be traced for strace to delay it; the trace itself goes nowhere.
    trace = ["-e", "trace=fdatasync", "-e", f"inject=fdatasync:delay_enter={int(hang * 1e6)}"]
    tracer = subprocess.Popen(
        [strace, "-q", "-o", "/dev/null", "-p", str(agent.proc.pid), *trace],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: traced(agent.proc.pid), "strace to attach")
        append(log, 1)
        silent_since = time.monotonic()

        def silent_for_three_watchdog_periods() -> bool:
            nonlocal silent_since
            if agent.proc.poll() is not None:
                raise AssertionError(f"the agent exited:\n{agent.log()}")
            if pings(agent, 0.5):
                silent_since = time.monotonic()
            return time.monotonic() - silent_since > 3 * WATCHDOG_SEC

        wait_for(silent_for_three_watchdog_periods, "the pings to stop while the commit hangs")
        assert not committed(state, log)
        wait_for(lambda: committed(state, log), "the line to be committed after the hang")
    finally:
        tracer.terminate()
        tracer.wait()
    assert len(pings(agent, 2 * WATCHDOG_SEC)) >= 1, "pings resume once the pipeline moves"
    assert agent.proc.poll() is None
    assert agent.stop() == 0


def test_pings_go_on_through_a_write_error_that_lasts(
    tmp_path: Path, agents: list[Agent], closed_port: int
) -> None:
    """A commit that keeps failing (here a directory where the checkpoint's temporary file goes)
    while lines keep coming is retried with backoff, not hung: the pings go on, and the lines
    are committed once it works again."""
    agent = start(tmp_path, agents, closed_port)
    log, state = tmp_path / "logs" / "events.json", tmp_path / "state"
    blocker = state / TMP_CHECKPOINT
    blocker.mkdir()
    times: list[float] = []
    for batch in range(8):  # new data all along, about 4 watchdog periods
        append(log, 10, start=batch * 10)
        times += pings(agent, WATCHDOG_SEC / 2)
    failures = agent.log().count("pipeline.write_failed")
    assert failures >= 2, f"the commit should have failed and been retried:\n{agent.log()}"
    assert "is not tailmail's own file" in agent.log()
    assert not committed(state, log)
    assert len(times) >= 5, f"pings stopped during the write error: {len(times)} in 8 s"
    blocker.rmdir()
    wait_for(lambda: committed(state, log), "the lines to be committed once writes work")
    assert len((tmp_path / "store" / "daily.jsonl").read_bytes().splitlines()) == 80
    assert agent.stop() == 0
