"""What the dashboard's pages show, read from Redis with bounded work.

Every list is read one page at a time with a cursor (XREVRANGE/XPENDING with
COUNT, ZRANGE with LIMIT), so a page costs the same for a stream of ten
entries or ten million, and the dashboard keeps nothing between requests.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from .._codec.display import task_rows
from .._redis import throughput as _throughput
from .._redis.keys import dead_letter_stream, derived_key
from ..deadletters import DeadLetter
from ..flow.priorities import band_streams, is_band_stream

history = _throughput.history

#: Rows per page of every long list.
PAGE = 50
#: Consumers listed per group (XINFO CONSUMERS has no COUNT; the rest are counted).
MAX_CONSUMERS = 100
#: Longest field value shown in full; longer ones are cut.
MAX_VALUE = 4000
#: Streams found by discovery at most, and SCAN calls spent looking.
MAX_STREAMS = 200
MAX_SCAN_CALLS = 200


_ID = re.compile(r"\d{1,20}-\d{1,20}")


def cursor(value: str | None) -> str | None:
    """A page cursor from the URL if it is a stream id; anything else means the first page."""
    return value if value is not None and _ID.fullmatch(value) else None


def text(value: Any) -> str:
    """A Redis reply item as text (bytes decoded, invalid UTF-8 replaced)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def shown(value: str | bytes) -> str:
    """A field value for display: text as is, other bytes as a Python literal, cut if long."""
    out = value if isinstance(value, str) else repr(value)
    return out if len(out) <= MAX_VALUE else out[:MAX_VALUE] + f"... ({len(out)} characters)"


def shown_fields(fields: dict[str, str | bytes]) -> list[tuple[str, str]]:
    """A message's fields for display; a Django task's message shows as its task's module
    path called with its arguments, and its result id, instead of its raw fields."""
    rows = task_rows(fields)
    if rows is not None:
        return [(name, shown(value)) for name, value in rows]
    return [(name, shown(value)) for name, value in fields.items()]


def scheduled_api() -> Any:
    """``flowd.ScheduledJobs`` when the scheduling feature is installed, else None."""
    module = importlib.import_module("flowd")
    return getattr(module, "ScheduledJobs", None)


def discover(client: Any) -> list[str]:
    """Streams that have consumer groups (SCAN TYPE stream, bounded), sorted by name."""
    names: list[str] = []
    if hasattr(client, "get_nodes"):  # cluster: scan_iter visits every master
        for key in client.scan_iter(count=1000, _type="stream"):
            names.append(text(key))
            if len(names) >= MAX_STREAMS * 4:
                break
    else:
        cursor: Any = 0
        for _ in range(MAX_SCAN_CALLS):
            cursor, keys = client.scan(cursor, count=1000, _type="stream")
            names += [text(key) for key in keys]
            if int(cursor) == 0 or len(names) >= MAX_STREAMS * 4:
                break
    pipe = client.pipeline(transaction=False)
    for name in names:
        pipe.xinfo_groups(name)
    replies = pipe.execute(raise_on_error=False)
    with_groups = sorted(
        name
        for name, groups in zip(names, replies, strict=True)
        if isinstance(groups, list) and groups
    )
    return with_groups[:MAX_STREAMS]


def with_bands(client: Any, names: Sequence[str]) -> list[str]:
    """``names``, each queue stream followed by the band streams of its priorities that
    exist (one pipelined round trip), so that a queue's bands show under it."""
    bases = [name for name in names if not is_band_stream(name)]
    pipe = client.pipeline(transaction=False)
    for name in bases:
        high, _, low = band_streams(name)
        pipe.exists(high)
        pipe.exists(low)
    replies = iter(pipe.execute())
    shown: list[str] = []
    for name in bases:
        high, _, low = band_streams(name)
        shown += [name, *(band for band in (high, low) if next(replies))]
    return shown + [name for name in names if name not in set(shown)]


