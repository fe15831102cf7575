"""`make soak`: the fault-injection run of tests/test_faults.py, long: 1,000 kills, 1,000,000 lines.

    .venv/bin/python tests/support/soak.py [--kills N] [--lines N] [--rate N] [--seed N] [--workdir DIR]
    .venv/bin/python tests/support/soak.py --verify DIR     # check a kept run again

Prints lines written, selected, stored, lost, duplicated and kills; exits 1 if any line was
lost, duplicated, reordered or stored that should not be. The work directory (the agent's log,
the checkpoint after each kill) is kept when the run fails or --workdir is given.
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
from pathlib import Path

from faultrun import FaultRun, Plan, verify_again


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=1000)
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--rate", type=int, default=10_000, help="lines per second")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument(
        "--verify", type=Path, metavar="DIR", help="only check the stores of a finished run again"
    )
    args = parser.parse_args()
    if args.verify:
        verdict = verify_again(args.verify)
        print(
            f"stored {verdict.stored:,}, lost {len(verdict.lost):,}, duplicated "
            f"{len(verdict.duplicated):,}, reordered {len(verdict.reordered):,}, "
            f"foreign {len(verdict.foreign):,}"
        )
        print("\n".join(verdict.problems))
        return 0 if verdict.ok else 1
    seed = args.seed if args.seed is not None else random.randrange(2**32)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="tailmail-soak-"))
    print(f"soak: seed {seed}, {args.kills:,} kills, {args.lines:,} lines, {args.rate:,} lines/s")
    print(f"soak: workdir {workdir}", flush=True)
    plan = Plan(
        seed=seed, kills=args.kills, min_lines=args.lines, rate=args.rate, progress_every=50
    )
    result = FaultRun(workdir, plan, out=lambda line: print(line, flush=True)).run()
    v = result.verdict
    print(result.report() if not result.ok else result.summary())
    print(
        f"written {v.written:,}  selected {v.selected:,}  stored {v.stored:,}  "
        f"lost {len(v.lost):,}  duplicated {len(v.duplicated):,}  "
        f"kills {sum(result.kills.values()):,}  elapsed {result.elapsed:.0f} s"
    )
    if result.ok and args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
