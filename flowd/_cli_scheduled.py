"""``flowd scheduled list|cancel STREAM``: the command line over :class:`ScheduledJobs`."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

from ._keys import partition_streams
from .errors import ConfigurationError
from .scheduled import ScheduledJobs

#: Adds a shared option (--url, --partitions) to a subcommand's parser.
OptionAdder = Callable[[argparse.ArgumentParser], None]

#: Exit statuses, as in flowd.cli (which this module must not import: no cycle).
EXIT_OK, EXIT_FAILED = 0, 1


def add_parser(
    sub: Any,
    url_option: OptionAdder,
    partitions_option: OptionAdder,
    connect: Callable[[str | None], Any],
) -> argparse.ArgumentParser:
    """Register the ``scheduled`` subcommand on ``flowd``'s subparsers.

    :param connect: the CLI's client for a ``--url`` value (None: the default URL).
    """
    parser: argparse.ArgumentParser = sub.add_parser(
        "scheduled", help="list or cancel delayed jobs; show periodic schedules"
    )
    parser.add_argument("action", choices=["list", "cancel"])
    parser.add_argument("stream", help="the queue's stream")
    parser.add_argument("ids", nargs="*", help="scheduled-job ids to cancel (see scheduled list)")
    parser.add_argument("--limit", type=int, default=100, help="most jobs listed per stream")
    parser.add_argument("--offset", type=int, default=0, help="skip this many jobs (due order)")
    parser.add_argument("--json", action="store_true")
    partitions_option(parser)
    url_option(parser)
    parser.set_defaults(func=cmd_scheduled, connect=connect)
    return parser


def cmd_scheduled(args: argparse.Namespace) -> int:
    """Run ``flowd scheduled``; returns the exit status.

    :raises ConfigurationError: bad usage (the CLI exits 2 with its message).
    """
    client = args.connect(args.url)
    streams = [ScheduledJobs(client, s) for s in partition_streams(args.stream, args.partitions)]
    if args.action == "list":
        if args.ids:
            raise ConfigurationError("list takes no ids")
        _list(streams, args)
        return EXIT_OK
    if not args.ids:
        raise ConfigurationError("cancel needs scheduled-job ids (see flowd scheduled list)")
    status = EXIT_OK
    for job_id in args.ids:
        if any(jobs.cancel(job_id) for jobs in streams):
            print(f"cancelled {job_id}")
        else:
            print(f"not scheduled (already moved to the stream, or unknown): {job_id}")
            status = EXIT_FAILED
    return status


def _list(streams: list[ScheduledJobs], args: argparse.Namespace) -> None:
    data: list[dict[str, Any]] = []
    for jobs in streams:
        data.append(
            {
                "stream": jobs.stream,
                "scheduled": jobs.count(),
                "jobs": [job.to_dict() for job in jobs.list(args.offset, args.limit)],
                "schedules": [state.to_dict() for state in jobs.schedule_states()],
            }
        )
    if args.json:
        print(json.dumps(data[0] if len(data) == 1 else data, indent=2))
        return
    for part in data:
        print(f"stream {part['stream']}: {part['scheduled']} scheduled jobs")
        for job in part["jobs"]:
            print(f"{job['id']}  due={job['due']}  fields={json.dumps(job['fields'])}")
        for state in part["schedules"]:
            print(
                f"schedule {state['name']} ({state['spec']}): last {state['last_run'] or 'never'}"
                f", next {state['next_run'] or 'unknown'}"
            )
