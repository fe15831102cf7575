"""Files the agent writes, on ground other users share: the real `tailmail run` as root (and as an
unprivileged user) beside a world-writable directory where another user plants names.

Nothing planted is ever written through, truncated or mailed; the refusal is a clear error in
the log, in `tailmail status` and, red, in the report; nothing selected is lost meanwhile.
"""

from __future__ import annotations

import email
import email.policy
import gzip
import os
import stat
from pathlib import Path

from agent_proc import Agent, tailmail, wait_for
from hostile_ground import (
    AGENT_USER,
    INTRUDER,
    Ground,
    append,
    as_user,
    event_lines,
    ground,
    log_events,
    user_wrap,
)

__all__ = ["ground"]


def start(g: Ground, agents: list[Agent], config: Path, **kw: object) -> Agent:
    agent = Agent(config, g.base, **kw)  # type: ignore[arg-type]
    agents.append(agent)
    return agent.wait_ready()


def queued_status(g: Ground) -> list[str]:
    """X-Tailmail-Status of each report queued in the outbox."""
    outbox = g.base / "state" / "outbox"
    return [
        str(
            email.message_from_bytes(p.read_bytes(), policy=email.policy.default)[
                "X-Tailmail-Status"
            ]
        )
        for p in sorted(outbox.glob("*.eml"))
    ]


def queued_text(g: Ground) -> str:
    outbox = g.base / "state" / "outbox"
    texts = []
    for p in sorted(outbox.glob("*.eml")):
        msg = email.message_from_bytes(p.read_bytes(), policy=email.policy.default)
        part = msg.get_body(preferencelist=("plain",))
        assert part is not None
        texts.append(" ".join(part.get_content().split()))
    return "\n".join(texts)


def test_symlink_planted_at_the_store_is_never_written_through(
    ground: Ground, agents: list[Agent]
) -> None:
    """Another user's symlink at the store's name: no event reaches its target, the service runs
    on and says why (log, status), and once the link is gone every event is stored once, in a
    file of root's, and the period's report is red with the reason."""
    g = ground
    before = g.secret.read_bytes()
    as_user(INTRUDER, "ln", "-s", str(g.secret), str(g.public / "daily.jsonl"))
    agent = start(g, agents, g.config())
    log = g.base / "logs" / "app.json"
    append(log, event_lines(50))
    wait_for(lambda: log_events(agent.log(), "store.write_failed"), "the refusal in the log")
    [refusal] = log_events(agent.log(), "store.write_failed")[:1]
    assert "symbolic link" in refusal["error"]
    status = tailmail("status", "-c", str(g.base / "config.yaml"))
    assert status.returncode == 0, status.stderr
    assert "now: cannot write the store of report daily" in status.stdout
    assert "symbolic link" in status.stdout
    assert g.secret.read_bytes() == before
    assert agent.proc.poll() is None, "the agent keeps running"

    (g.public / "daily.jsonl").unlink()  # the link goes (root may remove it)
    append(log, event_lines(50, start=50))

    def stored() -> bool:
        store = g.public / "daily.jsonl"
        return store.exists() and len(store.read_bytes().splitlines()) == 100

    wait_for(stored, "every event in a store of the agent's own")
    st = os.lstat(g.public / "daily.jsonl")
    assert stat.S_ISREG(st.st_mode) and st.st_uid == 0 and stat.S_IMODE(st.st_mode) == 0o640
    assert (g.public / "daily.jsonl").read_bytes() == event_lines(100)
    assert g.secret.read_bytes() == before
    rotate = tailmail("rotate", "-c", str(g.base / "config.yaml"))
    assert rotate.returncode == 0, rotate.stderr
    assert queued_status(g) == ["red"]
    assert "symbolic link" in queued_text(g)
    assert agent.stop() == 0


def test_restart_never_truncates_what_a_planted_store_link_points_at(
    ground: Ground, agents: list[Agent]
) -> None:
    """The store is removed while the agent is stopped and another user's symlink takes its
    name: the restart refuses it instead of cutting the target to the committed size."""
    g = ground
    config = g.config()
    agent = start(g, agents, config)
    append(g.base / "logs" / "app.json", event_lines(20))
    wait_for(
        lambda: (
            (g.public / "daily.jsonl").exists()
            and (g.public / "daily.jsonl").stat().st_size == len(event_lines(20))
        ),
        "the events stored",
    )
    assert agent.stop() == 0
    (g.public / "daily.jsonl").unlink()
    g.secret.write_bytes(b"x" * 10_000)
    as_user(INTRUDER, "ln", "-s", str(g.secret), str(g.public / "daily.jsonl"))
    again = start(g, agents, config)
    append(g.base / "logs" / "app.json", event_lines(5, start=20))
    wait_for(lambda: log_events(again.log(), "store.write_failed"), "the refusal in the log")
    assert g.secret.read_bytes() == b"x" * 10_000
    assert again.proc.poll() is None
    assert again.stop() == 0


