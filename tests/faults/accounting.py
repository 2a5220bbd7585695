"""What the fault scenarios share: the jobs' own records, fault windows and the account.

Jobs record each success in Redis, in one MULTI/EXEC with the job itself (keys in
the stream's slot, ``{S}:...`` for stream ``S``):

- ``SADD {S}:done <n>``: job ``n`` succeeded at least once;
- ``HINCRBY {S}:runs <message id> 1``: successful runs per message;
- ``SADD {S}:ran:<consumer> <message id>``: which consumer ran it.

The records client never retries on its own (``retry`` of 0 tries): a retried
EXEC whose reply was lost would count one run twice. A record that fails makes
the job raise, so its message stays pending and is retried by the claimer.

In-process scenarios also keep a :class:`Ledger` of every run (any outcome,
with monotonic start and end) and the :class:`FaultWindows` during which a
fault was active, so each extra run can be traced to a fault.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

import flowd

GROUP = "g"
REPO = Path(__file__).resolve().parents[2]

#: A flowd loop backs off for at most 2 s (flowd._consumer.threads.MAX_BACKOFF), so an
#: ack or lease held back by an outage is written at most that long after it.
SLACK_AFTER = 3.0
#: A run that ended this shortly before a fault began may have lost its ack to it.
SLACK_BEFORE = 1.0


@dataclass
class Item(flowd.Job):
    """Job ``n``. ``sleep``: seconds it takes; ``fail``: it always raises;
    ``hang``: it never returns (only in a worker process that allows it)."""

    n: int
    sleep: float = 0.0
    fail: bool = False
    hang: bool = False


def key(stream: str, suffix: str) -> str:
    return f"{{{stream}}}:{suffix}"


def dead_stream(stream: str) -> str:
    return f"{{{stream}}}:dead"


def text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def records_client(url: str) -> redis.Redis:
    """A client that tries each command once: no hidden re-send of a lost EXEC or XADD."""
    return redis.Redis.from_url(url, retry=Retry(NoBackoff(), 0), socket_timeout=5)


def record_success(client: redis.Redis, stream: str, task: flowd.Task[Item], consumer: str) -> None:
    pipe = client.pipeline(transaction=True)
    pipe.sadd(key(stream, "done"), task.job.n)
    pipe.hincrby(key(stream, "runs"), task.id, 1)
    pipe.sadd(key(stream, f"ran:{consumer}"), task.id)
    pipe.execute()


class JobFailed(Exception):
    """What a job with ``fail=True`` raises, every time."""


# ---------------------------------------------------------------------------
# the jobs' side, in this process


@dataclass(frozen=True)
class Run:
    msg_id: str
    n: int
    deliveries: int
    started: float
    ended: float
    ok: bool


class Ledger:
    """Every run of every job in this process, whatever its outcome."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.runs: list[Run] = []
        self.dlq_calls: Counter[str] = Counter()

    def add(self, run: Run) -> None:
        with self._lock:
            self.runs.append(run)

    def by_message(self) -> dict[str, list[Run]]:
        out: dict[str, list[Run]] = {}
        with self._lock:
            for run in sorted(self.runs, key=lambda r: r.started):
                out.setdefault(run.msg_id, []).append(run)
        return out

    def failed_runs(self) -> int:
        with self._lock:
            return sum(1 for run in self.runs if not run.ok)


class FaultWindows:
    """When faults were active (monotonic), to tell forced redeliveries from others."""

    def __init__(self) -> None:
        self.windows: list[tuple[str, float, float]] = []

    @contextmanager
    def fault(self, what: str) -> Iterator[None]:
        start = time.monotonic()
        try:
            yield
        finally:
            self.windows.append((what, start, time.monotonic()))

    def explains(self, moment: float) -> bool:
        return any(
            start - SLACK_BEFORE <= moment <= end + SLACK_AFTER for _, start, end in self.windows
        )

    def unexplained_reruns(self, ledger: Ledger, exempt: Callable[[Run], bool]) -> list[str]:
        """Messages run again although the run before ended outside every fault window.

        A run that ends outside a fault succeeds and is acked (or, if ``exempt``,
        fails on purpose), so no other run of its message may follow it.
        """
        bad = []
        for msg_id, runs in ledger.by_message().items():
            for earlier in runs[:-1]:
                if not exempt(earlier) and not self.explains(earlier.ended):
                    bad.append(f"{msg_id} (runs: {[(r.ok, round(r.ended, 2)) for r in runs]})")
                    break
        return bad


# ---------------------------------------------------------------------------
# Redis' side


def pending_count(client: redis.Redis, stream: str) -> int:
    try:
        return int(client.xpending(stream, GROUP)["pending"])
    except redis.exceptions.ResponseError:  # no stream or group (yet)
        return 0


def done_jobs(client: redis.Redis, stream: str) -> set[int]:
    return {int(n) for n in client.smembers(key(stream, "done"))}


def dead_entries(client: redis.Redis, stream: str) -> list[tuple[Any, dict[bytes, bytes]]]:
    """Every entry of the dead-letter stream of ``stream``, in order."""
    entries: Any = client.xrange(dead_stream(stream))
    return list(entries or [])


