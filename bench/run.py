"""`make bench`: tailmail against rsyslog, syslog-ng and the bare Python loop, on the same input.

Scenarios (see README, "Performance"):
  catch-up   the file exists, read from its beginning; every program, alternating, median of N
  live       tailmail runs first; a writer appends at full speed, then at a fixed 20,000 lines/s;
             time from append to stored, p50 and p99
  idle       a minute with no writes: CPU seconds and wake-ups
  rules      10, 100 and 1,000 rules of realistic variety: CPU per event
  memory     peak RSS over 1M and 5M lines, and with a 50 MB line in the input

Every output is checked line for line against the expected selection. The table goes to stdout,
the figures to bench/out/results.json. Times are wall clock from process start (so start-up
counts) until the output is complete; CPU is user + system of the whole process at that moment.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import gen, peers, procstat, rulesets  # noqa: E402

OUT = ROOT / "bench" / "out"
DATA = OUT / "data"
CACHE = ROOT / "bench" / ".cache"
MB = 1 << 20

TARGETS = {
    "catch-up events/s": 420_000,
    "catch-up vs bare loop": 0.8,
    "CPU µs/event": 2.5,
    "1,000 rules vs 10": 2.0,
    "peak RSS MB": 60,
    "live p99 ms at 20,000 lines/s": 250,
    "idle CPU %": 0.1,
}


@dataclass
class Run:
    program: str
    lines: int
    seconds: float
    cpu_seconds: float
    peak_rss: int
    check: str

    @property
    def rate(self) -> float:
        return self.lines / self.seconds

    @property
    def cpu_us(self) -> float:
        return self.cpu_seconds / self.lines * 1e6


@dataclass
class Results:
    machine: dict[str, Any]
    catch_up: dict[str, list[Run]] = field(default_factory=dict)
    live: dict[str, dict[str, float]] = field(default_factory=dict)
    idle: dict[str, float] = field(default_factory=dict)
    rules: dict[str, dict[str, float]] = field(default_factory=dict)
    memory: dict[str, dict[str, Any]] = field(default_factory=dict)
    targets: dict[str, dict[str, Any]] = field(default_factory=dict)


# --- running tailmail --------------------------------------------------------------------------


def _rotate_far_away() -> str:
    """A rotate_at twelve hours from now, so no rotation moves the store during a run."""
    return (datetime.now() + timedelta(hours=12)).strftime("%H:%M")


def write_config(
    work: Path, source: str, rules_dir: Path, start_at: str = "beginning", max_line: str = "1MiB"
) -> Path:
    config = work / "config.yaml"
    config.write_text(
        f"""state_dir: {work / "state"}
rules_dir: {rules_dir}
sources:
  - name: app
    path: "{source}"
    start_at: {start_at}
    time_field: ts
    max_line_bytes: {max_line}
reports:
  - name: daily
    store: {work / "store" / "daily.jsonl"}
    rotate_at: "{_rotate_far_away()}"
    to: [ops@example.com]
smtp:
  host: 127.0.0.1
  port: 9
  security: none
  from: tailmail@example.com
log:
  level: warning
  format: json