def test_store_made_by_another_user_is_not_written_to(ground: Ground, agents: list[Agent]) -> None:
    """A store file another user created first (mode 0666) is refused: that user never reads an
    event, and the refusal names the owner."""
    g = ground
    as_user(INTRUDER, "sh", "-c", f"umask 0; : > {g.public / 'daily.jsonl'}")
    agent = start(g, agents, g.config())
    append(g.base / "logs" / "app.json", event_lines(10))
    wait_for(lambda: log_events(agent.log(), "store.write_failed"), "the refusal in the log")
    assert f"belongs to uid {INTRUDER}" in log_events(agent.log(), "store.write_failed")[0]["error"]
    assert (g.public / "daily.jsonl").read_bytes() == b""
    assert agent.stop() == 0


def test_hard_link_at_the_store_is_not_written_to(ground: Ground, agents: list[Agent]) -> None:
    """A hard link to one of root's files at the store's name (what another user can make where
    protected_hardlinks is off) is refused: a regular file owned by root is not enough."""
    g = ground
    before = g.secret.read_bytes()
    os.link(g.secret, g.public / "daily.jsonl")
    agent = start(g, agents, g.config())
    append(g.base / "logs" / "app.json", event_lines(10))
    wait_for(lambda: log_events(agent.log(), "store.write_failed"), "the refusal in the log")
    assert "hard links" in log_events(agent.log(), "store.write_failed")[0]["error"]
    assert g.secret.read_bytes() == before
    assert agent.stop() == 0


def test_symlink_at_the_gzip_temporary_name_is_not_written_through(
    ground: Ground, agents: list[Agent]
) -> None:
    """Compressing a sent report's file: another user's symlink at the temporary name is
    refused, its target untouched, the file left as it was, the service running."""
    g = ground
    rotated = g.public / "daily-2026-12-01.jsonl"
    rotated.write_bytes(event_lines(5))
    os.chmod(rotated, 0o640)
    before = g.secret.read_bytes()
    as_user(INTRUDER, "ln", "-s", str(g.secret), str(g.public / ".daily-2026-12-01.jsonl.gz.tmp"))
    agent = start(g, agents, g.config(compress="gzip"))
    wait_for(lambda: log_events(agent.log(), "store.compress_failed"), "the refusal in the log")
    assert g.secret.read_bytes() == before
    assert rotated.read_bytes() == event_lines(5)
    assert not (g.public / "daily-2026-12-01.jsonl.gz").exists()
    assert agent.proc.poll() is None
    assert agent.stop() == 0


def test_planted_rotated_names_are_never_compressed_or_pruned(
    ground: Ground, agents: list[Agent]
) -> None:
    """A symlink named like a rotated file (daily-DATE.jsonl -> a secret) is not one of the
    agent's: it is neither gzipped (which would copy the secret) nor deleted."""
    g = ground
    link = g.public / "daily-2026-11-30.jsonl"
    as_user(INTRUDER, "ln", "-s", str(g.secret), str(link))
    agent = start(g, agents, g.config(compress="gzip", keep=1))
    append(g.base / "logs" / "app.json", event_lines(3))
    wait_for(lambda: (g.public / "daily.jsonl").exists(), "the store")
    assert link.is_symlink()
    assert not (g.public / "daily-2026-11-30.jsonl.gz").exists()
    assert agent.stop() == 0