def dead_ids(client: redis.Redis, stream: str) -> list[str]:
    """``flowd:id`` of every entry of the dead-letter stream, in order, repeats kept."""
    return [text(fields.get(b"flowd:id", b"")) for _, fields in dead_entries(client, stream)]


@dataclass
class Account:
    """The end state of a scenario: what was enqueued, and where each job ended."""

    scenario: str
    enqueued: int  # distinct jobs some producer got a message id for
    succeeded: int  # of them: succeeded at least once (the jobs' own records)
    dlq: int  # of them: in the dead-letter stream
    duplicates: int  # successful runs beyond the first, per message (Redis' records)
    pending: int  # XPENDING of the group
    missing: list[int] = field(default_factory=list)  # neither succeeded nor dead
    dlq_repeats: list[str] = field(default_factory=list)  # ids dead-lettered twice
    dlq_without_reason: list[str] = field(default_factory=list)
    unknown_runs: list[str] = field(default_factory=list)  # messages no producer got an id for
    extra: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        extra = "".join(f" {name}={value}" for name, value in self.extra.items())
        return (
            f"account[{self.scenario}]: enqueued={self.enqueued} succeeded={self.succeeded} "
            f"dlq={self.dlq} duplicates={self.duplicates} pending={self.pending} "
            f"missing={len(self.missing)}{extra}"
        )


def take_account(
    client: redis.Redis,
    stream: str,
    scenario: str,
    ids: dict[str, int],
    *,
    expect_dead: Iterable[str] = (),
) -> Account:
    """The account of ``stream`` for the jobs of ``ids`` (message id -> job n).

    Jobs of ``expect_dead`` (message ids) must end in the dead-letter stream,
    all others must have succeeded.
    """
    dead_expected = set(expect_dead)
    done = done_jobs(client, stream)
    runs = {text(k): int(v) for k, v in client.hgetall(key(stream, "runs")).items()}
    dead = dead_ids(client, stream)
    dead_set = set(dead)
    no_reason = [
        text(f.get(b"flowd:id", b"?"))
        for _, f in dead_entries(client, stream)
        if not f.get(b"flowd:reason", b"")
    ]
    to_succeed = {n for msg_id, n in ids.items() if msg_id not in dead_expected}
    missing = sorted(n for msg_id, n in ids.items() if n not in done and msg_id not in dead_set)
    return Account(
        scenario=scenario,
        enqueued=len(set(ids.values())),
        succeeded=len(done & to_succeed),
        dlq=len(dead_set & set(ids)),
        duplicates=sum(count - 1 for count in runs.values()),
        pending=pending_count(client, stream),
        missing=missing,
        dlq_repeats=sorted(msg_id for msg_id, c in Counter(dead).items() if c > 1),
        dlq_without_reason=no_reason,
        unknown_runs=sorted(set(runs) - set(ids)),
    )


def report(capsys: pytest.CaptureFixture[str], account: Account) -> None:
    """Print the account to the terminal (and CI log) even while pytest captures output."""
    with capsys.disabled():
        sys.stdout.write(f"\n{account.line()}\n")
        sys.stdout.flush()


def assert_exact(account: Account, *, dead: int = 0) -> None:
    """The account balances: every job succeeded or is dead (once, with a reason), none pending."""
    assert account.missing == [], f"jobs neither succeeded nor dead-lettered: {account.missing}"
    assert account.pending == 0, f"{account.pending} messages still pending"
    assert account.dlq == dead, f"{account.dlq} dead-lettered, expected {dead}"
    assert account.succeeded + account.dlq == account.enqueued, account.line()
    assert account.dlq_repeats == [], f"dead-lettered more than once: {account.dlq_repeats}"
    assert account.dlq_without_reason == [], (
        f"dead letters without a reason: {account.dlq_without_reason}"
    )


def wait_settled(
    client: redis.Redis, stream: str, expected: set[int], timeout: float = 60.0
) -> float | None:
    """Wait until every job of ``expected`` succeeded and nothing is pending (errors are
    retried); how long that took, or None if it did not happen within ``timeout``."""
    start = time.monotonic()
    while True:
        try:
            if done_jobs(client, stream) >= expected and pending_count(client, stream) == 0:
                return time.monotonic() - start
        except redis.exceptions.RedisError:
            pass
        if time.monotonic() - start > timeout:
            return None
        time.sleep(0.1)


# ---------------------------------------------------------------------------
# logs


def records_by_thread(
    records: Iterable[logging.LogRecord], text_part: str, since: float
) -> Counter[str]:
    """How many flowd log records containing ``text_part`` each thread made after ``since``
    (a ``time.time()``)."""
    counts: Counter[str] = Counter()
    for record in records:
        if (
            record.name.startswith("flowd")
            and record.created >= since
            and text_part in record.getMessage()
        ):
            counts[record.threadName or "?"] += 1
    return counts


def subprocess_env(**settings: str) -> dict[str, str]:
    """This process's environment, minus FLOWD_* settings, with the repo importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLOWD_", "FAULTS_"))}
    if "FLOWD_REDIS_SERVER" in os.environ:
        env["FLOWD_REDIS_SERVER"] = os.environ["FLOWD_REDIS_SERVER"]
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    env.update(settings)
    return env
