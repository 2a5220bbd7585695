"""Bad input: hostile stream entries, bad API use, bad command lines.

DESIGN.md, "What bad input gets": a clear exception at the call that caused
it, or, for a bad message already in Redis, the dead-letter path with the
reason and the raw fields kept. Never a dead reader thread, never a message
silently dropped.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
import os
import subprocess
import sys
import time
import uuid
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import flowd
from tests.helpers import (
    Recorder,
    as_str,
    clean_env,
    flowd_threads,
    numbered_queue,
    run_flowd,
    wait_until,
)
from tests.redis_server import free_port

REPO = Path(__file__).resolve().parent.parent
GROUP = "g"
VALID_BASE = 1_000_000  # the valid job after hostile entry i has n = VALID_BASE + i


# ---------------------------------------------------------------------------
# The job of the hostile entries: one field of each supported kind


class Tier(enum.Enum):
    GOLD = "gold"
    SILVER = "silver"


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


@dataclass
class Address:
    street: str
    zip: str


@dataclass
class Hostile(flowd.Job):
    n: int  # the only required field
    text: str = ""
    flag: bool = False
    ratio: float = 0.0
    uid: uuid.UUID | None = None
    amount: Decimal | None = None
    at: datetime | None = None
    day: date | None = None
    tier: Tier = Tier.GOLD
    level: Level = Level.LOW
    tags: list[str] = dataclasses.field(default_factory=list)
    scores: dict[str, int] = dataclasses.field(default_factory=dict)
    address: Address | None = None
    blob: bytes = b""


@dataclass
class AllDefaults(flowd.Job):
    retries: int = 3
    note: str | None = None


@dataclass
class Optionals(flowd.Job):
    """A job whose fields are all None by default: the producer writes only flowd:empty."""

    note: str | None = None
    count: int | None = None


@dataclass(frozen=True)
class Case:
    """One hostile entry: its fields, and the field its DecodeError names (None: valid)."""

    name: str
    fields: dict[bytes, bytes]
    dead: str | None
    check: Callable[[Hostile], bool] | None = None


FIVE_MB = 5 * 1024 * 1024
DEEP = 100_000

CASES = [
    # missing required fields
    Case("missing required field", {b"text": b"hi"}, "n"),
    Case("only unknown fields", {b"x": b"1", b"y": b"2"}, "n"),
    Case("flowd:empty marker for a job with a required field", {b"flowd:empty": b"1"}, "n"),
    Case("empty int", {b"n": b""}, "n"),
    # wrong types
    Case("text in an int field", {b"n": b"ten"}, "n"),
    Case("float in an int field", {b"n": b"1.5"}, "n"),
    Case("maybe in a bool field", {b"n": b"1", b"flag": b"maybe"}, "flag"),
    Case("yes in a bool field", {b"n": b"1", b"flag": b"yes"}, "flag"),
    Case("text in a float field", {b"n": b"1", b"ratio": b"fast"}, "ratio"),
    Case("bad UUID", {b"n": b"1", b"uid": b"not-a-uuid"}, "uid"),
    Case("bad Decimal", {b"n": b"1", b"amount": b"1,50"}, "amount"),
    Case("bad datetime", {b"n": b"1", b"at": b"yesterday"}, "at"),
    Case("impossible date", {b"n": b"1", b"day": b"2024-02-30"}, "day"),
    Case("unknown Enum value", {b"n": b"1", b"tier": b"platinum"}, "tier"),
    Case("Enum name instead of its value", {b"n": b"1", b"tier": b"GOLD"}, "tier"),
    Case("unknown IntEnum value", {b"n": b"1", b"level": b"3"}, "level"),
    Case("bad JSON in a list field", {b"n": b"1", b"tags": b'["a",'}, "tags"),
    Case("JSON object for a list", {b"n": b"1", b"tags": b'{"a": 1}'}, "tags"),
    Case("JSON string for a list", {b"n": b"1", b"tags": b'"ab"'}, "tags"),
    Case("JSON null for a list", {b"n": b"1", b"tags": b"null"}, "tags"),
    Case("JSON array for a dataclass", {b"n": b"1", b"address": b'["x", "y"]'}, "address"),
    Case("dataclass JSON missing a key", {b"n": b"1", b"address": b'{"street": "x"}'}, "address"),
    Case("text for an int in a dict", {b"n": b"1", b"scores": b'{"a": "x"}'}, "scores"),
    Case("deeply nested JSON", {b"n": b"1", b"tags": b"[" * DEEP + b"]" * DEEP}, "tags"),
    # huge values
    Case(
        "5 MB str",
        {b"n": b"1", b"text": b"x" * FIVE_MB},
        None,
        lambda job: job.text == "x" * FIVE_MB,
    ),
    Case("10,000-digit int", {b"n": b"9" * 10_000}, "n"),
    Case(
        "10,000 unknown fields",
        {b"n": b"1", **{f"extra{i}".encode(): b"v" for i in range(10_000)}},
        None,
    ),
    Case("1 MB field name", {b"n": b"1", b"k" * 1024 * 1024: b"v"}, None),
    # invalid UTF-8
    Case("invalid UTF-8 in a str field", {b"n": b"1", b"text": b"ok \xff\xfe"}, "text"),
    Case("overlong UTF-8 in a str field", {b"n": b"1", b"text": b"\xc0\xaf"}, "text"),
    Case("UTF-8 encoded surrogate in a str field", {b"n": b"1", b"text": b"\xed\xa0\x80"}, "text"),
    Case("invalid UTF-8 in a Decimal field", {b"n": b"1", b"amount": b"\xff"}, "amount"),
    Case("invalid UTF-8 in a list field", {b"n": b"1", b"tags": b'["\xff"]'}, "tags"),
    Case(
        "invalid UTF-8 in a bytes field",
        {b"n": b"1", b"blob": b"\xff\x00\xfe"},
        None,
        lambda job: job.blob == b"\xff\x00\xfe",
    ),
    Case("invalid UTF-8 in an unknown field's name", {b"n": b"1", b"\xff\xfe": b"\xff"}, None),
    Case(
        "invalid UTF-8 field names and values in a bad entry",
        {b"n": b"x", b"\xff\xfe": b"\xfe", b"caf\xc3\xa9": b"\xc0"},
        "n",
    ),
    Case(
        "NUL and control characters in a str field",
        {b"n": b"1", b"text": b"a\x00b\r\n\x1b[31m"},
        None,
        lambda job: job.text == "a\x00b\r\n\x1b[31m",
    ),
    # extra and spoofed fields
    Case("extra unknown fields", {b"n": b"7", b"unknown": b"x", b"": b""}, None),
    Case(
        "spoofed flowd: fields on a valid job",
        {b"n": b"1", b"flowd:id": b"1-1", b"flowd:reason": b"fake"},
        None,
    ),
    Case(
        "spoofed flowd: fields on a bad job",
        {b"n": b"bad", b"flowd:id": b"1-1", b"flowd:reason": b"fake", b"flowd:stream": b"x"},
        "n",
    ),
    # valid by the rules, if unusual
    Case("every field valid", {b"n": b"-5", b"flag": b"TRUE", b"tier": b"silver"}, None),
    Case("int with spaces and underscores", {b"n": b" 1_000 "}, None, lambda job: job.n == 1000),
    Case("float infinity", {b"n": b"1", b"ratio": b"-inf"}, None, lambda j: j.ratio == -math.inf),
]


def user_fields(fields: dict[bytes, bytes]) -> dict[bytes, bytes]:
    """The fields of an entry but flowd's own ``flowd:*`` ones."""
    return {k: v for k, v in fields.items() if not k.startswith(b"flowd:")}