def test_modes_are_set_explicitly_whatever_the_umask(ground: Ground, agents: list[Agent]) -> None:
    """With umask 000: directories the agent makes are 0750, its files 0640, and a compressed
    rotated file too (it was 0644 under umask 022)."""
    g = ground
    store_dir = g.base / "stores" / "daily"
    config = g.config(store_dir=store_dir, compress="gzip")
    store_dir.mkdir(parents=True)
    rotated = store_dir / "daily-2026-12-01.jsonl"
    rotated.write_bytes(event_lines(5))
    os.chmod(rotated, 0o600)
    os.chmod(store_dir, 0o755)
    old = os.umask(0)
    try:
        agent = start(g, agents, config)
    finally:
        os.umask(old)
    append(g.base / "logs" / "app.json", event_lines(3))
    wait_for(lambda: (store_dir / "daily.jsonl").exists(), "the store")
    wait_for(lambda: (store_dir / "daily-2026-12-01.jsonl.gz").exists(), "the compressed file")
    assert gzip.decompress((store_dir / "daily-2026-12-01.jsonl.gz").read_bytes()) == event_lines(5)

    def mode(path: Path) -> int:
        return stat.S_IMODE(os.lstat(path).st_mode)

    assert mode(store_dir / "daily.jsonl") == 0o640
    assert mode(store_dir / "daily-2026-12-01.jsonl.gz") == 0o640
    state = g.base / "state"
    assert mode(state) == 0o750
    assert mode(state / "outbox") == 0o750
    assert mode(state / "outbox" / "failed") == 0o750
    for name in ("checkpoint.json", "lock"):
        assert mode(state / name) == 0o640, name
    assert agent.stop() == 0


def test_unprivileged_agent_refuses_another_users_store_link(
    ground: Ground, agents: list[Agent]
) -> None:
    """The agent as an ordinary user: another user's symlink at its store's name is refused
    too (O_NOFOLLOW does not depend on fs.protected_symlinks), and its own store works."""
    g = ground
    config = g.config()
    (g.base / "state").mkdir()
    for path in (g.base / "rules.d", g.base / "logs", g.base / "state"):
        os.chown(path, AGENT_USER, AGENT_USER)
    os.chown(config, AGENT_USER, AGENT_USER)
    as_user(INTRUDER, "ln", "-s", "/tmp/elsewhere", str(g.public / "daily.jsonl"))
    log = g.base / "logs" / "app.json"
    log.write_bytes(event_lines(10))
    os.chmod(log, 0o644)
    agent = Agent(config, g.base, wrap=user_wrap(AGENT_USER), notify_mode=0o777)
    agents.append(agent)
    agent.wait_ready()
    wait_for(lambda: log_events(agent.log(), "store.write_failed"), "the refusal in the log")
    assert not Path("/tmp/elsewhere").exists()
    (g.public / "daily.jsonl").unlink()
    wait_for(lambda: (g.public / "daily.jsonl").exists(), "the agent's own store")
    wait_for(
        lambda: (g.public / "daily.jsonl").read_bytes() == event_lines(10), "every event stored"
    )
    assert os.lstat(g.public / "daily.jsonl").st_uid == AGENT_USER
    assert agent.stop() == 0


def test_store_deleted_while_running_is_made_again_and_nothing_is_lost(
    ground: Ground, agents: list[Agent]
) -> None:
    """The store deleted by hand while the agent runs: it is made again from what the agent
    holds, later events follow, and the period's report holds every event and says so (green,
    with a notice, and a Problems section that agrees with the status)."""
    g = ground
    store = g.base / "stores" / "daily.jsonl"
    config = g.config(store_dir=store.parent)
    log = g.base / "logs" / "app.json"
    log.touch()  # the source exists from the start: its absence would be a problem too
    agent = start(g, agents, config)
    append(log, event_lines(30))
    wait_for(lambda: store.exists() and store.read_bytes() == event_lines(30), "30 stored")
    store.unlink()
    append(log, event_lines(30, start=30))
    wait_for(lambda: store.exists() and store.read_bytes() == event_lines(60), "60 stored")
    assert log_events(agent.log(), "store.recreated")
    rotate = tailmail("rotate", "-c", str(config))
    assert rotate.returncode == 0, rotate.stderr
    [rotated] = store.parent.glob("daily-*.jsonl")
    assert rotated.read_bytes() == event_lines(60)
    assert queued_status(g) == ["green"]
    text = queued_text(g)
    assert "made it again from what it held: nothing was lost" in text
    assert agent.stop() == 0


def test_check_says_when_a_store_or_state_directory_is_writable_by_others(
    ground: Ground,
) -> None:
    """`tailmail check` warns, at the config's line, about a store directory every user can
    write and a group-writable state directory; it still passes."""
    g = ground
    config = g.config()
    (g.base / "state").mkdir(mode=0o770)
    os.chmod(g.base / "state", 0o770)
    result = tailmail("check", "-c", str(config))
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    [store_warning] = [line for line in lines if "daily.jsonl" in line]
    assert store_warning.startswith(f"{config}:")
    assert "writable by every user (mode 1777)" in store_warning
    [state_warning] = [line for line in lines if "state_dir" in line]
    assert "writable by its group (mode 0770)" in state_warning
