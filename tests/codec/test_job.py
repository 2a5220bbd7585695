"""The Job mixin: to_fields()/from_fields() for every supported type, mappers, errors.

This module uses ``from __future__ import annotations`` on purpose: every
annotation below is a string, and flowd must resolve it.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
import typing
import uuid
import warnings
from collections.abc import Callable, Mapping
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any, Optional

import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st

import flowd
import flowd._codec.plan
import flowd.job
from tests.helpers import Email, Numbered

FAST = settings(max_examples=60, deadline=None)

# Text that Redis and UTF-8 can hold: every code point but the lone surrogates.
TEXT = st.text(st.characters(codec="utf-8"))


# ---------------------------------------------------------------------------
# Sample jobs (module level, so that string annotations resolve)


class Color(enum.Enum):
    RED = "red"
    GREEN = "green"
    BLUE = "blue"


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 10
    NEGATIVE = -3


class Size(enum.Enum):
    SMALL = 1
    LARGE = 2


@dataclasses.dataclass
class Address:
    street: str
    number: int


@dataclasses.dataclass
class StrJob(flowd.Job):
    s: str


@dataclasses.dataclass
class IntJob(flowd.Job):
    n: int


@dataclasses.dataclass
class FloatJob(flowd.Job):
    x: float


@dataclasses.dataclass
class BoolJob(flowd.Job):
    flag: bool


@dataclasses.dataclass
class BytesJob(flowd.Job):
    data: bytes


@dataclasses.dataclass
class DecimalJob(flowd.Job):
    amount: Decimal


@dataclasses.dataclass
class UUIDJob(flowd.Job):
    u: uuid.UUID


@dataclasses.dataclass
class DateTimeJob(flowd.Job):
    at: datetime


@dataclasses.dataclass
class DateJob(flowd.Job):
    day: date


@dataclasses.dataclass
class EnumJob(flowd.Job):
    color: Color
    level: Level
    size: Size


@dataclasses.dataclass
class NestedJob(flowd.Job):
    address: Address
    history: list[Address]
    counts: dict[str, int]


@dataclasses.dataclass
class MaybeJob(flowd.Job):
    required_or_none: int | None
    old_style: Optional[str] = None  # noqa: UP045 - typing.Optional is a different origin
    new_style: Decimal | None = None


def _len_tags() -> list[str]:
    return ["default"]


@dataclasses.dataclass
class DefaultsJob(flowd.Job):
    name: str
    retries: int = 3
    tags: list[str] = dataclasses.field(default_factory=_len_tags)
    length: int = dataclasses.field(init=False, default=-1)

    def __post_init__(self) -> None:
        self.length = len(self.name)


@dataclasses.dataclass
class Everything(flowd.Job):
    """One field of every supported kind, for the trip through a real Redis."""

    s: str
    n: int
    big: int
    x: float
    flag: bool
    data: bytes
    amount: Decimal
    u: uuid.UUID
    at: datetime
    naive: datetime
    day: date
    color: Color
    level: Level
    address: Address
    history: list[Address]
    counts: dict[str, int]
    cc: str | None = None
    note: str | None = None
    retries: int = 3


# ---------------------------------------------------------------------------
# Helpers


def bytes_fields(fields: Mapping[str, str | bytes]) -> dict[bytes, bytes]:
    """What a plain redis-py client returns for this entry."""
    return {k.encode(): v if isinstance(v, bytes) else v.encode("utf-8") for k, v in fields.items()}


def str_fields(fields: Mapping[str, str | bytes]) -> dict[str, str]:
    """What a decode_responses=True client returns (undecodable bytes surrogate-escaped)."""
    return {
        k: v.decode("utf-8", "surrogateescape") if isinstance(v, bytes) else v
        for k, v in fields.items()
    }


def decoded_all_ways(job: flowd.Job) -> list[Any]:
    """``from_fields`` of the job's fields as given, as bytes, and as str."""
    fields = job.to_fields()
    cls = type(job)
    return [
        cls.from_fields(fields),
        cls.from_fields(bytes_fields(fields)),
        cls.from_fields(str_fields(fields)),
    ]


