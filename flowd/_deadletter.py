"""The dead-letter path: failure reasons, dlq_worker, and the atomic move to the DLQ stream."""

from __future__ import annotations

import logging
import time
from typing import Any

from .claimer import Claimer
from .task import Task

logger = logging.getLogger(__name__)

_REASON_LIMIT = 2000

# Moves one message to the dead-letter stream and acks it, atomically and at
# most once: a re-sent script finds the message already acked and adds nothing.
_MOVE_LUA = """
local acked = redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
if acked == 1 then
  redis.call('XADD', KEYS[2], '*', unpack(ARGV, 3))
end
redis.call('HDEL', KEYS[3], ARGV[2])
return acked
"""

# Acks a dead message when the dead-letter stream is turned off.
_DROP_LUA = """
local acked = redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('HDEL', KEYS[2], ARGV[2])
return acked
"""


def reason_of(exc: BaseException) -> str:
    """The text kept as a failure's reason: exception type and message, bounded."""
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= _REASON_LIMIT else text[:_REASON_LIMIT] + "..."


class DeadLetterPath:
    """Where exhausted and undecodable messages of one queue go.

    Failure reasons are kept in a hash in the stream's slot
    (``{stream}:errors:<group>``), so whichever consumer dead-letters a
    message can say why its last run failed, even if another process ran it.
    """

    def __init__(
        self, client: Any, stream: str, group: str, consumer: str, errors_key: str, claimer: Claimer
    ) -> None:
        self.client = client
        self.stream = stream
        self.group = group
        self.consumer = consumer
        self.errors_key = errors_key
        self.claimer = claimer
        self.dlq_stream = claimer.dead_letter_stream(stream)
        self._move = client.register_script(_MOVE_LUA)
        self._drop = client.register_script(_DROP_LUA)

    def record_failure(self, msg_id: str, exc: BaseException) -> None:
        try:
            self.client.hset(self.errors_key, msg_id, reason_of(exc))
        except Exception:
            logger.warning(
                "could not record the failure of %s on %s", msg_id, self.stream, exc_info=True
            )

    def last_failure(self, msg_id: str) -> str | None:
        try:
            reason = self.client.hget(self.errors_key, msg_id)
        except Exception:
            logger.warning("could not read the failure reason of %s", msg_id, exc_info=True)
            return None
        if isinstance(reason, bytes):
            return reason.decode("utf-8", "replace")
        return reason if isinstance(reason, str) else None

    def handle(self, task: Task[Any]) -> bool:
        """Call dlq_worker, then move (or drop) the message; False if it was already acked.

        Raises whatever dlq_worker or Redis raised: the message then stays pending.
        """
        if self.claimer.dlq_worker is not None:
            self.claimer.dlq_worker(task)
        reason = task.error or "unknown"
        if self.dlq_stream is None:
            moved = self._drop(keys=[self.stream, self.errors_key], args=[self.group, task.id])
        else:
            meta = {
                "flowd:id": task.id,
                "flowd:stream": self.stream,
                "flowd:group": self.group,
                "flowd:consumer": self.consumer,
                "flowd:deliveries": str(task.deliveries),
                "flowd:reason": reason,
                "flowd:time": str(int(time.time() * 1000)),
            }
            args: list[Any] = [self.group, task.id]
            for pair in (*task.fields.items(), *meta.items()):
                args += pair
            moved = self._move(keys=[self.stream, self.dlq_stream, self.errors_key], args=args)
        if not moved:
            logger.info(
                "message %s on %s/%s was already acked; not dead-lettered again",
                task.id,
                self.stream,
                self.group,
            )
            return False
        if self.dlq_stream is None:
            logger.warning(
                "dropped dead message %s on %s/%s after %d deliveries (the "
                "dead-letter stream is off): %s",
                task.id,
                self.stream,
                self.group,
                task.deliveries,
                reason,
            )
        else:
            logger.warning(
                "dead-lettered %s on %s/%s to %s after %d deliveries: %s",
                task.id,
                self.stream,
                self.group,
                self.dlq_stream,
                task.deliveries,
                reason,
            )
        return True
