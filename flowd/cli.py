"""The ``flowd`` command: a thin layer over the public API.

This is the only module that configures logging or installs signal handlers.

Exit status: 0 clean; 1 an unclean stop or a failed command; 2 bad usage or
a MODULE:ATTR that cannot be loaded; 3 Redis unreachable.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from types import FrameType
from typing import Any

import redis
import redis.cluster
import redis.exceptions

from . import _cli_scheduled
from ._keys import partition_streams
from ._redis import is_cluster
from ._urls import redact_url
from .errors import ConfigurationError
from .queue import Queue

logger = logging.getLogger("flowd.cli")

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3
DEFAULT_URL = "redis://localhost:6379/0"


class CommandError(Exception):
    """A one-line reason to exit with a given status."""

    def __init__(self, message: str, status: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.status = status


# -- shared helpers


def resolve_url(url: str | None) -> str:
    """--url, else FLOWD_REDIS_URL, else redis://localhost:6379/0."""
    return url or os.environ.get("FLOWD_REDIS_URL") or DEFAULT_URL


def client_for(url: str) -> Any:
    """A client for ``url``; ``redis+cluster://`` (or ``rediss+cluster://``) gives a
    RedisCluster client that discovers the other nodes from the one named."""
    scheme, sep, rest = url.partition("://")
    if sep and scheme.endswith("+cluster"):
        return redis.cluster.RedisCluster.from_url(f"{scheme.removesuffix('+cluster')}://{rest}")
    return redis.Redis.from_url(url)


def connect(url: str, *, wait: float = 0.0) -> Any:
    """A client for ``url``, checked with PING (retried for ``wait`` seconds)."""
    try:
        client = client_for(url)
    except (redis.exceptions.RedisClusterException, redis.exceptions.ConnectionError) as exc:
        raise CommandError(
            f"cannot reach Redis at {redact_url(url)}: {exc}", EXIT_UNREACHABLE
        ) from None
    except ValueError as exc:
        # redis-py's message may quote the URL, password included: only show it without one.
        detail = "" if "@" in url else f": {exc}"
        raise CommandError(f"bad Redis URL {redact_url(url)}{detail}", EXIT_USAGE) from None
    wait_for_redis(client, url, wait)
    return client


def wait_for_redis(client: Any, url: str, wait: float) -> None:
    """PING until it answers; CommandError(EXIT_UNREACHABLE) after ``wait`` seconds."""
    deadline = time.monotonic() + wait
    delay = 0.1
    while True:
        try:
            client.ping()
            return
        except redis.exceptions.AuthenticationError as exc:
            # First: it is a ConnectionError too, but waiting will not make it pass.
            raise CommandError(
                f"Redis at {redact_url(url)} refused the credentials: {exc}", EXIT_UNREACHABLE
            ) from None
        except (
            redis.exceptions.ConnectionError,
            redis.exceptions.TimeoutError,
            redis.exceptions.BusyLoadingError,
        ) as exc:
            if time.monotonic() + delay > deadline:
                raise CommandError(
                    f"cannot reach Redis at {redact_url(url)}: {exc}", EXIT_UNREACHABLE
                ) from None
        time.sleep(delay)
        delay = min(delay * 2, 2.0)


def load_queue(target: str) -> Queue[Any]:
    """Import ``MODULE:ATTR``; ATTR is a Queue, or a callable returning one."""
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise CommandError(f"expected MODULE:ATTR, got {target!r}", EXIT_USAGE)
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # like `python -m`: the app's own modules import
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as exc:
        raise CommandError(
            f"cannot import {module_name!r}: {type(exc).__name__}: {exc}", EXIT_USAGE
        ) from None
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise CommandError(f"{module_name!r} has no attribute {attr!r}", EXIT_USAGE) from None
    if not isinstance(obj, Queue) and callable(obj):
        try:
            obj = obj()
        except Exception as exc:
            raise CommandError(f"{target} raised {type(exc).__name__}: {exc}", EXIT_USAGE) from None
    if not isinstance(obj, Queue):
        raise CommandError(
            f"{target} is a {type(obj).__name__}, not a flowd.Queue or a callable returning one",
            EXIT_USAGE,
        )
    return obj


# -- flowd worker


