"""Job return values as JSON text, and back into a type: the job codecs' rules.

A value is encoded as dataclasses-json encodes a container field (dataclasses
as objects, datetimes as epoch seconds, Decimals and UUIDs as strings, enums
by value, tuples and sets as arrays), so ``Results.get(id, type=Point)``
decodes what a worker returned with the same rules a Job field would use.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from typing import Any

from dataclasses_json import DataClassJsonMixin

from ..errors import DecodeError, EncodeError


@functools.lru_cache(maxsize=256)
def _holder(tp: Any) -> Any:
    """A one-field dataclass whose field has type ``tp``: dataclasses-json's entry point."""
    return dataclasses.make_dataclass("_FlowdValue", [("v", tp)], bases=(DataClassJsonMixin,))


def encode_value(value: object) -> str:
    """The JSON text of a job's return value.

    :raises EncodeError: the value (or something inside it) has no JSON form.
    """
    if value is None:  # the common case, a worker that returns nothing: no work
        return "null"
    if type(value) is int:
        return str(value)
    try:
        if isinstance(value, (str, int, float, bool)):
            return json.dumps(value, allow_nan=False)
        plain = _holder(Any)(value).to_dict(encode_json=True)["v"]
        # ASCII (non-ASCII as \u escapes): a lone surrogate in a str then still has a
        # form Redis takes, and the acker can frame the records without encoding them.
        return json.dumps(plain, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        raise EncodeError(
            f"the job's return value ({type(value).__name__}) cannot be stored as JSON: {exc}"
        ) from exc


def from_plain(plain: Any, tp: Any = None) -> Any:
    """A value parsed from JSON, decoded into ``tp`` (as is without it).

    :raises DecodeError: the value does not fit ``tp``.
    """
    if tp is None or tp is Any:
        return plain
    try:
        return _holder(tp).from_dict({"v": plain}).v
    except Exception as exc:
        raise DecodeError(f"the stored result does not decode as {tp!r}: {exc}") from exc
