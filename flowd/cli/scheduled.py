"""``flowd scheduled list|cancel STREAM``: the command line over :class:`ScheduledJobs`.

Its arguments are added by :func:`flowd.cli.parser._scheduled`; this is what it does.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from .._redis.connect import EXIT_FAILED, EXIT_OK, EXIT_USAGE, connect, resolve_url
from .._redis.keys import partition_streams
from ..errors import CommandError
from ..scheduled import ScheduledJobs


def cmd_scheduled(args: argparse.Namespace) -> int:
    """``flowd scheduled list|cancel STREAM``."""
    if args.action == "list" and args.limit < 1:
        raise CommandError(f"--limit must be at least 1, not {args.limit}", EXIT_USAGE)
    if args.action == "list" and args.offset < 0:
        raise CommandError(f"--offset must be at least 0, not {args.offset}", EXIT_USAGE)
    if args.action == "cancel" and not args.ids:
        raise CommandError("cancel needs scheduled-job ids (see flowd scheduled list)", EXIT_USAGE)
    url, source = resolve_url(args.url)
    client = connect(url, source)
    streams = [ScheduledJobs(client, s) for s in partition_streams(args.stream, args.partitions)]
    if args.action == "list":
        _list(streams, args)
        return EXIT_OK
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
