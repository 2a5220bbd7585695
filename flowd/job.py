"""The Job mixin: one dataclass field is one stream field.

Scalars (``str int float bool bytes Decimal UUID datetime date Enum``) are
written as plain text, so an entry reads naturally in ``redis-cli XRANGE``;
nested dataclasses, lists, tuples, sets and dicts are written as JSON through
dataclasses-json. ``None`` in an optional field writes nothing, and a missing
field decodes to ``None`` (optional) or to the field's default. Fields of the
entry that the class does not know are ignored, so producers may add fields
before consumers learn them. Decoding never evaluates code: no pickle, no eval.

The mapping plan of a class is computed once, on first use (or when a
``Queue``/``Producer`` is built for it), and cached on the class.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import types
import typing
import uuid
from collections.abc import Callable, Mapping
from datetime import date, datetime
from decimal import Decimal
from typing import Any, ClassVar, Generic, Self, TypeVar

from dataclasses_json import DataClassJsonMixin

from .errors import ConfigurationError, DecodeError, EncodeError

__all__ = ["Job", "Mapper", "field"]

V = TypeVar("V")

#: The key under which ``dataclasses.field(metadata=...)`` carries a Mapper.
MAPPER_METADATA_KEY = "flowd.mapper"

Encoded = str | bytes
_REASON_LIMIT = 200


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


@dataclasses.dataclass(frozen=True, slots=True)
class _Codec:
    """How one annotation is checked, written and read."""

    expected: str
    check: Callable[[Any], bool]
    encode: Callable[[Any], Encoded]
    decode: Callable[[bytes], Any]


@dataclasses.dataclass(frozen=True, slots=True)
class _FieldPlan:
    name: str
    key: bytes
    codec: _Codec
    optional: bool
    required: bool  # no default: a missing field is an error (unless optional)


@dataclasses.dataclass(frozen=True, slots=True)
class _Plan:
    cls: type[Any]
    fields: tuple[_FieldPlan, ...]


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
    raise ValueError(f"expected true or false, got {_shorten(raw)}")


def _decode_int(raw: bytes) -> int:
    return int(raw)


def _encode_float(value: float) -> str:
    return repr(float(value))


def _decode_bytes(raw: bytes) -> bytes:
    return raw


def _encode_bytes(value: bytes | bytearray) -> bytes:
    return bytes(value)


_SCALARS: dict[type[Any], _Codec] = {
    str: _Codec("str", lambda v: isinstance(v, str), _encode_str, _text),
    bool: _Codec("bool", lambda v: isinstance(v, bool), _encode_bool, _decode_bool),
    int: _Codec("int", lambda v: isinstance(v, int) and not isinstance(v, bool), str, _decode_int),
    float: _Codec(
        "float",
        lambda v: isinstance(v, int | float) and not isinstance(v, bool),
        _encode_float,
        float,
    ),
    bytes: _Codec(
        "bytes", lambda v: isinstance(v, bytes | bytearray), _encode_bytes, _decode_bytes
    ),
    Decimal: _Codec(
        "Decimal", lambda v: isinstance(v, Decimal), str, lambda raw: Decimal(_text(raw))
    ),
    uuid.UUID: _Codec(
        "UUID", lambda v: isinstance(v, uuid.UUID), str, lambda raw: uuid.UUID(_text(raw))
    ),
    datetime: _Codec(
        "datetime",
        lambda v: isinstance(v, datetime),
        lambda v: v.isoformat(),
        lambda raw: datetime.fromisoformat(_text(raw)),
    ),
    date: _Codec(
        "date",
        lambda v: isinstance(v, date) and not isinstance(v, datetime),
        lambda v: v.isoformat(),
        lambda raw: date.fromisoformat(_text(raw)),
    ),
}

_CONTAINERS = (list, tuple, dict, set, frozenset)


def _enum_codec(enum_cls: type[enum.Enum]) -> _Codec:
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
            raise ValueError(f"{_shorten(raw)} is not a value of {enum_cls.__name__}") from None

    return _Codec(
        enum_cls.__name__,
        lambda v: isinstance(v, enum_cls),
        _enum_text,
        decode,
    )


def _enum_text(member: enum.Enum) -> str:
    value = member.value
    return value if isinstance(value, str) else str(value)


def _json_codec(tp: Any, owner: str, name: str) -> _Codec:
    """Nested dataclasses and containers go through dataclasses-json as compact JSON."""
    wrapper = dataclasses.make_dataclass(
        f"_{owner}_{name}_json", [("v", tp)], bases=(DataClassJsonMixin,)
    )
    origin = typing.get_origin(tp) or tp

    def encode(value: Any) -> str:
        as_dict = wrapper(value).to_dict(encode_json=True)
        return json.dumps(as_dict["v"], separators=(",", ":"), ensure_ascii=False)

    def decode(raw: bytes) -> Any:
        value = json.loads(raw)
        # dataclasses-json coerces rather than checks (null in list[str] gives 'None',
        # 1.9 in dict[str, int] gives 1), so the JSON is checked against the type first.
        _check_json(value, tp, name)
        return wrapper.from_dict({"v": value}).v  # type: ignore[attr-defined]

    return _Codec(
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
        f"{path}: expected {_JSON_NAMES.get(expected, expected.__name__)}, got {_shorten(value)}"
    )


def _check_json(value: Any, tp: Any, path: str) -> None:
    """Raise ValueError, naming the path, where JSON ``value`` does not fit annotation ``tp``.

    Containers, dataclasses, str, int, float, bool and Optional are checked;
    other types (dates, Decimals... inside nested dataclasses) are left to
    dataclasses-json.
    """
    inner, optional = _split_optional(tp)
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


def _codec_for(tp: Any, owner: str, name: str) -> _Codec:
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


def _split_optional(tp: Any) -> tuple[Any, bool]:
    """``X | None`` -> (X, True); anything else -> (tp, False)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        rest = tuple(a for a in args if a is not type(None))
        if len(rest) != len(args):
            if len(rest) == 1:
                return rest[0], True
            return typing.Union[rest], True  # noqa: UP007 - built from a runtime tuple
    return tp, False


