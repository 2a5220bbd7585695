"""The dead-letter path: failure reasons, dlq_worker, and the atomic move to the DLQ stream."""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

import redis.exceptions

from ._keys import derived_key
from .claimer import Claimer
from .task import Task

logger = logging.getLogger(__name__)

_REASON_LIMIT = 2000

# Both scripts act at most once: a re-sent script finds the message already
# acked and changes nothing. So that a re-sent call (its first reply lost) still
# learns that it did the move, the move leaves its caller's token in a marker key.
# KEYS: stream, errors hash, marker[, dlq]; ARGV: group, id, token[, fields...].
# Nothing is written before the last step that can fail (the XADD), so a failing
# script leaves the message pending, never acked and missing from the DLQ.
_MOVE_LUA = """
local pending = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
if #pending == 0 then
  redis.call('HDEL', KEYS[2], ARGV[2])
  if redis.call('GET', KEYS[3]) == ARGV[3] then return 1 end
  return 0
end
if KEYS[4] then redis.call('XADD', KEYS[4], '*', unpack(ARGV, 4)) end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('SET', KEYS[3], ARGV[3], 'PX', 600000)
redis.call('HDEL', KEYS[2], ARGV[2])
return 1
"""

#: Lua's unpack() stops at about 8,000 values: wider messages move in a transaction.
_LUA_MAX_FIELD_VALUES = 7000

#: Re-sends of a move whose reply was lost, in this process (the token makes them safe).
_MOVE_ATTEMPTS = 3


def reason_of(exc: BaseException) -> str:
    """The text kept as a failure's reason: exception type and message, bounded."""
    detail = str(exc)
    # Their str() is empty or a bare exit code: say what happened instead.
    if isinstance(exc, SystemExit):
        detail = f"the job called sys.exit({exc.code!r})"
    elif isinstance(exc, KeyboardInterrupt) and not detail:
        detail = "the job was interrupted (SIGINT / Ctrl-C while it ran)"
    text = f"{type(exc).__name__}: {detail}"
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

    def _run_move(self, keys: list[str], args: list[Any]) -> int:
        move = self._move_in_transaction if len(args) > _LUA_MAX_FIELD_VALUES else self._move
        for attempt in range(1, _MOVE_ATTEMPTS + 1):
            try:
                return int(move(keys=keys, args=args))
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
                if attempt == _MOVE_ATTEMPTS:
                    raise
                time.sleep(0.05 * attempt)
        raise AssertionError("unreachable")

    def _move_in_transaction(self, keys: list[str], args: list[Any]) -> int:
        """The move script's steps for a message too wide for Lua, in MULTI/EXEC.

        Unlike the script, the pending check and the move are two round trips:
        another consumer acking in between could leave a second dead letter,
        never a lost one.
        """
        stream, errors_key, marker = keys[:3]
        group, msg_id, token = args[:3]
        if not self.client.xpending_range(stream, group, min=msg_id, max=msg_id, count=1):
            self.client.hdel(errors_key, msg_id)
            found = self.client.get(marker)
            return 1 if found in (token, token.encode()) else 0
        with self.client.pipeline(transaction=True) as pipe:
            if len(keys) > 3:
                pipe.execute_command("XADD", keys[3], "*", *args[3:])
            pipe.xack(stream, group, msg_id)
            pipe.set(marker, token, px=600_000)
            pipe.hdel(errors_key, msg_id)
            pipe.execute()
        return 1

    def handle(self, task: Task[Any]) -> bool:
        """Call dlq_worker, then move (or drop) the message; False if it was already acked.

        Raises whatever dlq_worker or Redis raised: the message then stays pending.
        """
        if self.claimer.dlq_worker is not None:
            self.claimer.dlq_worker(task)
        reason = task.error or "unknown"
        keys = [self.stream, self.errors_key, derived_key(self.stream, f"moved:{task.id}")]
        args: list[Any] = [self.group, task.id, uuid.uuid4().hex]
        if self.dlq_stream is not None:
            keys.append(self.dlq_stream)
            meta = {
                "flowd:id": task.id,
                "flowd:stream": self.stream,
                "flowd:group": self.group,
                "flowd:consumer": self.consumer,
                "flowd:deliveries": str(task.deliveries),
                "flowd:reason": reason,
                "flowd:time": str(int(time.time() * 1000)),
            }
            for pair in (*task.fields.items(), *meta.items()):
                args += pair
        moved = self._run_move(keys, args)
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
