"""The overview's numbers for many streams in a few pipelined round trips."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .._redis import throughput as _throughput
from .._redis.keys import dead_letter_stream, derived_key
from .._redis.session import SAFE_EVICTION_POLICIES

#: Entries read to count a group's lag where the server does not report it
#: (Redis 6.2, or 7.x after deletions); past it the lag shows as ">= N".
LAG_SCAN_LIMIT = 1000


@dataclass(frozen=True, slots=True)
class StreamRow:
    """One stream on the overview."""

    stream: str
    length: int
    groups: int
    lag: str
    pending: int
    consumers: int
    dead: int
    scheduled: int
    processed: int
    failed: int


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _groups(reply: Any) -> list[dict[str, Any]]:
    """XINFO GROUPS as dicts with text keys; a missing stream has none."""
    if isinstance(reply, Exception) or not isinstance(reply, list):
        return []
    return [{_text(k): v for k, v in group.items()} for group in reply if isinstance(group, dict)]


def overview(
    client: Any, streams: Sequence[str]
) -> tuple[list[StreamRow], list[_throughput.Minute]]:
    """A row per stream, and the last hour per minute summed over all of them.

    Three round trips whatever the number of streams: the counts, the lag of
    groups whose lag the server does not report, and the history.
    """
    pipe = client.pipeline(transaction=False)
    for stream in streams:
        pipe.xlen(stream)
        pipe.xlen(dead_letter_stream(stream))
        pipe.zcard(derived_key(stream, "scheduled"))
        pipe.xinfo_groups(stream)
    replies = pipe.execute(raise_on_error=False)
    for reply in replies:
        # A missing stream's XINFO says "no such key"; anything else is a real error.
        if isinstance(reply, Exception) and "no such key" not in str(reply):
            raise reply
    counted = [replies[i : i + 4] for i in range(0, len(replies), 4)]
    lags = _lags(client, streams, [_groups(c[3]) for c in counted])
    history = _throughput.history_by_stream(client, streams)
    rows = []
    for stream, (length, dead, scheduled, groups_reply), lag in zip(
        streams, counted, lags, strict=True
    ):
        groups = _groups(groups_reply)
        last_hour = history[stream]
        rows.append(
            StreamRow(
                stream=stream,
                length=int(length),
                groups=len(groups),
                lag=lag,
                pending=sum(int(g.get("pending") or 0) for g in groups),
                consumers=sum(int(g.get("consumers") or 0) for g in groups),
                dead=int(dead),
                scheduled=int(scheduled),
                processed=sum(m.processed for m in last_hour),
                failed=sum(m.failed for m in last_hour),
            )
        )
    minutes = _throughput.history(client, [])
    if history:
        minutes = _throughput.sum_minutes(minutes, *history.values())
    return rows, minutes


def _lags(client: Any, streams: Sequence[str], groups: list[list[dict[str, Any]]]) -> list[str]:
    """Each stream's total lag as text; counted (bounded) where the server has no number."""
    totals = [0] * len(streams)
    exact = [True] * len(streams)
    missing: list[int] = []
    pipe = client.pipeline(transaction=False)
    for index, (stream, stream_groups) in enumerate(zip(streams, groups, strict=True)):
        for group in stream_groups:
            if group.get("lag") is not None:
                totals[index] += int(group["lag"])
                continue
            last = _text(group.get("last-delivered-id") or "0-0")
            pipe.xrange(stream, "(" + last, "+", count=LAG_SCAN_LIMIT)
            missing.append(index)
    if missing:
        for index, entries in zip(missing, pipe.execute(), strict=True):
            totals[index] += len(entries)
            if len(entries) >= LAG_SCAN_LIMIT:
                exact[index] = False
    return [str(t) if e else f">= {t}" for t, e in zip(totals, exact, strict=True)]


def unsafe_eviction_policy(client: Any) -> str | None:
    """The server's maxmemory-policy when it can evict streams (``allkeys-*``), else None."""
    try:
        info = client.info("memory")
    except Exception:  # INFO not allowed, or the server is down: nothing to warn about here
        return None
    # A cluster client answers per node: any node that can evict is reason enough.
    nodes = info.values() if info and all(isinstance(v, dict) for v in info.values()) else [info]
    for node in nodes:
        policy = _text(node.get("maxmemory_policy", "noeviction"))
        if policy not in SAFE_EVICTION_POLICIES:
            return policy
    return None