def assert_round_trips(job: flowd.Job, same: Callable[[Any, Any], bool] | None = None) -> None:
    for decoded in decoded_all_ways(job):
        assert type(decoded) is type(job)
        if same is None:
            assert decoded == job
        else:
            assert same(decoded, job), (decoded, job)


# ---------------------------------------------------------------------------
# Round trips, one supported type at a time


@FAST
@given(TEXT)
def test_str_round_trips(s: str) -> None:
    assert StrJob(s).to_fields() == {"s": s}
    assert_round_trips(StrJob(s))


@FAST
@given(st.integers() | st.integers(min_value=-(2**4096), max_value=2**4096))
def test_int_round_trips_big_ints_too(n: int) -> None:
    assert IntJob(n).to_fields() == {"n": str(n)}
    assert_round_trips(IntJob(n))


@FAST
@given(st.floats(allow_nan=False, allow_infinity=False))
def test_finite_float_round_trips_exactly(x: float) -> None:
    def same(a: FloatJob, b: FloatJob) -> bool:
        # == ignores the sign of zero; copysign does not.
        return a.x == b.x and math.copysign(1.0, a.x) == math.copysign(1.0, b.x)

    assert_round_trips(FloatJob(x), same)


@pytest.mark.parametrize("x", [math.inf, -math.inf])
def test_infinite_float_round_trips(x: float) -> None:
    assert_round_trips(FloatJob(x))


def test_nan_round_trips() -> None:
    for decoded in decoded_all_ways(FloatJob(math.nan)):
        assert math.isnan(decoded.x)


def test_int_value_in_float_field_is_written_as_float() -> None:
    assert FloatJob(3).to_fields() == {"x": "3.0"}
    assert FloatJob.from_fields({"x": "3.0"}) == FloatJob(3.0)


@FAST
@given(st.booleans())
def test_bool_round_trips_as_true_false(flag: bool) -> None:
    assert BoolJob(flag).to_fields() == {"flag": "true" if flag else "false"}
    assert_round_trips(BoolJob(flag))


@FAST
@given(st.binary(max_size=512))
def test_arbitrary_bytes_round_trip(data: bytes) -> None:
    assert BytesJob(data).to_fields() == {"data": data}
    assert_round_trips(BytesJob(data))


def test_bytearray_is_written_as_bytes() -> None:
    assert BytesJob(bytearray(b"\x00\xff")).to_fields() == {"data": b"\x00\xff"}  # type: ignore[arg-type]


@FAST
@given(st.decimals(allow_nan=False, allow_infinity=False))
def test_finite_decimal_round_trips_with_its_exponent(amount: Decimal) -> None:
    def same(a: DecimalJob, b: DecimalJob) -> bool:
        return a.amount == b.amount and str(a.amount) == str(b.amount)

    assert_round_trips(DecimalJob(amount), same)


@pytest.mark.parametrize("text", ["Infinity", "-Infinity", "1.10", "-0", "1E+3"])
def test_special_decimals_round_trip(text: str) -> None:
    job = DecimalJob(Decimal(text))
    assert job.to_fields() == {"amount": text}
    assert_round_trips(job)


@FAST
@given(st.uuids())
def test_uuid_round_trips(u: uuid.UUID) -> None:
    assert UUIDJob(u).to_fields() == {"u": str(u)}
    assert_round_trips(UUIDJob(u))


FIXED_OFFSETS = st.integers(min_value=-86399, max_value=86399).map(
    lambda seconds: timezone(timedelta(seconds=seconds))
)


@FAST
@given(st.datetimes(timezones=st.none() | FIXED_OFFSETS))
def test_datetime_round_trips_keeping_its_timezone(at: datetime) -> None:
    def same(a: DateTimeJob, b: DateTimeJob) -> bool:
        # Aware datetimes compare equal across offsets: check the offset itself too.
        return (
            a.at == b.at
            and a.at.utcoffset() == b.at.utcoffset()
            and ((a.at.tzinfo is None) == (b.at.tzinfo is None))
        )

    assert_round_trips(DateTimeJob(at), same)


