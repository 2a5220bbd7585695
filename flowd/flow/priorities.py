"""Job priorities: each queue stream has up to three bands, each a stream of its own.

``Producer.enqueue(job, priority=p)`` takes an int from -100 to 100 (Django's
range; higher runs first, 0 is the default) and writes the job to its band:

- ``p > 0``: the high band, ``{emails}:band:high``;
- ``p == 0``: the stream itself, ``emails`` (so default jobs cost nothing new);
- ``p < 0``: the low band, ``{emails}:band:low``.

Within a band jobs start in enqueue order (the value only picks the band).
Each band stream has its own consumer group, pending list, claimer and dead
letters (``{emails}:band:high:dead``), all in the stream's cluster slot; a
partitioned queue has the bands of each partition stream.

The reader of a stream asks a :class:`BandWatch` (at most every
:data:`CHECK_EVERY` seconds) whether a band stream exists; while none does, it
reads as it always did. Once one does, one script (:data:`READ_BANDS`) takes
up to the free permits from the high band first, then the stream, then the
low band, and an idle reader blocks on all three streams at once.

Starvation: after :data:`STARVATION_EVERY` jobs in a row taken from higher
bands, the next job taken is the oldest waiting one of the lowest band that has
one, so a low band gets at least one job in ``STARVATION_EVERY + 1`` while
higher ones are busy (counted per consumer).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from .._redis.keys import derived_key
from .._redis.replies import Entry, parse_entries
from .._redis.scripts import Script
from .._redis.session import Session
from ..errors import ConfigurationError

__all__ = [
    "BASE",
    "CHECK_EVERY",
    "MAX_PRIORITY",
    "MIN_PRIORITY",
    "STARVATION_EVERY",
    "BandRead",
    "BandReads",
    "BandWatch",
    "band_stream",
    "band_streams",
    "check_priority",
    "is_band_stream",
]

MIN_PRIORITY = -100
MAX_PRIORITY = 100
#: Jobs in a row from higher bands after which the lowest waiting band gets one.
STARVATION_EVERY = 10
#: Seconds a reader trusts what it last saw of which band streams exist.
CHECK_EVERY = 0.25
#: The index of the stream itself among a queue stream's bands (high, base, low).
BASE = 1

_HIGH, _LOW = "band:high", "band:low"


def check_priority(priority: object) -> int:
    """``priority`` as given, if it is an int from -100 to 100.

    :raises ConfigurationError: naming ``priority`` otherwise.
    """
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise ConfigurationError(
            f"priority must be an int from {MIN_PRIORITY} to {MAX_PRIORITY}, not {priority!r}"
        )
    if not MIN_PRIORITY <= priority <= MAX_PRIORITY:
        raise ConfigurationError(
            f"priority must be from {MIN_PRIORITY} to {MAX_PRIORITY}, not {priority}"
        )
    return priority


def band_stream(stream: str, priority: int) -> str:
    """The stream a job of ``priority`` goes to: a band of ``stream`` or ``stream`` itself."""
    if priority > 0:
        return derived_key(stream, _HIGH)
    if priority < 0:
        return derived_key(stream, _LOW)
    return stream


def band_streams(stream: str) -> tuple[str, str, str]:
    """The bands of ``stream`` from the highest: (high band, ``stream``, low band)."""
    return derived_key(stream, _HIGH), stream, derived_key(stream, _LOW)


def is_band_stream(name: str) -> bool:
    """Whether ``name`` is a band stream (derived from a queue stream)."""
    return name.endswith((":" + _HIGH, ":" + _LOW)) and "}" in name


class BandWatch:
    """Which band streams of one queue stream exist, at most ``every`` seconds old
    (asked by the stream's reader, through the reader's session)."""

    def __init__(self, session: Session, stream: str, every: float = CHECK_EVERY) -> None:
        high, _, low = band_streams(stream)
        self.bands = (high, low)
        self.every = every
        self._session = session
        self._seen: frozenset[str] = frozenset()
        self._checked = float("-inf")

    def existing(self) -> frozenset[str]:
        """The band streams that exist."""
        if time.monotonic() - self._checked >= self.every:
            call = self._session.call
            self._seen = frozenset(b for b in self.bands if call("EXISTS", b))
            self._checked = time.monotonic()
        return self._seen


# KEYS: the bands from the highest. ARGV: group, consumer, count, streak, STARVATION_EVERY.
# Reads up to count new entries, higher bands first, the lowest waiting band's oldest
# entry after every `every` in a row from higher bands. Returns {streak, missing, after,
# batches}: missing lists bands (0-based) that exist without the group; after (only when
# nothing was read) each band's last-delivered id, "0-0" for a band that does not exist
# yet (an XREAD BLOCK after it wakes when one is added); batches is a flat list of band
# index, entries, in the order read.
READ_BANDS = Script(
    """
