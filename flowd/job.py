"""The Job mixin: one dataclass field is one stream field.

Scalars (``str int float bool bytes Decimal UUID datetime date Enum``) are
written as plain text, so an entry reads naturally in ``redis-cli XRANGE``;
nested dataclasses, lists, tuples, sets and dicts are written as JSON through
dataclasses-json. ``None`` in an optional field writes nothing, and a missing
field decodes to ``None`` (optional) or to the field's default. Fields of the
entry that the class does not know are ignored, so producers may add fields
before consumers learn them. Decoding never evaluates code: no pickle, no eval.

The mapping plan of a class is computed once, on first use (or when a
``Queue``/``Producer`` is built for it), and cached on the class (see
flowd._codec.plan; the codecs of each annotation are in flowd._codec.codecs).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar, Self

from ._codec.codecs import MAPPER_METADATA_KEY, Encoded, Mapper
from ._codec.plan import Plan, decode_job, encode_job

__all__ = ["Job", "Mapper", "field"]


def field(*, mapper: Mapper[Any] | None = None, **kwargs: Any) -> Any:
    """``dataclasses.field`` with an optional per-field ``mapper``.

    >>> @dataclasses.dataclass
    ... class Move(Job):
    ...     to: tuple[int, int] = field(mapper=point)
    """
    if mapper is not None:
        metadata = dict(kwargs.pop("metadata", None) or {})
        metadata[MAPPER_METADATA_KEY] = mapper
        kwargs["metadata"] = metadata
    return dataclasses.field(**kwargs)


class Job:
    """Mixin for dataclasses that travel through a flowd stream.

    >>> @dataclasses.dataclass
    ... class SendEmail(Job):
    ...     to: str
    ...     attempt: int = 0
    >>> SendEmail(to="a@b.c").to_fields()
    {'to': 'a@b.c', 'attempt': '0'}
    >>> SendEmail.from_fields({b"to": b"a@b.c"})
    SendEmail(to='a@b.c', attempt=0)
    """

    _flowd_plan: ClassVar[Plan | None] = None

    def to_fields(self) -> dict[str, Encoded]:
        """The flat stream fields of this job; raises EncodeError (a TypeError)."""
        return encode_job(self)

    @classmethod
    def from_fields(cls, fields: Mapping[Any, Any], message_id: str | None = None) -> Self:
        """Build a job from stream fields with bytes or str keys and values.

        :raises DecodeError: naming the field, the message id (when given) and the reason.
        """
        return decode_job(cls, fields, message_id)
