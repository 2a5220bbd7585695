"""Moving a queue's keys from the old layout (one prefix per hash tag) to the new one.

Before 0.2 every derived key was named from the stream's hash tag alone, so
``{shop}:emails`` and ``{shop}:orders`` shared ``{shop}:dead``, ``{shop}:scheduled``,
``{shop}:unique:<key>`` and the rest. Now each stream's keys start with its own name
(:func:`flowd._redis.keys.key_prefix`). Streams without a tag, or that are all tag
(``emails``, ``{emails:0}``, partitions), never changed and have nothing to migrate.

:func:`migrate_keys` (and ``flowd migrate STREAM...``) splits the shared keys by owner:

- dead letters by their ``flowd:stream`` field;
- failure reasons and tracebacks (``errors:<group>``, ``tracebacks:<group>``) by which
  stream holds the message id;
- unique keys by the job holding them (a stream id the stream holds, or a scheduled job
  that moves with the scheduled set);
- the scheduled set (with each job's hash) and the periodic schedules' states go to the
  stream only when it is the only stream with that tag, else to ``scheduled_to``: a
  scheduled job's fields do not say which stream it was meant for.

Each step is one script over keys of one slot, so it is atomic, and a second run finds
nothing left to move. Ephemeral keys (the housekeeping lease, throughput counters, move
markers) are left to expire.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigurationError
from .keys import derived_key, hash_tag, key_prefix, legacy_key_prefix
from .scripts import Script

__all__ = ["KeyMigration", "legacy_keys_left", "migrate_keys"]

logger = logging.getLogger("flowd")

#: Ids checked, or entries moved, per round trip or script call.
_BATCH = 200

# KEYS: old dead-letter stream, new one. ARGV[1] the stream named in flowd:stream, then
# ids. An entry keeps its id when the new stream allows it (ids order dead letters).
_MOVE_DEAD = Script("""
local moved = 0
for i = 2, #ARGV do
  local entry = redis.call('XRANGE', KEYS[1], ARGV[i], ARGV[i])[1]
  if entry then
    local fields, origin = entry[2], nil
    for j = 1, #fields, 2 do
      if fields[j] == 'flowd:stream' then origin = fields[j + 1] end
    end
    if origin == ARGV[1] then
      local ok = redis.pcall('XADD', KEYS[2], entry[1], unpack(fields))
      if type(ok) == 'table' and ok.err then
        redis.call('XADD', KEYS[2], '*', unpack(fields))
      end
      redis.call('XDEL', KEYS[1], entry[1])
      moved = moved + 1
    end
  end
end
-- an emptied stream is not deleted by XDEL; one no stream writes to any more goes
if redis.call('XLEN', KEYS[1]) == 0 then redis.call('DEL', KEYS[1]) end
return moved
""")

# KEYS: old hash, new hash. ARGV: fields to move (a field already in the new hash wins).
_MOVE_FIELDS = Script("""
local moved = 0
for i = 1, #ARGV do
  local value = redis.call('HGET', KEYS[1], ARGV[i])
  if value then
    redis.call('HSETNX', KEYS[2], ARGV[i], value)
    redis.call('HDEL', KEYS[1], ARGV[i])
    moved = moved + 1
  end
end
return moved
""")

# KEYS: old key, new key. ARGV[1]: the value the old key must hold ('' for any).
# RENAME keeps the TTL; a new key that exists already is never overwritten.
_RENAME = Script("""
if redis.call('EXISTS', KEYS[1]) == 0 or redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
if ARGV[1] ~= '' and redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('RENAME', KEYS[1], KEYS[2])
return 1
""")

# KEYS: old scheduled set, new one. ARGV[1], ARGV[2]: old and new job-hash prefixes,
# then members. Each job moves with its hash, or not at all.
_MOVE_SCHEDULED = Script("""
local moved = 0
for i = 3, #ARGV do
  local member = ARGV[i]
  local score = redis.call('ZSCORE', KEYS[1], member)
  if score then
    redis.call('ZADD', KEYS[2], score, member)
    redis.call('ZREM', KEYS[1], member)
    local old, new = ARGV[1] .. member, ARGV[2] .. member
    if redis.call('EXISTS', old) == 1 then redis.call('RENAME', old, new) end
    moved = moved + 1
  end
