"""The pipeline alone, in one process, over the bench log: the per-line cost, for profilers.

`make bench` times whole processes, start-up included. This runs Pipeline.pump in-process on
the same generated log and bench filter, without the service around it, so a profiler sees the
hot path and little else:

    .venv/bin/python bench/inproc.py [--lines N] [--ceiling | --rules N]
    valgrind --tool=callgrind .venv/bin/python bench/inproc.py --lines 200000
    .venv/bin/python -m cProfile -s tottime bench/inproc.py --lines 200000

With `--lines 1` it does all the set-up and one line: subtract its instruction count from a
longer run's and divide by the lines to get instructions per line. `--ceiling` runs the bare
loop (bench/ceiling.py) in-process instead. `--rules 10` (100, 1000) runs the many-rules set of
`make bench` (bench/rulesets.py) instead of the bench filter. The output is checked against the
expected selection (with `--rules`, against every rule tried on the first 20,000 events); the
work directory is bench/out/work-inproc.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import structlog  # noqa: E402

from agent.config.load import load_config  # noqa: E402
from agent.deliver.outbox import Outbox  # noqa: E402
from agent.pipeline.pipeline import Pipeline  # noqa: E402
from agent.rules.load import RuleBook  # noqa: E402
from bench import ceiling, gen, peers, rulesets  # noqa: E402
from bench.run import check_rules  # noqa: E402

WORK = ROOT / "bench" / "out" / "work-inproc"
DATA = ROOT / "bench" / "out" / "data"


def run_pipeline(source: Path, work: Path, rules: int = 0) -> Path:
    if rules:
        rulesets.write(work / "rules.d", rules)
    else:
        (work / "rules.d").mkdir(parents=True)
        (work / "rules.d" / "filter.yaml").write_text(rulesets.BENCH_FILTER)
    (work / "config.yaml").write_text(
        f"""state_dir: {work / "state"}
rules_dir: {work / "rules.d"}
sources: [{{name: app, path: "{source}", start_at: beginning, time_field: ts}}]
reports: [{{name: daily, store: "{work / "store" / "daily.jsonl"}", to: [ops@example.com]}}]
smtp: {{host: 127.0.0.1, port: 9, from: tailmail@example.com, security: none}}
"""
    )
    config = load_config(work / "config.yaml")
    book = RuleBook(config.rules_dir, ["app"], ["daily"])
    book.reload()
    pipeline = Pipeline(config, book, Outbox(config.state_dir / "outbox"))
    pipeline.open()
    while pipeline.pump():
        pass
    pipeline.close()
    return work / "store" / "daily.jsonl"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--lines", type=int, default=1_000_000)
    ap.add_argument("--ceiling", action="store_true", help="the bare loop instead of tailmail")
    ap.add_argument("--rules", type=int, default=0, help="this many rules of bench/rulesets.py")
    args = ap.parse_args()
    # The bench log's bad lines would be logged one by one: not what is measured here.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))
    source, expected = gen.ensure(DATA, args.lines)
    if WORK.exists():
        shutil.rmtree(WORK)
    WORK.mkdir(parents=True)
    cpu, wall = time.process_time(), time.perf_counter()
    if args.ceiling:
        output = WORK / "selected.jsonl"
        ceiling.main(str(source), str(output))
    else:
        output = run_pipeline(source, WORK, args.rules)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    program = "bare loop" if args.ceiling else "tailmail pipeline"  # set-up included, not imports
    if args.rules:
        program += f", {args.rules} rules"
        check = check_rules(WORK / "rules.d", source, output)
    else:
        check = peers.check_output(output, expected)
    print(
        f"{program}: {args.lines:,} lines, {cpu / args.lines * 1e6:.3f} CPU µs/line, "
        f"{wall / args.lines * 1e6:.3f} µs/line wall, output {check}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
