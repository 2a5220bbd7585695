"""Producer: enqueue and enqueue_bulk against a real Redis."""

from __future__ import annotations

import dataclasses
import itertools
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import redis

import flowd
from tests.helpers import Email, Numbered, as_str


def parse_id(entry_id: str | bytes) -> tuple[int, int]:
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, seq = text.split("-")
    return int(ms), int(seq)


def xrange(client: redis.Redis, stream: str) -> list[tuple[Any, Any]]:
    """The whole stream (redis-py's reply type is too loose for mypy)."""
    entries: list[tuple[Any, Any]] = client.xrange(stream)  # type: ignore[assignment]
    return entries


def stream_ids(client: redis.Redis, stream: str) -> list[str]:
    return [as_str(entry_id) for entry_id, _ in xrange(client, stream)]


def numbers(client: redis.Redis, stream: str) -> list[int]:
    return [Numbered.from_fields(fields).n for _, fields in xrange(client, stream)]


class SpyRedis(redis.Redis):
    """A real client that records which calls flowd makes (behaviour is unchanged)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.calls: list[str] = []

    def execute_command(self, *args: Any, **options: Any) -> Any:
        self.calls.append(str(args[0]))
        return super().execute_command(*args, **options)  # type: ignore[no-untyped-call]

    def pipeline(self, transaction: bool = True, shard_hint: Any = None) -> Any:
        self.calls.append(f"pipeline(transaction={transaction})")
        return super().pipeline(transaction, shard_hint)


class NoCallRedis(redis.Redis):
    """A client that fails the test if anything is sent."""

    def execute_command(self, *args: Any, **options: Any) -> Any:
        raise AssertionError(f"unexpected command {args!r}")

    def pipeline(self, transaction: bool = True, shard_hint: Any = None) -> Any:
        raise AssertionError("unexpected pipeline")


@pytest.fixture
def spy(redis_url: str) -> Iterator[SpyRedis]:
    client = SpyRedis.from_url(redis_url)
    assert isinstance(client, SpyRedis)
    yield client
    client.close()


# ---------------------------------------------------------------------------
# enqueue


def test_enqueue_returns_the_str_id_that_xrange_shows(any_client: redis.Redis, stream: str) -> None:
    producer = flowd.Producer(any_client, stream)
    job = Email(to="a@b.c", subject="hi")

    msg_id = producer.enqueue(job)

    assert isinstance(msg_id, str)
    parse_id(msg_id)  # "<ms>-<seq>"
    ((entry_id, fields),) = xrange(any_client, stream)
    assert as_str(entry_id) == msg_id
    assert Email.from_fields(fields, message_id=msg_id) == job


def test_enqueue_appends_in_order(client: redis.Redis, stream: str) -> None:
    producer = flowd.Producer(client, stream)
    ids = [producer.enqueue(Numbered(i)) for i in range(20)]
    assert ids == stream_ids(client, stream)
    assert numbers(client, stream) == list(range(20))


def test_enqueue_is_one_xadd(spy: SpyRedis, stream: str) -> None:
    flowd.Producer(spy, stream).enqueue(Numbered(1))
    assert spy.calls == ["XADD"]


def test_enqueue_of_a_bad_value_sends_nothing(redis_url: str, stream: str) -> None:
    client = NoCallRedis.from_url(redis_url)
    try:
        producer = flowd.Producer(client, stream)
        with pytest.raises(flowd.EncodeError, match=r"Email\.to"):
            producer.enqueue(Email(to=5, subject="x"))  # type: ignore[arg-type]
    finally:
        client.close()


@dataclasses.dataclass
class PlainDataclass:
    n: int


@pytest.mark.parametrize(
    "obj", [{"n": 1}, PlainDataclass(1), "job", None, Numbered], ids=lambda o: type(o).__name__
)
def test_enqueue_of_something_not_a_job_is_an_encode_error(
    client: redis.Redis, stream: str, obj: Any
) -> None:
    producer = flowd.Producer(client, stream)
    with pytest.raises(flowd.EncodeError, match=r"flowd\.Job") as info:
        producer.enqueue(obj)
    assert isinstance(info.value, TypeError)
    with pytest.raises(flowd.EncodeError):
        producer.enqueue_bulk([Numbered(1), obj])
    assert client.exists(stream) == 0


def test_producer_is_safe_to_share_between_threads(client: redis.Redis, stream: str) -> None:
    producer = flowd.Producer(client, stream)
    ids: list[list[str]] = [[] for _ in range(8)]

    def produce(slot: int) -> None:
        for i in range(200):
            ids[slot].append(producer.enqueue(Numbered(slot * 1000 + i)))

    threads = [threading.Thread(target=produce, args=(s,)) for s in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    all_ids = [i for per_thread in ids for i in per_thread]
    assert sorted(all_ids, key=parse_id) == stream_ids(client, stream)
    assert sorted(numbers(client, stream)) == sorted(
        s * 1000 + i for s in range(8) for i in range(200)
    )


# ---------------------------------------------------------------------------
# enqueue_bulk


def test_enqueue_bulk_of_100_000_jobs(any_client: redis.Redis, stream: str) -> None:
    count = 100_000
    producer = flowd.Producer(any_client, stream)
    try:
        ids = producer.enqueue_bulk(Numbered(i) for i in range(count))

        assert len(ids) == count
        assert all(isinstance(i, str) for i in ids)
        parsed = [parse_id(i) for i in ids]
        assert all(a < b for a, b in itertools.pairwise(parsed))
        assert any_client.xlen(stream) == count
        entries = xrange(any_client, stream)
        assert [as_str(entry_id) for entry_id, _ in entries] == ids
        assert [Numbered.from_fields(f).n for _, f in entries] == list(range(count))
    finally:
        any_client.delete(stream)


def test_enqueue_bulk_of_nothing_makes_no_call(redis_url: str, stream: str) -> None:
    client = NoCallRedis.from_url(redis_url)
    try:
        producer = flowd.Producer(client, stream)
        assert producer.enqueue_bulk([]) == []
        assert producer.enqueue_bulk(()) == []
        assert producer.enqueue_bulk(iter([])) == []
        assert producer.enqueue_bulk(Numbered(i) for i in range(0)) == []
    finally:
        client.close()


def test_enqueue_bulk_accepts_a_generator(client: redis.Redis, stream: str) -> None:
    def jobs() -> Iterator[Numbered]:
        yield from (Numbered(i) for i in range(50))

    ids = flowd.Producer(client, stream).enqueue_bulk(jobs())
    assert ids == stream_ids(client, stream)
    assert numbers(client, stream) == list(range(50))


def test_enqueue_bulk_returns_str_ids_for_both_client_kinds(
    any_client: redis.Redis, stream: str
) -> None:
    ids = flowd.Producer(any_client, stream).enqueue_bulk([Email("a", "b"), Email("c", "d")])
    assert [type(i) for i in ids] == [str, str]
    assert ids == stream_ids(any_client, stream)


def test_enqueue_bulk_sends_chunks_in_order(spy: SpyRedis, stream: str) -> None:
    producer = flowd.Producer(spy, stream, chunk_size=10)

    ids = producer.enqueue_bulk(Numbered(i) for i in range(35))

    assert len(ids) == 35
    assert ids == stream_ids(spy, stream)
    assert numbers(spy, stream) == list(range(35))
    # 10 + 10 + 10 + 5: four pipelined round trips, no MULTI/EXEC, no single XADDs.
    pipelines = [c for c in spy.calls if c.startswith("pipeline")]
    assert pipelines == ["pipeline(transaction=False)"] * 4
    assert "XADD" not in spy.calls


def test_encode_error_in_third_chunk_keeps_the_first_two(client: redis.Redis, stream: str) -> None:
    consumed: list[int] = []

    def jobs() -> Iterator[Numbered]:
        for i in range(35):
            consumed.append(i)
            yield Numbered("bad" if i == 25 else i)  # type: ignore[arg-type]

    producer = flowd.Producer(client, stream, chunk_size=10)
    with pytest.raises(flowd.EncodeError) as info:
        producer.enqueue_bulk(jobs())

    enqueued = info.value.enqueued  # type: ignore[attr-defined]
    assert len(enqueued) == 20
    assert enqueued == stream_ids(client, stream)
    assert numbers(client, stream) == list(range(20))
    assert "Numbered.n" in str(info.value)
    assert "20 jobs" in str(info.value)
    assert max(consumed) < 30  # nothing read past the failing chunk


def test_encode_error_in_first_chunk_sends_nothing(client: redis.Redis, stream: str) -> None:
    producer = flowd.Producer(client, stream, chunk_size=10)
    jobs = [Numbered(0), Numbered(None)]  # type: ignore[arg-type]
    with pytest.raises(flowd.EncodeError, match=r"Numbered\.n") as info:
        producer.enqueue_bulk(jobs)
    assert info.value.enqueued == []  # type: ignore[attr-defined]
    assert client.exists(stream) == 0


def test_chunk_size_larger_than_input(spy: SpyRedis, stream: str) -> None:
    ids = flowd.Producer(spy, stream, chunk_size=1000).enqueue_bulk(Numbered(i) for i in range(3))
    assert ids == stream_ids(spy, stream)
    assert [c for c in spy.calls if c.startswith("pipeline")] == ["pipeline(transaction=False)"]


# ---------------------------------------------------------------------------
# maxlen


def test_maxlen_trims_approximately_in_bulk(client: redis.Redis, stream: str) -> None:
    producer = flowd.Producer(client, stream, maxlen=100)
    ids = producer.enqueue_bulk(Numbered(i) for i in range(5000))

    length = client.xlen(stream)
    assert 100 <= length < 1000  # "~": whole nodes are trimmed, so a bit over 100
    remaining = stream_ids(client, stream)
    assert remaining == ids[-length:]  # the newest are kept


def test_maxlen_trims_single_enqueues(client: redis.Redis, stream: str) -> None:
    producer = flowd.Producer(client, stream, maxlen=50)
    last = ""
    for i in range(1000):
        last = producer.enqueue(Numbered(i))
    length = client.xlen(stream)
    assert 50 <= length < 500
    assert stream_ids(client, stream)[-1] == last


def test_no_maxlen_keeps_everything(client: redis.Redis, stream: str) -> None:
    flowd.Producer(client, stream).enqueue_bulk(Numbered(i) for i in range(3000))
    assert client.xlen(stream) == 3000


# ---------------------------------------------------------------------------
# Configuration


def test_settings_are_kept(client: redis.Redis, stream: str) -> None:
    producer = flowd.Producer(client, stream, maxlen=10, chunk_size=7)
    assert (producer.client, producer.stream, producer.maxlen, producer.chunk_size) == (
        client,
        stream,
        10,
        7,
    )
    assert stream in repr(producer)
    assert flowd.Producer(client, stream).maxlen is None


@pytest.mark.parametrize("bad_stream", ["", None, 5, b"emails"])
def test_bad_stream_is_a_configuration_error(client: redis.Redis, bad_stream: Any) -> None:
    with pytest.raises(flowd.ConfigurationError, match="stream") as info:
        flowd.Producer(client, bad_stream)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("maxlen", [0, -1, True, False, 1.5, "100"])
def test_bad_maxlen_is_a_configuration_error(client: redis.Redis, maxlen: Any) -> None:
    with pytest.raises(flowd.ConfigurationError, match="maxlen"):
        flowd.Producer(client, "s", maxlen=maxlen)


@pytest.mark.parametrize("chunk_size", [0, -5, True, 2.5, "10", None])
def test_bad_chunk_size_is_a_configuration_error(client: redis.Redis, chunk_size: Any) -> None:
    with pytest.raises(flowd.ConfigurationError, match="chunk_size"):
        flowd.Producer(client, "s", chunk_size=chunk_size)


@pytest.mark.parametrize(
    "not_a_client", [None, "redis://127.0.0.1:6379/0", object(), 42], ids=lambda o: type(o).__name__
)
def test_non_client_is_a_configuration_error(not_a_client: Any) -> None:
    with pytest.raises(flowd.ConfigurationError, match="client"):
        flowd.Producer(not_a_client, "s")
