"""``flowd dashboard``: serve the dashboard with waitress."""

from __future__ import annotations

import argparse
import ipaddress
import os
import signal
import sys
from types import FrameType
from typing import Any

# Standard library only: `flowd --help` must work without the dashboard extra.
from .security import LOOPBACK_HOSTS, AllowedHosts

AUTH_ENV = "FLOWD_DASHBOARD_AUTH"
HOSTS_ENV = "FLOWD_DASHBOARD_ALLOWED_HOSTS"
#: Addresses that listen on every interface: their own name is never a Host header.
_WILDCARDS = ("0.0.0.0", "::", "[::]", "")
DEFAULT_PORT = 8700


def add_dashboard_parser(sub: Any) -> None:
    """Add the ``dashboard`` subcommand to the ``flowd`` parser (an entry of its COMMANDS)."""
    parser = sub.add_parser(
        "dashboard",
        help="serve a web dashboard of the queues",
        description="Serve a web dashboard of the queues until SIGTERM or SIGINT.",
    )
    parser.add_argument(
        "streams",
        nargs="*",
        metavar="STREAM",
        help="streams to show (default: every stream that has a consumer group)",
    )
    parser.add_argument(
        "--url",
        help="Redis URL (redis://, rediss://, unix://, redis+cluster://); default: "
        "$FLOWD_REDIS_URL, else redis://localhost:6379/0",
    )
    parser.add_argument("--bind", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port ({DEFAULT_PORT})")
    parser.add_argument(
        "--partitions",
        type=int,
        default=1,
        help="the queue's partitions: show each of its streams (default 1)",
    )
    parser.add_argument(
        "--auth",
        metavar="USER:PASSWORD",
        help=f"require HTTP Basic auth (default: ${AUTH_ENV}); needed to bind a public address",
    )
    parser.add_argument(
        "--allowed-hosts",
        action="append",
        metavar="HOST,...",
        help="more host names the dashboard answers for, comma separated (example.com, "
        "example.com:8700, .example.com for a domain and its subdomains, * for any); "
        f"default: ${HOSTS_ENV}. Always allowed: localhost, 127.0.0.1, [::1] and the "
        "--bind address; any other Host header gets 400 (it guards against DNS rebinding)",
    )
    parser.add_argument(
        "--read-only", action="store_true", help="show no action buttons; refuse every POST"
    )
    parser.set_defaults(func=cmd_dashboard)


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses (127.0.0.0/8, ::1)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def split_hosts(values: list[str] | str | None) -> list[str]:
    """The entries of comma-separated host lists, blanks dropped."""
    if values is None:
        return []
    if isinstance(values, str):
        values = [values]
    return [item.strip() for value in values for item in value.split(",") if item.strip()]


def allowed_hosts(bind: str, port: int, extra: list[str]) -> list[str]:
    """The loopback names, the bind address with and without its port, then ``extra``."""
    host = f"[{bind.strip('[]')}]" if ":" in bind else bind
    own = [host, f"{host}:{port}"] if port else [host]
    return [*LOOPBACK_HOSTS, *own, *extra]


def _stop(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def cmd_dashboard(args: argparse.Namespace) -> int:
    """Run ``flowd dashboard`` until SIGINT or SIGTERM (exit status 0).

    :raises ConfigurationError: a public address without auth, a bad port or allowed host, or
        the ``dashboard`` extra missing (the CLI exits 2 with the message).
    """
    from .._redis.connect import connect, resolve_url
    from .._redis.keys import partition_streams
    from .._redis.urls import redact_url
    from ..errors import ConfigurationError

    auth = args.auth or os.environ.get(AUTH_ENV) or None
    if not is_loopback(args.bind) and auth is None:
        raise ConfigurationError(
            f"refusing to serve the dashboard on {args.bind} without a password: anyone who "
            f"can reach that address could requeue and purge jobs. Pass --auth USER:PASSWORD "
            f"(or set {AUTH_ENV}), or bind 127.0.0.1"
        )
    if not 0 <= args.port <= 65535:
        raise ConfigurationError(f"--port must be 0..65535, not {args.port}")
    # The option replaces the environment variable (as --auth does); both add to the defaults.
    extra = split_hosts(args.allowed_hosts) or split_hosts(os.environ.get(HOSTS_ENV))
    hosts = allowed_hosts(args.bind, args.port, extra)
    AllowedHosts(hosts)  # a bad entry is refused here, naming it, before Redis is contacted
    try:
        import waitress

        from .app import Dashboard
    except ImportError as exc:
        raise ConfigurationError(
            f"the dashboard needs the 'dashboard' extra ({exc.name} is missing): "
            "pip install 'flowd-queue[dashboard]'"
        ) from None
    url, source = resolve_url(args.url)
    client = connect(url, source)
    streams = [name for s in args.streams for name in partition_streams(s, args.partitions)]
    app = Dashboard(
        client, streams or None, read_only=args.read_only, auth=auth, allowed_hosts=hosts
    )
    server: Any = waitress.create_server(app, host=args.bind, port=args.port, threads=4)
    host = f"[{args.bind}]" if ":" in args.bind else args.bind
    mode = ", read-only" if args.read_only else ""
    guard = ", HTTP Basic auth" if auth else ""
    # The warning and the SIGTERM handler come before "serving": whoever waits for that
    # line (a supervisor, a test) may stop the dashboard at once.
    previous = signal.signal(signal.SIGTERM, _stop)
    try:
        if args.bind.strip() in _WILDCARDS and not extra:
            print(
                f"flowd dashboard: only Host {', '.join(hosts)} is answered; pass the names "
                f"people use with --allowed-hosts (or set {HOSTS_ENV})",
                file=sys.stderr,
                flush=True,
            )
        print(
            f"flowd dashboard: serving http://{host}:{server.effective_port}/ "
            f"(Redis {redact_url(url)}{guard}{mode}); Ctrl-C stops it",
            flush=True,
        )
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        server.close()
        client.close()
    print("flowd dashboard: stopped", file=sys.stderr, flush=True)
    return 0
