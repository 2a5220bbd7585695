"""Job records: the one JSON text that says how a job ended, and how long names of a
job's moves are kept.

A record is the single element of the list ``{stream}:result:<id>`` (a list, so that
``Results.wait`` can block on it with BLMOVE, which puts the element back for the
next waiter). Worker threads write a success's record in the MULTI of its XACK;
the dead-letter move writes a dead (or failed) one in its script; a cancel writes
a cancelled one. Fields: ``status`` (``succeeded``, ``failed``, ``dead``,
``cancelled``), ``value`` (the JSON of what the job returned), ``error``,
``traceback``, ``deliveries``, ``started`` and ``finished`` (ms since the epoch),
``consumer``, ``group``, ``dead_letter`` (the dead letter's id).
"""

from __future__ import annotations

import json
from typing import Any

from .keys import result_key

#: How long records nobody asked to keep live: a dead, failed or cancelled job's record
#: on a queue without ``result_ttl``, and the name a moved job had (its alias).
STATE_TTL_MS = 24 * 3600 * 1000


def success_record(
    value_json: str, deliveries: int, started_ms: int, finished_ms: int, consumer: str, group: str
) -> str:
    """The record of a run that returned (``value_json`` is already JSON text)."""
    head = json.dumps(
        {
            "status": "succeeded",
            "deliveries": deliveries,
            "started": started_ms,
            "finished": finished_ms,
            "consumer": consumer,
            "group": group,
        },
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return f'{head[:-1]},"value":{value_json}}}'


def write_commands(stream: str, job_id: str, record: str, ttl_ms: int) -> list[tuple[Any, ...]]:
    """The commands that make ``record`` the job's one record, expiring after ``ttl_ms``."""
    key = result_key(stream, job_id)
    return [("DEL", key), ("RPUSH", key, record), ("PEXPIRE", key, ttl_ms)]


def alias_ttl_ms(result_ttl_ms: int | None) -> int:
    """How long a moved job's old id is kept: as long as its result, and at least a day."""
    return max(STATE_TTL_MS, result_ttl_ms or 0)