def group_pending(client: redis.Redis, stream: str) -> int:
    return int(client.xpending(stream, GROUP)["pending"])


@pytest.mark.parametrize("decode", [False, True], ids=["bytes", "decode_responses"])
def test_hostile_entries_are_processed_or_dead_lettered_and_the_queue_goes_on(
    decode: bool, client: redis.Redis, redis_url: str, stream: str
) -> None:
    queue_client = redis.Redis.from_url(redis_url, decode_responses=decode)
    recorder = Recorder()
    queue = numbered_queue(
        queue_client,
        stream,
        recorder.work,
        job=Hostile,
        concurrency=4,
        claimer=flowd.Claimer(min_idle_time=2.0, max_retries=0, dlq_worker=recorder.dlq),
        housekeeping=False,
    )
    # Given a running queue
    handle = queue.run()
    try:
        # When each hostile entry arrives, followed by a valid job
        hostile_ids, valid_ids = [], []
        for i, case in enumerate(CASES):
            hostile_ids.append(as_str(client.xadd(stream, case.fields)))  # type: ignore[arg-type]
            valid_ids.append(as_str(client.xadd(stream, {"n": VALID_BASE + i})))
        # Then every entry is either processed or dead-lettered, none left behind
        total = len(hostile_ids) + len(valid_ids)
        wait_until(lambda: len(recorder.done) + len(recorder.dead) >= total, timeout=60)
        wait_until(lambda: group_pending(client, stream) == 0, timeout=10)
    finally:
        assert handle.stop(timeout=10)
        queue_client.close()

    # And every valid job after a hostile entry succeeded
    for i, msg_id in enumerate(valid_ids):
        assert recorder.done.get(msg_id) == Hostile(n=VALID_BASE + i)
    # And each hostile entry went where the rules say
    letters = {letter.original_id: letter for letter in flowd.DeadLetters(client, stream).list()}
    raw_dead = {
        as_str(fields[b"flowd:id"]): fields for _, fields in client.xrange(f"{{{stream}}}:dead")
    }
    for case, msg_id in zip(CASES, hostile_ids, strict=True):
        if case.dead is None:
            assert msg_id in recorder.done, f"{case.name}: not processed"
            assert msg_id not in letters, f"{case.name}: {letters[msg_id].reason}"
            job = recorder.done[msg_id]
            assert type(job) is Hostile
            assert case.check is None or case.check(job), case.name
        else:
            assert msg_id not in recorder.done, f"{case.name}: processed as {recorder.done[msg_id]}"
            # dead-lettered once, with a reason naming the field, and its raw fields kept
            assert msg_id in letters, f"{case.name}: not in the dead-letter stream"
            letter = letters[msg_id]
            assert f"field {case.dead!r}" in letter.reason, (case.name, letter.reason)
            assert len(letter.reason) < 1000, (case.name, len(letter.reason))
            assert letter.stream == stream and letter.deliveries == 1
            assert user_fields(raw_dead[msg_id]) == user_fields(case.fields), case.name
            task = recorder.dead[msg_id]
            assert task.job is None and task.error is not None
            assert f"field {case.dead!r}" in task.error
    dead_cases = sum(1 for case in CASES if case.dead is not None)
    assert len(letters) == len(recorder.dead) == dead_cases
    stats = handle.stats()
    assert (stats.processed, stats.failed, stats.dead_lettered) == (
        2 * len(CASES) - dead_cases,
        0,
        dead_cases,
    )


