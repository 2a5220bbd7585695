"""flowd's own fields in stream entries (names start with ``flowd:``; never part of a Job)."""

from __future__ import annotations

from collections.abc import Mapping

#: Runs of the job done before its entry was (re)scheduled by a retry.
RUNS_FIELD = b"flowd:runs"
#: The consumer group whose retry re-added the entry.
GROUP_FIELD = b"flowd:group"


def prior_runs(fields: Mapping[bytes, bytes]) -> int:
    """Runs done before the entry was (re)scheduled: its ``flowd:runs`` field, else 0."""
    raw = fields.get(RUNS_FIELD)
    if raw is None:
        return 0
    try:
        return max(int(raw), 0)
    except ValueError:
        return 0


def other_group(fields: Mapping[bytes, bytes], group: bytes) -> bool:
    """True for an entry re-added by another group's retry: this group has run it already."""
    owner = fields.get(GROUP_FIELD)
    return owner is not None and owner != group
