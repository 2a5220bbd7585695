"""The codecs of job fields: how each annotation is checked, written as stream text, and read.

Scalars are plain text; enums their value; nested dataclasses and containers
JSON through dataclasses-json (checked against the annotation first); a
:class:`Mapper` replaces the codec of one field.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import types
import typing
import uuid
from collections.abc import Callable
from datetime import date, datetime
from decimal import Decimal
from typing import Any, Generic, TypeVar

from dataclasses_json import DataClassJsonMixin

from ..errors import ConfigurationError

V = TypeVar("V")

#: The key under which ``dataclasses.field(metadata=...)`` carries a Mapper.
MAPPER_METADATA_KEY = "flowd.mapper"

Encoded = str | bytes
REASON_LIMIT = 200


@dataclasses.dataclass(frozen=True, slots=True)
class Mapper(Generic[V]):
    """A custom codec for one field, replacing the default for its annotation.

    ``encode`` turns the value into the text or bytes stored in the stream;
    ``decode`` receives the stored bytes and returns the value.

    >>> point = Mapper(encode=lambda p: f"{p[0]},{p[1]}",
    ...                decode=lambda raw: tuple(int(n) for n in raw.split(b",")))
    """

    encode: Callable[[V], Encoded]
    decode: Callable[[bytes], V]


@dataclasses.dataclass(frozen=True, slots=True)
class Codec:
    """How one annotation is checked, written and read.

    ``fast``, when set, is the encoder's fast path as source for the generated
    encoder (see flowd._codec.plan): a test of ``v`` that makes ``check`` needless,
    and the expression of its stored form.
    """

    expected: str
    check: Callable[[Any], bool]
    encode: Callable[[Any], Encoded]
    decode: Callable[[bytes], Any]
    fast: tuple[str, str] | None = None


def _text(raw: bytes) -> str:
    return raw.decode("utf-8")


def _encode_str(value: str) -> str:
    if not value.isascii():
        value.encode("utf-8")  # a lone surrogate fails here, at enqueue, not inside redis-py
    return value


def _encode_bool(value: bool) -> str:
    return "true" if value else "false"


_TRUE = frozenset({b"true", b"1", b"True", b"TRUE"})
_FALSE = frozenset({b"false", b"0", b"False", b"FALSE"})


def _decode_bool(raw: bytes) -> bool:
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise ValueError(f"expected true or false, got {shorten(raw)}")


def _decode_int(raw: bytes) -> int:
    return int(raw)


def _encode_float(value: float) -> str:
    return repr(float(value))


def _decode_bytes(raw: bytes) -> bytes:
    return raw


def _encode_bytes(value: bytes | bytearray) -> bytes:
    return bytes(value)


_SCALARS: dict[type[Any], Codec] = {
    # ascii str is stored as is: no encode check needed
    str: Codec(
        "str",
        lambda v: isinstance(v, str),
        _encode_str,
        _text,
        ("type(v) is str and v.isascii()", "v"),
    ),
    bool: Codec(
        "bool",
        lambda v: isinstance(v, bool),
        _encode_bool,
        _decode_bool,
        ("v is True or v is False", "'true' if v else 'false'"),
    ),
    int: Codec(
        "int",
        lambda v: isinstance(v, int) and not isinstance(v, bool),
        str,
        _decode_int,
        ("type(v) is int", "str(v)"),
    ),
    float: Codec(
        "float",
        lambda v: isinstance(v, int | float) and not isinstance(v, bool),
        _encode_float,
        float,
    ),
    bytes: Codec("bytes", lambda v: isinstance(v, bytes | bytearray), _encode_bytes, _decode_bytes),
    Decimal: Codec(
        "Decimal", lambda v: isinstance(v, Decimal), str, lambda raw: Decimal(_text(raw))
    ),
    uuid.UUID: Codec(
        "UUID", lambda v: isinstance(v, uuid.UUID), str, lambda raw: uuid.UUID(_text(raw))
    ),
    datetime: Codec(
        "datetime",
        lambda v: isinstance(v, datetime),
        lambda v: v.isoformat(),
        lambda raw: datetime.fromisoformat(_text(raw)),
    ),
    date: Codec(
        "date",
        lambda v: isinstance(v, date) and not isinstance(v, datetime),
        lambda v: v.isoformat(),
        lambda raw: date.fromisoformat(_text(raw)),
    ),
}

_CONTAINERS = (list, tuple, dict, set, frozenset)


def _enum_codec(enum_cls: type[enum.Enum]) -> Codec:
    by_text: dict[bytes, enum.Enum] = {}
    for member in enum_cls:
        by_text.setdefault(_enum_text(member).encode("utf-8"), member)

    is_flag = issubclass(enum_cls, enum.Flag)

    def decode(raw: bytes) -> enum.Enum:
        try:
            return by_text[raw]
        except KeyError:
            if is_flag:  # a combination of flags is written as its integer value
                return enum_cls(int(raw))
            raise ValueError(f"{shorten(raw)} is not a value of {enum_cls.__name__}") from None

    return Codec(
        enum_cls.__name__,
        lambda v: isinstance(v, enum_cls),
        _enum_text,
        decode,
    )


def _enum_text(member: enum.Enum) -> str:
    value = member.value
    return value if isinstance(value, str) else str(value)


def _json_codec(tp: Any, owner: str, name: str) -> Codec:
    """Nested dataclasses and containers go through dataclasses-json as compact JSON."""
    wrapper = dataclasses.make_dataclass(
        f"_{owner}_{name}_json", [("v", tp)], bases=(DataClassJsonMixin,)
    )
    origin = typing.get_origin(tp) or tp
    checked_by_json = _json_checks_all(tp)

    def decode(raw: bytes | str) -> Any:
        value = json.loads(raw)
        # dataclasses-json coerces rather than checks (null in list[str] gives 'None',
        # 1.9 in dict[str, int] gives 1), so the JSON is checked against the type first.
        _check_json(value, tp, name)
        return wrapper.from_dict({"v": value}).v  # type: ignore[attr-defined]

    def encode(value: Any) -> str:
        as_dict = wrapper(value).to_dict(encode_json=True)
        text = json.dumps(as_dict["v"], separators=(",", ":"), ensure_ascii=False)
        # The type check sees only the container; its contents are checked by reading
        # the text back with the decoder's rules, so what enqueues decodes. The full
        # decode (slow) runs only where the JSON check alone cannot tell.
        try:
            if checked_by_json:
                _check_json(json.loads(text), tp, name)
            else:
                decode(text)
        except Exception as exc:
            raise ValueError(f"it would not decode: {exc}") from exc
        return text

    return Codec(
        getattr(origin, "__name__", str(origin)), lambda v: isinstance(v, origin), encode, decode
    )


_JSON_NAMES = {
    list: "an array",
    dict: "an object",
    str: "a string",
    bool: "true or false",
    int: "an integer",
    float: "a number",
}


def _json_mismatch(path: str, expected: type[Any], value: Any) -> ValueError:
    return ValueError(
        f"{path}: expected {_JSON_NAMES.get(expected, expected.__name__)}, got {shorten(value)}"
    )


def _check_json(value: Any, tp: Any, path: str) -> None:
    """Raise ValueError, naming the path, where JSON ``value`` does not fit annotation ``tp``.

    Containers, dataclasses, str, int, float, bool and Optional are checked;
    other types (dates, Decimals... inside nested dataclasses) are left to
    dataclasses-json.
    """
    inner, optional = split_optional(tp)
    if value is None:
        if optional or tp is Any:
            return
        raise ValueError(f"{path}: expected a value, got null")
    origin = typing.get_origin(inner) or inner
    if origin in (list, tuple, set, frozenset):
        _check_json_array(value, origin, typing.get_args(inner), path)
    elif origin is dict:
        if not isinstance(value, dict):
            raise _json_mismatch(path, dict, value)
        args = typing.get_args(inner)
        for key, item in value.items() if len(args) == 2 else ():
            _check_json(item, args[1], f"{path}[{key!r}]")
    elif dataclasses.is_dataclass(origin):
        if not isinstance(value, dict):
            raise _json_mismatch(path, dict, value)
        hints = typing.get_type_hints(origin)
        for f in dataclasses.fields(origin):
            if f.name in value:
                _check_json(value[f.name], hints[f.name], f"{path}.{f.name}")
    elif origin in _JSON_SCALAR_CHECKS and not _JSON_SCALAR_CHECKS[origin](value):
        raise _json_mismatch(path, origin, value)


_JSON_SCALAR_CHECKS: dict[type[Any], Callable[[Any], bool]] = {
    bool: lambda v: isinstance(v, bool),
    int: lambda v: isinstance(v, int) and not isinstance(v, bool),
    float: lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    str: lambda v: isinstance(v, str),
}


def _json_checks_all(tp: Any, seen: frozenset[Any] = frozenset()) -> bool:
    """Whether :func:`_check_json` alone proves that JSON for ``tp`` decodes.

    True for str, int, float, bool and Any, and containers and dataclasses made
    only of them (with str dict keys); dates, Decimals, enums or other dict keys
    need dataclasses-json's own decode to tell.
    """
    inner, _ = split_optional(tp)
    if inner is Any or inner in _JSON_SCALAR_CHECKS:
        return True
    origin = typing.get_origin(inner) or inner
    args = typing.get_args(inner)
    if origin in (list, set, frozenset, tuple):
        return all(a is Ellipsis or _json_checks_all(a, seen) for a in args)
    if origin is dict:
        return not args or (args[0] is str and _json_checks_all(args[1], seen))
    if dataclasses.is_dataclass(origin):
        if origin in seen:  # a recursive type: its other fields decide
            return True
        hints = typing.get_type_hints(origin)
        inner_seen = seen | {origin}
        return all(_json_checks_all(hints[f.name], inner_seen) for f in dataclasses.fields(origin))
    return False


def _check_json_array(value: Any, origin: Any, args: tuple[Any, ...], path: str) -> None:
    if not isinstance(value, list):
        raise _json_mismatch(path, list, value)
    if origin is tuple and args and args[-1] is not Ellipsis:
        if len(args) != len(value):
            raise ValueError(f"{path}: expected {len(args)} items, got {len(value)}")
        for i, (item, item_tp) in enumerate(zip(value, args, strict=True)):
            _check_json(item, item_tp, f"{path}[{i}]")
    elif args:
        for i, item in enumerate(value):
            _check_json(item, args[0], f"{path}[{i}]")


def codec_for(tp: Any, owner: str, name: str) -> Codec:
    if tp in _SCALARS:
        return _SCALARS[tp]
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return _enum_codec(tp)
    origin = typing.get_origin(tp) or tp
    if dataclasses.is_dataclass(origin) or origin in _CONTAINERS:
        return _json_codec(tp, owner, name)
    raise ConfigurationError(
        f"{owner}.{name}: unsupported annotation {tp!r}; use a supported type "
        f"or give the field a flowd.field(mapper=...)"
    )


def split_optional(tp: Any) -> tuple[Any, bool]:
    """``X | None`` -> (X, True); anything else -> (tp, False)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        rest = tuple(a for a in args if a is not type(None))
        if len(rest) != len(args):
            if len(rest) == 1:
                return rest[0], True
            return typing.Union[rest], True  # noqa: UP007 - built from a runtime tuple
    return tp, False


def mapper_codec(mapper: Any, owner: str, name: str) -> Codec:
    if not isinstance(mapper, Mapper):
        raise ConfigurationError(
            f"{owner}.{name}: mapper must be a flowd.Mapper, not {type(mapper).__name__}"
        )
    return Codec("a value its mapper accepts", lambda v: True, mapper.encode, mapper.decode)


def shorten(value: object) -> str:
    try:
        text = repr(value)
    except ValueError:  # e.g. an int with more digits than str() allows
        return f"<{type(value).__name__} too large to show>"
    return text if len(text) <= REASON_LIMIT else text[:REASON_LIMIT] + "..."
