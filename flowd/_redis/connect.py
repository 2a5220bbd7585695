"""Connecting the commands to Redis: URLs, clients, the start-up wait, and what a
Redis error means for the user (its message and exit status), defined once here."""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import redis
import redis.cluster
import redis.exceptions

from ..errors import CommandError
from .session import is_cluster
from .urls import DEFAULT_URL, redact_url

logger = logging.getLogger(__name__)

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3

# What servers answer to a client that sent no password: NOAUTH, or HELLO's own
# wording when redis-py negotiates RESP3.
_NO_PASSWORD_GIVEN = ("NOAUTH", "Authentication required", "HELLO must be called")


def resolve_url(url: str | None) -> tuple[str, str]:
    """The Redis URL and where it came from: ``--url``, else FLOWD_REDIS_URL, else the default."""
    if url:
        return url, "--url"
    env = os.environ.get("FLOWD_REDIS_URL")
    if env:
        return env, "FLOWD_REDIS_URL"
    return DEFAULT_URL, "the default"


def client_for(url: str) -> Any:
    """A client for ``url``; ``redis+cluster://`` (or ``rediss+cluster://``) gives a
    RedisCluster client that discovers the other nodes from the one named."""
    scheme, sep, rest = url.partition("://")
    if sep and scheme.endswith("+cluster"):
        return redis.cluster.RedisCluster.from_url(f"{scheme.removesuffix('+cluster')}://{rest}")
    return redis.Redis.from_url(url)


def bad_url(url: str, source: str, exc: Exception) -> CommandError:
    """The error for a URL that redis-py cannot parse, naming where it came from."""
    # redis-py's message may quote the URL, password included: only show it without one.
    detail = "" if "@" in url else f": {exc}"
    return CommandError(f"bad Redis URL {redact_url(url)} (from {source}){detail}", EXIT_USAGE)


def check_url(url: str, source: str) -> None:
    """Parse ``url`` as redis-py will; CommandError(EXIT_USAGE) naming ``source`` if it cannot."""
    scheme, sep, rest = url.partition("://")
    if sep and scheme.endswith("+cluster"):
        url = f"{scheme.removesuffix('+cluster')}://{rest}"
    try:
        redis.connection.parse_url(url)  # type: ignore[no-untyped-call]
    except ValueError as exc:
        raise bad_url(url, source, exc) from None


def connect(url: str, source: str, *, wait: float = 0.0) -> Any:
    """A client for ``url`` (from ``source``), checked with PING (retried for ``wait`` s)."""
    try:
        client = client_for(url)
    except ValueError as exc:
        raise bad_url(url, source, exc) from None
    except redis.exceptions.RedisError as exc:  # a cluster client connects at once
        raise redis_failure(exc, redact_url(url)) from None
    wait_for_redis(client, redact_url(url), wait)
    return client


def client_address(client: Any) -> str:
    """Where a client connects, as a URL with any password shown as ``***``."""
    if is_cluster(client):
        node = client.get_default_node()
        return f"redis+cluster://{node.host}:{node.port}"
    kwargs = client.connection_pool.connection_kwargs
    if "path" in kwargs:
        return f"unix://{kwargs['path']}"
    tls = issubclass(client.connection_pool.connection_class, redis.connection.SSLConnection)
    scheme = "rediss" if tls else "redis"
    # The password shows as *** (as redact_url shows it): whether one is used, not what.
    auth = f"{kwargs.get('username') or ''}:***@" if kwargs.get("password") else ""
    return (
        f"{scheme}://{auth}{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}/"
        f"{kwargs.get('db', 0)}"
    )


def same_server(url: str, client: Any) -> bool:
    """Whether ``url`` names the server and database ``client`` uses (None if unknown)."""
    if is_cluster(client):
        return True  # any node of a cluster leads to the same data
    kwargs = client.connection_pool.connection_kwargs
    try:
        parsed = redis.connection.parse_url(url)  # type: ignore[no-untyped-call]
    except ValueError:
        return False
    if "path" in kwargs or "path" in parsed:
        return bool(kwargs.get("path") == parsed.get("path"))
    return (parsed.get("host", "localhost"), int(parsed.get("port", 6379))) == (
        kwargs.get("host", "localhost"),
        int(kwargs.get("port", 6379)),
    ) and int(parsed.get("db", 0)) == int(kwargs.get("db", 0))


def needs_password(exc: BaseException) -> bool:
    """Whether ``exc`` says the server wants a password that the client did not send."""
    return any(marker in str(exc) for marker in _NO_PASSWORD_GIVEN)


def redis_failure(exc: redis.exceptions.RedisError, where: str) -> CommandError:
    """The one mapping from a Redis error to a message and an exit status."""
    if needs_password(exc):
        return CommandError(
            f"Redis at {where} requires a password (AUTH) and none was given: "
            "put it in the URL, e.g. redis://:PASSWORD@host:6379/0",
            EXIT_UNREACHABLE,
        )
    if isinstance(exc, redis.exceptions.AuthenticationError) or "WRONGPASS" in str(exc):
        return CommandError(f"Redis at {where} refused the credentials: {exc}", EXIT_UNREACHABLE)
    if isinstance(exc, redis.exceptions.ConnectionError | redis.exceptions.TimeoutError):
        return CommandError(f"cannot reach Redis at {where}: {exc}", EXIT_UNREACHABLE)
    if isinstance(exc, redis.exceptions.RedisClusterException):
        return CommandError(f"cannot use the Redis cluster at {where}: {exc}", EXIT_UNREACHABLE)
    return CommandError(f"Redis error: {type(exc).__name__}: {exc}", EXIT_FAILED)


def wait_for_redis(client: Any, where: str, wait: float, *, since: float | None = None) -> None:
    """PING until it answers, for at most ``wait`` seconds; says at once that it waits.

    ``since`` (a ``time.monotonic()`` value) starts the ``wait`` earlier, for
    several clients that share one ``--connect-timeout``.

    :raises CommandError: EXIT_UNREACHABLE when time is up, or at once when the
        server wants credentials (waiting will not bring them).
    """
    started = time.monotonic() if since is None else since
    delay = 0.1
    waiting = False
    while True:
        try:
            client.ping()
        except (
            redis.exceptions.ConnectionError,
            redis.exceptions.TimeoutError,
            redis.exceptions.BusyLoadingError,
        ) as exc:
            if needs_password(exc) or isinstance(exc, redis.exceptions.AuthenticationError):
                raise redis_failure(exc, where) from None
            elapsed = time.monotonic() - started
            if elapsed + delay > wait:
                raise CommandError(
                    f"cannot reach Redis at {where} (waited {elapsed:.0f}s, "
                    f"--connect-timeout {wait:g}): {exc}",
                    EXIT_UNREACHABLE,
                ) from None
            if not waiting:
                waiting = True
                logger.warning(
                    "Redis at %s does not answer (%s); waiting up to %gs (--connect-timeout)",
                    where,
                    exc,
                    wait,
                )
        except redis.exceptions.RedisError as exc:
            raise redis_failure(exc, where) from None
        else:
            if waiting:
                logger.info("Redis at %s answered after %.1fs", where, time.monotonic() - started)
            return
        time.sleep(delay)
        delay = min(delay * 2, 2.0)