def test_datetime_is_written_as_iso_8601() -> None:
    at = datetime(2024, 5, 1, 12, 30, 0, 250, tzinfo=timezone(timedelta(hours=2)))
    assert DateTimeJob(at).to_fields() == {"at": "2024-05-01T12:30:00.000250+02:00"}
    assert DateTimeJob(datetime(2024, 5, 1)).to_fields() == {"at": "2024-05-01T00:00:00"}


@FAST
@given(st.dates())
def test_date_round_trips(day: date) -> None:
    assert DateJob(day).to_fields() == {"day": day.isoformat()}
    assert_round_trips(DateJob(day))


@FAST
@given(st.sampled_from(Color), st.sampled_from(Level), st.sampled_from(Size))
def test_enum_round_trips_by_value(color: Color, level: Level, size: Size) -> None:
    job = EnumJob(color, level, size)
    assert job.to_fields() == {
        "color": color.value,
        "level": str(level.value),
        "size": str(size.value),
    }
    assert_round_trips(job)


ADDRESSES = st.builds(Address, street=TEXT, number=st.integers())


@FAST
@given(ADDRESSES, st.lists(ADDRESSES, max_size=5), st.dictionaries(TEXT, st.integers(), max_size=5))
def test_nested_dataclass_list_and_dict_round_trip_as_json(
    address: Address, history: list[Address], counts: dict[str, int]
) -> None:
    job = NestedJob(address, history, counts)
    fields = job.to_fields()
    assert json.loads(fields["address"]) == {"street": address.street, "number": address.number}
    assert json.loads(fields["history"]) == [dataclasses.asdict(a) for a in history]
    assert json.loads(fields["counts"]) == counts
    assert_round_trips(job)


def test_json_is_compact_and_keeps_non_ascii_readable() -> None:
    fields = NestedJob(Address("Åkervägen", 1), [], {"ö": 2}).to_fields()
    assert fields == {
        "address": '{"street":"Åkervägen","number":1}',
        "history": "[]",
        "counts": '{"ö":2}',
    }


# ---------------------------------------------------------------------------
# Optional fields, defaults, init=False, unknown fields


@FAST
@given(
    st.none() | st.integers(),
    st.none() | TEXT,
    st.none() | st.decimals(allow_nan=False, allow_infinity=False),
)
def test_optional_none_is_absent_and_absent_is_none(
    a: int | None, b: str | None, c: Decimal | None
) -> None:
    job = MaybeJob(a, b, c)
    fields = job.to_fields()
    assert ("required_or_none" in fields) == (a is not None)
    assert ("old_style" in fields) == (b is not None)
    assert ("new_style" in fields) == (c is not None)
    assert_round_trips(job)


def test_missing_optional_field_without_default_decodes_to_none() -> None:
    assert MaybeJob.from_fields({}) == MaybeJob(None)
    assert MaybeJob.from_fields({b"old_style": b"x"}) == MaybeJob(None, "x")


def test_missing_fields_take_their_defaults_and_default_factory() -> None:
    job = DefaultsJob.from_fields({b"name": b"abc"})
    assert job == DefaultsJob("abc", 3, ["default"])
    assert job.tags is not DefaultsJob.from_fields({b"name": b"x"}).tags  # a fresh list each time


def test_init_false_field_is_not_written_and_not_read() -> None:
    job = DefaultsJob("hello", retries=1, tags=["a"])
    assert job.length == 5
    fields = job.to_fields()
    assert "length" not in fields
    assert fields == {"name": "hello", "retries": "1", "tags": '["a"]'}
    # A stray "length" in the entry is ignored; __post_init__ computes it.
    decoded = DefaultsJob.from_fields({**bytes_fields(fields), b"length": b"999"})
    assert decoded == job
    assert decoded.length == 5


