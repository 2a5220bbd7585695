"""Narrow, typed access to the Redis commands flowd's loops use.

Loops talk to Redis through a :class:`Session`: one pooled connection of
their own, taken lazily in the thread that uses it, with no client-level
retry (flowd's loops own their retries) and raw, undecoded replies that are
parsed here, so ``decode_responses`` and RESP2/RESP3 clients behave alike.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import redis.client
import redis.cluster
import redis.exceptions
from redis.backoff import NoBackoff
from redis.retry import Retry

from ..errors import ConfigurationError, RedisVersionError
from .replies import _text

logger = logging.getLogger(__name__)

MIN_VERSION = (6, 2, 0)


def parse_version(text: str) -> tuple[int, ...]:
    parts = []
    for part in text.split("."):
        digits = "".join(ch for ch in part if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def check_version(text: str) -> None:
    """Raise RedisVersionError for a server older than 6.2."""
    if parse_version(text) < MIN_VERSION:
        raise RedisVersionError(text)


def is_busygroup(exc: BaseException) -> bool:
    return isinstance(exc, redis.exceptions.ResponseError) and str(exc).startswith("BUSYGROUP")


def is_nogroup(exc: BaseException) -> bool:
    """The group is gone: NOGROUP, or (Redis 7) a blocked read ended by the stream's deletion."""
    return isinstance(exc, redis.exceptions.ResponseError) and str(exc).startswith(
        ("NOGROUP", "UNBLOCKED the stream key no longer exists")
    )


# redis-py turns some error replies into exception classes (and strips the
# code from the message): READONLY, OOM, MASTERDOWN, TRYAGAIN, CLUSTERDOWN,
# MOVED and ASK. Others arrive as plain ResponseErrors with their code.
_E = redis.exceptions

#: Error replies that mean "not now" rather than "wrong": retried with backoff.
_TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    _E.ConnectionError,
    _E.TimeoutError,
    _E.ReadOnlyError,
    _E.OutOfMemoryError,
    _E.MasterDownError,
    _E.TryAgainError,
    _E.ClusterDownError,
    _E.AskError,
    OSError,
)
_TRANSIENT_PREFIXES = ("BUSY ", "NOREPLICAS", "LOADING", "READONLY", "OOM", "MASTERDOWN")

#: Replies after which the connection may point at the wrong server (a demoted
#: master, a moved slot): the session reconnects, re-resolving the server.
_RECONNECT_ERRORS: tuple[type[BaseException], ...] = (
    _E.ReadOnlyError,
    _E.MasterDownError,
    _E.BusyLoadingError,
    _E.MovedError,
    _E.ClusterDownError,
)


def is_oom(exc: BaseException) -> bool:
    """Redis refused a write that needs memory: used memory is over maxmemory (noeviction)."""
    return isinstance(exc, _E.OutOfMemoryError) or (
        isinstance(exc, _E.ResponseError) and str(exc).startswith("OOM")
    )


def is_transient(exc: BaseException) -> bool:
    """A connection problem or a server state that passes (LOADING, READONLY, OOM...)."""
    if isinstance(exc, _TRANSIENT_ERRORS):
        return True
    return isinstance(exc, _E.ResponseError) and str(exc).startswith(_TRANSIENT_PREFIXES)


#: flowd's own connections never wait longer than these on a socket, whatever
#: the application's client says (or a shorter timeout of the client's own): a
#: half-open connection must end in an error that a loop retries, not freeze it.
COMMAND_TIMEOUT = 10.0
CONNECT_TIMEOUT = 5.0
#: A blocking read waits this much longer than its BLOCK time before giving up.
READ_MARGIN = 5.0

#: Pool settings that are redis-py internals of the pool, not connection options.
_POOL_INTERNAL_PREFIXES = ("maint_notifications", "orig_", "himport_registry", "oss_cluster")


def is_cluster(client: Any) -> bool:
    """True for a redis-py RedisCluster client."""
    return isinstance(client, redis.cluster.RedisCluster)


def check_client(value: object, name: str = "client") -> Any:
    """``value`` if it is a redis-py client flowd can use (Redis, Sentinel-made or cluster)."""
    usable = (hasattr(value, "connection_pool") or is_cluster(value)) and hasattr(
        value, "execute_command"
    )
    if not usable or isinstance(value, type) or isinstance(value, redis.client.Pipeline):
        raise ConfigurationError(
            f"{name} must be a redis.Redis or redis.cluster.RedisCluster client, "
            f"not {type(value).__name__}"
        )
    return value