"""
    )
    return config


def fresh(work: Path) -> Path:
    if work.exists():
        subprocess.run(["rm", "-rf", str(work)], check=True)
    work.mkdir(parents=True)
    return work


class Agent:
    """`tailmail run` as a child process, with a NOTIFY_SOCKET to learn when it is ready."""

    def __init__(self, work: Path, config: Path) -> None:
        self.work = work
        self.store = work / "store" / "daily.jsonl"
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(str(work / "notify.sock"))
        env = dict(os.environ, NOTIFY_SOCKET=str(work / "notify.sock"))
        self.log = (work / "agent.log").open("wb")
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "agent", "run", "-c", str(config)],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=ROOT,
        )

    def wait_ready(self, timeout: float = 60) -> None:
        self.notify.settimeout(timeout)
        while True:
            message = self.notify.recv(4096)
            if b"READY=1" in message.split(b"\n"):
                return

    def stop(self) -> None:
        procstat.stop(self.proc)
        self.notify.close()
        self.log.close()
        if self.proc.returncode not in (0, None):
            raise RuntimeError(f"tailmail exited {self.proc.returncode}; see {self.log.name}")


def check_store(store: Path, expected: Path) -> str:
    return peers.check_output(store, expected)


def run_tailmail(work: Path, source: Path, expected: Path, rules_dir: Path) -> Run:
    fresh(work)
    agent = Agent(work, write_config(work, str(source), rules_dir))
    try:
        done = procstat.wait_for_size(
            agent.store, expected.stat().st_size, agent.proc, timeout=1800
        )
        cpu, peak = procstat.cpu_seconds(agent.proc.pid), procstat.peak_rss(agent.proc.pid)
    finally:
        agent.stop()
    lines = _line_count(source)
    return Run(
        "tailmail", lines, done - agent.started, cpu, peak, check_store(agent.store, expected)
    )


def run_ceiling(work: Path, source: Path, expected: Path) -> Run:
    fresh(work)
    output = work / "selected.jsonl"
    start = time.monotonic()
    proc = subprocess.Popen([sys.executable, str(ROOT / "bench" / "ceiling.py"), source, output])
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.monotonic() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise RuntimeError(f"bench/ceiling.py exited {proc.returncode}")
    cpu = usage.ru_utime + usage.ru_stime
    return Run(
        "bare Python loop",
        _line_count(source),
        seconds,
        cpu,
        usage.ru_maxrss * 1024,
        peers.check_output(output, expected),
    )


def run_peer(installed: peers.Peers, name: str, work: Path, source: Path, expected: Path) -> Run:
    fresh(work)
    r = peers.run_peer(installed, name, source, work, expected.stat().st_size)
    return Run(
        name,
        _line_count(source),
        r.seconds,
        r.cpu_seconds,
        r.peak_rss,
        peers.check_output(r.output, expected),
    )


_counts: dict[Path, int] = {}


def _line_count(path: Path) -> int:
    if path not in _counts:
        with path.open("rb") as f:
            _counts[path] = sum(block.count(b"\n") for block in iter(lambda: f.read(MB), b""))
    return _counts[path]


# --- scenarios ---------------------------------------------------------------------------------


def catch_up(res: Results, source: Path, expected: Path, reps: int, with_peers: bool) -> None:
    rules = fresh(OUT / "rules-filter")
    (rules / "filter.yaml").write_text(rulesets.BENCH_FILTER)
    programs: list[tuple[str, Callable[[], Run]]] = [
        ("tailmail", lambda: run_tailmail(OUT / "work-tailmail", source, expected, rules)),
        ("bare Python loop", lambda: run_ceiling(OUT / "work-ceiling", source, expected)),
    ]
    if with_peers:
        installed = peers.install(CACHE)
        for name in peers.PEER_NAMES:
            programs.append(
                (name, lambda n=name: run_peer(installed, n, OUT / f"work-{n}", source, expected))
            )
        res.machine["peers"] = {
            p.package: p.version for p in (installed.rsyslog, installed.syslog_ng)
        }
    for rep in range(reps):
        # Alternate, and rotate the order, so no program always runs on a warmer machine.
        order = programs[rep % len(programs) :] + programs[: rep % len(programs)]
        for name, run in order:
            r = run()
            res.catch_up.setdefault(name, []).append(r)
            _say(f"  catch-up {rep + 1}/{reps} {name}: {r.rate:,.0f} events/s, {r.check}")


def _writer_batches(source: Path, lines: int, batch: int) -> Iterator[tuple[bytes, int]]:
    """The first `lines` lines of `source` in batches, each with its selected bytes."""
    with source.open("rb") as f:
        taken = 0
        while taken < lines:
            chunk = [f.readline() for _ in range(min(batch, lines - taken))]
            taken += len(chunk)
            chosen = sum(len(line) for line in chunk if gen.selected(line.rstrip(b"\n")))
            yield b"".join(chunk), chosen


def live(res: Results, source: Path, lines: int, rate: float | None, label: str) -> None:
    """A writer appends while tailmail runs; latency from each append to its selection stored."""
    work = fresh(OUT / "work-live")
    rules = fresh(OUT / "rules-filter")
    (rules / "filter.yaml").write_text(rulesets.BENCH_FILTER)
    target = work / "app.jsonl"
    target.touch()
    agent = Agent(work, write_config(work, str(target), rules, start_at="end"))
    batch = 100 if rate else 1000
    batches = list(_writer_batches(source, lines, batch))  # prepared first: the writer only writes
    total = sum(chosen for _, chosen in batches)
    seen: list[tuple[float, int]] = []
    stop = threading.Event()

    def watch() -> None:
        size = 0
        while not stop.is_set():
            current = agent.store.stat().st_size if agent.store.exists() else 0
            if current != size:
                size = current
                seen.append((time.monotonic(), size))
            time.sleep(0.001)

    try:
        agent.wait_ready()
        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        written: list[tuple[float, int]] = []  # (time the append returned, selected bytes so far)
        so_far = 0
        start = time.monotonic()
        with target.open("ab", buffering=0) as out:
            for n, (data, chosen) in enumerate(batches):
                if rate:
                    due = start + n * batch / rate
                    delay = due - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                out.write(data)
                so_far += chosen
                if chosen:
                    written.append((time.monotonic(), so_far))
        last_write = time.monotonic()
        done = procstat.wait_for_size(agent.store, total, agent.proc, timeout=600)
        stop.set()
        watcher.join()
    finally:
        stop.set()
        agent.stop()
    latencies = []
    i = 0
    for t_written, need in written:
        while i < len(seen) and seen[i][1] < need:
            i += 1
        if i == len(seen):
            raise RuntimeError("the store never reached what was written")
        latencies.append(max(0.0, seen[i][0] - t_written))
    latencies.sort()
    res.live[label] = {
        "lines": lines,
        "write_rate": lines / (last_write - start),
        "events_per_s": lines / (done - start),
        "p50_ms": latencies[len(latencies) // 2] * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99)] * 1000,
        "max_ms": latencies[-1] * 1000,
        "check": check_store(agent.store, _prefix_expected(source, lines)),
    }
    _say(f"  live {label}: {res.live[label]}")


def _prefix_expected(source: Path, lines: int) -> Path:
    """The expected selection of the first `lines` lines of `source` (cached)."""
    path = DATA / f"{source.stem}.first{lines}.expected"
    if not path.exists():
        with source.open("rb") as f, path.open("wb") as out:
            for _ in range(lines):
                line = f.readline()
                if gen.selected(line.rstrip(b"\n")):
                    out.write(line)
    return path


def _context_switches(pid: int) -> int:
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        for line in (task / "status").read_text().splitlines():
            if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                total += int(line.split()[1])
    return total


def idle(res: Results, source: Path, seconds: float) -> None:
    """Caught up on a small file, then nothing written for `seconds`: CPU used and wake-ups."""
    work = fresh(OUT / "work-idle")
    rules = fresh(OUT / "rules-filter")
    (rules / "filter.yaml").write_text(rulesets.BENCH_FILTER)
    target = work / "app.jsonl"
    with source.open("rb") as f, target.open("wb") as out:
        out.writelines(f.readline() for _ in range(10_000))
    agent = Agent(work, write_config(work, str(target), rules))
    try:
        agent.wait_ready()
        expected = _prefix_expected(source, 10_000)
        procstat.wait_for_size(agent.store, expected.stat().st_size, agent.proc, timeout=60)
        time.sleep(2)  # let the last commit and status settle before the window opens
        pid = agent.proc.pid
        cpu0, switches0, t0 = procstat.cpu_seconds(pid), _context_switches(pid), time.monotonic()
        time.sleep(seconds)
        cpu1, switches1, t1 = procstat.cpu_seconds(pid), _context_switches(pid), time.monotonic()
    finally:
        agent.stop()
    res.idle = {
        "seconds": t1 - t0,
        "cpu_seconds": cpu1 - cpu0,
        "cpu_percent": (cpu1 - cpu0) / (t1 - t0) * 100,
        "wakeups": switches1 - switches0,
    }
    _say(f"  idle: {res.idle}")


def many_rules(res: Results, source: Path, counts: list[int], reps: int) -> None:
    """The same file through 10, 100, 1,000 rules: CPU per event once tailmail is running (the
    file is linked in after READY, so start-up and rule loading are not in the figure)."""
    for count in counts:
        rules = fresh(OUT / f"rules-{count}")
        rulesets.write(rules, count)
        figures = []
        for _ in range(reps):
            work = fresh(OUT / "work-rules")
            (work / "in").mkdir()
            agent = Agent(work, write_config(work, str(work / "in" / "*.jsonl"), rules))
            try:
                agent.wait_ready()
                pid = agent.proc.pid
                cpu0, t0 = procstat.cpu_seconds(pid), time.monotonic()
                os.link(source, work / "in" / "app.jsonl")  # a new file: read from its start
                done = procstat.wait_for_size(
                    agent.store, 1 << 62, agent.proc, timeout=1800, stall=3.0
                )
                cpu = procstat.cpu_seconds(pid) - cpu0
            finally:
                agent.stop()
            figures.append((cpu, done - t0))
        cpu, seconds = statistics.median(figures)
        lines = _line_count(source)
        check = check_rules(rules, source, agent.store)
        res.rules[str(count)] = {
            "cpu_us": cpu / lines * 1e6,
            "events_per_s": lines / seconds,
            "selected": agent.store.read_bytes().count(b"\n"),
            "check": check,
        }
        _say(f"  rules {count}: {res.rules[str(count)]}")


def check_rules(rules_dir: Path, source: Path, store: Path, sample: int = 20_000) -> str:
    """Every rule tried on every one of the first `sample` events, without the index: the
    store must begin with exactly that selection."""
    import orjson

    from agent.core.periods import system_timezone
    from agent.rules import load_rules_path
    from agent.tail.eventtime import time_reader

    loaded, problems = load_rules_path(rules_dir, ["app"], ["daily"])
    if problems:
        return f"rules did not load: {problems[0]}"
    at = time_reader("ts", system_timezone(), lambda: datetime.now().astimezone())
    chosen = []
    with source.open("rb") as f:
        for _ in range(sample):
            line = f.readline()
            try:
                event = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if type(event) is not dict:
                continue
            if any(rule.enabled and rule.selects(event, at) for rule in loaded):
                chosen.append(line)
    want = b"".join(chosen)
    with store.open("rb") as f:
        got = f.read(len(want))
    return "ok" if got == want else "differs from trying every rule"


def memory(res: Results, source5: Path | None, expected5: Path | None, base: Path) -> None:
    rules = fresh(OUT / "rules-filter")
    (rules / "filter.yaml").write_text(rulesets.BENCH_FILTER)
    if source5 is not None and expected5 is not None:
        r = run_tailmail(OUT / "work-memory", source5, expected5, rules)
        res.memory["5M lines"] = {"peak_rss": r.peak_rss, "check": r.check, "rate": r.rate}
        _say(f"  memory 5M: {r.peak_rss / MB:.1f} MB, {r.check}")
    # A 50 MB line between two runs of ordinary lines: skipped as too long, RSS stays flat.
    big = DATA / "with-50MB-line.jsonl"
    big_expected = DATA / "with-50MB-line.expected"
    if not big.exists():
        with base.open("rb") as f, big.open("wb") as out, big_expected.open("wb") as exp:
            for n in range(200_000):
                if n == 100_000:
                    out.write(b'{"level":"error","event":"login.failed","msg":"')
                    out.write(b"x" * (50 * MB))
                    out.write(b'"}\n')
                line = f.readline()
                out.write(line)
                if gen.selected(line.rstrip(b"\n")):
                    exp.write(line)
    r = run_tailmail(OUT / "work-memory", big, big_expected, rules)
    res.memory["50 MB line"] = {"peak_rss": r.peak_rss, "check": r.check}
    _say(f"  memory 50 MB line: {r.peak_rss / MB:.1f} MB, {r.check}")


# --- the table ---------------------------------------------------------------------------------


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _median_run(runs: list[Run]) -> dict[str, Any]:
    checks = sorted({r.check for r in runs})
    return {
        "events_per_s": statistics.median(r.rate for r in runs),
        "cpu_us": statistics.median(r.cpu_us for r in runs),
        "peak_rss": statistics.median(r.peak_rss for r in runs),
        "check": ", ".join(checks),
        "runs": len(runs),
    }


def evaluate(res: Results) -> None:
    t: dict[str, dict[str, Any]] = {}

    def target(name: str, value: float | None, ok: bool | None) -> None:
        t[name] = {"target": TARGETS[name], "value": value, "met": ok}

    if "tailmail" in res.catch_up:
        tm = _median_run(res.catch_up["tailmail"])
        target("catch-up events/s", tm["events_per_s"], tm["events_per_s"] >= 420_000)
        target("CPU µs/event", tm["cpu_us"], tm["cpu_us"] <= 2.5)
        if "bare Python loop" in res.catch_up:
            ratio = (
                tm["events_per_s"] / _median_run(res.catch_up["bare Python loop"])["events_per_s"]
            )
            target("catch-up vs bare loop", ratio, ratio >= 0.8)
        peaks = [tm["peak_rss"] / MB] + [m["peak_rss"] / MB for m in res.memory.values()]
        flat = True
        if "5M lines" in res.memory:
            flat = res.memory["5M lines"]["peak_rss"] <= tm["peak_rss"] * 1.1
        target("peak RSS MB", max(peaks), max(peaks) <= 60 and flat)
    if "10" in res.rules and "1000" in res.rules:
        ratio = res.rules["1000"]["cpu_us"] / res.rules["10"]["cpu_us"]
        target("1,000 rules vs 10", ratio, ratio <= 2.0)
    if "20,000 lines/s" in res.live:
        p99 = res.live["20,000 lines/s"]["p99_ms"]
        target("live p99 ms at 20,000 lines/s", p99, p99 <= 250)
    if res.idle:
        target("idle CPU %", res.idle["cpu_percent"], res.idle["cpu_percent"] < 0.1)
    res.targets = t


def table(res: Results) -> str:
    out = []
    lines = next(iter(res.catch_up.values()))[0].lines if res.catch_up else 0
    if res.catch_up:
        out.append(
            f"Catch-up: {lines:,} lines, bench filter, median of {len(next(iter(res.catch_up.values())))} runs"
        )
        out.append(
            f"{'program':<20} {'events/s':>10} {'CPU µs/event':>13} {'peak RSS':>10}  output"
        )
        for name, runs in res.catch_up.items():
            m = _median_run(runs)
            out.append(
                f"{name:<20} {m['events_per_s']:>10,.0f} {m['cpu_us']:>13.2f} "
                f"{m['peak_rss'] / MB:>7.1f} MB  {m['check']}"
            )
    if res.live:
        out.append("")
        out.append(
            f"{'live tail':<20} {'lines':>10} {'events/s':>10} {'p50 ms':>8} {'p99 ms':>8}  output"
        )
        for label, f in res.live.items():
            out.append(
                f"{label:<20} {f['lines']:>10,} {f['events_per_s']:>10,.0f} {f['p50_ms']:>8.1f} "
                f"{f['p99_ms']:>8.1f}  {f['check']}"
            )
    if res.idle:
        out.append("")
        out.append(
            f"idle {res.idle['seconds']:.0f} s: {res.idle['cpu_seconds']:.3f} CPU s "
            f"({res.idle['cpu_percent']:.3f} %), {res.idle['wakeups']} wake-ups"
        )
    if res.rules:
        out.append("")
        out.append(f"{'rules':<20} {'CPU µs/event':>13} {'events/s':>10} {'selected':>10}  output")
        for count, f in res.rules.items():
            out.append(
                f"{count:<20} {f['cpu_us']:>13.2f} {f['events_per_s']:>10,.0f} "
                f"{f['selected']:>10,}  {f['check']}"
            )
    if res.memory:
        out.append("")
        for label, f in res.memory.items():
            out.append(
                f"memory, {label}: peak RSS {f['peak_rss'] / MB:.1f} MB, output {f['check']}"
            )
    if res.targets:
        out.append("")
        out.append("Targets")
        for name, f in res.targets.items():
            mark = "met" if f["met"] else "NOT MET"
            value = f["value"]
            shown = f"{value:,.2f}" if isinstance(value, float) and value < 100 else f"{value:,.0f}"
            out.append(f"  {name:<32} {shown:>10}  (target {f['target']:,})  {mark}")
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--lines", type=int, default=1_000_000)
    ap.add_argument(
        "--big-lines", type=int, default=5_000_000, help="for the memory scenario; 0: skip"
    )
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--idle-seconds", type=float, default=60)
    ap.add_argument("--rules", default="10,100,1000")
    ap.add_argument("--only", default="catch-up,live,idle,rules,memory")
    ap.add_argument("--no-peers", action="store_true", help="tailmail and the bare loop only")
    ap.add_argument(
        "--quick", action="store_true", help="200,000 lines, 1 run, no 5M file, 10 s idle"
    )
    args = ap.parse_args()
    if args.quick:
        args.lines, args.big_lines, args.reps, args.idle_seconds = 200_000, 0, 1, 10
    only = set(args.only.split(","))
    OUT.mkdir(parents=True, exist_ok=True)
    res = Results(
        machine={
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "kernel": platform.release(),
            "lines": args.lines,
            "reps": args.reps,
            "date": datetime.now().isoformat(timespec="seconds"),
        }
    )
    # Byte-compiled once, as an installed package is: otherwise every start of tailmail would
    # compile its modules again where PYTHONDONTWRITEBYTECODE is set.
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "agent")], check=True)
    _say(f"generating {args.lines:,} lines (cached in {DATA})")
    source, expected = gen.ensure(DATA, args.lines)
    if "catch-up" in only:
        catch_up(res, source, expected, args.reps, not args.no_peers)
    if "live" in only:
        live(res, source, min(args.lines, 1_000_000), None, "full speed")
        live(res, source, min(args.lines, 300_000), 20_000, "20,000 lines/s")
    if "idle" in only:
        idle(res, source, args.idle_seconds)
    if "rules" in only:
        many_rules(res, source, [int(n) for n in args.rules.split(",")], args.reps)
    if "memory" in only:
        big = gen.ensure(DATA, args.big_lines) if args.big_lines else (None, None)
        memory(res, big[0], big[1], source)
    evaluate(res)
    text = table(res)
    print(text)
    (OUT / "results.json").write_text(
        json.dumps(
            {
                **asdict(res),
                "catch_up": {
                    k: [asdict(r) | {"rate": r.rate, "cpu_us": r.cpu_us} for r in v]
                    for k, v in res.catch_up.items()
                },
                "table": text,
            },
            indent=2,
            ensure_ascii=False,
        )
    )
    print(f"\nfigures: {OUT / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