def test_helpers_email_defaults_and_optional_cc() -> None:
    assert Email("a@b.c", "hi").to_fields() == {"to": "a@b.c", "subject": "hi", "attempt": "0"}
    assert Email.from_fields({b"to": b"a@b.c", b"subject": b"hi"}) == Email("a@b.c", "hi")
    with_cc = Email("a@b.c", "hi", attempt=2, cc="d@e.f")
    assert with_cc.to_fields()["cc"] == "d@e.f"
    assert_round_trips(with_cc)


def test_unknown_fields_in_the_entry_are_ignored() -> None:
    fields = {b"n": b"7", b"added_by_a_newer_producer": b"whatever"}
    assert Numbered.from_fields(fields) == Numbered(7)


def test_field_order_follows_the_dataclass() -> None:
    assert list(Email("a", "b", 1, "c").to_fields()) == ["to", "subject", "attempt", "cc"]


# ---------------------------------------------------------------------------
# Custom mappers

POINT = flowd.Mapper(
    encode=lambda p: f"{p[0]},{p[1]}",
    decode=lambda raw: tuple(int(n) for n in raw.split(b",")),
)

SORTED_SET = flowd.Mapper(
    encode=lambda values: " ".join(sorted(values)),
    decode=lambda raw: set(raw.decode().split()) if raw else set(),
)


@dataclasses.dataclass
class MapperJob(flowd.Job):
    to: tuple[int, int] = flowd.field(mapper=POINT)
    tags: set[str] = dataclasses.field(
        default_factory=set, metadata={flowd.job.MAPPER_METADATA_KEY: SORTED_SET}
    )
    # A type flowd does not support on its own works once it has a mapper.
    anything: object = flowd.field(
        mapper=flowd.Mapper(encode=repr, decode=lambda raw: raw.decode()), default="x"
    )


def test_mapper_via_flowd_field_and_via_metadata() -> None:
    job = MapperJob((3, -4), {"b", "a"}, "x")
    fields = job.to_fields()
    assert fields == {"to": "3,-4", "tags": "a b", "anything": "'x'"}
    decoded = MapperJob.from_fields({b"to": b"3,-4", b"tags": b"a b"})
    assert decoded == MapperJob((3, -4), {"a", "b"}, "x")


def test_mapper_decode_receives_bytes_even_from_str_fields() -> None:
    seen: list[bytes] = []

    def decode(raw: bytes) -> int:
        seen.append(raw)
        return len(raw)

    mapper = flowd.Mapper(encode=str, decode=decode)

    @dataclasses.dataclass
    class Measured(flowd.Job):
        size: int = flowd.field(mapper=mapper)

    assert Measured.from_fields({"size": "héllo"}) == Measured(6)
    assert seen == ["héllo".encode()]


def test_flowd_field_keeps_other_metadata_and_arguments() -> None:
    f = flowd.field(mapper=POINT, default=(0, 0), metadata={"other": 1}, repr=False)
    assert f.default == (0, 0)
    assert f.repr is False
    assert f.metadata == {"other": 1, "flowd.mapper": POINT}


def test_flowd_field_without_mapper_is_a_plain_dataclass_field() -> None:
    f = flowd.field(default=1)
    assert f.default == 1
    assert "flowd.mapper" not in f.metadata


def test_mapper_errors_become_encode_and_decode_errors() -> None:
    with pytest.raises(flowd.EncodeError, match=r"MapperJob\.to"):
        MapperJob((1,)).to_fields()  # type: ignore[arg-type]
    with pytest.raises(flowd.DecodeError) as info:
        MapperJob.from_fields({b"to": b"1;2"}, message_id="5-0")
    assert info.value.field == "to"
    assert info.value.message_id == "5-0"


def test_metadata_mapper_that_is_not_a_mapper_is_a_configuration_error() -> None:
    @dataclasses.dataclass
    class Bad(flowd.Job):
        x: int = dataclasses.field(default=0, metadata={"flowd.mapper": str})

    with pytest.raises(flowd.ConfigurationError, match=r"Bad\.x.*flowd\.Mapper"):
        Bad().to_fields()


# ---------------------------------------------------------------------------
# from __future__ import annotations