def _pool_of(client: Any) -> Any:
    if is_cluster(client):
        return client.get_default_node().redis_connection.connection_pool
    return client.connection_pool


def _bounded(value: Any, bound: float) -> float:
    """The client's timeout when it is set and shorter than ``bound``, else ``bound``."""
    return min(float(value), bound) if value else bound


def connection_options(client: Any, timeout: float = COMMAND_TIMEOUT) -> dict[str, Any]:
    """Options for a connection like the client's own, minus pool internals and retries.

    flowd's loops own their retries: redis-py 8's default policy would retry a
    connect or a timed-out command for seconds inside one call, where a stop
    cannot interrupt it, and could re-send a command whose reply was lost.
    Socket timeouts are bounded by ``timeout`` and :data:`CONNECT_TIMEOUT`.
    """
    options = {
        key: value
        for key, value in _pool_of(client).connection_kwargs.items()
        if not key.startswith(_POOL_INTERNAL_PREFIXES)
    }
    options["retry"] = Retry(NoBackoff(), 0)
    options["socket_timeout"] = _bounded(options.get("socket_timeout"), timeout)
    options["socket_connect_timeout"] = _bounded(
        options.get("socket_connect_timeout"), CONNECT_TIMEOUT
    )
    return options


def _redirect_address(exc: BaseException) -> tuple[str, int] | None:
    """The node named by a MOVED or ASK error reply."""
    if isinstance(exc, _E.AskError):  # MovedError is an AskError too
        return str(exc.host), int(exc.port)
    return None


def is_noscript(exc: BaseException) -> bool:
    return isinstance(exc, _E.NoScriptError) or (
        isinstance(exc, _E.ResponseError) and str(exc).startswith("NOSCRIPT")
    )


class Session:
    """A connection of one thread's own, made like the client's but outside its pool.

    Not thread-safe: each thread owns one. The connection is made on first
    use, in the thread that uses it, so a Redis that is down at start is only
    a failed call, retried by the loop. Any error drops the connection, so the
    next call starts on a fresh one.

    With a RedisCluster client, the session talks to the node that serves
    ``key``: MOVED switches to the named node and re-sends the command (it
    did not run), ASK sends it once to the named node after ASKING. With a
    Sentinel client, each new connection asks the sentinels for the master.

    ``timeout`` bounds every socket wait (the client's own timeout when shorter).
    """

    def __init__(
        self,
        client: Any,
        key: str | None = None,
        *,
        address: tuple[str, int] | None = None,
        timeout: float = COMMAND_TIMEOUT,
    ) -> None:
        self._client = client
        self._key = key
        self._cluster = is_cluster(client)
        if self._cluster and key is None and address is None:
            raise ValueError("a cluster session needs the key it serves")
        self._connection_class = _pool_of(client).connection_class
        self._options = connection_options(client, timeout)
        self._address = address
        self._conn: Any = None
        self.client_id: int | None = None
        self.server_version: str | None = None
        #: The socket timeout of this session's connections.
        self.socket_timeout: float = self._options["socket_timeout"]

    @property
    def address(self) -> tuple[str, int] | None:
        """(host, port) of a cluster session's node; None for other clients."""
        return self._address

    def _new_connection(self, address: tuple[str, int] | None) -> Any:
        options = self._options
        if address is not None:
            options = {**options, "host": address[0], "port": address[1]}
        return self._connection_class(**options)

    def _connection(self) -> Any:
        if self._conn is None:
            if self._cluster and self._address is None:
                node = self._client.get_node_from_key(self._key)
                self._address = (node.host, int(node.port))
            conn = self._new_connection(self._address)
            self._conn = conn
            try:
                # connect() first, as a pool does: a Sentinel-managed connection resolves
                # the master there (a bare send_command would dial localhost:6379).
                conn.connect()
                conn.send_command("CLIENT", "ID")
                self.client_id = int(conn.read_response(disable_decoding=True))
                conn.send_command("INFO", "server")
                info = _text(conn.read_response(disable_decoding=True))
            except BaseException:
                self.close()
                raise
            version = next(
                (
                    line.split(":", 1)[1].strip()
                    for line in info.splitlines()
                    if line.startswith("redis_version:")
                ),
                "0",
            )
            self.server_version = version
            try:
                check_version(version)
            except RedisVersionError:
                self.close()
                raise
        return self._conn

    def _on_error_reply(self, exc: redis.exceptions.ResponseError) -> None:
        """Reconnect after replies that mean this is no longer the right server."""
        if isinstance(exc, _RECONNECT_ERRORS):
            redirect = _redirect_address(exc)
            self.close()
            if self._cluster:
                # MOVED names the new owner; otherwise ask the client's slot map again.
                self._address = redirect

    def call(self, *args: Any) -> Any:
        """Send one command and return its raw reply; raises ResponseError for error replies."""
        for attempt in (1, 2):
            conn = self._connection()
            try:
                conn.send_command(*args)
                return conn.read_response(disable_decoding=True)
            except redis.exceptions.ResponseError as exc:
                moved = isinstance(exc, _E.MovedError)
                if self._cluster and isinstance(exc, _E.AskError) and not moved:
                    return self._ask(exc, args)
                self._on_error_reply(exc)
                if attempt == 1 and self._cluster and moved:
                    continue  # the command did not run; send it to the slot's new owner
                raise
            except BaseException:
                self.close()
                raise
        raise AssertionError("unreachable")

    def _ask(self, exc: redis.exceptions.ResponseError, args: tuple[Any, ...]) -> Any:
        """The slot is migrating and the key is already on the target: ask there, once."""
        conn = self._new_connection(_redirect_address(exc))
        try:
            conn.send_command("ASKING")
            conn.read_response(disable_decoding=True)
            conn.send_command(*args)
            return conn.read_response(disable_decoding=True)
        finally:
            conn.disconnect()

    def call_many(self, commands: Sequence[Sequence[Any]]) -> list[Any]:
        """Pipeline several commands in one round trip; error replies are returned, not raised.

        A command may be given as ``bytes``, framed as RESP already.
        """
        conn = self._connection()
        replies: list[Any] = []
        try:
            conn.send_packed_command(_packed(conn, commands))
            for _ in commands:
                try:
                    replies.append(conn.read_response(disable_decoding=True))
                except redis.exceptions.ResponseError as exc:
                    replies.append(exc)
        except BaseException:
            self.close()
            raise
        for reply in replies:
            if isinstance(reply, redis.exceptions.ResponseError):
                self._on_error_reply(reply)
                break
        return replies

    def close(self) -> None:
        """Close the connection (the next call opens a new one)."""
        conn, self._conn = self._conn, None
        self.client_id = None
        if conn is not None:
            try:
                conn.disconnect()
            except Exception:  # the socket may already be unusable; nothing to report
                logger.debug("disconnect failed", exc_info=True)


