"""Key names derived from a stream; pure functions, no I/O.

Every derived key carries the stream's cluster hash tag, so all keys of one
queue live in one slot and multi-key steps work on Redis Cluster, and every
derived key names its whole stream, so queues whose streams share a tag
(``{shop}:emails`` and ``{shop}:orders``) never share a key:

- ``emails`` -> ``{emails}:dead`` (the name becomes its own tag);
- ``{emails:0}`` -> ``{emails:0}:dead`` (a name that is all tag keeps it);
- ``{shop}:emails`` -> ``{shop}:emails:dead`` (a tagged name is the prefix).

Before 0.2 the prefix was the tag alone (``{shop}:dead``): :func:`legacy_key_prefix`
names that layout for ``flowd migrate``.
"""

from __future__ import annotations

import re

from ..errors import ConfigurationError


def hash_tag(stream: str) -> str:
    """The ``{tag}`` that decides the stream's cluster slot.

    A stream that already has a non-empty ``{...}`` tag keeps it; any other
    name becomes its own tag. A name with a ``}`` but no tag cannot be its own
    tag (the tag would end at that ``}``, in another slot), so it is refused.

    :raises ConfigurationError: for such a name.
    """
    start = stream.find("{")
    if start != -1:
        end = stream.find("}", start + 1)
        if end > start + 1:
            return stream[start : end + 1]
    if "}" in stream:
        raise ConfigurationError(
            f"stream name {stream!r} has a '}}' but no hash tag, so flowd cannot name its "
            f"other keys in the same cluster slot; give it a tag, e.g. "
            f"'{{{stream.replace('}', '')}}}'"
            ", or avoid '}' in the name"
        )
    return "{" + stream + "}"


def key_prefix(stream: str) -> str:
    """What every derived key of ``stream`` starts with: the stream itself when it
    has a hash tag of its own, else the stream as its own tag.

    :raises ConfigurationError: for a name with a ``}`` but no tag.
    """
    tag = hash_tag(stream)
    return tag if tag == "{" + stream + "}" else stream


def legacy_key_prefix(stream: str) -> str:
    """The prefix of the old layout, the hash tag alone, shared by every stream with that
    tag; differs from :func:`key_prefix` only for names with a tag and more."""
    return hash_tag(stream)


def derived_key(stream: str, suffix: str) -> str:
    """A key of this queue, in the stream's slot: ``{emails}:<suffix>``, or
    ``{shop}:emails:<suffix>`` for a stream with a tag of its own."""
    return f"{key_prefix(stream)}:{suffix}"


def runs_key(stream: str, group: str) -> str:
    """The hash of ``group``'s claimed runs that started, by message id (see flowd._runs)."""
    return derived_key(stream, f"runs:{group}")


def result_key(stream: str, job_id: str) -> str:
    """The string holding one job's record when it ended other than by a success (dead,
    failed, cancelled; a JSON text, see flowd._redis.records)."""
    return derived_key(stream, f"result:{job_id}")


def result_buckets_key(stream: str) -> str:
    """The sorted set of the hashes that hold successes' records (score: their expiry)."""
    return derived_key(stream, "result-buckets")


def waiters_key(stream: str) -> str:
    """The set of job ids someone waits for (Results.wait adds to it)."""
    return derived_key(stream, "waiters")


def done_key(stream: str, job_id: str) -> str:
    """The list a waiter blocks on; pushed to when the job's record is written."""
    return derived_key(stream, f"done:{job_id}")


def alias_key(stream: str, job_id: str) -> str:
    """The string naming the id a job has now, written when its id changes (a delayed job
    moved into the stream, a retry scheduled for later)."""
    return derived_key(stream, f"alias:{job_id}")


def trace_link_key(stream: str, group: str, msg_id: str) -> str:
    """The string naming the span of a message's first run in ``group``, kept while the
    message may run again, so a retry's span links to it (flowd.contrib.opentelemetry)."""
    return derived_key(stream, f"trace:{group}:{msg_id}")


def dead_letter_stream(stream: str) -> str:
    """The default dead-letter stream: ``{emails}:dead`` for ``emails``."""
    return derived_key(stream, "dead")


def _crc16(data: bytes) -> int:
    """CRC16-CCITT (XMODEM), the checksum Redis Cluster uses for key slots."""
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc


def key_slot(key: str) -> int:
    """The Redis Cluster slot of ``key`` (its ``{tag}`` only, when it has one)."""
    raw = key.encode("utf-8")
    start = raw.find(b"{")
    if start != -1:
        end = raw.find(b"}", start + 1)
        if end > start + 1:
            raw = raw[start + 1 : end]
    return _crc16(raw) % 16384


#: Most partitions of one queue: naming searches tags, about P tries each.
MAX_PARTITIONS = 64
_SLOTS = 16384


def _partition_name(stream: str, i: int, partitions: int) -> str:
    """Partition ``i`` of ``partitions`` of ``stream`` (see :func:`partition_streams`)."""
    low, high = i * _SLOTS // partitions, (i + 1) * _SLOTS // partitions
    k = 0
    name = f"{{{stream}:{i}}}"
    while not low <= key_slot(name) < high:
        k += 1
        name = f"{{{stream}:{i}:{k}}}"
    return name


#: ``{stream:i:k}`` and ``{stream:i}``: the two shapes of a partition's name (the first
#: tried first: ``{orders:0:1}`` is partition 0 of ``orders`` rather than 1 of ``orders:0``).
_PARTITION_SHAPES = (
    re.compile(r"\{([^{}]+):(\d+):\d+\}"),
    re.compile(r"\{([^{}]+):(\d+)\}"),
)


def partition_base(name: str) -> str | None:
    """The queue's stream if ``name`` is one of its partitions (``{orders:1}`` ->
    ``orders``, for a queue of any number of partitions), else None."""
    for shape in _PARTITION_SHAPES:
        match = shape.fullmatch(name)
        if match is None:
            continue
        base, i = match[1], int(match[2])
        for partitions in range(max(2, i + 1), MAX_PARTITIONS + 1):
            if _partition_name(base, i, partitions) == name:
                return base
    return None


def partition_streams(stream: str, partitions: int) -> list[str]:
    """The streams of a queue spread over ``partitions`` (just ``[stream]`` for 1).

    Partition ``i`` is ``{stream:i}`` (or ``{stream:i:k}``), with a hash tag
    chosen so that its slot lies in the i-th of ``partitions`` equal slices of
    the slot space: ``redis-cli --cluster create`` gives each master such a
    slice, so partitions land on different masters. Producers and consumers
    compute the same names.
    """
    if (
        isinstance(partitions, bool)
        or not isinstance(partitions, int)
        or not (1 <= partitions <= MAX_PARTITIONS)
    ):
        raise ConfigurationError(
            f"partitions must be an int from 1 to {MAX_PARTITIONS}, not {partitions!r}"
        )
    if partitions == 1:
        return [stream]
    if "{" in stream or "}" in stream:
        raise ConfigurationError(
            f"a partitioned stream name cannot contain braces: {stream!r} (each partition "
            "gets a hash tag of its own)"
        )
    return [_partition_name(stream, i, partitions) for i in range(partitions)]
