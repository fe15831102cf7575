"""Fault injection: the real agent, a fast writer, both source rotations, kill -9 again and again."""

from __future__ import annotations

import os
import random
from pathlib import Path

from faultrun import KINDS, STORE_MOMENTS, FaultRun, Plan


def test_kill_9_anywhere_loses_and_repeats_no_line(tmp_path: Path) -> None:
    """24 SIGKILLs through renames, copytruncates and store rotations at 10,000 lines/s: every
    selected line stored exactly once, in its file's order; no bad line stored."""
    seed = int(os.environ.get("TAILMAIL_FAULT_SEED") or random.randrange(2**32))
    print(f"seed {seed} (TAILMAIL_FAULT_SEED={seed} replays the same plan)")
    rng = random.Random(seed)
    # Every kill moment four times or more, and each step of a store rotation once.
    kinds = [kind for kind in KINDS for _ in range(4)]
    kinds += ["running", "after-rename", "after-copytruncate", "store-rotation"]
    rng.shuffle(kinds)
    moments = list(STORE_MOMENTS)
    rng.shuffle(moments)
    plan = Plan(seed=seed, kills=len(kinds), kinds=tuple(kinds), store_moments=tuple(moments))
    result = FaultRun(tmp_path, plan).run()
    print(result.summary())
    assert sum(result.kills.values()) >= 20
    assert result.rate >= 10_000, f"the writer managed only {result.rate:,.0f} lines/s"
    assert result.ok, result.report()
