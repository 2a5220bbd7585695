"""What the subcommands of ``flowd`` do, once :mod:`flowd.cli.parser` has parsed their arguments.

Each ``cmd_*`` takes the parsed arguments and returns an exit status, or
raises :class:`flowd.errors.CommandError` (see :mod:`flowd.cli.runner` for the
statuses). A stream, group or dead letter that is not there is an error that
names what is there, never an empty success.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import textwrap
from collections.abc import Collection
from typing import Any

from .._codec.display import task_rows
from .._redis.connect import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    check_url,
    client_address,
    connect,
    resolve_url,
    same_server,
)
from .._redis.keys import dead_letter_stream, partition_streams
from .._redis.urls import redact_url
from ..errors import CommandError
from ..flow.priorities import band_streams
from . import runner as _runner
from .target import load_queue

logger = logging.getLogger(__name__)

#: How many key names a "no such stream" error scans for streams that do exist.
_SCAN_LIMIT = 10_000
_NAMES_SHOWN = 10
_STREAM_ID = re.compile(r"\d+-\d+")


# -- flowd worker


def cmd_worker(args: argparse.Namespace) -> int:
    """``flowd worker MODULE:ATTR``."""
    url, source = resolve_url(args.url)
    if source != "the default":
        check_url(url, source)  # before the import: the app may build its client from it
    if args.url:
        os.environ["FLOWD_REDIS_URL"] = args.url  # for apps that build their client from it
    if args.processes < 1:
        raise CommandError(f"--processes must be at least 1, not {args.processes}", EXIT_USAGE)
    if args.processes > 1:
        # Each child imports the target itself: a bad one exits 2 there, and so do we.
        return _runner.supervise(
            args.target,
            args.processes,
            burst=args.burst,
            shutdown_timeout=args.shutdown_timeout,
            connect_timeout=args.connect_timeout,
            log_level=args.log_level,
        )
    queue = load_queue(args.target)
    if args.worker_index is not None:
        queue.consumer = f"{queue.consumer}-w{args.worker_index}"
    if args.url and not same_server(args.url, queue.client):
        logger.warning(
            "--url %s is not the server of %s's own client (%s): the queue uses its client",
            redact_url(args.url),
            args.target,
            client_address(queue.client),
        )
    return _runner.run(
        [queue],
        processes=1,
        burst=args.burst,
        shutdown_timeout=args.shutdown_timeout,
        connect_timeout=args.connect_timeout,
        log_level=args.log_level,
    )


# -- flowd info / dlq


def _client(args: argparse.Namespace) -> Any:
    url, source = resolve_url(args.url)
    return connect(url, source)


def _missing_stream(client: Any, stream: str) -> CommandError:
    """'no stream X', naming (some of) the streams that exist."""
    found: list[str] = []
    more = False
    try:
        for index, name in enumerate(client.scan_iter(count=1000, _type="stream")):
            text = name.decode() if isinstance(name, bytes) else str(name)
            if len(found) == _NAMES_SHOWN or index >= _SCAN_LIMIT:
                more = True
                break
            if not text.endswith(":dead"):
                found.append(text)
    except Exception:  # a server or client without SCAN TYPE: say less, not nothing
        logger.debug("could not list the streams", exc_info=True)
    there = ", ".join(sorted(found) + (["..."] if more else [])) if found else "none found"
    return CommandError(f"no stream {stream!r} at this Redis; streams here: {there}", EXIT_USAGE)


def _check_stream(client: Any, stream: str, dlq_stream: str) -> None:
    if not client.exists(stream) and not client.exists(dlq_stream):
        raise _missing_stream(client, stream)


def cmd_info(args: argparse.Namespace) -> int:
    """``flowd info STREAM``."""
    from ..info import StreamInfo, stream_info

    client = _client(args)
    infos: list[StreamInfo] = []
    for stream in partition_streams(args.stream, args.partitions):
        info = stream_info(client, stream, base_stream=args.stream)
        if not client.exists(stream) and not (info.dlq_length or info.scheduled or info.schedules):
            raise _missing_stream(client, stream)
        if args.group is not None:
            names = [group.name for group in info.groups]
            if args.group not in names:
                has = f"its groups: {', '.join(names)}" if names else "it has no consumer groups"
                raise CommandError(
                    f"stream {stream!r} has no group {args.group!r}; {has}", EXIT_USAGE
                )
            info = stream_info(client, stream, group=args.group, base_stream=args.stream)
        infos.append(info)
    # Each stream's priority bands that exist: part of the same queue.
    bands = [
        [
            stream_info(client, band, group=args.group, base_stream=args.stream)
            for band in band_streams(info.stream)[::2]
            if client.exists(band) or client.exists(dead_letter_stream(band))
        ]
        for info in infos
    ]
    if args.json:
        data = [
            info.to_dict() | {"bands": [b.to_dict() for b in of]}
            for info, of in zip(infos, bands, strict=True)
        ]
        print(json.dumps(data[0] if args.partitions == 1 else data, indent=2))
    else:
        print("\n\n".join(_with_bands(info, of) for info, of in zip(infos, bands, strict=True)))
    return EXIT_OK


def _with_bands(info: Any, bands: list[Any]) -> str:
    """A stream's text, then its priority bands' (indented), then the sums of them all."""
    if not bands:
        return str(info.to_text())
    parts = [info, *bands]
    pending = sum(g.pending for part in parts for g in part.groups)
    lines = [info.to_text()]
    for band in bands:
        lines.append(textwrap.indent(f"priority band:\n{band.to_text()}", "  "))
    lines.append(
        f"queue {info.stream} with its {len(bands)} priority band(s): "
        f"{sum(p.length for p in parts)} entries, {pending} pending, "
        f"{sum(p.dlq_length for p in parts)} dead letters, "
        f"{sum(p.scheduled for p in parts)} scheduled"
    )
    return "\n".join(lines)


def cmd_dlq(args: argparse.Namespace) -> int:
    """``flowd dlq list|requeue|purge STREAM``."""
    from ..deadletters import DeadLetters

    if args.action == "list" and args.limit < 1:
        raise CommandError(f"--limit must be at least 1, not {args.limit}", EXIT_USAGE)
    for msg_id in getattr(args, "ids", None) or ():
        if not _STREAM_ID.fullmatch(msg_id):
            raise CommandError(f"{msg_id!r} is not a stream id like 1712345678901-0", EXIT_USAGE)
    client = _client(args)
    status = EXIT_OK
    for stream in partition_streams(args.stream, args.partitions):
        dead = DeadLetters(client, stream)
        _check_stream(client, stream, dead.dlq_stream)
        # Its priority bands' dead letters, that exist: of the same queue.
        bands = [DeadLetters(client, band) for band in band_streams(stream)[::2]]
        bands = [band for band in bands if client.exists(band.dlq_stream)]
        held = {
            msg_id
            for band in bands
            for msg_id in getattr(args, "ids", None) or ()
            if client.xrange(band.dlq_stream, msg_id, msg_id)
        }
        status = max(status, _dlq_action(client, dead, args, held))
        for band in bands:
            status = max(status, _dlq_action(client, band, args, band=True))
    return status


def _dlq_action(
    client: Any,
    dead: Any,
    args: argparse.Namespace,
    held: Collection[str] = (),
    band: bool = False,
) -> int:
    """One dead-letter stream's action. Ids that a band's dead letters hold (``held``)
    are not missing; a band's own (``band``) leaves ids it does not hold to the others."""
    if args.action == "list":
        if band:
            print(f"priority band {dead.stream} of the queue:")
        _print_dead_letters(dead, args)
        return EXIT_OK
    if not args.all and not args.ids:
        raise CommandError(f"{args.action} needs message ids or --all", EXIT_USAGE)
    if args.all and args.ids:
        raise CommandError(f"{args.action} takes message ids or --all, not both", EXIT_USAGE)
    missing: list[str] = []
    ids: list[str] = []
    if not args.all:
        for msg_id in dict.fromkeys(args.ids):
            (ids if client.xrange(dead.dlq_stream, msg_id, msg_id) else missing).append(msg_id)
        if band and not ids:
            return EXIT_OK
        missing = [] if band else [msg_id for msg_id in missing if msg_id not in held]
    if args.action == "requeue":
        moved = dead.requeue_all() if args.all else len(dead.requeue(ids) if ids else [])
        print(f"requeued {moved} messages from {dead.dlq_stream} to {dead.stream}")
    else:
        removed = dead.purge(None) if args.all else (dead.purge(ids) if ids else 0)
        print(f"purged {removed} dead messages from {dead.dlq_stream}")
    if missing:
        print(
            f"flowd: not in {dead.dlq_stream}: {', '.join(missing)} (see flowd dlq list)",
            file=sys.stderr,
        )
        return EXIT_FAILED
    return EXIT_OK


