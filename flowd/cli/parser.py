"""The ``flowd`` command: its arguments. What each subcommand does is in
:mod:`flowd.cli.commands`; the worker's signals, logging, ``--processes`` and
exit statuses are in :mod:`flowd.cli.runner`, shared with ``manage.py
flowd_worker`` and ``flask flowd worker``.

Exit status: 0 success; 1 an unclean stop or a failed command (e.g. ``dlq
requeue`` of an id that is not a dead letter, ``job`` of an id Redis knows
nothing of); 2 bad usage, a ``MODULE:ATTR``
that cannot be loaded, or a stream or group that does not exist; 3 Redis
unreachable or refusing the credentials.

A subcommand is one entry of :data:`COMMANDS`: its name, its help line and a
function that adds its arguments and sets ``func``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import PackageNotFoundError, version

from .._redis.connect import EXIT_USAGE, resolve_url
from .._redis.urls import DEFAULT_URL, redact_url
from .._version import __version__ as _source_version
from ..dashboard.cli import add_dashboard_parser
from . import commands as _commands
from . import job as _cli_job
from . import pause as _cli_pause
from . import runner as _runner
from . import scheduled as _cli_scheduled
from .supervisor import report_usage, take_usage_file

#: The distribution that installs the ``flowd`` package and command.
DISTRIBUTION = "flowd-queue"


def add_worker_options(parser: argparse.ArgumentParser, *, processes_note: str = "") -> None:
    """--processes, --burst, --shutdown-timeout and --connect-timeout: the options of
    ``flowd worker``, shared with the Django worker command."""
    parser.add_argument(
        "--processes",
        type=int,
        default=1,
        help=f"worker processes, each its own consumer (default 1{processes_note})",
    )
    parser.add_argument(
        "--burst", action="store_true", help="process the backlog, then exit (cron mode)"
    )
    parser.add_argument(
        "--shutdown-timeout",
        type=float,
        default=30.0,
        help="seconds running jobs get to finish on stop (default 30)",
    )
    parser.add_argument(
        "--connect-timeout",
        type=float,
        default=30.0,
        help="seconds to wait for Redis at start (default 30)",
    )


def _url_option(parser: argparse.ArgumentParser, default: str | None = None) -> None:
    parser.add_argument(
        "--url",
        help="Redis URL (redis://, rediss://, unix://, redis+cluster://); default: "
        f"$FLOWD_REDIS_URL, else {default or DEFAULT_URL}",
    )


def _partitions_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--partitions",
        type=int,
        default=1,
        help="the queue's partitions: show or act on each of its streams (default 1)",
    )


def _log_level_option(parser: argparse.ArgumentParser, default: str | None) -> None:
    parser.add_argument(
        "--log-level",
        default=default,
        choices=_runner.LOG_LEVELS,
        help="level of the log lines on stderr (default INFO)",
    )


def _worker(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    worker = sub.add_parser(
        "worker",
        help="run a queue in the foreground",
        description="Run a queue until SIGTERM or SIGINT (a SIGINT after that exits at once).",
    )
    worker.add_argument(
        "target", metavar="MODULE:ATTR", help="a flowd.Queue, or a callable returning one"
    )
    _url_option(worker)
    add_worker_options(worker)
    worker.add_argument("--worker-index", type=int, help=argparse.SUPPRESS)
    _log_level_option(worker, argparse.SUPPRESS)
    worker.set_defaults(func=_commands.cmd_worker)


def _info(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    info = sub.add_parser("info", help="show a stream, its groups and dead letters")
    info.add_argument("stream", help="the queue's stream")
    info.add_argument("--group", help="show only this consumer group (it must exist)")
    info.add_argument("--json", action="store_true", help="print JSON instead of text")
    _partitions_option(info)
    _url_option(info)
    info.set_defaults(func=_commands.cmd_info)


def _dlq(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    dlq = sub.add_parser("dlq", help="list, requeue or purge dead letters")
    actions = dlq.add_subparsers(dest="action", required=True, metavar="ACTION")
    helps = {
        "list": "print the dead letters of a stream, oldest first",
        "requeue": "move dead letters back to their stream, to run again",
        "purge": "delete dead letters",
    }
    for action, text in helps.items():
        parser = actions.add_parser(action, help=text, description=text[0].upper() + text[1:] + ".")
        parser.add_argument(
            "stream", help="the queue's stream (its dead letters are {stream}:dead)"
        )
        if action == "list":
            parser.add_argument(
                "--limit", type=int, default=100, help="print at most this many (default 100)"
            )
            parser.add_argument(
                "--traceback", action="store_true", help="print each one's last traceback too"
            )
        else:
            parser.add_argument("ids", nargs="*", help="dead-letter entry ids (see dlq list)")
            parser.add_argument(
                "--all", action="store_true", help=f"{action} every dead letter of the stream"
            )
        _partitions_option(parser)
        _url_option(parser)
        parser.set_defaults(func=_commands.cmd_dlq)


def _job(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    job = sub.add_parser(
        "job",
        help="show where one job is and how it ended",
        description="Show one job's state: its status (scheduled, waiting, running, retrying, "
        "succeeded, failed, dead, cancelled), deliveries, consumer, enqueued, started and "
        "finished times (UTC), last error and traceback, and the value it returned (kept "
        "only when its queue has result_ttl). Exit status 0 when the job is found, 1 when "
        "Redis knows no job with that id.",
    )
    job.add_argument("stream", help="the queue's stream")
    job.add_argument("id", metavar="ID", help="the job id that enqueue returned")
    job.add_argument(
        "--group", help="the consumer group whose view counts (default: every group's)"
    )
    job.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object (status in lower case, times ISO 8601 UTC, the value "
        "as JSON, the traceback whole)",
    )
    job.add_argument(
        "--full",
        action="store_true",
        help=f"print the whole traceback and value (by default the text shows the "
        f"traceback's last {_cli_job.TRACEBACK_LINES} lines and the value's first "
        f"{_cli_job.VALUE_CHARS:,} characters)",
    )
    _partitions_option(job)
    _url_option(job)
    job.set_defaults(func=_cli_job.cmd_job)


def _scheduled(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    scheduled = sub.add_parser(
        "scheduled", help="list or cancel delayed jobs; show periodic schedules"
    )
    actions = scheduled.add_subparsers(dest="action", required=True, metavar="ACTION")
    helps = {
        "list": "print the delayed jobs of a stream in due order, and its schedules",
        "cancel": "remove delayed jobs that are still waiting",
    }
    for action, text in helps.items():
        parser = actions.add_parser(action, help=text, description=text[0].upper() + text[1:] + ".")
        parser.add_argument("stream", help="the queue's stream")
        if action == "list":
            parser.add_argument(
                "--limit", type=int, default=100, help="print at most this many (default 100)"
            )
            parser.add_argument("--offset", type=int, default=0, help="skip this many first")
            parser.add_argument("--json", action="store_true", help="print JSON")
        else:
            parser.add_argument("ids", nargs="*", help="scheduled-job ids (see scheduled list)")
        _partitions_option(parser)
        _url_option(parser)
        parser.set_defaults(func=_cli_scheduled.cmd_scheduled)


def _pause(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    for command, text in (
        ("pause", "stop a queue's consumers reading new jobs; running jobs finish"),
        ("resume", "let a paused queue's consumers read again"),
    ):
        parser = sub.add_parser(command, help=text, description=text[0].upper() + text[1:] + ".")
        parser.add_argument(
            "stream", help="the queue's stream (a partitioned queue's base name: all partitions)"
        )
        parser.add_argument(
            "--group", help=f"{command} only this consumer group (default: every group)"
        )
        _url_option(parser)
        parser.set_defaults(func=_cli_pause.cmd_pause)


def _migrate(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    text = (
        "move keys of streams with a hash tag (e.g. {shop}:emails) from the layout "
        "before 0.2, where streams sharing a tag shared their keys, to their own"
    )
    migrate = sub.add_parser("migrate", help=text.split(" (")[0], description=text + ".")
    migrate.add_argument("streams", nargs="+", metavar="STREAM", help="streams to migrate")
    migrate.add_argument(
        "--scheduled-to",
        metavar="STREAM",
        help="the stream that takes the tag's delayed jobs and schedules, when several "
        "streams share the tag",
    )
    migrate.add_argument("--dry-run", action="store_true", help="say what would move")
    _url_option(migrate)
    migrate.set_defaults(func=_commands.cmd_migrate)


def _demo(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    demo = sub.add_parser(
        "demo",
        help="a self-contained tour: enqueue, process, recover",
        description="Enqueue jobs, process them, recover a crashed consumer's jobs and "
        "dead-letter a poison job, then remove every key it made.",
    )
    demo.add_argument(
        "--jobs", type=int, default=10_000, help="how many jobs to enqueue (default 10000)"
    )
    demo.add_argument(
        "--keep",
        action="store_true",
        help="keep the demo's stream and dead letters to look at afterwards (with --url)",
    )
    _url_option(demo, "a private redis-server started for the demo and removed after")
    demo.set_defaults(func=_commands.cmd_demo)


#: Every subcommand, in ``--help`` order: one function each that adds its parser.
COMMANDS: list[Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None]] = [
    _worker,
    _info,
    _dlq,
    _job,
    _scheduled,
    _pause,
    _migrate,
    _demo,
    add_dashboard_parser,
]


def distribution_version() -> str:
    """The installed distribution's version (the source's when not installed)."""
    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:
        return _source_version


def build_parser() -> argparse.ArgumentParser:
    """The parser of the ``flowd`` command and its subcommands."""
    parser = argparse.ArgumentParser(prog="flowd", description="flowd: jobs on Redis Streams")
    parser.add_argument(
        "--version",
        action="version",
        version=f"flowd {distribution_version()} ({DISTRIBUTION})",
        help="print the version and exit",
    )
    _log_level_option(parser, "INFO")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``flowd`` command; returns the exit status."""
    # Taken first: the app's own processes must not report to this one's supervisor.
    usage_file = take_usage_file()
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:
        if usage_file is not None and exc.code == EXIT_USAGE:
            report_usage(usage_file, "bad command-line arguments (see the error above)")
        raise
    args.log_level_given = any(a.startswith("--log-level") for a in (argv or sys.argv[1:]))
    _runner.configure_logging(args.log_level)
    try:
        status: int = args.func(args)
    except Exception as exc:
        failure = _runner.exit_status(exc, redact_url(resolve_url(getattr(args, "url", None))[0]))
        if failure is None:
            raise
        print(f"flowd: {failure}", file=sys.stderr)
        if failure.detail:
            print(failure.detail, file=sys.stderr)
        status = failure.status
        if usage_file is not None and status == EXIT_USAGE:
            report_usage(usage_file, str(failure))
    _runner.exit_now_if_stuck(status)
    return status