def test_a_bad_entry_with_thousands_of_fields_is_dead_lettered_not_lost(
    client: redis.Redis, stream: str
) -> None:
    # Given an unreadable entry with 5,000 fields (a Lua script's unpack() takes at most
    # about 8,000 values)
    fields = {b"n": b"bad", **{f"extra{i}".encode(): b"v" for i in range(5_000)}}
    msg_id = as_str(client.xadd(stream, fields))  # type: ignore[arg-type]
    recorder = Recorder()
    queue = numbered_queue(
        client,
        stream,
        recorder.work,
        job=Hostile,
        claimer=flowd.Claimer(min_idle_time=0.5, interval=0.1, dlq_worker=recorder.dlq),
        housekeeping=False,
    )
    # When a queue with the dead-letter stream on reads it
    handle = queue.run()
    try:
        wait_until(lambda: msg_id in recorder.dead)
        deadline = time.monotonic() + 5
        while client.xlen(f"{{{stream}}}:dead") == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        assert handle.stop(timeout=5)
    # Then it is in the dead-letter stream with all its fields; at the very least it is
    # still pending: never acked without being kept
    letters = flowd.DeadLetters(client, stream).list()
    pending = group_pending(client, stream)
    assert letters or pending == 1, "acked, but not in the dead-letter stream: the message is lost"
    assert [letter.original_id for letter in letters] == [msg_id]
    assert len(letters[0].fields) == len(fields)


