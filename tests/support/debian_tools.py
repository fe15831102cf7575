"""Tests that need a Debian tool: skip with the reason where it is missing, fail under CI.

`make test` installs the tools when run as root (packaging/ensure-tools), so a skip means a
developer without root; CI (CI=true) installs everything, so there a missing tool is a failure.
"""

from __future__ import annotations

import os
import shutil

import pytest


def unavailable(reason: str) -> None:
    """Skip this test for `reason`; under CI=true fail instead: CI must run everything."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (a skip is a failure under CI=true)")
    pytest.skip(reason)


def need(command: str, package: str) -> str:
    """The path of `command`, or skip (fail under CI) naming the package that provides it."""
    path = shutil.which(command)
    if path is None:
        unavailable(f"{command} not found: install Debian's {package} (as root `make test` does)")
    assert path is not None
    return path
