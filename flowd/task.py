"""Task: a stream entry paired with its typed job."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar

J = TypeVar("J")


@dataclass(frozen=True, slots=True)
class Task(Generic[J]):
    """What a worker receives: one stream entry and its decoded job.

    ``deliveries`` is 1 on the first delivery and grows each time the entry
    is delivered again (claimed after a failure or a crash). ``error`` is set
    only on the dead-letter path: the last failure or the decode error. For an
    entry that could not be decoded, ``job`` is ``None`` there.
    """

    id: str
    job: J
    deliveries: int
    stream: str
    fields: Mapping[bytes, bytes]
    error: str | None = None