def test_string_annotations_are_resolved() -> None:
    # This module uses postponed evaluation, so the dataclass sees strings...
    assert isinstance(Everything.__dataclass_fields__["at"].type, str)
    assert isinstance(MaybeJob.__dataclass_fields__["old_style"].type, str)
    # ...and flowd resolves them to real types, Optional included.
    plan = flowd._codec.plan.plan_of(MaybeJob)
    assert [(f.name, f.optional) for f in plan.fields] == [
        ("required_or_none", True),
        ("old_style", True),
        ("new_style", True),
    ]
    assert_round_trips(MaybeJob(1, "two", Decimal("3")))


def test_locally_defined_job_with_module_level_annotations() -> None:
    @dataclasses.dataclass
    class Local(flowd.Job):
        color: Color
        when: date | None = None

    job = Local(Color.GREEN, date(2020, 2, 29))
    assert job.to_fields() == {"color": "green", "when": "2020-02-29"}
    assert_round_trips(job)


# ---------------------------------------------------------------------------
# Encode errors


def test_wrong_type_is_an_encode_error_and_a_type_error() -> None:
    with pytest.raises(flowd.EncodeError) as info:
        Email(to=5, subject="hi").to_fields()  # type: ignore[arg-type]
    assert isinstance(info.value, TypeError)
    assert isinstance(info.value, flowd.FlowdError)
    message = str(info.value)
    assert "Email.to" in message
    assert "str" in message
    assert "int" in message


def test_bool_in_an_int_field_is_rejected() -> None:
    with pytest.raises(flowd.EncodeError, match=r"Numbered\.n.*int"):
        Numbered(True).to_fields()


def test_bool_in_a_float_field_is_rejected() -> None:
    with pytest.raises(flowd.EncodeError, match=r"FloatJob\.x"):
        FloatJob(False).to_fields()


def test_datetime_in_a_date_field_is_rejected() -> None:
    with pytest.raises(flowd.EncodeError, match=r"DateJob\.day.*date"):
        DateJob(datetime(2020, 1, 1, 12)).to_fields()


def test_date_in_a_datetime_field_is_rejected() -> None:
    with pytest.raises(flowd.EncodeError, match=r"DateTimeJob\.at.*datetime"):
        DateTimeJob(date(2020, 1, 1)).to_fields()  # type: ignore[arg-type]


def test_none_in_a_field_that_is_not_optional_is_rejected() -> None:
    with pytest.raises(flowd.EncodeError, match=r"Email\.to.*None.*not Optional"):
        Email(to=None, subject="x").to_fields()  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("job", "where"),
    [
        (IntJob("1"), "IntJob.n"),  # type: ignore[arg-type]
        (StrJob(b"x"), "StrJob.s"),  # type: ignore[arg-type]
        (BytesJob("x"), "BytesJob.data"),  # type: ignore[arg-type]
        (DecimalJob(1.5), "DecimalJob.amount"),  # type: ignore[arg-type]
        (UUIDJob(str(uuid.UUID(int=0))), "UUIDJob.u"),  # type: ignore[arg-type]
        (EnumJob("red", Level.LOW, Size.SMALL), "EnumJob.color"),  # type: ignore[arg-type]
        (EnumJob(Color.RED, 1, Size.SMALL), "EnumJob.level"),  # type: ignore[arg-type]
        (NestedJob({"street": "x", "number": 1}, [], {}), "NestedJob.address"),  # type: ignore[arg-type]
        (NestedJob(Address("x", 1), (), {}), "NestedJob.history"),  # type: ignore[arg-type]
    ],
)
def test_each_codec_checks_its_type(job: flowd.Job, where: str) -> None:
    with pytest.raises(flowd.EncodeError) as info:
        job.to_fields()
    assert where in str(info.value)


def test_float_too_big_for_a_float_field_is_an_encode_error() -> None:
    with pytest.raises(flowd.EncodeError, match=r"FloatJob\.x"):
        FloatJob(10**400).to_fields()


def test_huge_bad_value_gives_a_short_encode_message() -> None:
    with pytest.raises(flowd.EncodeError) as info:
        Email(to=b"x" * 1_000_000, subject="s").to_fields()  # type: ignore[arg-type]
    assert len(str(info.value)) < 1000


