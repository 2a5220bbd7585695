"""DeadLetters: inspect, requeue and purge the dead-letter stream of a queue.

The claimer writes each dead message to the dead-letter stream (``{emails}:dead``
for stream ``emails``) as its original fields followed by ``flowd:*``
metadata: ``flowd:id``, ``flowd:stream``, ``flowd:group``, ``flowd:consumer``,
``flowd:deliveries``, ``flowd:reason``, ``flowd:time`` (ms since the epoch) and,
when the last run raised, ``flowd:traceback`` (its last 4 KB).
"""

from __future__ import annotations

import builtins
import logging
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import islice
from typing import Any

from ._redis.keys import dead_letter_stream
from ._redis.replies import Fields, parse_entries
from ._redis.scripts import Script
from ._redis.session import Session, check_client
from .errors import ConfigurationError

__all__ = ["DeadLetter", "DeadLetters"]

logger = logging.getLogger(__name__)

_META_PREFIX = b"flowd:"
#: Ids moved per script call: bounds how long one script holds the server.
_SCRIPT_BATCH = 100
#: Ids deleted per XDEL call.
_XDEL_BATCH = 1000
_ID = re.compile(r"(\d{1,20})-(\d{1,20})")
_START = re.compile(r"\(?\d{1,20}(-\d{1,20})?")
_MAX_ID_PART = 2**64 - 1

# Moves dead letters back to the original stream, each one atomically.
# KEYS[1] the dead-letter stream, KEYS[2] the original stream;
# ARGV[1] the original stream's name as written in flowd:stream; ARGV[2..] DLQ ids.
# Replies two items per id: 'moved' and the new id, 'missing' and '', or
# 'foreign' and the flowd:stream of an entry that belongs to another stream.
# A re-sent script finds moved entries gone, so nothing is ever added twice.
_REQUEUE_LUA = """
local out = {}
for i = 2, #ARGV do
  local id = ARGV[i]
  local found = redis.call('XRANGE', KEYS[1], id, id)
  if #found == 0 then
    out[#out + 1] = 'missing'
    out[#out + 1] = ''
  else
    local flat = found[1][2]
    local fields = {}
    local origin = false
    for j = 1, #flat, 2 do
      local key = flat[j]
      if string.sub(key, 1, 6) == 'flowd:' then
        if key == 'flowd:stream' then origin = flat[j + 1] end
      else
        fields[#fields + 1] = key
        fields[#fields + 1] = flat[j + 1]
      end
    end
    if origin and origin ~= ARGV[1] then
      out[#out + 1] = 'foreign'
      out[#out + 1] = origin
    else
      if #fields == 0 then
        fields = {'flowd:empty', '1'}
      end
      local new_id = redis.call('XADD', KEYS[2], '*', unpack(fields))
      redis.call('XDEL', KEYS[1], id)
      out[#out + 1] = 'moved'
      out[#out + 1] = new_id
    end
  end
end
return out
"""
_REQUEUE = Script(_REQUEUE_LUA)


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _value(raw: bytes) -> str | bytes:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw


def _id_ms(msg_id: str) -> int:
    head = msg_id.partition("-")[0]
    return int(head) if head.isdigit() else 0