def test_entries_for_a_job_whose_fields_all_have_defaults(client: redis.Redis, stream: str) -> None:
    recorder = Recorder()
    queue = numbered_queue(
        client,
        stream,
        recorder.work,
        job=Optionals,
        claimer=flowd.Claimer(min_idle_time=2.0, dlq_worker=recorder.dlq),
        housekeeping=False,
    )
    # Given what the producer writes for a job with nothing to write: the flowd:empty marker
    empty_id = flowd.Producer(client, stream).enqueue(Optionals())
    assert client.xrange(stream) == [(empty_id.encode(), {b"flowd:empty": b"1"})]
    # and the marker written by hand, an entry of unknown fields only, and a bad one
    marker_id = as_str(client.xadd(stream, {"flowd:empty": "1"}))
    unknown_id = as_str(client.xadd(stream, {"something": "else"}))
    bad_id = as_str(client.xadd(stream, {"count": "many"}))
    # When a queue drains them
    assert queue.drain(timeout=10) == 3
    # Then all but the bad one are all-default jobs; the bad one is dead
    assert recorder.done == {empty_id: Optionals(), marker_id: Optionals(), unknown_id: Optionals()}
    assert set(recorder.dead) == {bad_id}
    assert "field 'count'" in (recorder.dead[bad_id].error or "")
    # And the marker gives the defaults of a class with non-None defaults too
    assert AllDefaults.from_fields({b"flowd:empty": b"1"}) == AllDefaults(retries=3)


# ---------------------------------------------------------------------------
# from_fields on random input: a job or a DecodeError, nothing else

FIELD_NAMES = [f.name.encode() for f in dataclasses.fields(Hostile)]
INTERESTING = [
    b"",
    b"0",
    b"-1",
    b"1e999",
    b"nan",
    b"true",
    b"null",
    b"[]",
    b"{}",
    b"[null]",
    b'{"street": null, "zip": 1}',
    b'{"a": 1}',
    b"\xff",
    b"gold",
    b"2024-01-01",
    b"2024-01-01T00:00:00+01:00",
    b"12345678-1234-5678-1234-567812345678",
    b"9" * 5000,
    b"[" * 2000,
]
VALUES = st.one_of(
    st.binary(max_size=40),
    st.sampled_from(INTERESTING),
    st.text(max_size=20).map(lambda s: s.encode("utf-8")),
)
KEYS = st.one_of(st.sampled_from(FIELD_NAMES), st.binary(max_size=12))
BYTES_MAPS = st.dictionaries(KEYS, VALUES, max_size=16)


def decoded(fields: dict[bytes, bytes]) -> dict[str, str]:
    """What a decode_responses=True client with surrogateescape would return."""
    return {
        k.decode("utf-8", "surrogateescape"): v.decode("utf-8", "surrogateescape")
        for k, v in fields.items()
    }