# ---------------------------------------------------------------------------
# Decode errors


def test_missing_required_field_names_the_field_and_message_id() -> None:
    with pytest.raises(flowd.DecodeError) as info:
        Email.from_fields({b"subject": b"hi"}, message_id="1712345678901-3")
    error = info.value
    assert isinstance(error, flowd.FlowdError)
    assert error.field == "to"
    assert error.message_id == "1712345678901-3"
    assert "to" in error.reason or "missing" in error.reason
    assert "'to'" in str(error)
    assert "1712345678901-3" in str(error)


@pytest.mark.parametrize(
    ("cls", "fields", "field"),
    [
        (Numbered, {b"n": b"forty-two"}, "n"),
        (Numbered, {"n": ""}, "n"),
        (Email, {b"to": b"\xff\xfe", b"subject": b"s"}, "to"),
        (Email, {b"to": b"a", b"subject": b"s", b"attempt": b"1.5"}, "attempt"),
        (EnumJob, {b"color": b"purple", b"level": b"1", b"size": b"1"}, "color"),
        (EnumJob, {b"color": b"red", b"level": b"2", b"size": b"1"}, "level"),
        (EnumJob, {b"color": b"RED", b"level": b"1", b"size": b"1"}, "color"),
        (BoolJob, {b"flag": b"yes"}, "flag"),
        (FloatJob, {b"x": b"1,5"}, "x"),
        (DecimalJob, {b"amount": b"1.2.3"}, "amount"),
        (UUIDJob, {b"u": b"not-a-uuid"}, "u"),
        (DateTimeJob, {b"at": b"yesterday"}, "at"),
        (DateJob, {b"day": b"2020-02-30"}, "day"),
        (NestedJob, {b"address": b"{not json", b"history": b"[]", b"counts": b"{}"}, "address"),
        (
            NestedJob,
            {b"address": b'{"street":"x"}', b"history": b"[]", b"counts": b"{}"},
            "address",
        ),
        (
            NestedJob,
            {b"address": b'{"street":"x","number":1}', b"history": b"[", b"counts": b"{}"},
            "history",
        ),
        (
            NestedJob,
            {b"address": b'{"street":"x","number":1}', b"history": b"[]", b"counts": b"[]"},
            "counts",
        ),
    ],
)
def test_unreadable_values_are_decode_errors_naming_the_field(
    cls: type[flowd.Job], fields: dict[Any, Any], field: str
) -> None:
    with pytest.raises(flowd.DecodeError) as info:
        cls.from_fields(fields, message_id="9-9")
    assert info.value.field == field
    assert info.value.message_id == "9-9"
    assert repr(field) in str(info.value)
    assert "9-9" in str(info.value)
    assert info.value.reason


def test_decode_error_without_message_id() -> None:
    with pytest.raises(flowd.DecodeError) as info:
        Numbered.from_fields({b"n": b"x"})
    assert info.value.message_id is None
    assert info.value.field == "n"


def test_huge_bad_value_gives_a_short_decode_reason() -> None:
    with pytest.raises(flowd.DecodeError) as info:
        Numbered.from_fields({b"n": b"9" * 2_000 + b"x" * 1_000_000}, message_id="1-1")
    assert len(info.value.reason) < 1000
    assert len(str(info.value)) < 1000


def test_post_init_failure_is_a_decode_error() -> None:
    @dataclasses.dataclass
    class Positive(flowd.Job):
        n: int

        def __post_init__(self) -> None:
            if self.n <= 0:
                raise ValueError("n must be positive")

    with pytest.raises(flowd.DecodeError, match="n must be positive") as info:
        Positive.from_fields({b"n": b"-1"}, message_id="2-0")
    assert info.value.message_id == "2-0"


# ---------------------------------------------------------------------------
# Configuration errors (bad Job classes)


class NotADataclass(flowd.Job):
    def __init__(self, n: int) -> None:
        self.n = n


