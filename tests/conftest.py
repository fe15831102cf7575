"""Shared fixtures: real SMTP servers on loopback (see smtp_sink.py), and the agents a test
starts, killed at its end if still running (see agent_proc.py)."""

from collections.abc import Iterator

import pytest
from agent_proc import Agent
from smtp_sink import ca, ca_file, closed_port, silent_port, smtp_server

__all__ = ["agents", "ca", "ca_file", "closed_port", "silent_port", "smtp_server"]


@pytest.fixture
def agents() -> Iterator[list[Agent]]:
    started: list[Agent] = []
    yield started
    for agent in started:
        if agent.proc.poll() is None:
            agent.kill()
        agent.close()