local group, consumer = ARGV[1], ARGV[2]
local rest, streak, every = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local live, lowest = {}, 0
for i = 1, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 1 then live[i] = true; lowest = i end
end
local batches, missing, total = {}, {}, 0
local function take(i, n)
  local reply = redis.pcall('XREADGROUP', 'GROUP', group, consumer, 'COUNT', n,
    'STREAMS', KEYS[i], '>')
  if type(reply) == 'table' and reply.err then
    missing[#missing + 1] = i - 1; return -1
  end
  if not reply then return 0 end
  local entries = reply[1][2]
  batches[#batches + 1] = i - 1; batches[#batches + 1] = entries
  total = total + #entries
  return #entries
end
while rest > 0 do
  if streak >= every then
    local n = 0
    for i = lowest, 2, -1 do
      n = live[i] and take(i, 1) or 0
      if n ~= 0 then break end
    end
    if n >= 0 then streak = 0; rest = rest - n end  -- n < 0: again once it has the group
  end
  if rest <= 0 or #missing > 0 then break end
  local chunk, got, reached = math.min(rest, every - streak), 0, false
  for i = 1, lowest do
    if live[i] and got < chunk and #missing == 0 then
      reached = i == lowest
      got = got + math.max(0, take(i, chunk - got))
    end
  end
  if #missing > 0 then break end
  rest = rest - got
  if reached then streak = 0 else streak = streak + got end
  if got < chunk then break end
end
local after = {}
if total == 0 then
  for i = 1, #KEYS do
    local id = '0-0'
    if live[i] then
      for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[i])) do
        local name, last
        for j = 1, #g, 2 do
          if g[j] == 'name' then name = g[j + 1]
          elseif g[j] == 'last-delivered-id' then last = g[j + 1] end
        end
        if name == group then id = last end
      end
    end
    after[i] = id
  end
end
return {streak, missing, after, batches}
"""
)


@dataclass(frozen=True, slots=True)
class BandRead:
    """What one read of the bands found."""

    #: (band index, entries) in the order read; index 0 is the high band.
    batches: list[tuple[int, list[Entry]]]
    #: Bands that exist without the group (create it, then read again).
    missing: list[int]
    #: When nothing was read: each band's id to block after (see :meth:`BandReads.wait`).
    after: list[str]

    @property
    def count(self) -> int:
        return sum(len(entries) for _, entries in self.batches)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class BandReads:
    """The reads of one consumer of the bands of one stream, keeping the starvation count."""

    def __init__(self, stream: str, group: str, consumer: str) -> None:
        self.keys = band_streams(stream)
        self.group = group
        self.consumer = consumer
        #: Jobs taken in a row from bands above the lowest that exists.
        self.streak = 0

    def read(self, session: Session, count: int) -> BandRead:
        """Take up to ``count`` new entries, higher bands first (does not block)."""
        args = (self.group, self.consumer, count, self.streak, STARVATION_EVERY)
        streak, missing, after, flat = READ_BANDS(session, self.keys, args)
        self.streak = int(streak)
        it = iter(flat)
        batches = [(int(index), parse_entries(raw)) for index, raw in zip(it, it, strict=True)]
        return BandRead(batches, [int(i) for i in missing], [_text(a) for a in after])

    def wait(self, session: Session, after: list[str], block_ms: int) -> None:
        """Block until a band has an entry after ``after`` (or for ``block_ms``), reading
        nothing for the group."""
        if len(after) != len(self.keys):
            return
        session.call("XREAD", "COUNT", 1, "BLOCK", block_ms, "STREAMS", *self.keys, *after)