def _mapper_codec(mapper: Any, owner: str, name: str) -> _Codec:
    if not isinstance(mapper, Mapper):
        raise ConfigurationError(
            f"{owner}.{name}: mapper must be a flowd.Mapper, not {type(mapper).__name__}"
        )
    return _Codec("a value its mapper accepts", lambda v: True, mapper.encode, mapper.decode)


def _build_plan(cls: type[Any]) -> _Plan:
    if not dataclasses.is_dataclass(cls):
        raise ConfigurationError(
            f"{cls.__name__} must be a dataclass: decorate it with @dataclasses.dataclass"
        )
    try:
        hints = typing.get_type_hints(cls)
    except Exception as exc:
        raise ConfigurationError(
            f"{cls.__name__}: cannot resolve its annotations ({type(exc).__name__}: {exc}); "
            f"define the types it names at module level"
        ) from exc
    plans = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue  # computed in __post_init__; not part of the message
        tp, optional = _split_optional(hints[f.name])
        mapper = f.metadata.get(MAPPER_METADATA_KEY)
        if mapper is not None:
            codec = _mapper_codec(mapper, cls.__name__, f.name)
        elif typing.get_origin(tp) in (typing.Union, types.UnionType):
            raise ConfigurationError(
                f"{cls.__name__}.{f.name}: unions other than X | None are not supported; "
                f"use a flowd.field(mapper=...)"
            )
        else:
            codec = _codec_for(tp, cls.__name__, f.name)
        has_default = (
            f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
        )
        plans.append(_FieldPlan(f.name, f.name.encode("utf-8"), codec, optional, not has_default))
    return _Plan(cls, tuple(plans))


def plan_of(cls: type[Any]) -> _Plan:
    """The cached mapping plan of a Job class (built on first use)."""
    plan = cls.__dict__.get("_flowd_plan")
    if plan is None:
        plan = _build_plan(cls)
        cls._flowd_plan = plan
    return typing.cast(_Plan, plan)


def _shorten(value: object) -> str:
    try:
        text = repr(value)
    except ValueError:  # e.g. an int with more digits than str() allows
        return f"<{type(value).__name__} too large to show>"
    return text if len(text) <= _REASON_LIMIT else text[:_REASON_LIMIT] + "..."


def _as_bytes(value: bytes | str) -> bytes:
    if isinstance(value, bytes):
        return value
    # Keep whatever bytes a decode_responses client could not represent.
    return value.encode("utf-8", "surrogateescape")


def _normalise(fields: Mapping[Any, Any], message_id: str | None) -> Mapping[bytes, Any]:
    for key in fields:
        if isinstance(key, bytes):
            return fields
        break
    out: dict[bytes, Any] = {}
    for key, value in fields.items():
        if isinstance(key, str):
            try:  # the inverse of a surrogateescape decode, as for values
                out[key.encode("utf-8", "surrogateescape")] = value
            except UnicodeEncodeError:  # a lone surrogate: not text, so not a field name
                raise DecodeError(
                    f"field name {key!r} is not valid text", message_id=message_id
                ) from None
        elif isinstance(key, bytes):
            out[key] = value
        else:
            raise DecodeError(
                f"field names must be bytes or str, not {type(key).__name__}", message_id=message_id
            )
    return out


