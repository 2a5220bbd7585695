"""DeadLetters: list, requeue and purge dead letters written by a real claimer.

Dead letters are made the way production makes them: a Queue whose worker
always fails, with a claimer that dead-letters on the first retry
(``max_retries=0``), or a raw XADD the Job cannot decode. Every handle a
test starts is stopped with ``stop(timeout=5)``, which must return True.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis

import flowd
from flowd.deadletters import DeadLetter, DeadLetters
from tests.helpers import Numbered, as_str, id_key, wait_until

GROUP = "g"
KILLER = "dead-maker"
#: Generous bound for anything that should happen "soon" on a loaded 2-core machine.
WAIT = 25.0


@dataclass
class Ping(flowd.Job):
    """A job with no field: the producer writes ``flowd:empty`` for it."""


class Queues:
    """Starts queues on the test's stream and stops each one exactly once."""

    def __init__(self, client: redis.Redis, stream: str) -> None:
        self.client = client
        self.stream = stream
        self.running: list[flowd.QueueHandle] = []

    def start(self, worker: Callable[[flowd.Task[Any]], None], **kwargs: Any) -> flowd.QueueHandle:
        kwargs.setdefault("stream", self.stream)
        kwargs.setdefault("group", GROUP)
        kwargs.setdefault("job", Numbered)
        kwargs.setdefault("block", 0.2)
        handle = flowd.Queue(self.client, worker=worker, **{"claimer": None, **kwargs}).run()
        self.running.append(handle)
        return handle

    def stop(self, handle: flowd.QueueHandle) -> None:
        self.running.remove(handle)
        assert handle.stop(timeout=5), "the queue did not stop cleanly"

    def kill(
        self, jobs: list[flowd.Job], *, job: type[flowd.Job] = Numbered, **kwargs: Any
    ) -> list[str]:
        """Enqueue ``jobs`` and run them through an always-failing queue until all are dead.

        :returns: their ids in the original stream.
        """
        ids = flowd.Producer(self.client, self.stream).enqueue_bulk(jobs)
        dlq = kwargs.pop("dlq", flowd_dlq(self.stream))
        claimer = flowd.Claimer(min_idle_time=0.1, max_retries=0, interval=0.05, **kwargs)
        before = self.client.xlen(dlq) if self.client.exists(dlq) else 0
        handle = self.start(always_fail, job=job, claimer=claimer, consumer=KILLER)
        wait_until(lambda: self.client.xlen(dlq) == before + len(jobs), timeout=WAIT)
        wait_until(lambda: self.client.xpending(self.stream, GROUP)["pending"] == 0, timeout=WAIT)
        self.stop(handle)
        return ids


@pytest.fixture
def queues(client: redis.Redis, stream: str) -> Iterator[Queues]:
    made = Queues(client, stream)
    yield made
    clean = [handle.stop(timeout=5) for handle in made.running]
    assert all(clean), f"a handle did not stop cleanly: {clean}"


def always_fail(task: flowd.Task[Any]) -> None:
    raise RuntimeError(f"boom {task.id}")


def flowd_dlq(stream: str) -> str:
    return f"{{{stream}}}:dead"


def entries(client: redis.Redis, stream: str) -> list[tuple[str, dict[bytes, bytes]]]:
    return [(as_str(msg_id), fields) for msg_id, fields in client.xrange(stream)]


def by_original(letters: list[DeadLetter]) -> dict[str, DeadLetter]:
    return {letter.original_id: letter for letter in letters}


# ---------------------------------------------------------------------------
# Construction and arguments


def test_constructor_and_arguments_are_validated(client: redis.Redis, stream: str) -> None:
    with pytest.raises(flowd.ConfigurationError):
        DeadLetters(client, "")
    with pytest.raises(flowd.ConfigurationError):
        DeadLetters(client, stream, dlq_stream="")
    with pytest.raises(flowd.ConfigurationError):
        DeadLetters(client, stream, dlq_stream=stream)
    with pytest.raises(flowd.ConfigurationError):
        DeadLetters(object(), stream)
    dead = DeadLetters(client, stream)
    assert dead.dlq_stream == flowd_dlq(stream)
    assert repr(dead) == f"DeadLetters(stream={stream!r}, dlq_stream={flowd_dlq(stream)!r})"
    for limit in (0, -1, True, 1.5):
        with pytest.raises(flowd.ConfigurationError):
            dead.list(limit)
    for start in ("", "abc", "1-x", "+", "((1-0"):
        with pytest.raises(flowd.ConfigurationError):
            dead.list(start=start)
    with pytest.raises(flowd.ConfigurationError):
        dead.requeue_all(batch=0)


