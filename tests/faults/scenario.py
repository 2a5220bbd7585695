"""The in-process scenarios' driver: a recording queue, a trickling producer, faults on cue.

:func:`run_scenario` enqueues a backlog, starts a :class:`RecordingQueue`
(``Queue.run()`` with a claimer, in this process) and a :class:`TrickleProducer`
that keeps enqueueing one job at a time during the run, fires each fault once
the jobs' records show enough progress, waits until everything settled, stops
the queue and takes the account.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis

import flowd
from tests.faults.accounting import (
    GROUP,
    Account,
    FaultWindows,
    Item,
    JobFailed,
    Ledger,
    Run,
    done_jobs,
    key,
    record_success,
    records_client,
    take_account,
    wait_settled,
)
from tests.helpers import numbered_queue, wait_until


class RecordingQueue:
    """A flowd Queue in this process whose jobs record themselves (see accounting).

    The queue gets an ordinary application client (redis-py's default retries),
    as a user's app would give it; the jobs' records use a client that never
    retries by itself.
    """

    def __init__(
        self,
        url: str,
        stream: str,
        *,
        consumer: str = "inproc",
        concurrency: int = 8,
        min_idle: float = 1.0,
        max_retries: int = 20,
    ) -> None:
        self.stream = stream
        self.consumer = consumer
        self.client = redis.Redis.from_url(url)
        self.records = records_client(url)
        self.ledger = Ledger()
        #: Set when a job that takes a second or more starts.
        self.long_job_started = threading.Event()
        #: Messages whose record's EXEC failed with a connection error: it may have run,
        #: its reply lost (e.g. sent as redis-server shut down).
        self.uncertain: set[str] = set()
        self._dlq_lock = threading.Lock()
        self.queue = numbered_queue(
            self.client,
            stream,
            self.work,
            group=GROUP,
            job=Item,
            concurrency=concurrency,
            consumer=consumer,
            claimer=flowd.Claimer(
                min_idle_time=min_idle, max_retries=max_retries, dlq_worker=self.dead
            ),
            housekeeping=flowd.Housekeeping(interval=2.0),
        )

    def work(self, task: flowd.Task[Item]) -> None:
        started = time.monotonic()
        ok = False
        try:
            if task.job.sleep:
                if task.job.sleep >= 1.0:
                    self.long_job_started.set()
                time.sleep(task.job.sleep)
            if task.job.fail:
                raise JobFailed(f"job {task.job.n} always fails")
            if task.id in self.uncertain and self._recorded(task):
                # The earlier run's EXEC did run; its reply was lost, so that run raised and
                # was retried, as it must be. Like an app with an idempotency key, this run
                # finds its effect there and does not count a second run.
                ok = True
                return
            try:
                record_success(self.records, self.stream, task, self.consumer)
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
                self.uncertain.add(task.id)
                raise
            ok = True
        finally:
            run = Run(task.id, task.job.n, task.deliveries, started, time.monotonic(), ok)
            self.ledger.add(run)

    def _recorded(self, task: flowd.Task[Item]) -> bool:
        """Whether this consumer's record of ``task`` is in Redis."""
        ran = self.records.sismember(key(self.stream, f"ran:{self.consumer}"), task.id)
        return bool(ran)

    def dead(self, task: flowd.Task[Item]) -> None:
        with self._dlq_lock:
            self.ledger.dlq_calls[task.id] += 1

    def close(self) -> None:
        self.client.close()
        self.records.close()


class TrickleProducer:
    """Enqueues jobs one at a time in a thread; an enqueue either returns an id or raises
    a RedisError, and then the same job is tried again until it is in."""

    def __init__(
        self,
        url: str,
        stream: str,
        jobs: Sequence[Item],
        *,
        pause: float = 0.004,
    ) -> None:
        self.client = records_client(url)
        self.producer = flowd.Producer(self.client, stream)
        self.jobs = jobs
        self.pause = pause
        self.ids: dict[str, int] = {}
        self.errors: Counter[str] = Counter()  # exception type -> enqueues that raised it
        self.unexpected: list[BaseException] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="faults-producer", daemon=True)

    def _run(self) -> None:
        for job in self.jobs:
            while not self.stop.is_set():
                try:
                    msg_id = self.producer.enqueue(job)
                except redis.exceptions.RedisError as exc:
                    self.errors[type(exc).__name__] += 1
                    self.stop.wait(0.05)
                    continue
                except BaseException as exc:  # the contract: an id or a RedisError
                    self.unexpected.append(exc)
                    return
                if not isinstance(msg_id, str) or "-" not in msg_id:
                    self.unexpected.append(AssertionError(f"enqueue returned {msg_id!r}"))
                    return
                self.ids[msg_id] = job.n
                break
            if self.stop.wait(self.pause):
                return

    def start(self) -> None:
        self.thread.start()

    def finish(self, timeout: float) -> None:
        self.thread.join(timeout)
        self.stop.set()
        self.thread.join(5)
        self.client.close()

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())


