"""The mapping plan of a Job class, and the encoder and decoder built from it.

The plan (one entry per field: name, codec, optional, required) is computed
once per class, on first use or when a Queue/Producer is built for it, and
cached on the class. The encoder is generated from the plan once per class
(as dataclasses generates ``__init__``): :func:`field_appender` is the one
encoder definition, and :func:`encode_job` is built on it.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from ..errors import ConfigurationError, DecodeError, EncodeError
from .codecs import (
    MAPPER_METADATA_KEY,
    REASON_LIMIT,
    Codec,
    Encoded,
    codec_for,
    mapper_codec,
    shorten,
    split_optional,
)

V = TypeVar("V")


@dataclasses.dataclass(frozen=True, slots=True)
class FieldPlan:
    name: str
    key: bytes
    codec: Codec
    optional: bool
    required: bool  # no default: a missing field is an error (unless optional)


@dataclasses.dataclass(frozen=True, slots=True)
class Plan:
    cls: type[Any]
    fields: tuple[FieldPlan, ...]


def _build_plan(cls: type[Any]) -> Plan:
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
        tp, optional = split_optional(hints[f.name])
        mapper = f.metadata.get(MAPPER_METADATA_KEY)
        if mapper is not None:
            codec = mapper_codec(mapper, cls.__name__, f.name)
        elif typing.get_origin(tp) in (typing.Union, types.UnionType):
            raise ConfigurationError(
                f"{cls.__name__}.{f.name}: unions other than X | None are not supported; "
                f"use a flowd.field(mapper=...)"
            )
        else:
            codec = codec_for(tp, cls.__name__, f.name)
        has_default = (
            f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
        )
        plans.append(FieldPlan(f.name, f.name.encode("utf-8"), codec, optional, not has_default))
    return Plan(cls, tuple(plans))


def plan_of(cls: type[Any]) -> Plan:
    """The cached mapping plan of a Job class (built on first use)."""
    plan = cls.__dict__.get("_flowd_plan")
    if plan is None:
        plan = _build_plan(cls)
        cls._flowd_plan = plan
    return typing.cast(Plan, plan)


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


def _encode_field(plan: Plan, fp: FieldPlan, value: Any) -> Encoded | None:
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
            f"got {type(value).__name__} ({shorten(value)})"
        )
    try:
        return codec.encode(value)
    except Exception as exc:
        raise EncodeError(
            f"{plan.cls.__name__}.{fp.name}: cannot encode {shorten(value)}: {exc}"
        ) from exc


#: Appends a job's field names and stored values to a list (see field_appender).
FieldAppender = Callable[[Any, list[Any]], None]


def field_appender(cls: type[Any]) -> FieldAppender:
    """A function that appends a job's field names and stored values to a list.

    Generated once per class from its plan: a field whose codec has a fast
    path (plain str, int and bool) takes it when the value is of the exact
    type; anything else takes the full checked path (:func:`_encode_field`).
    """
    appender = cls.__dict__.get("_flowd_appender")
    if appender is not None:
        return typing.cast(FieldAppender, appender)
    plan = plan_of(cls)
    body = []
    for index, fp in enumerate(plan.fields):
        body.append(f"v = job.{fp.name}")
        if fp.codec.fast is None:
            body.append(f"slow({index}, v, a)")
        else:
            test, stored = fp.codec.fast
            body += [f"if {test}:", f"    a({fp.name!r}); a({stored})", "else:"]
            body.append(f"    slow({index}, v, a)")
    # A fast path that raises (str() of an int too long to print) falls back to the
    # checked path for the whole job, which raises EncodeError.
    lines = ["def append_fields(job, args):", "    a = args.append", "    start = len(args)"]
    lines += ["    try:", *(f"        {line}" for line in body or ["pass"])]
    lines += ["    except EncodeError:", "        raise", "    except Exception:"]
    lines += ["        del args[start:]", "        checked(job, a)"]

    def slow(index: int, value: Any, append: Callable[[Any], None]) -> None:
        fp = plan.fields[index]
        encoded = _encode_field(plan, fp, value)
        if encoded is not None:
            append(fp.name)
            append(encoded)

    def checked(job: Any, append: Callable[[Any], None]) -> None:
        for index, fp in enumerate(plan.fields):
            slow(index, getattr(job, fp.name), append)

    namespace: dict[str, Any] = {"slow": slow, "checked": checked, "EncodeError": EncodeError}
    exec("\n".join(lines), namespace)  # the source holds only the class's own field names
    appender = namespace["append_fields"]
    cls._flowd_appender = appender
    return typing.cast(FieldAppender, appender)


def encode_job(job: Any) -> dict[str, Encoded]:
    """The flat stream fields of ``job``; raises EncodeError for a value that does not fit."""
    flat: list[Any] = []
    field_appender(type(job))(job, flat)
    return dict(zip(flat[::2], flat[1::2], strict=True))


def decode_job(cls: type[V], fields: Mapping[Any, Any], message_id: str | None = None) -> V:
    """Build ``cls`` from stream fields (bytes or str); raises DecodeError.

    Only the class's own field names are read: flowd's fields (``flowd:runs``,
    ``flowd:traceparent``...; see flowd._redis.fields) and any other are ignored, and
    a dataclass field name cannot hold the ``:`` that would make one of them its own.
    """
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
                f"cannot read {shorten(value)} as {fp.codec.expected}: "
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
    return text if len(text) <= REASON_LIMIT else text[:REASON_LIMIT] + "..."