@pytest.mark.parametrize(
    "ids", [["1-"], ["abc"], ["123"], ["-1-0"], [5], [b"1-0"], "1-0", [f"{2**64}-0"]], ids=repr
)
def test_malformed_ids_are_refused_before_anything_moves(
    client: redis.Redis, stream: str, queues: Queues, ids: Any
) -> None:
    queues.kill([Numbered(1)])
    dead = DeadLetters(client, stream)
    (letter,) = dead.list()
    with pytest.raises(flowd.ConfigurationError):
        dead.requeue([letter.dlq_id, *ids] if isinstance(ids, list) else ids)
    with pytest.raises(flowd.ConfigurationError):
        dead.purge([letter.dlq_id, *ids] if isinstance(ids, list) else ids)
    assert dead.count() == 1
    assert client.xlen(stream) == 1


# ---------------------------------------------------------------------------
# list


def test_list_reads_real_dead_letters(
    any_client: redis.Redis, client: redis.Redis, stream: str, queues: Queues
) -> None:
    # Given two jobs that failed until the claimer dead-lettered them
    before = datetime.now(UTC)
    ids = queues.kill([Numbered(1), Numbered(2)])
    after = datetime.now(UTC)

    # When the dead letters are listed (bytes or decoded client)
    letters = DeadLetters(any_client, stream).list()

    # Then each one carries its job fields and the metadata of its death
    raw = dict(entries(client, flowd_dlq(stream)))
    assert sorted(letter.dlq_id for letter in letters) == sorted(raw)
    assert [letter.dlq_id for letter in letters] == sorted(raw, key=id_key)
    found = by_original(letters)
    assert sorted(found) == sorted(ids)
    for n, msg_id in enumerate(ids, start=1):
        letter = found[msg_id]
        assert letter.fields == {"n": str(n)}
        assert letter.stream == stream
        assert letter.group == GROUP
        assert letter.consumer == KILLER
        assert letter.reason == f"RuntimeError: boom {msg_id}"
        assert letter.deliveries == 2  # max_retries=0: one run, then the claim that kills it
        assert letter.time.tzinfo is UTC
        assert before - timedelta(seconds=1) <= letter.time <= after + timedelta(seconds=1)
        ms = int(raw[letter.dlq_id][b"flowd:time"])
        assert letter.time == datetime.fromtimestamp(ms / 1000, UTC)


def test_list_pages_with_limit_and_start(client: redis.Redis, stream: str, queues: Queues) -> None:
    queues.kill([Numbered(n) for n in range(5)])
    dead = DeadLetters(client, stream)
    everything = dead.list(limit=10)
    assert len(everything) == 5
    dlq_ids = [letter.dlq_id for letter in everything]

    first = dead.list(limit=2)
    second = dead.list(limit=2, start="(" + first[-1].dlq_id)
    third = dead.list(limit=2, start="(" + second[-1].dlq_id)
    assert [letter.dlq_id for letter in first + second + third] == dlq_ids
    assert [letter.dlq_id for letter in dead.list(start=dlq_ids[3])] == dlq_ids[3:]
    assert dead.list(start="(" + dlq_ids[-1]) == []
    assert dead.count() == 5


def test_list_of_a_missing_dlq_is_empty(any_client: redis.Redis, stream: str) -> None:
    dead = DeadLetters(any_client, stream)
    assert dead.list() == []
    assert dead.count() == 0