end
return moved
""")


@dataclass(frozen=True, slots=True)
class KeyMigration:
    """What :func:`migrate_keys` moved (or, dry, would move) for one stream.

    :ivar moved: counts by kind: ``dead letters``, ``errors``, ``tracebacks``,
        ``unique keys``, ``scheduled jobs``, ``schedules``.
    :ivar left: what was left in the old layout, and why.
    """

    stream: str
    moved: dict[str, int] = field(default_factory=dict)
    left: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        """Everything moved."""
        return sum(self.moved.values())


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else value


def _glob(text: str) -> str:
    """``text`` as a literal in a SCAN MATCH pattern."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


def _scan(client: Any, pattern: str, **kwargs: Any) -> list[str]:
    return [_text(key) for key in client.scan_iter(match=pattern, count=1000, **kwargs)]


def _held(client: Any, stream: str, ids: Sequence[str]) -> list[str]:
    """Those of ``ids`` that are entries of ``stream``."""
    held: list[str] = []
    for start in range(0, len(ids), _BATCH):
        chunk = ids[start : start + _BATCH]
        pipe = client.pipeline(transaction=False)
        for msg_id in chunk:
            pipe.xrange(stream, msg_id, msg_id, count=1)
        for msg_id, reply in zip(chunk, pipe.execute(raise_on_error=False), strict=True):
            if isinstance(reply, list) and reply:
                held.append(msg_id)
    return held


def _tag_streams(client: Any, tag: str) -> set[str]:
    """Streams whose hash tag is ``tag`` (dead-letter streams aside)."""
    names = _scan(client, "*" + _glob(tag) + "*", _type="stream")
    return {n for n in names if hash_tag(n) == tag and not n.endswith(":dead")}


def _calls(script: Script, client: Any, keys: list[str], items: Sequence[str], *head: str) -> int:
    moved = 0
    for start in range(0, len(items), _BATCH):
        moved += int(script(client, keys, [*head, *items[start : start + _BATCH]]))
    return moved


def migrate_keys(
    client: Any,
    streams: Iterable[str],
    *,
    scheduled_to: str | None = None,
    dry_run: bool = False,
) -> list[KeyMigration]:
    """Move the keys of ``streams`` from the old layout to their own (see the module).

    :param scheduled_to: the stream that takes the shared scheduled set and periodic
        schedules of its tag, when several streams share the tag.
    :param dry_run: count what would move, move nothing.
    :raises ConfigurationError: ``scheduled_to`` is not one of ``streams``.
    """
    names = list(dict.fromkeys(streams))
    if scheduled_to is not None and scheduled_to not in names:
        raise ConfigurationError(
            f"scheduled_to={scheduled_to!r} must be one of the streams migrated: {names}"
        )
    return [_migrate_one(client, s, names, scheduled_to, dry_run) for s in names]