def _encode_field(plan: _Plan, fp: _FieldPlan, value: Any) -> Encoded | None:
    """One field's stored form (None: not written); raises EncodeError."""
    if value is None:
        if fp.optional:
            return None
        raise EncodeError(
            f"{plan.cls.__name__}.{fp.name}: None given for a field that is not Optional"
        )
    codec = fp.codec
    if not codec.check(value):
        raise EncodeError(
            f"{plan.cls.__name__}.{fp.name}: expected {codec.expected}, "
            f"got {type(value).__name__} ({_shorten(value)})"
        )
    try:
        return codec.encode(value)
    except Exception as exc:
        raise EncodeError(
            f"{plan.cls.__name__}.{fp.name}: cannot encode {_shorten(value)}: {exc}"
        ) from exc


def encode_job(job: Any) -> dict[str, Encoded]:
    """The flat stream fields of ``job``; raises EncodeError for a value that does not fit."""
    plan = plan_of(type(job))
    out: dict[str, Encoded] = {}
    for fp in plan.fields:
        encoded = _encode_field(plan, fp, getattr(job, fp.name))
        if encoded is not None:
            out[fp.name] = encoded
    return out


#: Fast paths of the generated appender, by codec: the exact type, and the code that
#: appends the stored form of ``v`` (ascii str is stored as is: no encode check needed).
_FAST_PATHS = {
    id(_SCALARS[str]): "if type(v) is str and v.isascii():\n        a({name!r}); a(v)",
    id(_SCALARS[int]): "if type(v) is int:\n        a({name!r}); a(str(v))",
    id(_SCALARS[bool]): "if v is True or v is False:\n"
    "        a({name!r}); a('true' if v else 'false')",
}


#: Appends a job's field names and stored values to a list (see field_appender).
FieldAppender = Callable[[Any, list[Any]], None]


def field_appender(cls: type[Any]) -> FieldAppender:
    """A function that appends a job's field names and stored values to a list.

    It does what :func:`encode_job` does, without the dict, and is generated
    once per class (as dataclasses generates ``__init__``): plain str, int and
    bool values take a fast path; anything else, the full checked path.
    """
    appender = cls.__dict__.get("_flowd_appender")
    if appender is not None:
        return typing.cast(FieldAppender, appender)
    plan = plan_of(cls)
    lines = ["def append_fields(job, args):", "    a = args.append"]
    for index, fp in enumerate(plan.fields):
        lines.append(f"    v = job.{fp.name}")
        fast = _FAST_PATHS.get(id(fp.codec))
        if fast is None:
            lines.append(f"    slow({index}, v, a)")
        else:
            lines.append("    " + fast.format(name=fp.name))
            lines.append(f"    else:\n        slow({index}, v, a)")

    def slow(index: int, value: Any, append: Callable[[Any], None]) -> None:
        fp = plan.fields[index]
        encoded = _encode_field(plan, fp, value)
        if encoded is not None:
            append(fp.name)
            append(encoded)

    namespace: dict[str, Any] = {"slow": slow}
    exec("\n".join(lines), namespace)  # the source holds only the class's own field names
    appender = namespace["append_fields"]
    cls._flowd_appender = appender
    return typing.cast(FieldAppender, appender)


def decode_job(cls: type[V], fields: Mapping[Any, Any], message_id: str | None = None) -> V:
    """Build ``cls`` from stream fields (bytes or str); raises DecodeError."""
    plan = plan_of(cls)
    raw = _normalise(fields, message_id)
    kwargs: dict[str, Any] = {}
    for fp in plan.fields:
        value = raw.get(fp.key)
        if value is None:
            if fp.optional:
                kwargs[fp.name] = None  # None is written as no field, so no field means None
            elif fp.required:
                raise DecodeError("missing required field", field=fp.name, message_id=message_id)
            continue
        try:
            kwargs[fp.name] = fp.codec.decode(_as_bytes(value))
        except Exception as exc:
            raise DecodeError(
                f"cannot read {_shorten(value)} as {fp.codec.expected}: "
                f"{type(exc).__name__}: {_shorten_text(str(exc))}",
                field=fp.name,
                message_id=message_id,
            ) from exc
    try:
        return cls(**kwargs)
    except Exception as exc:
        raise DecodeError(
            f"{cls.__name__}(...) raised {type(exc).__name__}: {_shorten_text(str(exc))}",
            message_id=message_id,
        ) from exc


def _shorten_text(text: str) -> str:
    return text if len(text) <= _REASON_LIMIT else text[:_REASON_LIMIT] + "..."


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

    _flowd_plan: ClassVar[_Plan | None] = None

    def to_fields(self) -> dict[str, Encoded]:
        """The flat stream fields of this job; raises EncodeError (a TypeError)."""
        return encode_job(self)

    @classmethod
    def from_fields(cls, fields: Mapping[Any, Any], message_id: str | None = None) -> Self:
        """Build a job from stream fields with bytes or str keys and values.

        :raises DecodeError: naming the field, the message id (when given) and the reason.
        """
        return decode_job(cls, fields, message_id)