def test_list_keeps_binary_values_and_survives_foreign_entries(
    any_client: redis.Redis, client: redis.Redis, stream: str
) -> None:
    # Given entries that flowd did not write: binary values, no or bad metadata
    dlq = flowd_dlq(stream)
    binary = as_str(client.xadd(dlq, {"payload": b"\xff\x00", "text": "h\xe9llo", b"k\xff": "v"}))
    bad = as_str(client.xadd(dlq, {"n": "1", "flowd:deliveries": "many", "flowd:time": "soon"}))

    # When they are listed
    letters = DeadLetters(any_client, stream).list()

    # Then nothing crashes: str where UTF-8 is valid, bytes elsewhere, defaults for metadata
    assert [letter.dlq_id for letter in letters] == [binary, bad]
    first, second = letters
    assert first.fields == {"payload": b"\xff\x00", "text": "h\xe9llo", "k\\xff": "v"}
    assert (first.original_id, first.stream, first.group, first.consumer, first.reason) == (
        "",
        "",
        "",
        "",
        "",
    )
    assert first.deliveries == 0
    # No flowd:time: the time the entry entered the dead-letter stream (its id)
    assert first.time == datetime.fromtimestamp(int(binary.split("-")[0]) / 1000, UTC)
    assert second.fields == {"n": "1"}
    assert second.deliveries == 0
    assert second.time == datetime.fromtimestamp(int(bad.split("-")[0]) / 1000, UTC)


def test_undecodable_message_is_listed_with_its_decode_error(
    client: redis.Redis, stream: str, queues: Queues
) -> None:
    # Given a raw message that Numbered cannot decode
    client.xgroup_create(stream, GROUP, id="0", mkstream=True)
    bad = as_str(client.xadd(stream, {"n": "not-a-number"}))
    claimer = flowd.Claimer(min_idle_time=0.1, max_retries=0, interval=0.05)
    ran: list[str] = []
    handle = queues.start(lambda task: ran.append(task.id), claimer=claimer)
    wait_until(lambda: client.exists(flowd_dlq(stream)) and client.xlen(flowd_dlq(stream)), WAIT)
    queues.stop(handle)

    # Then its dead letter keeps the raw field and says why
    (letter,) = DeadLetters(client, stream).list()
    assert ran == []
    assert letter.original_id == bad
    assert letter.fields == {"n": "not-a-number"}
    assert letter.reason.startswith("DecodeError") and "'n'" in letter.reason
    assert letter.deliveries == 1


# ---------------------------------------------------------------------------
# requeue


def test_requeued_job_is_back_in_its_stream_and_a_queue_runs_it(
    any_client: redis.Redis, client: redis.Redis, stream: str, queues: Queues
) -> None:
    # Given three dead letters
    ids = queues.kill([Numbered(1), Numbered(2), Numbered(3)])
    dead = DeadLetters(any_client, stream)
    target = by_original(dead.list())[ids[1]]

    # When one is requeued
    (new_id,) = dead.requeue([target.dlq_id])

    # Then it is a new entry of the original stream, with the original fields only
    assert id_key(new_id) > max(id_key(msg_id) for msg_id in ids)
    assert entries(client, stream)[-1] == (new_id, {b"n": b"2"})
    remaining = dead.list()
    assert target.dlq_id not in {letter.dlq_id for letter in remaining}
    assert sorted(letter.original_id for letter in remaining) == sorted([ids[0], ids[2]])

    # And a queue with a working worker processes it (and nothing else)
    done: list[tuple[int, str]] = []
    handle = queues.start(lambda task: done.append((task.job.n, task.id)))
    wait_until(lambda: done, timeout=WAIT)
    wait_until(lambda: client.xpending(stream, GROUP)["pending"] == 0, timeout=WAIT)
    queues.stop(handle)
    assert done == [(2, new_id)]
    assert dead.count() == 2


def test_requeue_skips_unknown_ids_and_lists_moved_ones_in_order(
    client: redis.Redis, stream: str, queues: Queues
) -> None:
    ids = queues.kill([Numbered(1), Numbered(2)])
    dead = DeadLetters(client, stream)
    letters = by_original(dead.list())
    a, b = letters[ids[0]].dlq_id, letters[ids[1]].dlq_id

    moved = dead.requeue(iter(["1-0", b, a, b, "99999999999999-0"]))

    assert len(moved) == 2
    new_entries = entries(client, stream)[2:]
    assert [msg_id for msg_id, _ in new_entries] == moved
    assert [fields for _, fields in new_entries] == [{b"n": b"2"}, {b"n": b"1"}]
    assert dead.count() == 0
    assert dead.requeue([]) == []