@dataclass(frozen=True, slots=True)
class PendingRow:
    """One pending message of a group (XPENDING) and its last recorded failure."""

    id: str
    consumer: str
    idle_ms: int
    deliveries: int
    last_error: str


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a list; ``next`` is the cursor of the following page, None on the last."""

    rows: list[Any]
    next: str | None
    first: bool


def pending_page(client: Any, stream: str, group: str, after: str | None) -> Page:
    """Pending messages of ``group`` after the id ``after`` (oldest first), with last errors."""
    after = cursor(after)
    start = "-" if after is None else "(" + after
    raw = client.xpending_range(stream, group, min=start, max="+", count=PAGE + 1)
    more = len(raw) > PAGE
    raw = raw[:PAGE]
    ids = [text(item["message_id"]) for item in raw]
    errors = client.hmget(derived_key(stream, f"errors:{group}"), ids) if ids else []
    rows = [
        PendingRow(
            id=msg_id,
            consumer=text(item["consumer"]),
            idle_ms=int(item["time_since_delivered"]),
            deliveries=int(item["times_delivered"]),
            last_error="" if error is None else text(error),
        )
        for msg_id, item, error in zip(ids, raw, errors, strict=True)
    ]
    return Page(rows, rows[-1].id if more else None, after is None)


@dataclass(frozen=True, slots=True)
class DeadRow:
    """One dead letter, ready to show."""

    letter: DeadLetter
    traceback: str
    fields: list[tuple[str, str]] = field(default_factory=list)


def _raw_fields(raw: Any) -> dict[bytes, bytes]:
    def as_bytes(value: Any) -> bytes:
        return value if isinstance(value, bytes) else str(value).encode("utf-8", "surrogateescape")

    return {as_bytes(k): as_bytes(v) for k, v in (raw or {}).items()}


def dead_page(client: Any, stream: str, before: str | None) -> Page:
    """Dead letters of ``stream``, newest first, older than the id ``before``."""
    before = cursor(before)
    end = "+" if before is None else "(" + before
    entries = client.xrevrange(dead_letter_stream(stream), end, "-", count=PAGE + 1)
    more = len(entries) > PAGE
    rows = []
    for msg_id, raw in entries[:PAGE]:
        fields = _raw_fields(raw)
        letter = DeadLetter.from_entry(text(msg_id), fields)
        tb = fields.get(b"flowd:traceback", b"").decode("utf-8", "replace")
        rows.append(DeadRow(letter, tb, shown_fields(letter.fields)))
    return Page(rows, rows[-1].letter.dlq_id if more else None, before is None)


@dataclass(frozen=True, slots=True)
class ScheduledRow:
    """One scheduled job: its id, due time and fields."""

    id: str
    due: datetime
    fields: list[tuple[str, str]]


def scheduled_page(client: Any, stream: str, offset: int) -> tuple[int, Page, list[Any]] | None:
    """(count, page of scheduled jobs, schedule states), or None without the scheduling feature."""
    api = scheduled_api()
    if api is None:
        return None
    jobs = api(client, stream)
    items = jobs.list(offset=offset, limit=PAGE + 1)
    more = len(items) > PAGE
    rows = [
        ScheduledRow(
            id=str(item.id),
            due=item.due,
            fields=shown_fields({text(k): _value(v) for k, v in (item.fields or {}).items()}),
        )
        for item in items[:PAGE]
    ]
    next_offset = str(offset + PAGE) if more else None
    return jobs.count(), Page(rows, next_offset, offset == 0), jobs.schedule_states()


def _value(value: Any) -> str | bytes:
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return value
    return str(value)


def ago(ms: int | None) -> str:
    """A duration in milliseconds for people: ``850 ms``, ``12 s``, ``3 min``, ``5 h``, ``2 d``."""
    if ms is None:
        return ""
    if ms < 1000:
        return f"{ms} ms"
    seconds = ms // 1000
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit}"
    return f"{seconds} s"


def active_limit(consumer: Any) -> str:
    """A consumer's active limit for people: ``3 of 8``, or ``—`` when it publishes none
    (adaptive concurrency off, or not a flowd consumer)."""
    if consumer.active_limit is None:
        return "—"
    return f"{consumer.active_limit} of {consumer.concurrency}"


def when(moment: datetime | None) -> str:
    """An aware datetime as UTC text, or an empty string."""
    if moment is None:
        return ""
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
