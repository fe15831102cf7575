"""The command line: parse arguments, call the agent, print, choose the exit code.

Exit codes: 0 success, 1 runtime failure, 2 usage or configuration error. Only this module
prints; everything below it raises errors that carry what the operator needs to read.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from agent import __version__
from agent.config.load import config_path, load_config
from agent.config.model import Config
from agent.config.yamlfile import ProblemsError
from agent.core.errors import StateDamaged

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


class Failure(Exception):
    """A runtime failure with a sentence for the operator: exit 1."""


class Usage(Exception):
    """A wrong argument, with a sentence for the operator: exit 2."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        result: int = args.func(args)
        return result
    except ProblemsError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        n = len(exc.problems)
        print(f"{n} problem{'s' if n != 1 else ''} found", file=sys.stderr)
        return EXIT_USAGE
    except Failure as exc:
        print(f"tailmail: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except Usage as exc:
        print(f"tailmail: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except StateDamaged as exc:
        # Not a crash to restart from: the same state would fail the same way (systemd does not
        # restart on exit 2). The sentence names the file and what to do.
        print(f"tailmail: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_FAILURE


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tailmail",
        description="Tail JSON event logs, select events with rules, email a daily report.",
    )
    parser.add_argument("--version", action="version", version=f"tailmail {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def command(name: str, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.add_argument(
            "-c",
            "--config",
            help="config file (default: $TAILMAIL_CONFIG, then /etc/tailmail/config.yaml)",
        )
        return p

    p = command("run", "run the service in the foreground")
    p.set_defaults(func=cmd_run)
    p = command("check", "validate the config and every rule file")
    p.set_defaults(func=cmd_check)
    p = command("test-email", "send a test message and explain any failure")
    p.add_argument("--to", help="recipient (default: the first report's first recipient)")
    p.set_defaults(func=cmd_test_email)
    p = command("test-rules", "show which rules match the events in FILEs; changes nothing")
    p.add_argument("--rules", help="a rule file or directory (default: the config's rules_dir)")
    p.add_argument("--source", help="evaluate as events of this source (its time_field, its rules)")
    p.add_argument(
        "--show", type=int, default=3, help="first matches to print per rule (default 3)"
    )
    p.add_argument("files", nargs="+", metavar="FILE", help="JSON lines; - for standard input")
    p.set_defaults(func=cmd_test_rules)
    p = command("rotate", "close the current period now and queue its report")
    p.add_argument("--report", help="only this report (default: all)")
    p.set_defaults(func=cmd_rotate)
    p = command("status", "show sources, reports and the outbox")
    p.set_defaults(func=cmd_status)
    report = sub.add_parser(
        "report",
        help="report preview: the current period's report email, without rotating or sending",
        description="Look at a report email before it is sent.",
    )
    actions = report.add_subparsers(dest="action", metavar="ACTION")
    p = actions.add_parser(
        "preview",
        help="build the report of the current period (or of a sample file) as the rotation "
        "would, without rotating, sending or writing any state",
        description="Build the report of the current period (or of a sample file) as the "
        "rotation would, without rotating, sending or writing any state; safe while the "
        "service runs. Prints the plain-text part unless --out or --eml is given.",
    )
    p.add_argument(
        "-c",
        "--config",
        help="config file (default: $TAILMAIL_CONFIG, then /etc/tailmail/config.yaml)",
    )
    p.add_argument("--report", help="the report to preview (default: the first in the config)")
    p.add_argument("--out", metavar="FILE.html", help="write the HTML part to FILE.html")
    p.add_argument("--eml", metavar="FILE.eml", help="write the whole message, for a mail client")
    p.add_argument(
        "--sample",
        metavar="FILE",
        help="build it from the JSON lines of FILE instead of the current period",
    )
    p.add_argument(
        "--source",
        help="with --sample: read FILE as this source's events (default: the first source)",
    )
    p.set_defaults(func=cmd_report_preview)
    report.set_defaults(func=lambda _: _help(report))
    p = sub.add_parser("demo", help="a self-contained demonstration with a local SMTP sink")
    p.add_argument("--dir", help="folder to write the demo into (default: a new temporary folder)")
    p.set_defaults(func=cmd_demo)
    return parser


def _help(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return EXIT_USAGE


def _config(args: argparse.Namespace) -> Config:
    return load_config(config_path(args.config))


# ---- run -------------------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    from agent.service import service
    from agent.service.control import Busy
    from agent.service.log import setup

    path = config_path(args.config)
    config = load_config(path)
    setup(config.log)
    try:
        return asyncio.run(service.run(path, config))
    except Busy as exc:
        raise Failure(str(exc)) from None
    except PermissionError as exc:
        # Restarting would fail the same way: a configuration error (exit 2), not a crash.
        raise Usage(
            f"cannot start: {exc}; the state_dir must belong to the user tailmail runs as"
        ) from None
    except OSError as exc:
        raise Failure(f"cannot start: {exc}") from None


# ---- check -----------------------------------------------------------------------------------


def cmd_check(args: argparse.Namespace) -> int:
    from agent.service.check import check

    path = config_path(args.config)
    checked = check(path)
    for warning in checked.warnings:
        print(warning, file=sys.stderr)
    config = checked.config
    print(
        f"{path}: OK: {len(config.sources)} source(s), {len(config.reports)} report(s), "
        f"{checked.rules} rule(s) in {config.rules_dir}"
    )
    return EXIT_OK


# ---- test-email ------------------------------------------------------------------------------


def cmd_test_email(args: argparse.Namespace) -> int:
    from agent.config.load import check_address
    from agent.deliver.doctor import test_email

    config = _config(args)
    to = args.to or config.reports[0].to[0]
    # --to is the one address `check` has not seen: the same validation, so that no line break
    # reaches a header or an SMTP command.
    wrong = check_address(to)
    if wrong:
        print(f"tailmail: --to: {wrong}", file=sys.stderr)
        return EXIT_USAGE
    # The doctor compares the server's SIZE limit with the biggest report the config may send.
    attaching = [r for r in config.reports if r.attach]
    biggest = max(attaching, key=lambda r: r.max_attachment_bytes, default=None)
    largest = (biggest.name, biggest.max_attachment_bytes) if biggest else None
    warnings: list[str] = []

    def say(line: str) -> None:
        print(line, flush=True)

    failure = asyncio.run(
        test_email(config.smtp, to, say, largest_attachment=largest, warn=warnings.append)
    )
    if failure is not None:
        print(f"FAILED: {failure.advice()}", file=sys.stderr)
        return EXIT_FAILURE
    print(f"OK: test message accepted for {to}")
    for warning in warnings:
        print(f"WARNING: {warning}", file=sys.stderr)
    return EXIT_OK


# ---- test-rules ------------------------------------------------------------------------------


def _lines(files: Sequence[str]) -> Iterator[tuple[str, int, bytes]]:
    for name in files:
        stream = sys.stdin.buffer if name == "-" else open(name, "rb")  # noqa: SIM115
        try:
            for number, line in enumerate(stream, 1):
                yield name, number, line.rstrip(b"\n")
        finally:
            if stream is not sys.stdin.buffer:
                stream.close()


def cmd_test_rules(args: argparse.Namespace) -> int:
    from agent.service.testrules import NoSuchSource, rules_to_test, try_rules

    config: Config | None = None
    try:
        config = _config(args)
    except ProblemsError:
        if not args.rules:
            raise
    rules_path = Path(args.rules) if args.rules else config.rules_dir  # type: ignore[union-attr]
    try:
        rules, time_field = rules_to_test(config, rules_path, args.source)
    except NoSuchSource as exc:
        raise Failure(str(exc)) from None

    def skipped(name: str, number: int, reason: str) -> None:
        print(f"{name}:{number}: skipped: {reason}", file=sys.stderr)

    try:
        tested = try_rules(rules, time_field, _lines(args.files), args.show, skipped)
    except OSError as exc:
        raise Failure(f"cannot read input: {exc}") from None
    print(
        f"{tested.total} line(s) read, {tested.skipped} skipped, {tested.selected} selected by "
        "at least one rule"
    )
    for matches in tested.rules:
        print(f"\n{matches.name}: {matches.count} match(es)")
        for first in matches.firsts:
            print(f"  {first}")
    return EXIT_OK


# ---- rotate ----------------------------------------------------------------------------------


def cmd_rotate(args: argparse.Namespace) -> int:
    from agent.service.log import setup
    from agent.service.rotate import RotateFailed, rotate

    config = _config(args)
    if args.report and args.report not in {r.name for r in config.reports}:
        raise Failure(
            f"no report named {args.report!r}; reports: {', '.join(r.name for r in config.reports)}"
        )
    setup(config.log)
    try:
        done = rotate(config, args.report)
    except RotateFailed as exc:
        raise Failure(str(exc)) from None
    for problem in done.problems:
        print(problem, file=sys.stderr)
    for outbox_id in done.queued:
        print(f"queued {outbox_id}")
    where = (
        "the running service delivers it now"
        if done.by_service
        else "the service will deliver it when it next runs"
    )
    print(f"{len(done.queued)} report(s) queued; {where}")
    if done.failed:
        for outbox_id, why in done.failed.items():
            print(f"tailmail: the report {outbox_id} could not be built: {why}", file=sys.stderr)
        raise Failure("its period is closed; the service builds the report when it next runs")
    return EXIT_OK


# ---- status ----------------------------------------------------------------------------------


def cmd_status(args: argparse.Namespace) -> int:
    from agent.service.status import gather, lines

    for line in lines(gather(_config(args))):
        print(line)
    return EXIT_OK


# ---- report preview --------------------------------------------------------------------------


def cmd_report_preview(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from agent.rules.load import RuleBook
    from agent.service.log import setup
    from agent.service.preview import BadSample, NoPeriod, preview_current, preview_sample

    config = _config(args)
    names = [r.name for r in config.reports]
    if args.report and args.report not in names:
        raise Usage(f"--report: no report named {args.report!r}; reports: {', '.join(names)}")
    report = config.report(args.report) if args.report else config.reports[0]
    sources = [s.name for s in config.sources]
    if args.source and not args.sample:
        raise Usage("--source goes with --sample")
    if args.source and args.source not in sources:
        raise Usage(f"--source: no source named {args.source!r}; sources: {', '.join(sources)}")
    # The pipeline of --sample logs what the service would; the report says it all already.
    setup(replace(config.log, level="error"))
    rulebook = RuleBook(config.rules_dir, sources, names)
    for problem in rulebook.reload():
        print(f"warning: {problem} (previewed without it)", file=sys.stderr)
    try:
        if args.sample:
            source = next(s for s in config.sources if s.name == (args.source or sources[0]))
            rendered = preview_sample(config, report, rulebook, source, Path(args.sample))
        else:
            rendered = preview_current(config, report, rulebook)
    except BadSample as exc:
        raise Usage(str(exc)) from None
    except NoPeriod as exc:
        raise Failure(str(exc)) from None
    except OSError as exc:
        raise Failure(f"cannot build the preview: {exc}") from None
    written = []
    for name, data in ((args.out, rendered.html.encode()), (args.eml, rendered.message)):
        if name:
            try:
                Path(name).write_bytes(data)
            except OSError as exc:
                raise Failure(f"cannot write {name}: {exc.strerror or exc}") from None
            written.append(f"wrote {name} ({len(data):,} bytes)")
    if not written:
        sys.stdout.write(rendered.text)
        return EXIT_OK
    print(f"report {report.name}: {rendered.status.upper()}: {rendered.reason}")
    print(f"subject: {rendered.subject}")
    if rendered.attached:
        print(f"attachment: {rendered.attached}")
    for line in written:
        print(line)
    return EXIT_OK


# ---- demo ------------------------------------------------------------------------------------


def cmd_demo(args: argparse.Namespace) -> int:
    from agent.service.demo import run_demo

    try:
        return run_demo(Path(args.dir) if args.dir else None, sys.stdout)
    except (OSError, TimeoutError, RuntimeError) as exc:
        raise Failure(f"demo failed: {exc}") from None