#: Liveness bound: once the producer is done, the stream must settle (every job done,
#: nothing pending) within this many seconds; a few seconds suffice for every scenario.
RECOVERY_BOUND = 20.0

#: A fault: called once the jobs' records show ``at`` successes, with the windows to record
#: itself in and the running queue; it returns once the fault is over.
Fault = Callable[[FaultWindows, RecordingQueue], None]


@dataclass
class Outcome:
    account: Account
    queue: RecordingQueue
    producer: TrickleProducer
    windows: FaultWindows
    clean_stop: bool
    settled_in: float | None  # seconds from the end of the producer to a settled stream
    settle_timeout: float
    failing: set[str] = field(default_factory=set)
    unexplained: list[str] = field(default_factory=list)


def _progress(admin: redis.Redis, stream: str) -> int:
    try:
        return len(done_jobs(admin, stream))
    except redis.exceptions.RedisError:
        return 0


def _wait_progress(admin: redis.Redis, stream: str, at: int) -> None:
    def reached() -> bool:
        return _progress(admin, stream) >= at

    wait_until(reached, timeout=60, interval=0.02, message=f"{at} jobs done before a fault")


def run_scenario(
    name: str,
    *,
    url: str,
    admin: redis.Redis,
    stream: str,
    backlog: Sequence[Item],
    trickle: Sequence[Item],
    faults: Sequence[tuple[int, Fault]],
    queue_options: dict[str, Any] | None = None,
    settle_timeout: float = RECOVERY_BOUND,
) -> Outcome:
    """Run one in-process scenario and return its account (printed and asserted by the test).

    :param url: what the queue and the producer connect to.
    :param admin: the test's own client, for progress and the account.
    :param faults: (successes to wait for, fault) pairs, fired in order.
    """
    initial = flowd.Producer(admin, stream).enqueue_bulk(backlog)
    ids = {msg_id: job.n for msg_id, job in zip(initial, backlog, strict=True)}
    failing = {msg_id for msg_id, job in zip(initial, backlog, strict=True) if job.fail}
    windows = FaultWindows()
    recording = RecordingQueue(url, stream, **(queue_options or {}))
    producer = TrickleProducer(url, stream, trickle)
    handle = recording.queue.run()
    clean = False
    settled_in: float | None = None
    try:
        producer.start()
        for at, fault in faults:
            _wait_progress(admin, stream, at)
            fault(windows, recording)
        producer.finish(timeout=60)
        ids.update(producer.ids)
        to_succeed = {n for msg_id, n in ids.items() if msg_id not in failing}
        settled_in = wait_settled(admin, stream, to_succeed, timeout=settle_timeout)
    finally:
        producer.finish(timeout=0)  # a no-op unless a fault or a wait failed
        clean = handle.stop(timeout=15)
        recording.close()
    account = take_account(admin, stream, name, ids, expect_dead=failing)
    unexplained = windows.unexplained_reruns(
        recording.ledger, exempt=lambda run: run.msg_id in failing
    )
    account.extra.update(
        faults=len(windows.windows),
        failed_runs=recording.ledger.failed_runs(),
        enqueue_errors=producer.error_count,
        unexplained_reruns=len(unexplained),
        settled_in=None if settled_in is None else round(settled_in, 1),
    )
    return Outcome(
        account=account,
        queue=recording,
        producer=producer,
        windows=windows,
        clean_stop=clean,
        settled_in=settled_in,
        settle_timeout=settle_timeout,
        failing=failing,
        unexplained=unexplained,
    )


def assert_scenario(outcome: Outcome) -> None:
    """What every in-process scenario must show besides an exact account."""
    assert outcome.settled_in is not None, (
        f"not settled within {outcome.settle_timeout}s after the producer finished "
        f"(a few seconds without faults): {outcome.account.line()}"
    )
    assert outcome.producer.unexpected == [], outcome.producer.unexpected
    # A message the producer got no id for ran: its XADD was applied but the reply lost.
    assert len(outcome.account.unknown_runs) <= outcome.producer.error_count
    assert outcome.unexplained == [], f"reruns no fault explains: {outcome.unexplained[:10]}"
    assert outcome.clean_stop, "the queue did not stop cleanly after the scenario"