FIELD_MAPS = st.one_of(
    BYTES_MAPS,
    BYTES_MAPS.map(decoded),
    # str keys, bytes values, and values that are None (a missing field)
    st.dictionaries(
        st.sampled_from([k.decode() for k in FIELD_NAMES]), st.none() | VALUES, max_size=16
    ),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(FIELD_MAPS)
def test_from_fields_returns_a_job_or_raises_decode_error(fields: dict[Any, Any]) -> None:
    # Warnings are not errors in production: dataclasses-json only warns about some values
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            job = Hostile.from_fields(fields)
        except flowd.DecodeError as exc:
            assert exc.field is None or exc.field in Hostile.__dataclass_fields__
            return
    assert type(job) is Hostile
    assert type(job.n) is int and type(job.text) is str and type(job.blob) is bytes
    assert type(job.flag) is bool and type(job.ratio) is float
    assert isinstance(job.tier, Tier) and isinstance(job.level, Level)
    assert job.address is None or type(job.address) is Address


@pytest.mark.parametrize(
    "fields",
    [
        {"\ud800": "1"},  # a str key that is not text: a lone surrogate
        {"n": "1", "\udfff\ud800": "x"},
    ],
    ids=["lone-surrogate-key", "lone-surrogate-unknown-key"],
)
def test_from_fields_str_keys_that_are_not_text_give_decode_error(fields: dict[str, str]) -> None:
    with pytest.raises(flowd.DecodeError):
        Hostile.from_fields(fields)


@pytest.mark.parametrize(
    ("fields", "field_name"),
    [
        ({b"n": b"1", b"tags": b"[null]"}, "tags"),
        ({b"n": b"1", b"tags": b'[{"a": 1}]'}, "tags"),
        ({b"n": b"1", b"tags": b"[1, 2.5, true]"}, "tags"),
        ({b"n": b"1", b"address": b'{"street": null, "zip": "1"}'}, "address"),
        ({b"n": b"1", b"address": b'{"street": ["x"], "zip": {"a": 1}}'}, "address"),
        ({b"n": b"1", b"scores": b'{"a": 1.9}'}, "scores"),
    ],
    ids=[
        "null-in-list-str",
        "object-in-list-str",
        "numbers-in-list-str",
        "null-str",
        "list-str",
        "float-int",
    ],
)
def test_json_values_of_the_wrong_type_are_decode_errors(
    fields: dict[bytes, bytes], field_name: str
) -> None:
    # As in production, where a dataclasses-json warning is not an error
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(flowd.DecodeError) as error:
            job = Hostile.from_fields(fields)
            pytest.fail(f"decoded as {job!r}")
    assert error.value.field == field_name


# ---------------------------------------------------------------------------
# Bad API use: a clear flowd error at the call, naming the argument


@dataclass
class PlainDataclass:
    n: int


class NotADataclass(flowd.Job):
    n: int = 0


def noop(task: flowd.Task[Any]) -> None:
    pass


@pytest.mark.parametrize(
    "job",
    [{"n": 1}, PlainDataclass(1), Hostile, None, "n=1", 1],
    ids=["dict", "plain-dataclass", "job-class", "None", "str", "int"],
)
def test_enqueue_rejects_what_is_not_a_job_instance(
    client: redis.Redis, stream: str, job: Any
) -> None:
    producer = flowd.Producer(client, stream)
    with pytest.raises(flowd.EncodeError, match=r"flowd\.Job"):
        producer.enqueue(job)
    with pytest.raises(flowd.EncodeError, match=r"flowd\.Job"):
        producer.enqueue_bulk([Hostile(n=1), job])
    assert client.exists(stream) == 0  # nothing of the bad chunk was sent


@pytest.mark.parametrize(
    ("job", "field_name"),
    [
        (Hostile(n="1"), "n"),  # type: ignore[arg-type]
        (Hostile(n=True), "n"),
        (Hostile(n=1, flag="yes"), "flag"),  # type: ignore[arg-type]
        (Hostile(n=1, tags="a,b"), "tags"),  # type: ignore[arg-type]
        (Hostile(n=1, uid="0000"), "uid"),  # type: ignore[arg-type]
        (Hostile(n=1, tier="gold"), "tier"),  # type: ignore[arg-type]
        (Hostile(n=1, address={"street": "x", "zip": "y"}), "address"),  # type: ignore[arg-type]
        (Hostile(n=1, text="lone \ud800 surrogate"), "text"),
        (Hostile(n=1, text=None), "text"),  # type: ignore[arg-type]
        (Hostile(n=1, at=date(2024, 1, 1)), "at"),  # type: ignore[arg-type]
    ],
)
def test_enqueue_rejects_values_that_do_not_fit_naming_the_field(
    client: redis.Redis, stream: str, job: Hostile, field_name: str
) -> None:
    with pytest.raises(flowd.EncodeError, match=rf"Hostile\.{field_name}\b"):
        flowd.Producer(client, stream).enqueue(job)
    assert client.exists(stream) == 0


def test_a_job_class_that_is_not_a_dataclass_is_refused_everywhere(
    client: redis.Redis, stream: str
) -> None:
    with pytest.raises(flowd.ConfigurationError, match="dataclass"):
        numbered_queue(client, stream, noop, job=NotADataclass, claimer=None)
    with pytest.raises(flowd.FlowdError, match="dataclass"):
        flowd.Producer(client, stream).enqueue(NotADataclass())
    with pytest.raises(flowd.FlowdError, match="dataclass"):
        NotADataclass.from_fields({b"n": b"1"})
    assert client.exists(stream) == 0


def queue_kwargs(client: redis.Redis, stream: str) -> dict[str, Any]:
    return {"stream": stream, "group": GROUP, "job": Hostile, "worker": noop}


BAD_QUEUE_ARGS = [
    ("concurrency", 0),
    ("concurrency", -1),
    ("concurrency", 1.5),
    ("concurrency", "8"),
    ("concurrency", True),
    ("concurrency", None),
    ("block", 0),
    ("block", -1),
    ("block", "2"),
    ("block", math.nan),
    ("block", math.inf),
    ("stream", ""),
    ("stream", None),
    ("stream", b"emails"),
    ("group", ""),
    ("group", 5),
    ("consumer", ""),
    ("worker", None),
    ("worker", "module:function"),
    ("job", PlainDataclass),
    ("job", Hostile(n=1)),
    ("job", None),
    ("claimer", "yes"),
    ("claimer", flowd.Claimer),
    ("claimer", flowd.Housekeeping()),
    ("housekeeping", "yes"),
    ("housekeeping", None),
    ("housekeeping", flowd.Claimer()),
    ("hooks", flowd.Hooks()),
    ("hooks", [object()]),
    ("read_client", "redis://localhost"),
]


@pytest.mark.parametrize(("name", "value"), BAD_QUEUE_ARGS)
def test_queue_rejects_bad_arguments_naming_them(
    client: redis.Redis, stream: str, name: str, value: Any
) -> None:
    kwargs = queue_kwargs(client, stream)
    kwargs[name] = value
    with pytest.raises(flowd.ConfigurationError, match=name):
        flowd.Queue(client, **{"claimer": None, **kwargs})


@pytest.mark.parametrize(
    "bad_client",
    [None, "redis://localhost:6379/0", redis.Redis, "pipeline"],
    ids=["None", "url", "class", "pipeline"],
)
def test_queue_and_producer_reject_what_is_not_a_client(
    client: redis.Redis, stream: str, bad_client: Any
) -> None:
    if bad_client == "pipeline":
        # A pipeline only queues commands: reads and acks would never reach Redis
        bad_client = client.pipeline()
    with pytest.raises(flowd.ConfigurationError, match="client"):
        flowd.Producer(bad_client, stream)
    with pytest.raises(flowd.ConfigurationError, match="client"):
        flowd.Queue(bad_client, **{"claimer": None, **queue_kwargs(client, stream)})


def test_dead_letter_stream_that_is_the_queue_itself_is_refused(
    client: redis.Redis, stream: str
) -> None:
    with pytest.raises(flowd.ConfigurationError, match="dead-letter"):
        flowd.Queue(
            client, claimer=flowd.Claimer(dlq_stream=stream), **queue_kwargs(client, stream)
        )


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("min_idle_time", -1),
        ("min_idle_time", 0),
        ("min_idle_time", timedelta(seconds=-5)),
        ("min_idle_time", math.nan),
        ("min_idle_time", math.inf),
        ("min_idle_time", "30"),
        ("min_idle_time", None),
        ("max_retries", -1),
        ("max_retries", 1.5),
        ("max_retries", True),
        ("max_retries", "3"),
        ("dlq_worker", "a function"),
        ("dlq_stream", ""),
        ("dlq_stream", None),
        ("dlq_stream", 0),
        ("interval", -1),
        ("interval", 0),
        ("batch", 0),
        ("batch", -5),
        ("batch", 2.5),
    ],
)
def test_claimer_rejects_bad_arguments_naming_them(name: str, value: Any) -> None:
    with pytest.raises(flowd.ConfigurationError, match=name):
        flowd.Claimer(**{name: value})


