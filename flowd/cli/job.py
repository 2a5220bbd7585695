"""``flowd job STREAM ID``: where one job is and how it ended, over :class:`flowd.Results`.

Its arguments are added by :func:`flowd.cli.parser._job`; this is what it does.
Exit status: 0 when Redis knows the job, 1 when it does not, 2 for bad usage
(a group the stream does not have).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from datetime import datetime
from typing import Any

from .._redis.connect import EXIT_FAILED, EXIT_OK, EXIT_USAGE, connect, resolve_url
from .._redis.keys import partition_streams
from ..errors import CommandError
from ..results import JobResult, JobStatus, Results

#: Lines of a traceback the text output shows without ``--full`` (its last ones: the
#: exception and the frames nearest to it).
TRACEBACK_LINES = 20
#: Characters of a value the text output shows without ``--full``.
VALUE_CHARS = 4000


def cmd_job(args: argparse.Namespace) -> int:
    """``flowd job STREAM ID``."""
    if not args.id:
        raise CommandError("the job id must not be empty", EXIT_USAGE)
    url, source = resolve_url(args.url)
    client = connect(url, source)
    streams = partition_streams(args.stream, args.partitions)  # checks --partitions
    if args.group is not None:
        _check_group(client, streams, args.group)
    results = Results(client, args.stream, group=args.group, partitions=args.partitions)
    result = results.get(args.id)
    if result is None:
        there = any(client.exists(stream) for stream in streams)
        why = "" if there else f"; there is no stream {args.stream!r} at this Redis either"
        print(
            f"flowd: no job with id {args.id!r} on {args.stream!r} (never enqueued there, "
            f"or its traces expired or were trimmed){why}",
            file=sys.stderr,
        )
        return EXIT_FAILED
    if args.json:
        print(json.dumps(job_dict(result, args.stream), indent=2, ensure_ascii=False))
    else:
        print(job_text(result, args.stream, full=args.full))
    return EXIT_OK


def _check_group(client: Any, streams: list[str], group: str) -> None:
    """A --group that an existing stream does not have is bad usage, as in ``flowd info``."""
    for stream in streams:
        if not client.exists(stream):
            continue
        names = [_text(info["name"]) for info in client.xinfo_groups(stream)]
        if group not in names:
            has = f"its groups: {', '.join(names)}" if names else "it has no consumer groups"
            raise CommandError(f"stream {stream!r} has no group {group!r}; {has}", EXIT_USAGE)


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat(timespec="milliseconds")


def job_dict(result: JobResult, stream: str) -> dict[str, Any]:
    """The job as one JSON-ready object: status in lower case, times ISO 8601 UTC."""
    out: dict[str, Any] = {"stream": stream}
    for item in dataclasses.fields(result):
        value = getattr(result, item.name)
        if isinstance(value, JobStatus):
            value = value.value
        elif isinstance(value, datetime):
            value = _iso(value)
        out[item.name] = value
    return out


def value_kept(result: JobResult) -> bool:
    """False for a success whose value was not kept (its queue has no ``result_ttl``):
    only a success's record, which holds the value, has a finish time."""
    return result.status is not JobStatus.SUCCEEDED or result.finished_at is not None


def job_text(result: JobResult, stream: str, *, full: bool = False) -> str:
    """The job for people: one ``name: value`` line each, then the value and traceback."""
    rows = [
        ("job", result.id),
        ("stream", stream),
        ("status", result.status.value),
        ("deliveries", str(result.deliveries)),
        ("consumer", result.consumer or "-"),
        ("enqueued", _iso(result.enqueued_at) or "-"),
        ("started", _iso(result.started_at) or "-"),
        ("finished", _iso(result.finished_at) or "-"),
    ]
    if result.trace_id is not None:
        rows.append(("trace", result.trace_id))
    if result.dead_letter_id is not None:
        rows.append(("dead letter", f"{result.dead_letter_id} (see flowd dlq list {stream})"))
    if result.error is not None:
        rows.append(("error", result.error))
    if result.status is JobStatus.SUCCEEDED:
        if value_kept(result):
            rows.append(("value", _value_text(result.value, full)))
        else:
            rows.append(("value", "not kept (the queue keeps values only with result_ttl)"))
    width = max(len(name) for name, _ in rows) + 2
    lines = [f"{name + ':':<{width}}{value}" for name, value in rows]
    if result.traceback:
        lines += ["traceback:", *_traceback_lines(result.traceback, full)]
    return "\n".join(lines)


def _value_text(value: Any, full: bool) -> str:
    text = json.dumps(value, ensure_ascii=False)
    if full or len(text) <= VALUE_CHARS:
        return text
    return f"{text[:VALUE_CHARS]}... ({len(text):,} characters in all; --full shows it whole)"


def _traceback_lines(traceback: str, full: bool) -> list[str]:
    lines = traceback.rstrip("\n").splitlines()
    cut = len(lines) - TRACEBACK_LINES
    shown = lines if full or cut <= 0 else lines[cut:]
    head = [] if full or cut <= 0 else [f"    ... ({cut} lines before; --full shows them)"]
    return head + [f"    {line}" for line in shown]