def test_job_subclass_that_is_not_a_dataclass_is_a_configuration_error() -> None:
    with pytest.raises(flowd.ConfigurationError, match=r"NotADataclass.*dataclass"):
        NotADataclass(1).to_fields()
    with pytest.raises(flowd.ConfigurationError):
        NotADataclass.from_fields({b"n": b"1"})


@dataclasses.dataclass
class UnionJob(flowd.Job):
    v: int | str


@dataclasses.dataclass
class OptionalUnionJob(flowd.Job):
    v: int | str | None = None


@dataclasses.dataclass
class ObjectJob(flowd.Job):
    v: object


@dataclasses.dataclass
class AnyJob(flowd.Job):
    v: typing.Any


@pytest.mark.parametrize(
    ("cls", "job"),
    [
        (UnionJob, UnionJob(1)),
        (OptionalUnionJob, OptionalUnionJob(1)),
        (ObjectJob, ObjectJob(1)),
        (AnyJob, AnyJob(1)),
    ],
)
def test_unsupported_annotation_is_a_configuration_error(cls: type[flowd.Job], job: Any) -> None:
    with pytest.raises(flowd.ConfigurationError, match=rf"{cls.__name__}\.v") as info:
        job.to_fields()
    assert isinstance(info.value, ValueError)
    assert "mapper" in str(info.value)
    with pytest.raises(flowd.ConfigurationError):
        cls.from_fields({b"v": b"1"})


# ---------------------------------------------------------------------------
# The mapping plan is built once per class


def test_plan_is_built_once_and_cached_per_class(monkeypatch: pytest.MonkeyPatch) -> None:
    @dataclasses.dataclass
    class Fresh(flowd.Job):
        n: int
        s: str = "x"

    built: list[type] = []
    real_build = flowd._codec.plan._build_plan

    def counting(cls: type) -> Any:
        built.append(cls)
        return real_build(cls)

    monkeypatch.setattr(flowd._codec.plan, "_build_plan", counting)

    first = flowd._codec.plan.plan_of(Fresh)
    for i in range(200):
        Fresh(i).to_fields()
        Fresh.from_fields({b"n": str(i).encode()})
    assert flowd._codec.plan.plan_of(Fresh) is first
    assert flowd._codec.plan.plan_of(Fresh) is flowd._codec.plan.plan_of(Fresh)
    assert built == [Fresh]


def test_subclass_gets_its_own_plan() -> None:
    @dataclasses.dataclass
    class Base(flowd.Job):
        a: int

    @dataclasses.dataclass
    class Child(Base):
        b: str = "b"

    assert Base(1).to_fields() == {"a": "1"}
    assert Child(1).to_fields() == {"a": "1", "b": "b"}
    assert flowd._codec.plan.plan_of(Child) is not flowd._codec.plan.plan_of(Base)
    assert Child.from_fields({b"a": b"2", b"b": b"c"}) == Child(2, "c")


# ---------------------------------------------------------------------------
# A trip through a real Redis


def sample_everything() -> Everything:
    return Everything(
        s="héllo wörld \x00 ✓",
        n=42,
        big=-(10**50),
        x=0.1,
        flag=True,
        data=b"\x00\x01raw\x7f",  # valid UTF-8, so a decode_responses client can read it
        amount=Decimal("19.90"),
        u=uuid.UUID("12345678-1234-5678-1234-567812345678"),
        at=datetime(2024, 5, 1, 12, 30, 15, 500, tzinfo=timezone(timedelta(hours=-5))),
        naive=datetime(2024, 5, 1, 12, 30),
        day=date(2024, 2, 29),
        color=Color.BLUE,
        level=Level.HIGH,
        address=Address("Main St", 12),
        history=[Address("Old Rd", 1), Address("Older Rd", 2)],
        counts={"a": 1, "b": -2},
        cc="boss@example.com",
        note=None,
        retries=5,
    )


def xrange(client: redis.Redis, stream: str) -> list[tuple[Any, Any]]:
    """The whole stream (redis-py's reply type is too loose for mypy)."""
    entries: list[tuple[Any, Any]] = client.xrange(stream)  # type: ignore[assignment]
    return entries