@pytest.mark.parametrize(
    ("name", "value"),
    [("interval", -1), ("interval", 0), ("trim", "yes"), ("consumer_ttl", -1), ("consumer_ttl", 0)],
)
def test_housekeeping_rejects_bad_arguments_naming_them(name: str, value: Any) -> None:
    with pytest.raises(flowd.ConfigurationError, match=name):
        flowd.Housekeeping(**{name: value})


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("stream", ""),
        ("stream", None),
        ("maxlen", 0),
        ("maxlen", -1),
        ("maxlen", "10"),
        ("maxlen", True),
        ("chunk_size", 0),
        ("chunk_size", 1.5),
    ],
)
def test_producer_rejects_bad_arguments_naming_them(
    client: redis.Redis, name: str, value: Any
) -> None:
    kwargs: dict[str, Any] = {"stream": "s", name: value}
    with pytest.raises(flowd.ConfigurationError, match=name):
        flowd.Producer(client, **kwargs)


@pytest.mark.parametrize("timeout", [-1, -0.001, "5", math.nan, math.inf, timedelta(seconds=-1)])
def test_drain_rejects_a_bad_timeout_before_touching_redis(
    client: redis.Redis, stream: str, timeout: Any
) -> None:
    queue = flowd.Queue(client, **{"claimer": None, **queue_kwargs(client, stream)})
    with pytest.raises(flowd.ConfigurationError, match="timeout"):
        queue.drain(timeout=timeout)
    assert client.exists(stream) == 0