class _StopSignals:
    """SIGTERM/SIGINT ask for a graceful stop; a second SIGINT exits at once."""

    def __init__(self) -> None:
        self.requested = threading.Event()
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopSignals:
        for signum in (signal.SIGTERM, signal.SIGINT):
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested.is_set():
            if signum == signal.SIGINT:
                os.write(2, b"flowd: second interrupt, exiting at once\n")
                os._exit(130)
            return
        logger.warning(
            "received %s: stopping gracefully (interrupt again to exit at once)",
            signal.Signals(signum).name,
        )
        self.requested.set()


def run_worker(queue: Queue[Any], *, burst: bool, shutdown_timeout: float) -> int:
    """Run one queue in the foreground until a signal (or, with ``burst``, the backlog ends)."""
    with _StopSignals() as signals:
        if burst:
            processed = queue.drain(stop=signals.requested)
            logger.info("burst done: %d jobs processed", processed)
            return EXIT_OK
        handle = queue.run()
        ended_on_its_own = False
        while not signals.requested.wait(0.5):
            if not handle.is_running:
                ended_on_its_own = True
                break
        clean = handle.stop(timeout=shutdown_timeout)
    if ended_on_its_own:
        raise CommandError("the queue ended on its own (see the errors above)")
    if not clean:
        raise CommandError(
            f"unclean stop: jobs still running after {shutdown_timeout}s "
            "stay pending for the claimer"
        )
    return EXIT_OK


def cmd_worker(args: argparse.Namespace) -> int:
    if args.url:
        os.environ["FLOWD_REDIS_URL"] = args.url  # for apps that build their client from it
    if args.processes < 1:
        raise CommandError(f"--processes must be at least 1, not {args.processes}", EXIT_USAGE)
    if args.processes > 1:
        from ._supervisor import supervise

        return supervise(
            args.target,
            args.processes,
            child_args=_child_args(args),
            shutdown_timeout=args.shutdown_timeout,
            burst=args.burst,
        )
    queue = load_queue(args.target)
    if args.worker_index is not None:
        queue.consumer = f"{queue.consumer}-w{args.worker_index}"
    url = args.url or os.environ.get("FLOWD_REDIS_URL") or _client_url(queue.client)
    wait_for_redis(queue.client, url, args.connect_timeout)
    logger.info(
        "worker for %s/%s as consumer %s on %s",
        queue.stream,
        queue.group,
        queue.consumer,
        redact_url(url),
    )
    return run_worker(queue, burst=args.burst, shutdown_timeout=args.shutdown_timeout)


def _child_args(args: argparse.Namespace) -> list[str]:
    out = [
        "--shutdown-timeout",
        str(args.shutdown_timeout),
        "--log-level",
        args.log_level,
        "--connect-timeout",
        str(args.connect_timeout),
    ]
    if args.burst:
        out.append("--burst")
    return out


def _client_url(client: Any) -> str:
    """Where a queue's client points, for the start-up log line (never with a password)."""
    if is_cluster(client):
        node = client.get_default_node()
        return f"redis+cluster://{node.host}:{node.port}"
    kwargs = client.connection_pool.connection_kwargs
    if "path" in kwargs:
        return f"unix://{kwargs['path']}"
    return (
        f"redis://{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}/"
        f"{kwargs.get('db', 0)}"
    )


# -- flowd info / dlq


def cmd_info(args: argparse.Namespace) -> int:
    from .info import stream_info

    client = connect(resolve_url(args.url))
    infos = [
        stream_info(client, stream, group=args.group)
        for stream in partition_streams(args.stream, args.partitions)
    ]
    if args.json:
        data = [info.to_dict() for info in infos]
        print(json.dumps(data[0] if args.partitions == 1 else data, indent=2))
    else:
        print("\n\n".join(info.to_text() for info in infos))
    return EXIT_OK


def cmd_dlq(args: argparse.Namespace) -> int:
    from .deadletters import DeadLetters

    client = connect(resolve_url(args.url))
    for stream in partition_streams(args.stream, args.partitions):
        _dlq_action(DeadLetters(client, stream), args)
    return EXIT_OK