def test_requeue_again_after_a_lost_reply_adds_nothing_twice(
    client: redis.Redis, stream: str, queues: Queues
) -> None:
    queues.kill([Numbered(1)])
    dead = DeadLetters(client, stream)
    (letter,) = dead.list()

    assert len(dead.requeue([letter.dlq_id])) == 1
    assert dead.requeue([letter.dlq_id]) == []  # e.g. a caller retrying after a timeout

    assert client.xlen(stream) == 2  # the original entry and one requeued copy
    assert dead.count() == 0


def test_requeue_all_moves_every_entry_in_batches(
    any_client: redis.Redis, client: redis.Redis, stream: str, queues: Queues
) -> None:
    queues.kill([Numbered(n) for n in range(7)])
    dead = DeadLetters(any_client, stream)

    assert dead.requeue_all(batch=3) == 7

    assert dead.count() == 0
    new_entries = entries(client, stream)[7:]
    assert sorted(int(fields[b"n"]) for _, fields in new_entries) == list(range(7))
    assert all(set(fields) == {b"n"} for _, fields in new_entries)
    assert dead.requeue_all() == 0


def test_entries_of_another_stream_are_skipped_with_a_warning(
    client: redis.Redis, stream: str, queues: Queues, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a dead letter of this stream, one of another queue sharing the DLQ,
    # and one without flowd:stream (written by someone else)
    queues.kill([Numbered(1)])
    dlq = flowd_dlq(stream)
    (own,) = DeadLetters(client, stream).list()
    foreign = as_str(client.xadd(dlq, {"n": "7", "flowd:stream": "other", "flowd:id": "5-0"}))
    anonymous = as_str(client.xadd(dlq, {"n": "8"}))
    dead = DeadLetters(client, stream)

    # When the foreign one is requeued, it stays where it is, with a WARNING
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="flowd.deadletters"):
        assert dead.requeue([foreign]) == []
    warnings = [r for r in caplog.records if r.name == "flowd.deadletters"]
    assert [r.levelname for r in warnings] == ["WARNING"]
    assert foreign in warnings[0].getMessage()
    assert "belongs to stream other" in warnings[0].getMessage()
    assert client.xlen(stream) == 1

    # And requeue_all moves only this stream's own entries and the anonymous one
    assert dead.requeue_all(batch=1) == 2
    assert [letter.dlq_id for letter in dead.list()] == [foreign]
    assert sorted(fields[b"n"] for _, fields in entries(client, stream)[1:]) == [b"1", b"8"]
    assert own.dlq_id != anonymous


def test_job_without_fields_is_requeued_with_flowd_empty(
    client: redis.Redis, stream: str, queues: Queues
) -> None:
    # Given a dead Ping (a job with no field at all)
    (original,) = queues.kill([Ping()], job=Ping)
    assert entries(client, stream) == [(original, {b"flowd:empty": b"1"})]
    dead = DeadLetters(client, stream)
    (letter,) = dead.list()
    assert letter.fields == {}

    # When it is requeued, the new entry is a valid stream entry again
    (new_id,) = dead.requeue([letter.dlq_id])
    assert entries(client, stream)[-1] == (new_id, {b"flowd:empty": b"1"})

    # And a Ping queue runs it
    done: list[str] = []
    handle = queues.start(lambda task: done.append(task.id), job=Ping)
    wait_until(lambda: done, timeout=WAIT)
    queues.stop(handle)
    assert done == [new_id]


def test_custom_dlq_stream(client: redis.Redis, stream: str, queues: Queues) -> None:
    graveyard = f"{{{stream}}}:graveyard"
    queues.kill([Numbered(4)], dlq_stream=graveyard, dlq=graveyard)
    dead = DeadLetters(client, stream, dlq_stream=graveyard)
    (letter,) = dead.list()
    assert letter.fields == {"n": "4"}
    assert DeadLetters(client, stream).count() == 0
    (new_id,) = dead.requeue([letter.dlq_id])
    assert entries(client, stream)[-1] == (new_id, {b"n": b"4"})
    assert client.xlen(graveyard) == 0


def test_resp3_client(redis_url: str, stream: str, queues: Queues) -> None:
    queues.kill([Numbered(5), Numbered(6)])
    resp3 = redis.Redis.from_url(redis_url, protocol=3, decode_responses=True)
    try:
        dead = DeadLetters(resp3, stream)
        letters = dead.list()
        assert sorted(letter.fields["n"] for letter in letters) == ["5", "6"]
        assert len(dead.requeue([letters[0].dlq_id])) == 1
        assert dead.requeue_all() == 1
        assert dead.count() == 0
    finally:
        resp3.close()