def test_drain_with_timeout_zero_returns_at_once(client: redis.Redis, stream: str) -> None:
    flowd.Producer(client, stream).enqueue(Hostile(n=1))
    queue = flowd.Queue(client, **{"claimer": None, **queue_kwargs(client, stream)})
    started = time.monotonic()
    assert queue.drain(timeout=0) == 0
    assert time.monotonic() - started < 2


@pytest.mark.parametrize("timeout", [-1, -1e9, 0])
def test_stop_with_a_negative_timeout_behaves_like_zero(
    client: redis.Redis, stream: str, timeout: float
) -> None:
    queue = flowd.Queue(
        client,
        claimer=flowd.Claimer(min_idle_time=1.0),
        block=0.5,
        **queue_kwargs(client, stream),
    )
    handle = queue.run()
    # stop() runs in signal handlers and atexit: a negative timeout means "no time to
    # wait", like 0 (as for Thread.join), not an error
    started = time.monotonic()
    result = handle.stop(timeout=timeout)
    assert isinstance(result, bool)
    assert time.monotonic() - started < 1.0
    assert not handle.is_running
    # and the threads still end on their own, right after
    wait_until(lambda: not flowd_threads(), timeout=10)
    assert handle.join(timeout=1)


# Run in a child process: today a bad timeout leaves threads that nothing can stop, and
# they would outlive this test (and keep pytest from exiting).
TIMEOUT_SCRIPT = """
import json, os, sys, threading, time
import redis, flowd
from tests.helpers import Numbered

call, value = sys.argv[1], sys.argv[2]
timeout = {"str": "5", "inf": float("inf"), "list": [5], "1e10": 1e10}[value]
client = redis.Redis.from_url(os.environ["FLOWD_TEST_URL"])
queue = flowd.Queue(client, stream=os.environ["FLOWD_TEST_STREAM"], group="g", job=Numbered,
                    worker=lambda task: None, claimer=flowd.Claimer(min_idle_time=1.0))
flowd.Producer(client, queue.stream).enqueue(Numbered(1))
out = {}
if call == "stop":
    handle = queue.run()
    try:
        out["returned"] = handle.stop(timeout=timeout)
    except Exception as exc:
        out["raised"] = [type(exc).__name__, str(exc), isinstance(exc, flowd.FlowdError)]
        out["running_after_error"] = handle.is_running
        out["second_stop"] = handle.stop(timeout=5)
else:
    try:
        out["returned"] = queue.drain(timeout=timeout)
    except Exception as exc:
        out["raised"] = [type(exc).__name__, str(exc), isinstance(exc, flowd.FlowdError)]
deadline = time.monotonic() + 5
while time.monotonic() < deadline and any(
    t.name.startswith("flowd-") for t in threading.enumerate()
):
    time.sleep(0.05)
out["alive"] = sorted({t.name.rsplit("_", 1)[0] for t in threading.enumerate()
                       if t.name.startswith("flowd-")})
print(json.dumps(out), flush=True)
os._exit(0)
"""


def run_timeout_script(redis_url: str, stream: str, call: str, value: str) -> dict[str, Any]:
    env = dict(os.environ, FLOWD_TEST_URL=redis_url, FLOWD_TEST_STREAM=stream)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "-c", TIMEOUT_SCRIPT, call, value],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


@pytest.mark.parametrize("timeout", ["str", "inf", "list"])
def test_stop_with_a_bad_timeout_leaves_the_handle_stoppable(
    redis_url: str, stream: str, timeout: str
) -> None:
    # A timeout stop() cannot use is refused before anything stops (or, for inf, means
    # "no limit"); either way the queue must not be left half-stopped for good
    out = run_timeout_script(redis_url, stream, "stop", timeout)
    if "raised" in out:
        _, message, is_flowd_error = out["raised"]
        assert is_flowd_error and "timeout" in message, out
        assert out["running_after_error"] and out["second_stop"] is True, out
    else:
        assert out["returned"] is True, out
    assert out["alive"] == [], out


def test_drain_with_a_timeout_too_long_to_wait_for(redis_url: str, stream: str) -> None:
    # 1e10 s is finite but past threading.TIMEOUT_MAX: refuse it, or treat it as no limit,
    # but never fail half-way with the drain's threads left running
    out = run_timeout_script(redis_url, stream, "drain", "1e10")
    if "raised" in out:
        _, message, is_flowd_error = out["raised"]
        assert is_flowd_error and "timeout" in message, out
    else:
        assert out["returned"] == 1, out
    assert out["alive"] == [], out