def _packed(conn: Any, commands: Sequence[Sequence[Any]]) -> list[bytes]:
    """The commands as RESP; a command given as bytes is framed already."""
    if not any(isinstance(command, bytes) for command in commands):
        return list(conn.pack_commands(commands))
    out: list[bytes] = []
    run: list[Sequence[Any]] = []
    for command in commands:
        if isinstance(command, bytes):
            if run:
                out += conn.pack_commands(run)
                run = []
            out.append(command)
        else:
            run.append(command)
    if run:
        out += conn.pack_commands(run)
    return out


def ensure_group(session: Session, stream: str, group: str) -> bool:
    """Create the group (and the stream) if missing; jobs already in the stream are kept.

    :returns: True if this call created the group, False if it existed.
    """
    try:
        session.call("XGROUP", "CREATE", stream, group, "0", "MKSTREAM")
    except redis.exceptions.ResponseError as exc:
        if not is_busygroup(exc):
            raise
        return False
    logger.info("created consumer group %s on stream %s", group, stream)
    return True


#: maxmemory policies that never evict a stream: streams carry no TTL.
SAFE_EVICTION_POLICIES = (
    "noeviction",
    "volatile-lru",
    "volatile-lfu",
    "volatile-random",
    "volatile-ttl",
)


def eviction_policy(session: Session) -> str | None:
    """The server's ``maxmemory-policy``: from INFO memory, else CONFIG GET.

    INFO first: a least-privilege ACL user may read it, while a denied CONFIG
    would fill the server's ACL log. None when neither may be read.
    """
    try:
        info = session.call("INFO", "memory")
    except redis.exceptions.ResponseError:
        info = b""
    text = _text(info) if isinstance(info, bytes | str) else ""
    for line in text.splitlines():
        if line.startswith("maxmemory_policy:"):
            return line.partition(":")[2].strip()
    try:
        reply = session.call("CONFIG", "GET", "maxmemory-policy")
    except redis.exceptions.ResponseError:
        return None  # INFO and CONFIG renamed, disabled or not allowed
    values = list(reply.values()) if isinstance(reply, dict) else list(reply)[1::2]
    return _text(values[0]) if values else None