def _dlq_action(dead: Any, args: argparse.Namespace) -> None:
    if args.action == "list":
        for entry in dead.list(limit=args.limit):
            print(
                f"{entry.dlq_id}  original={entry.original_id}  deliveries={entry.deliveries}"
                f"  at={entry.time.isoformat()}  reason={entry.reason}"
            )
            print(f"    fields: {json.dumps(_printable(entry.fields))}")
        return
    if not args.all and not args.ids:
        raise CommandError(f"{args.action} needs message ids or --all", EXIT_USAGE)
    if args.action == "requeue":
        moved = dead.requeue_all() if args.all else len(dead.requeue(args.ids))
        print(f"requeued {moved} messages to {dead.stream}")
    else:
        print(f"purged {dead.purge(None if args.all else args.ids)} dead messages")


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


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    if not args.log_level_given:
        # The demo narrates; its deliberate failures need no tracebacks unless asked for.
        logging.getLogger("flowd").setLevel(logging.CRITICAL)
    return run_demo(url=args.url or os.environ.get("FLOWD_REDIS_URL"), jobs=args.jobs)


# -- argument parsing


def add_worker_options(parser: argparse.ArgumentParser, *, processes_note: str = "") -> None:
    """--processes, --burst, --shutdown-timeout and --connect-timeout: the options of
    ``flowd worker``, shared with the Django and Flask worker commands."""
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flowd", description="flowd: jobs on Redis Streams")
    parser.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"]
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def url_option(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--url",
            help="Redis URL (redis://, rediss://, unix://, redis+cluster://); default: "
            f"$FLOWD_REDIS_URL or {DEFAULT_URL}",
        )

    def partitions_option(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--partitions",
            type=int,
            default=1,
            help="the queue's partitions: show or act on each of its streams",
        )

    worker = sub.add_parser("worker", help="run a queue in the foreground")
    worker.add_argument(
        "target", metavar="MODULE:ATTR", help="a flowd.Queue, or a callable returning one"
    )
    url_option(worker)
    add_worker_options(worker)
    worker.add_argument("--worker-index", type=int, help=argparse.SUPPRESS)
    worker.add_argument(
        "--log-level", default=argparse.SUPPRESS, choices=["DEBUG", "INFO", "WARNING", "ERROR"]
    )
    worker.set_defaults(func=cmd_worker)

    info = sub.add_parser("info", help="show a stream, its groups and dead letters")
    info.add_argument("stream")
    info.add_argument("--group")
    info.add_argument("--json", action="store_true")
    partitions_option(info)
    url_option(info)
    info.set_defaults(func=cmd_info)

    dlq = sub.add_parser("dlq", help="list, requeue or purge dead letters")
    dlq.add_argument("action", choices=["list", "requeue", "purge"])
    dlq.add_argument("stream", help="the queue's stream (its dead letters are {stream}:dead)")
    dlq.add_argument("ids", nargs="*", help="dead-letter entry ids (see dlq list)")
    dlq.add_argument("--all", action="store_true")
    dlq.add_argument("--limit", type=int, default=100)
    partitions_option(dlq)
    url_option(dlq)
    dlq.set_defaults(func=cmd_dlq)

    _cli_scheduled.add_parser(
        sub, url_option, partitions_option, lambda url: connect(resolve_url(url))
    )

    demo = sub.add_parser("demo", help="a self-contained tour: enqueue, process, recover")
    demo.add_argument("--jobs", type=int, default=10_000)
    url_option(demo)
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``flowd`` command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    args.log_level_given = any(a.startswith("--log-level") for a in (argv or sys.argv[1:]))
    logging.basicConfig(
        level=args.log_level,
        format="%(asctime)s %(levelname)s %(threadName)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    status = _run_command(args)
    stuck = [
        t.name
        for t in threading.enumerate()
        if t.name.startswith("flowd-") and t.is_alive() and not t.daemon
    ]
    if stuck:
        # A job that never returns keeps its worker thread, and the interpreter would
        # wait for it forever at exit; its message stays pending for the claimer.
        logger.warning("exiting with jobs still running in %s", ", ".join(stuck))
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    return status


def _run_command(args: argparse.Namespace) -> int:
    try:
        status: int = args.func(args)
    except CommandError as exc:
        print(f"flowd: {exc}", file=sys.stderr)
        return exc.status
    except ConfigurationError as exc:
        print(f"flowd: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except redis.exceptions.RedisError as exc:
        print(f"flowd: Redis error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return (
            EXIT_UNREACHABLE if isinstance(exc, redis.exceptions.ConnectionError) else EXIT_FAILED
        )
    return status
