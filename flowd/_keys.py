"""Key names derived from a stream; pure functions, no I/O.

Every derived key carries the stream's cluster hash tag, so all keys of one
queue live in one slot and multi-key steps work on Redis Cluster.
"""

from __future__ import annotations


def hash_tag(stream: str) -> str:
    """The ``{tag}`` that decides the stream's cluster slot.

    A stream that already has a non-empty ``{...}`` tag keeps it; any other
    name becomes its own tag.
    """
    start = stream.find("{")
    if start != -1:
        end = stream.find("}", start + 1)
        if end > start + 1:
            return stream[start : end + 1]
    return "{" + stream + "}"


def derived_key(stream: str, suffix: str) -> str:
    """A key of this queue, in the stream's slot: ``{emails}:<suffix>``."""
    return f"{hash_tag(stream)}:{suffix}"


def dead_letter_stream(stream: str) -> str:
    """The default dead-letter stream: ``{emails}:dead`` for ``emails``."""
    return derived_key(stream, "dead")
