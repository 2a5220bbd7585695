"""The one way flowd runs a Lua script: :class:`Script`.

EVALSHA first, EVAL after NOSCRIPT; through a :class:`Session` (the loops) or a
redis-py client (the public helpers), one call or many pipelined. A command
inside a script that fails for a passing reason (READONLY after a failover,
OOM...) comes back, on Redis 6.2, wrapped as "Error running script"; it is
unwrapped here into the error the command itself would raise, so callers
classify it as they would the bare command's.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import redis.exceptions

from .resp import frame
from .session import Session, is_noscript


class Script:
    """A Lua script sent as EVALSHA, falling back to EVAL (which also caches it) when the
    server does not know it yet (a restart, a failover, SCRIPT FLUSH), through a
    :class:`Session` or a redis-py client: ``SCRIPT(target, keys, args)``."""

    __slots__ = ("sha", "source")

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode("utf-8")).hexdigest()

    def __call__(self, target: Any, keys: Sequence[str | bytes], args: Sequence[Any]) -> Any:
        try:
            try:
                return _send(target, ("EVALSHA", self.sha, len(keys), *keys, *args))
            except redis.exceptions.ResponseError as exc:
                if not is_noscript(exc):
                    raise
                return _send(target, ("EVAL", self.source, len(keys), *keys, *args))
        except redis.exceptions.ResponseError as exc:
            passing = _passing_error(exc)
            if passing is None:
                raise
            if isinstance(target, Session):
                target.close()  # a demoted master: the next call finds the master again
            raise passing from exc

    def framed(self, client: Any, keys: Sequence[str], args: Sequence[str | bytes | int]) -> Any:
        """As calling the script through a redis-py ``client``, but framed by hand (one
        join, not redis-py's encoding per argument) and sent on a connection of the
        client's pool: for a hot path's call of many arguments (not for a cluster)."""
        try:
            try:
                return _send_framed(client, frame(("EVALSHA", self.sha, len(keys), *keys, *args)))
            except redis.exceptions.ResponseError as exc:
                if not is_noscript(exc):
                    raise
                return _send_framed(client, frame(("EVAL", self.source, len(keys), *keys, *args)))
        except redis.exceptions.ResponseError as exc:
            passing = _passing_error(exc)
            if passing is None:
                raise
            raise passing from exc

    def pipelined(
        self,
        client: Any,
        calls: Sequence[tuple[Sequence[str], Sequence[Any]]],
        *,
        raise_on_error: bool = True,
    ) -> list[Any]:
        """Run many calls in one pipelined round trip (``transaction=False``); replies in order.

        Calls refused with NOSCRIPT did not run and are sent again as EVAL.
        With ``raise_on_error=False`` an error reply is returned in its call's place
        instead of raised (a connection error is still raised).
        """
        replies = _pipeline(client, [("EVALSHA", self.sha, len(k), *k, *a) for k, a in calls])
        missing = [
            i for i, r in enumerate(replies) if isinstance(r, redis.exceptions.NoScriptError)
        ]
        if missing:
            again = _pipeline(
                client,
                [
                    ("EVAL", self.source, len(calls[i][0]), *calls[i][0], *calls[i][1])
                    for i in missing
                ],
            )
            for index, reply in zip(missing, again, strict=True):
                replies[index] = reply
        if not raise_on_error:
            return replies
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        return replies


#: Error codes that mean "not now" (see session.is_transient), as Redis 6.2 wraps them
#: when a command inside a script fails: "Error running script ...: -READONLY ...".
_PASSING_CODES = ("READONLY", "OOM", "BUSY", "MASTERDOWN", "LOADING", "NOREPLICAS")


def _passing_error(exc: redis.exceptions.ResponseError) -> BaseException | None:
    """The transient error a script's error reply wraps, as its own exception; else None."""
    text = str(exc)
    if not text.startswith("Error running script"):
        return None
    for code in _PASSING_CODES:
        if f"-{code} " in text:
            if code == "READONLY":
                return redis.exceptions.ReadOnlyError(text)
            return redis.exceptions.ResponseError(f"{code} {text}")
    return None


def _send(target: Any, command: Sequence[Any]) -> Any:
    if isinstance(target, Session):
        return target.call(*command)
    return target.execute_command(*command)


def _pipeline(client: Any, commands: Sequence[Sequence[Any]]) -> list[Any]:
    with client.pipeline(transaction=False) as pipe:
        for command in commands:
            pipe.execute_command(*command)
        return list(pipe.execute(raise_on_error=False))


def _send_framed(client: Any, data: bytes) -> Any:
    pool = client.connection_pool
    conn = pool.get_connection()
    try:
        conn.send_packed_command([data])
        return conn.read_response()
    except redis.exceptions.ResponseError:
        raise  # an error reply: the connection is fine
    except BaseException:
        conn.disconnect()  # a half-read reply must not reach the next user
        raise
    finally:
        pool.release(conn)
