"""``flowd pause|resume STREAM [--group G]``: the command line over :func:`flowd.pause`.

Its arguments are added by :func:`flowd.cli.parser._pause`; this is what it does.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from .._redis.connect import EXIT_OK, connect, resolve_url
from .._redis.keys import partition_base
from .._redis.replies import _text
from ..flow.pause import pause, resume


def _groups(client: Any, stream: str) -> list[str] | None:
    """The stream's group names; None when there is no such stream."""
    if not client.exists(stream):
        return None
    return [_text(group["name"]) for group in client.xinfo_groups(stream)]


def _note(client: Any, command: str, stream: str, group: str | None) -> None:
    """Say on stderr when the pause names nothing there yet: it still holds, for consumers
    that come later, but a typo would otherwise pass unseen."""
    base = partition_base(stream)
    if base is not None:
        print(
            f"flowd: note: {stream!r} is named like a partition of the queue {base!r}, whose "
            f"consumers follow the queue's state: for them, use `flowd {command} {base}`",
            file=sys.stderr,
        )
    groups = _groups(client, stream)
    if groups is None:
        print(
            f"flowd: note: no stream {stream!r} at this Redis (a partitioned queue's streams "
            "have other names); its consumers will find the state when they start",
            file=sys.stderr,
        )
    elif group is not None and group not in groups:
        print(
            f"flowd: note: stream {stream!r} has no group {group!r} yet; its groups: "
            f"{', '.join(groups) or 'none'}",
            file=sys.stderr,
        )


def cmd_pause(args: argparse.Namespace) -> int:
    """``flowd pause STREAM [--group G]`` and ``flowd resume STREAM [--group G]``."""
    url, source = resolve_url(args.url)
    client = connect(url, source)
    what = f"group {args.group} of {args.stream}" if args.group else f"{args.stream} (every group)"
    if args.command == "pause":
        changed = pause(client, args.stream, args.group)
        print(f"paused {what}" if changed else f"{what}: already paused")
    else:
        changed = resume(client, args.stream, args.group)
        print(f"resumed {what}" if changed else f"{what}: was not paused")
    _note(client, args.command, args.stream, args.group)
    return EXIT_OK