def _migrate_one(
    client: Any, stream: str, names: list[str], scheduled_to: str | None, dry_run: bool
) -> KeyMigration:
    report = KeyMigration(stream)
    old, new = legacy_key_prefix(stream), key_prefix(stream)
    if old == new:
        return report  # this name's keys never moved
    suffixes = {k[len(old) + 1 :]: k for k in _scan(client, _glob(old) + ":*")}
    # The scheduled set first: unique keys held by scheduled jobs follow it.
    members = _move_scheduled(client, stream, names, scheduled_to, dry_run, report)
    for suffix, key in sorted(suffixes.items()):
        if suffix == "dead":
            _move_dead(client, stream, key, dry_run, report)
        elif suffix.startswith(("errors:", "tracebacks:")):
            mine = _held(client, stream, [_text(f) for f in client.hkeys(key)])
            _count(report, suffix.split(":", 1)[0], len(mine))
            if mine and not dry_run:
                _calls(_MOVE_FIELDS, client, [key, derived_key(stream, suffix)], mine)
        elif suffix.startswith("unique:"):
            raw = client.get(key)
            holder = "" if raw is None else _text(raw)
            ours = holder in members if holder.startswith("s-") else _held(client, stream, [holder])
            if holder and ours:
                _count(report, "unique keys", 1)
                if not dry_run:
                    _RENAME(client, [key, derived_key(stream, suffix)], [holder])
    if report.total:
        logger.info(
            "%s %s of %s from %s:* to %s:*",
            "would move" if dry_run else "moved",
            ", ".join(f"{n} {kind}" for kind, n in report.moved.items() if n),
            stream,
            old,
            new,
        )
    return report


def _count(report: KeyMigration, kind: str, n: int) -> None:
    report.moved[kind] = report.moved.get(kind, 0) + n


def _move_scheduled(
    client: Any,
    stream: str,
    names: list[str],
    scheduled_to: str | None,
    dry_run: bool,
    report: KeyMigration,
) -> set[str]:
    """Move the tag's scheduled set and schedules to ``stream`` if they are its own;
    returns the scheduled-job ids it moved (or would move)."""
    old = legacy_key_prefix(stream)
    if not client.exists(f"{old}:scheduled", f"{old}:schedules"):
        return set()
    if scheduled_to is None:
        owners = _tag_streams(client, old) | {n for n in names if hash_tag(n) == old}
        if not owners <= {stream}:
            report.left.append(
                f"the scheduled jobs and schedules of {old}: several streams have that "
                "tag; name the one they belong to (scheduled_to=, --scheduled-to)"
            )
            return set()
    elif scheduled_to != stream:
        return set()
    members = [_text(m) for m in client.zrange(f"{old}:scheduled", 0, -1)]
    states = [_text(f) for f in client.hkeys(f"{old}:schedules")]
    _count(report, "scheduled jobs", len(members))
    _count(report, "schedules", len(states))
    if not dry_run:
        keys = [f"{old}:scheduled", derived_key(stream, "scheduled")]
        _calls(_MOVE_SCHEDULED, client, keys, members, f"{old}:scheduled:", keys[1] + ":")
        keys = [f"{old}:schedules", derived_key(stream, "schedules")]
        _calls(_MOVE_FIELDS, client, keys, states)
    return set(members)


def _move_dead(client: Any, stream: str, key: str, dry_run: bool, report: KeyMigration) -> None:
    mine, start = [], "-"
    while page := client.xrange(key, start, "+", count=1000):
        for entry_id, fields in page:
            origin = fields.get(b"flowd:stream", fields.get("flowd:stream", b""))
            if _text(origin) == stream:
                mine.append(_text(entry_id))
        start = "(" + _text(page[-1][0])
    _count(report, "dead letters", len(mine))
    if mine and not dry_run:
        _calls(_MOVE_DEAD, client, [key, derived_key(stream, "dead")], mine, stream)


def legacy_keys_left(client: Any, stream: str, group: str) -> bool:
    """Whether the old layout still holds data of ``stream`` (a queue warns at start)."""
    old = legacy_key_prefix(stream)
    if old == key_prefix(stream):
        return False
    pipe = client.pipeline(transaction=False)
    pipe.exists(f"{old}:scheduled", f"{old}:schedules", f"{old}:errors:{group}")
    pipe.xrevrange(f"{old}:dead", count=100)
    counted, dead = pipe.execute()
    origin = stream.encode()
    return int(counted) > 0 or any(
        fields.get(b"flowd:stream", fields.get("flowd:stream")) in (origin, stream)
        for _, fields in dead
    )