def _utc_from_ms(ms: int) -> datetime:
    return datetime.fromtimestamp(ms // 1000, UTC) + timedelta(milliseconds=ms % 1000)


def _int_or(raw: bytes | None, default: int) -> int:
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        return default


def _check_id(value: object) -> str:
    match = _ID.fullmatch(value) if isinstance(value, str) else None
    if match is None or max(int(match[1]), int(match[2])) > _MAX_ID_PART:
        raise ConfigurationError(
            f"a dead-letter id must be a full stream id such as '1712345678901-0', not {value!r}"
        )
    return str(value)


def _check_ids(ids: Iterable[str]) -> list[str]:
    if isinstance(ids, str | bytes):
        raise ConfigurationError(
            f"ids must be an iterable of ids, not one {type(ids).__name__}; write [{ids!r}]"
        )
    return [_check_id(i) for i in ids]


def _chunks(items: Sequence[str], size: int) -> Iterator[list[str]]:
    it = iter(items)
    while chunk := list(islice(it, size)):
        yield chunk


def _check_positive(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(f"{name} must be a positive int, not {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One entry of a dead-letter stream.

    ``fields`` holds the original job fields only (every ``flowd:`` field is
    left out); a value is a ``str`` when it is valid UTF-8, else ``bytes``.
    For an entry that lacks flowd's metadata (written by something else),
    ``original_id``, ``stream``, ``group``, ``consumer`` and ``reason`` are
    ``""``, ``deliveries`` is 0, and ``time`` is when the entry was added to
    the dead-letter stream (the time in ``dlq_id``).

    :ivar dlq_id: the entry's id in the dead-letter stream.
    :ivar original_id: the message's id in its original stream.
    :ivar time: when it was dead-lettered (aware, UTC).
    :ivar traceback: the last failed run's traceback (its last 4 KB), or ``""``
        (undecodable message, no failed run, or an entry from an older flowd).
    """

    dlq_id: str
    original_id: str
    stream: str
    group: str
    fields: dict[str, str | bytes]
    reason: str
    deliveries: int
    time: datetime
    consumer: str
    traceback: str = ""

    @classmethod
    def from_entry(cls, dlq_id: str, raw: Fields) -> DeadLetter:
        """Build one from a raw dead-letter entry (bytes keys and values)."""
        fields = {
            key.decode("utf-8", "backslashreplace"): _value(value)
            for key, value in raw.items()
            if not key.startswith(_META_PREFIX)
        }

        def meta(name: str) -> bytes | None:
            return raw.get(_META_PREFIX + name.encode())

        def text(name: str) -> str:
            value = meta(name)
            return "" if value is None else _text(value)

        return cls(
            dlq_id=dlq_id,
            original_id=text("id"),
            stream=text("stream"),
            group=text("group"),
            fields=fields,
            reason=text("reason"),
            deliveries=_int_or(meta("deliveries"), 0),
            time=_utc_from_ms(_int_or(meta("time"), _id_ms(dlq_id))),
            consumer=text("consumer"),
            traceback=text("traceback"),
        )


class DeadLetters:
    """The dead-letter stream of one queue: list, requeue and purge its entries.

    Thread-safe: each call borrows its own connection from the client's pool.
    Every call raises what Redis raised (``redis.exceptions.*``); a requeue
    that failed part-way can simply be called again, because each entry is
    moved atomically and a moved entry is no longer in the dead-letter stream.

    Redis Cluster: requeue runs one script on both streams, so the
    dead-letter stream must be in the original stream's slot. The default
    name (``{emails}:dead``) always is; keep a custom ``dlq_stream`` there too.

    >>> dead = DeadLetters(client, "emails")
    >>> for letter in dead.list(limit=10):
    ...     print(letter.original_id, letter.reason)
    >>> dead.requeue([letter.dlq_id])
    ['1712345678999-0']

    :param client: a ``redis.Redis`` client, with or without ``decode_responses``.
    :param stream: the queue's original stream, where requeued jobs go.
    :param dlq_stream: the dead-letter stream, if the queue's ``Claimer`` names
        one; defaults to ``{stream}:dead``.
    :raises ConfigurationError: for an empty name or a client that is not a
        ``redis.Redis``.
    """

    def __init__(self, client: Any, stream: str, *, dlq_stream: str | None = None) -> None:
        check_client(client)
        if not isinstance(stream, str) or not stream:
            raise ConfigurationError(f"stream must be a non-empty str, not {stream!r}")
        if dlq_stream is None:
            dlq_stream = dead_letter_stream(stream)
        elif not isinstance(dlq_stream, str) or not dlq_stream:
            raise ConfigurationError(f"dlq_stream must be a non-empty str, not {dlq_stream!r}")
        if dlq_stream == stream:
            raise ConfigurationError("dlq_stream must not be the original stream itself")
        self.client = client
        self.stream = stream
        self.dlq_stream = dlq_stream

    def __repr__(self) -> str:
        return f"DeadLetters(stream={self.stream!r}, dlq_stream={self.dlq_stream!r})"

    def count(self) -> int:
        """How many entries the dead-letter stream holds (XLEN)."""
        session = Session(self.client, self.dlq_stream)
        try:
            return int(session.call("XLEN", self.dlq_stream))
        finally:
            session.close()

    def list(self, limit: int = 100, *, start: str = "-") -> builtins.list[DeadLetter]:
        """The oldest ``limit`` dead letters from ``start`` on, oldest first (XRANGE).

        :param limit: most entries returned.
        :param start: the first ``dlq_id`` to return (``"-"``: from the oldest);
            ``"(" + dlq_id`` starts just after one, to page through the stream.
        :raises ConfigurationError: for a ``limit`` below 1 or a malformed ``start``.
        """
        limit = _check_positive(limit, "limit")
        if not isinstance(start, str) or not (start == "-" or _START.fullmatch(start)):
            raise ConfigurationError(
                f"start must be '-', a stream id or '(' and a stream id, not {start!r}"
            )
        session = Session(self.client, self.dlq_stream)
        try:
            reply = session.call("XRANGE", self.dlq_stream, start, "+", "COUNT", limit)
        finally:
            session.close()
        return [DeadLetter.from_entry(msg_id, raw or {}) for msg_id, raw in parse_entries(reply)]

    def requeue(self, ids: Iterable[str]) -> builtins.list[str]:
        """Move dead letters back to the original stream, each atomically; returns their new ids.

        One script per batch of ids reads each entry, adds its original fields
        (``flowd:*`` fields left out; ``flowd:empty`` if nothing else is left)
        to the original stream under a new id, and deletes it from the
        dead-letter stream: a crash or a lost reply never loses an entry or
        adds it twice. The new entry is delivered again to every consumer
        group of the stream.

        Ids not in the dead-letter stream are skipped, and so are entries
        whose ``flowd:stream`` names another stream (logged at WARNING): the
        result lists only the entries moved, in the order of ``ids``.

        :param ids: ``dlq_id`` values, e.g. from :meth:`list`.
        :raises ConfigurationError: for an id that is not a full stream id.
        """
        checked = _check_ids(ids)
        if not checked:
            return []
        session = Session(self.client, self.dlq_stream)
        try:
            moved: builtins.list[str] = []
            for chunk in _chunks(checked, _SCRIPT_BATCH):
                moved += self._requeue_batch(session, chunk)
        finally:
            session.close()
        logger.info(
            "requeued %d of %d dead letters from %s to %s",
            len(moved),
            len(checked),
            self.dlq_stream,
            self.stream,
        )
        return moved

    def requeue_all(self, batch: int = 100) -> int:
        """Requeue every entry the dead-letter stream holds now; returns how many moved.

        Entries are read and moved ``batch`` at a time, as :meth:`requeue`
        does. Entries dead-lettered after the call began are left alone, so a
        job that fails again at once cannot keep the call going.

        :raises ConfigurationError: for a ``batch`` below 1.
        """
        batch = _check_positive(batch, "batch")
        session = Session(self.client, self.dlq_stream)
        count = 0
        try:
            last = parse_entries(session.call("XREVRANGE", self.dlq_stream, "+", "-", "COUNT", 1))
            if not last:
                return 0
            end, start = last[0][0], "-"
            while True:
                reply = session.call("XRANGE", self.dlq_stream, start, end, "COUNT", batch)
                ids = [msg_id for msg_id, _ in parse_entries(reply)]
                if not ids:
                    break
                count += len(self._requeue_batch(session, ids))
                if len(ids) < batch or ids[-1] == end:
                    break
                start = "(" + ids[-1]
        finally:
            session.close()
        logger.info("requeued %d dead letters from %s to %s", count, self.dlq_stream, self.stream)
        return count

    def purge(self, ids: Iterable[str] | None = None) -> int:
        """Delete the given dead letters, or all of them; returns how many were removed.

        Without ``ids`` the dead-letter stream itself is deleted (XLEN and DEL
        in one MULTI, so the count is exact). Ids not found are not counted.

        :raises ConfigurationError: for an id that is not a full stream id.
        """
        session = Session(self.client, self.dlq_stream)
        try:
            if ids is None:
                replies = session.call_many(
                    [("MULTI",), ("XLEN", self.dlq_stream), ("DEL", self.dlq_stream), ("EXEC",)]
                )
                for reply in replies:
                    if isinstance(reply, Exception):
                        raise reply
                removed = int(replies[-1][0])
            else:
                removed = 0
                for chunk in _chunks(_check_ids(ids), _XDEL_BATCH):
                    removed += int(session.call("XDEL", self.dlq_stream, *chunk))
        finally:
            session.close()
        logger.info("purged %d dead letters from %s", removed, self.dlq_stream)
        return removed

    def _requeue_batch(self, session: Session, ids: builtins.list[str]) -> builtins.list[str]:
        reply = _REQUEUE(session, [self.dlq_stream, self.stream], [self.stream, *ids])
        moved: builtins.list[str] = []
        for dlq_id, status, value in zip(ids, reply[::2], reply[1::2], strict=True):
            if status == b"moved":
                moved.append(_text(value))
            elif status == b"foreign":
                logger.warning(
                    "dead letter %s in %s belongs to stream %s, not %s; not requeued",
                    dlq_id,
                    self.dlq_stream,
                    _text(value),
                    self.stream,
                )
            else:
                logger.debug("dead letter %s is not in %s; skipped", dlq_id, self.dlq_stream)
        return moved