def _to_bytes(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode("utf-8")


def test_every_type_round_trips_through_redis(any_client: redis.Redis, stream: str) -> None:
    job = sample_everything()
    msg_id = flowd.Producer(any_client, stream).enqueue(job)
    assert isinstance(msg_id, str)

    ((entry_id, fields),) = xrange(any_client, stream)
    assert _to_bytes(entry_id).decode() == msg_id
    decoded = Everything.from_fields(fields, message_id=msg_id)
    assert decoded == job
    assert decoded.at.utcoffset() == timedelta(hours=-5)
    assert decoded.naive.tzinfo is None

    # The entry is flat and reads naturally in redis-cli.
    raw = {_to_bytes(k): _to_bytes(v) for k, v in fields.items()}
    assert raw == {
        b"s": "héllo wörld \x00 ✓".encode(),
        b"n": b"42",
        b"big": b"-1" + b"0" * 50,
        b"x": b"0.1",
        b"flag": b"true",
        b"data": b"\x00\x01raw\x7f",
        b"amount": b"19.90",
        b"u": b"12345678-1234-5678-1234-567812345678",
        b"at": b"2024-05-01T12:30:15.000500-05:00",
        b"naive": b"2024-05-01T12:30:00",
        b"day": b"2024-02-29",
        b"color": b"blue",
        b"level": b"10",
        b"address": b'{"street":"Main St","number":12}',
        b"history": b'[{"street":"Old Rd","number":1},{"street":"Older Rd","number":2}]',
        b"counts": b'{"a":1,"b":-2}',
        b"cc": b"boss@example.com",
        b"retries": b"5",
    }
    assert b"note" not in raw  # None in an Optional field writes nothing


def test_arbitrary_binary_round_trips_through_redis(client: redis.Redis, stream: str) -> None:
    job = BytesJob(bytes(range(256)) * 4)
    flowd.Producer(client, stream).enqueue(job)
    ((entry_id, fields),) = xrange(client, stream)
    assert fields == {b"data": job.data}
    assert BytesJob.from_fields(fields, message_id=entry_id.decode()) == job


# ---------------------------------------------------------------------------
# Known flowd bugs (see the report); strict, so a fix shows up as XPASS -> remove the mark.


def test_int_too_long_for_str_is_an_encode_error() -> None:
    with pytest.raises(flowd.EncodeError, match=r"IntJob\.n"):
        IntJob(10**5000).to_fields()


@dataclasses.dataclass
class OptionalWithDefault(flowd.Job):
    limit: int | None = 5


def test_none_in_optional_field_with_non_none_default_round_trips() -> None:
    assert OptionalWithDefault.from_fields(OptionalWithDefault(None).to_fields()).limit is None


def test_json_null_for_a_non_optional_field_is_a_decode_error() -> None:
    fields = {b"address": b"null", b"history": b"[]", b"counts": b"{}"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # as in production, where the warning is not an error
        with pytest.raises(flowd.DecodeError):
            NestedJob.from_fields(fields)


@dataclasses.dataclass
class TagsJob(flowd.Job):
    tags: list[str]


def test_json_of_the_wrong_shape_is_a_decode_error() -> None:
    with pytest.raises(flowd.DecodeError):
        TagsJob.from_fields({b"tags": b'"hello"'})


class Perm(enum.Flag):
    READ = 1
    WRITE = 2


@dataclasses.dataclass
class FlagJob(flowd.Job):
    perm: Perm


def test_combined_flag_round_trips() -> None:
    job = FlagJob(Perm.READ | Perm.WRITE)
    assert FlagJob.from_fields(job.to_fields()) == job


def test_unresolvable_annotation_is_a_configuration_error() -> None:
    @dataclasses.dataclass
    class LocalInner:
        a: int

    @dataclasses.dataclass
    class Outer(flowd.Job):
        inner: LocalInner  # a string here; LocalInner is not a module global

    with pytest.raises(flowd.ConfigurationError):
        Outer(LocalInner(1)).to_fields()