# ---------------------------------------------------------------------------
# Atomicity


def test_each_requeue_batch_is_one_script_call(
    redis_url: str, client: redis.Redis, stream: str, queues: Queues
) -> None:
    # Given three dead letters, and the script already in the server's cache
    queues.kill([Numbered(n) for n in range(3)])
    dead = DeadLetters(client, stream)
    dead.requeue(["1-0"])  # runs the script once (EVAL on NOSCRIPT), moving nothing
    ids = [letter.dlq_id for letter in dead.list()]

    # When they are requeued while MONITOR records every command
    seen: list[dict[str, Any]] = []
    ready = threading.Event()
    marker = f"done-{stream}"

    def monitor() -> None:
        watcher = redis.Redis.from_url(redis_url, socket_timeout=WAIT)
        try:
            with watcher.monitor() as m:
                ready.set()
                while True:
                    command = m.next_command()
                    if marker in command["command"]:
                        return
                    if stream in command["command"]:
                        seen.append(command)
        finally:
            watcher.close()

    thread = threading.Thread(target=monitor, name="test-monitor")
    thread.start()
    assert ready.wait(WAIT)
    try:
        moved = dead.requeue(ids)
    finally:
        client.echo(marker)  # ends the monitor thread
        thread.join(WAIT)
    assert not thread.is_alive()

    # Then the client sent one EVALSHA; the XRANGE, XADD and XDEL ran inside it
    assert len(moved) == 3
    sent = [c["command"].split()[0] for c in seen if c["client_type"] != "lua"]
    in_script = Counter(c["command"].split()[0] for c in seen if c["client_type"] == "lua")
    assert sent == ["EVALSHA"]
    assert in_script == {"XRANGE": 3, "XADD": 3, "XDEL": 3}


def test_no_observer_ever_sees_a_job_in_both_places_or_in_neither(
    client: redis.Redis, stream: str, queues: Queues
) -> None:
    # Given 40 dead letters
    total = 40
    queues.kill([Numbered(n) for n in range(total)])
    dlq = flowd_dlq(stream)
    dead = DeadLetters(client, stream)

    # When they are requeued one script at a time while another client keeps
    # reading both lengths in MULTI/EXEC (one consistent view each time)
    sums: list[int] = []
    stop = threading.Event()

    def observe() -> None:
        while not stop.is_set():
            with client.pipeline(transaction=True) as pipe:
                pipe.xlen(dlq)
                pipe.xlen(stream)
                dlq_len, stream_len = pipe.execute()
            sums.append(dlq_len + stream_len)

    observer = threading.Thread(target=observe, name="test-observer")
    observer.start()
    try:
        moved = dead.requeue_all(batch=1)
        wait_until(lambda: len(sums) > 10, timeout=WAIT)
    finally:
        stop.set()
        observer.join(WAIT)
    assert not observer.is_alive()

    # Then every view holds each job exactly once: originals + dead + requeued == 2 * total
    assert moved == total
    assert set(sums) == {2 * total}
    requeued = Counter(fields[b"n"] for _, fields in entries(client, stream)[total:])
    assert requeued == Counter(str(n).encode() for n in range(total))


# ---------------------------------------------------------------------------
# purge


def test_purge_by_ids_then_everything(
    any_client: redis.Redis, client: redis.Redis, stream: str, queues: Queues
) -> None:
    queues.kill([Numbered(n) for n in range(4)])
    dead = DeadLetters(any_client, stream)
    letters = dead.list()

    assert dead.purge([letters[0].dlq_id, letters[2].dlq_id, "1-0"]) == 2
    assert [letter.dlq_id for letter in dead.list()] == [letters[1].dlq_id, letters[3].dlq_id]
    assert dead.purge([]) == 0
    assert dead.count() == 2

    assert dead.purge() == 2
    assert dead.count() == 0
    assert client.exists(flowd_dlq(stream)) == 0
    assert dead.purge() == 0
    assert client.xlen(stream) == 4  # the original stream is untouched
