"""Durable enqueue (``Producer(replicas=N)``): the writes, then WAIT on the same connection.

WAIT covers the writes of its own connection only, so each stream's commands and
their WAIT go in one pipelined round trip on one connection (on a cluster, on
the connection of the master that holds the stream).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..errors import ReplicationError
from .bulk import Unknown, pipeline
from .session import is_cluster
from .timeutil import to_ms


def as_str(reply: bytes | str) -> str:
    """An id reply as text (clients with and without ``decode_responses``)."""
    return reply.decode("ascii") if isinstance(reply, bytes) else reply


class Durable:
    """Sends a producer's commands and WAITs for ``replicas`` replicas.

    :param timeout: seconds WAIT may take; then ReplicationError.
    """

    def __init__(self, client: Any, replicas: int, timeout: float) -> None:
        self.client = client
        self.replicas = replicas
        self.timeout = timeout

    def send(
        self,
        commands: list[list[Any]],
        streams: list[str] | None = None,
        ids_of: Callable[[Any], list[str]] | None = None,
    ) -> Any:
        """Commands then WAIT (see :meth:`replies`); replies (ids for XADDs) in the order
        of ``commands``; the first error is raised.

        :param ids_of: the job ids in a script's reply (for ReplicationError.ids).
        """
        replies, waits = self.replies(commands, streams)
        for reply in replies:
            if isinstance(reply, Unknown):
                raise reply.error
            if isinstance(reply, BaseException):
                raise reply
        if streams is None:
            replies = [as_str(reply) for reply in replies]
        written = [
            msg_id
            for reply in replies
            for msg_id in (ids_of(reply) if ids_of is not None else [reply])
        ]
        self.check(waits, written)
        return replies

    def replies(
        self, commands: list[list[Any]], streams: list[str] | None = None
    ) -> tuple[list[Any], list[tuple[list[int], Any]]]:
        """Send the commands, then WAIT, on one connection per stream.

        :param streams: the stream of each command; by default its second word (XADD's key).
        :returns: each command's reply, error reply or Unknown (its connection broke),
            in the order of ``commands``; and per stream, its commands' indexes and
            WAIT's reply (or Unknown).
        """
        by_stream: dict[str, list[int]] = {}
        for index, command in enumerate(commands):
            stream = command[1] if streams is None else streams[index]
            by_stream.setdefault(stream, []).append(index)
        replies: list[Any] = [None] * len(commands)
        waits: list[tuple[list[int], Any]] = []
        for stream, indexes in by_stream.items():
            node_client = (
                self.client.get_node_from_key(stream).redis_connection
                if is_cluster(self.client)
                else self.client
            )
            wait = ["WAIT", self.replicas, to_ms(self.timeout)]
            got = pipeline(node_client, [*(commands[i] for i in indexes), wait])
            for index, reply in zip(indexes, got[:-1], strict=True):
                replies[index] = reply
            waits.append((indexes, got[-1]))
        return replies, waits

    def check(self, waits: list[tuple[list[int], Any]], written: list[str]) -> None:
        """Raise ReplicationError if a WAIT saw fewer replicas than asked (or WAIT's error)."""
        short: list[int] = []
        for _, wait in waits:
            if isinstance(wait, Unknown):
                raise wait.error
            if isinstance(wait, BaseException):
                raise wait
            if int(wait) < self.replicas:
                short.append(int(wait))
        if short:
            raise ReplicationError(self.replicas, min(short), self.timeout, written)