def _print_dead_letters(dead: Any, args: argparse.Namespace) -> None:
    entries = dead.list(limit=args.limit)
    if not entries:
        print(f"no dead letters in {dead.dlq_stream}")
    for entry in entries:
        print(
            f"{entry.dlq_id}  original={entry.original_id}  deliveries={entry.deliveries}"
            f"  at={entry.time.isoformat()}  reason={entry.reason}"
        )
        rows = task_rows(entry.fields)
        if rows is None:
            print(f"    fields: {json.dumps(_printable(entry.fields))}")
        else:  # a Django task's message: its task, called with its arguments
            for name, value in rows:
                print(f"    {name}: {_printable({name: value})[name]}")
        if args.traceback and entry.traceback:
            print(textwrap.indent(entry.traceback, "    "))


#: Characters of one field that `flowd dlq list` prints; the rest is summarised.
FIELD_PRINT_LIMIT = 1000


def _printable(fields: dict[str, str | bytes]) -> dict[str, str]:
    out = {}
    for name, value in fields.items():
        text = value if isinstance(value, str) else repr(value)
        if len(text) > FIELD_PRINT_LIMIT:
            text = f"{text[:FIELD_PRINT_LIMIT]}... ({len(value):,} {_unit(value)} in all)"
        out[name] = text
    return out


def _unit(value: str | bytes) -> str:
    return "characters" if isinstance(value, str) else "bytes"


# -- flowd demo


def cmd_migrate(args: argparse.Namespace) -> int:
    """``flowd migrate STREAM...``: 0 when nothing is left in the old layout, else 1."""
    from .._redis.migrate import migrate_keys

    client = _client(args)
    reports = migrate_keys(
        client, args.streams, scheduled_to=args.scheduled_to, dry_run=args.dry_run
    )
    verb = "would move" if args.dry_run else "moved"
    for report in reports:
        moved = ", ".join(f"{n} {kind}" for kind, n in report.moved.items() if n)
        print(f"{report.stream}: {verb} {moved or 'nothing'}")
        for left in report.left:
            print(f"{report.stream}: left {left}")
    return 1 if any(r.left for r in reports) else 0


def cmd_demo(args: argparse.Namespace) -> int:
    """``flowd demo``."""
    from .demo import run_demo

    if not args.log_level_given:
        # The demo narrates; its deliberate failures need no tracebacks unless asked for.
        logging.getLogger("flowd").setLevel(logging.CRITICAL)
    url = args.url or os.environ.get("FLOWD_REDIS_URL")
    if url:
        check_url(url, "--url" if args.url else "FLOWD_REDIS_URL")
    return run_demo(url=url, jobs=args.jobs, keep=args.keep)