TOO_LONG = 1e10  # seconds: finite, but past threading.TIMEOUT_MAX (about 292 years)


@pytest.mark.parametrize(
    ("settings", "name"),
    [({"interval": TOO_LONG}, "interval"), ({"min_idle_time": TOO_LONG}, "min_idle_time")],
)
def test_claimer_refuses_durations_its_threads_cannot_wait(
    settings: dict[str, float], name: str
) -> None:
    # Accepted today, they make the claimer (interval) or the lease thread (min_idle_time / 3)
    # fail every step with OverflowError, logged at ERROR, forever
    with pytest.raises(flowd.ConfigurationError, match=name):
        flowd.Claimer(**settings)


def test_dead_letters_reject_bad_arguments(client: redis.Redis, stream: str) -> None:
    dead = flowd.DeadLetters(client, stream)
    with pytest.raises(flowd.ConfigurationError, match="limit"):
        dead.list(limit=0)
    with pytest.raises(flowd.ConfigurationError, match="ids"):
        dead.requeue("1712345678901-0")  # one id, not a list of ids
    with pytest.raises(flowd.ConfigurationError, match="stream id"):
        dead.requeue(["not-an-id"])
    with pytest.raises(flowd.ConfigurationError, match="stream id"):
        dead.purge(["1-2-3"])
    with pytest.raises(flowd.ConfigurationError, match="dlq_stream"):
        flowd.DeadLetters(client, stream, dlq_stream=stream)


# ---------------------------------------------------------------------------
# The flowd command: a bad command line is one line on stderr and exit 2


def run_cli(args: list[str], timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """``python -m flowd ARGS`` without this process's FLOWD_ settings."""
    return run_flowd(args, clean_env(), timeout=timeout)


def assert_one_line_error(proc: subprocess.CompletedProcess[str], status: int, text: str) -> None:
    assert proc.returncode == status, proc.stderr[-3000:]
    assert proc.stdout == ""
    assert proc.stderr.startswith("flowd: ") and proc.stderr.count("\n") == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert text in proc.stderr


@pytest.mark.parametrize(
    ("url", "text"),
    [
        ("notaurl", "bad Redis URL notaurl"),
        ("http://127.0.0.1:6379/0", "bad Redis URL"),
        ("redis://127.0.0.1:notaport/0", "bad Redis URL"),
        ("redis://127.0.0.1:99999/0", "bad Redis URL"),
        ("redis://127.0.0.1:1/0?socket_timeout=abc", "bad Redis URL"),
    ],
)
def test_cli_bad_url_is_a_one_line_usage_error(url: str, text: str) -> None:
    assert_one_line_error(run_cli(["info", "emails", "--url", url]), 2, text)


def test_cli_unreachable_redis_is_a_one_line_error_with_status_3() -> None:
    port = free_port()
    proc = run_cli(["info", "emails", "--url", f"redis://127.0.0.1:{port}/0"])
    assert_one_line_error(proc, 3, "cannot reach Redis")


@pytest.mark.parametrize(
    ("args", "text"),
    [
        (["dlq", "list", "emails", "--limit", "0"], "limit"),
        (["dlq", "requeue", "emails", "not-an-id"], "not-an-id"),
        (["dlq", "purge", "emails", "1-2-3"], "1-2-3"),
    ],
    ids=["limit-0", "requeue-bad-id", "purge-bad-id"],
)
def test_cli_bad_dlq_arguments_are_one_line_usage_errors(
    redis_url: str, args: list[str], text: str
) -> None:
    assert_one_line_error(run_cli([*args, "--url", redis_url]), 2, text)


@pytest.mark.parametrize(
    ("args", "text"),
    [
        (["worker", "no-colon"], "MODULE:ATTR"),
        (["worker", "tests.cli.cli_app:not_a_queue"], "not a flowd.Queue"),
        (["worker", "tests.cli.cli_app:queue", "--processes", "0"], "--processes"),
    ],
)
def test_cli_bad_worker_arguments_are_one_line_usage_errors(
    redis_url: str, args: list[str], text: str
) -> None:
    assert_one_line_error(run_cli([*args, "--url", redis_url]), 2, text)
