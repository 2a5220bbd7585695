"""Connections cut mid-command (issue 7): drop, reset, stall and cuts through a test proxy.

flowd's client talks to a private redis-server through a loopback TCP proxy
that the test controls (tests/faults/proxy.py); the checks use a client of
their own, connected to the server directly. Each scenario ends with an
account, from Redis itself (XLEN, XPENDING, XINFO GROUPS, the dead-letter
stream, the failure-reason hash) and from the jobs' own records (every run,
with its delivery count), which is printed and asserted:

- every enqueued job ran to success at least once, or sits in the dead-letter
  stream exactly once, with a reason;
- nothing stays pending (XPENDING 0) and no failure reason is left behind;
- a job runs more than once only when a fault forced a redelivery: no
  delivery of a message ever runs twice, so every extra run has a higher
  delivery count; the extra runs are counted;
- flowd's own counters (``QueueHandle.stats()``) agree with the jobs' records.
"""

from __future__ import annotations

import importlib
import logging
import sys
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis

import flowd
from flowd._redis.keys import dead_letter_stream, derived_key
from tests.faults.proxy import CutMode, Proxy
from tests.helpers import Numbered, as_str, client_of, pending_count, running_server, wait_until
from tests.redis_server import RedisServer

GROUP = "g"

#: The RESP form of the command names the cuts look for (a command name is its
#: own bulk string, so these never match a key, a value or a script's text).
XACK = b"$4\r\nXACK\r\n"
EVALSHA = b"$7\r\nEVALSHA\r\n"


# ---------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    """One private redis-server for the file (FLOWD_REDIS_SERVER picks the binary)."""
    with running_server() as server:
        yield server


@pytest.fixture
def direct(server: RedisServer) -> Iterator[redis.Redis]:
    """The checking client: straight to the server, never through the proxy."""
    with client_of(server) as client:
        yield client


@pytest.fixture
def version(direct: redis.Redis) -> str:
    return str(direct.info("server")["redis_version"])


@pytest.fixture
def stream(request: pytest.FixtureRequest) -> str:
    return f"net-{request.node.name[:40]}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def proxy(server: RedisServer) -> Iterator[Proxy]:
    proxy = Proxy(("127.0.0.1", server.port))
    yield proxy
    proxy.close()
    wait_until(lambda: not proxy.threads(), timeout=5, message="proxy threads ended")


class Handles:
    """Queue handles of one test; whatever the test did not stop is stopped on teardown."""

    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy
        self.handles: list[flowd.QueueHandle] = []
        self.clients: list[redis.Redis] = []

    def client(self, **kwargs: Any) -> redis.Redis:
        """A client for flowd, connected through the proxy."""
        client = redis.Redis(host="127.0.0.1", port=self.proxy.port, **kwargs)
        self.clients.append(client)
        return client

    def run(self, queue: flowd.Queue[Any]) -> flowd.QueueHandle:
        handle = queue.run()
        self.handles.append(handle)
        return handle

    def close(self) -> None:
        # A failed test may leave the proxy stalled or armed: let the queues stop cleanly.
        self.proxy.clear_rules()
        self.proxy.refuse(False)
        self.proxy.unstall()
        for handle in self.handles:
            handle.stop(timeout=5)
        for client in self.clients:
            client.close()


@pytest.fixture
def handles(proxy: Proxy) -> Iterator[Handles]:
    handles = Handles(proxy)
    yield handles
    handles.close()


# ---------------------------------------------------------------------------
# the jobs' own records


@dataclass(frozen=True)
class Run:
    msg_id: str
    n: int
    deliveries: int
    ok: bool


class Records:
    """The worker: runs ``body`` and records every run (thread-safe); may always fail."""

    def __init__(self, body: Callable[[], None] | None = None, *, fail: bool = False) -> None:
        self.body = body
        self.fail = fail
        self.lock = threading.Lock()
        self.runs: list[Run] = []
        self.ok = 0
        self.dlq_calls: list[str] = []

    def __call__(self, task: flowd.Task[Numbered]) -> None:
        if self.body is not None:
            self.body()
        with self.lock:
            self.runs.append(Run(task.id, task.job.n, task.deliveries, not self.fail))
            self.ok += not self.fail
        if self.fail:
            raise RuntimeError(f"job {task.job.n} always fails")

    def dead(self, task: flowd.Task[Any]) -> None:
        """The dlq_worker: records each call (at least once per dead message)."""
        with self.lock:
            self.dlq_calls.append(task.id)

    def succeeded(self) -> set[str]:
        with self.lock:
            return {run.msg_id for run in self.runs if run.ok}

    def snapshot(self) -> list[Run]:
        with self.lock:
            return list(self.runs)


class DeadLetterHook(flowd.Hooks):
    """Counts ``on_dead_letter`` calls: what a metrics hook would report."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.ids: list[str] = []

    def on_dead_letter(self, task: flowd.Task[Any]) -> None:
        with self.lock:
            self.ids.append(task.id)


# ---------------------------------------------------------------------------
# the account


def dead_entries(client: redis.Redis, stream: str) -> list[dict[str, str]]:
    entries: Any = client.xrange(dead_letter_stream(stream))
    return [{as_str(k): as_str(v) for k, v in fields.items()} for _, fields in entries]


@pytest.fixture
def say(capsys: pytest.CaptureFixture[str]) -> Callable[[str], None]:
    """Print past pytest's capture, so the account shows in every run's output."""

    def say(text: str) -> None:
        with capsys.disabled():
            sys.stdout.write("\n" + text + "\n")
            sys.stdout.flush()

    return say


@dataclass
class Net:
    """What the fault scenarios work with: the checking client, the server's version, the
    test's stream, the proxy, the queue handles (their clients go through the proxy) and
    ``say`` for the account."""

    direct: redis.Redis
    version: str
    stream: str
    proxy: Proxy
    handles: Handles
    say: Callable[[str], None]

    def busy_queue(
        self, total: int, records: Records, socket_timeout: float = 1.0, **options: Any
    ) -> tuple[list[str], flowd.QueueHandle]:
        """``total`` jobs enqueued, and a queue through the proxy that has run 100 of them."""
        ids = enqueue(self.direct, self.stream, total)
        client = self.handles.client(socket_timeout=socket_timeout)
        handle = self.handles.run(make_queue(client, self.stream, records, **options))
        wait_until(lambda: records.ok >= 100, timeout=10)
        return ids, handle

    def settle(
        self, ids: list[str], records: Records, handle: flowd.QueueHandle, timeout: float = 25.0
    ) -> None:
        """Wait until every job ran to success or was dead-lettered; then stop cleanly."""
        wait_until(lambda: all_settled(self.direct, self.stream, ids, records), timeout=timeout)
        assert handle.stop(timeout=5) is True

    def account(
        self, scenario: str, records: Records, stats: flowd.QueueStats, faults: str
    ) -> Account:
        return take_account(
            scenario, self.direct, self.version, self.stream, records, stats, faults
        )


@pytest.fixture
def net(
    direct: redis.Redis,
    version: str,
    stream: str,
    proxy: Proxy,
    handles: Handles,
    say: Callable[[str], None],
) -> Net:
    return Net(direct, version, stream, proxy, handles, say)


@dataclass
class Account:
    """What happened to every job of one scenario, from Redis and from the jobs' records."""

    scenario: str
    version: str
    jobs: int  # distinct jobs (n values) the test enqueued
    entries: int  # XLEN of the stream: jobs plus the ones enqueued twice
    enqueued_twice: int
    runs_ok: int
    runs_failed: int
    succeeded: int  # stream entries that ran to success at least once
    duplicate_runs: int  # successful runs beyond the first of an entry
    redelivered_runs: int  # runs with deliveries > 1 (claimed again)
    same_delivery_twice: int  # (entry, delivery count) pairs that ran twice: never allowed
    dead: int  # entries of the dead-letter stream
    dead_ids: int  # distinct flowd:id among them
    dead_without_reason: int
    dead_also_succeeded: int
    lost: list[str]  # entries neither succeeded nor dead: never allowed
    pending: int
    errors_left: int
    group: dict[str, str]
    stats: flowd.QueueStats
    faults: str
    notes: list[str] = field(default_factory=list)

    def render(self) -> str:
        lines = [
            f"ACCOUNT {self.scenario} (Redis {self.version})",
            f"  faults: {self.faults}",
            f"  enqueued: {self.jobs} jobs, {self.entries} stream entries "
            f"({self.enqueued_twice} jobs enqueued twice)",
            f"  ran to success: {self.succeeded} entries in {self.runs_ok} runs "
            f"({self.duplicate_runs} duplicate runs, all redeliveries forced by a fault); "
            f"failed runs: {self.runs_failed}; runs on redelivery: {self.redelivered_runs}",
            f"  dead-lettered: {self.dead} entries, {self.dead_ids} distinct ids, "
            f"{self.dead_without_reason} without a reason",
            f"  lost: {len(self.lost)}; pending (XPENDING): {self.pending}; "
            f"failure reasons left: {self.errors_left}",
            "  group: " + ", ".join(f"{k}={v}" for k, v in self.group.items()),
            f"  flowd stats: {self.stats}",
            *(f"  note: {note}" for note in self.notes),
        ]
        return "\n".join(lines)

    def check(self, *, dead_expected: int = 0) -> None:
        """The account's invariants (scenario-specific ones are asserted by the test)."""
        assert not self.lost, f"jobs neither done nor dead-lettered: {self.lost[:10]}"
        assert self.pending == 0
        assert self.errors_left == 0
        assert self.same_delivery_twice == 0, "a delivery ran twice without a redelivery"
        assert self.duplicate_runs <= self.redelivered_runs
        assert self.dead == self.dead_ids == dead_expected
        assert self.dead_without_reason == 0
        assert self.dead_also_succeeded == 0
        assert self.succeeded + self.dead == self.entries
        # flowd's counters agree with the jobs' own records
        assert self.stats.processed == self.runs_ok
        assert self.stats.failed == self.runs_failed
        assert self.stats.retried == self.redelivered_runs
        assert self.stats.in_flight == 0
        assert self.stats.deleted == 0


def take_account(
    scenario: str,
    direct: redis.Redis,
    version: str,
    stream: str,
    records: Records,
    stats: flowd.QueueStats,
    faults: str,
) -> Account:
    entries: Any = direct.xrange(stream)
    entry_ids = [as_str(msg_id) for msg_id, _ in entries]
    per_job = Counter(int(fields[b"n"]) for _, fields in entries)
    runs = records.snapshot()
    ok_per_entry = Counter(run.msg_id for run in runs if run.ok)
    deliveries_run: dict[tuple[str, int], int] = defaultdict(int)
    for run in runs:
        deliveries_run[(run.msg_id, run.deliveries)] += 1
    dead = dead_entries(direct, stream)
    dead_ids = {entry.get("flowd:id", "") for entry in dead}
    succeeded = set(ok_per_entry)
    group = next(
        ({as_str(k): as_str(v) for k, v in info.items()} for info in direct.xinfo_groups(stream)),
        {},
    )
    keep = ("pending", "last-delivered-id", "entries-read", "lag", "consumers")
    account = Account(
        scenario=scenario,
        version=version,
        jobs=len(per_job),
        entries=len(entry_ids),
        enqueued_twice=sum(count - 1 for count in per_job.values()),
        runs_ok=sum(ok_per_entry.values()),
        runs_failed=sum(1 for run in runs if not run.ok),
        succeeded=len(succeeded),
        duplicate_runs=sum(count - 1 for count in ok_per_entry.values()),
        redelivered_runs=sum(1 for run in runs if run.deliveries > 1),
        same_delivery_twice=sum(1 for count in deliveries_run.values() if count > 1),
        dead=len(dead),
        dead_ids=len(dead_ids),
        dead_without_reason=sum(1 for entry in dead if not entry.get("flowd:reason")),
        dead_also_succeeded=len(dead_ids & succeeded),
        lost=[msg_id for msg_id in entry_ids if msg_id not in succeeded and msg_id not in dead_ids],
        pending=pending_count(direct, stream),
        errors_left=int(direct.hlen(derived_key(stream, f"errors:{GROUP}"))),
        group={k: v for k, v in group.items() if k in keep},
        stats=stats,
        faults=faults,
    )
    return account


def all_settled(direct: redis.Redis, stream: str, ids: list[str], records: Records) -> bool:
    """Every entry ran to success or was dead-lettered, and nothing is pending."""
    done = records.succeeded() | {e.get("flowd:id", "") for e in dead_entries(direct, stream)}
    return done.issuperset(ids) and pending_count(direct, stream) == 0


def enqueue(direct: redis.Redis, stream: str, count: int) -> list[str]:
    ids = flowd.Producer(direct, stream).enqueue_bulk(Numbered(n) for n in range(count))
    direct.xgroup_create(stream, GROUP, id="0")
    return ids


def make_queue(
    client: redis.Redis, stream: str, records: Records, **kwargs: Any
) -> flowd.Queue[Any]:
    kwargs.setdefault("concurrency", 8)
    kwargs.setdefault("claimer", flowd.Claimer(min_idle_time=1.0, max_retries=50, interval=0.25))
    return flowd.Queue(
        client,
        stream=stream,
        group=GROUP,
        job=Numbered,
        worker=records,
        housekeeping=False,  # the stream keeps every entry, for the account
        block=0.5,
        **{"claimer": None, **kwargs},
    )


def sleeper(seconds: float) -> Callable[[], None]:
    return lambda: time.sleep(seconds)


def runs_reach(records: Records, target: int) -> Callable[[], bool]:
    """A wait_until predicate: ``target`` successful runs recorded."""
    return lambda: records.ok >= target


def no_retry() -> dict[str, Any]:
    """Client options for redis-py without its default retry policy."""
    return {"retry": None}


# ---------------------------------------------------------------------------
# the proxy itself


def test_the_proxy_loses_a_command_or_its_reply_stalls_and_refuses(
    proxy: Proxy, direct: redis.Redis
) -> None:
    client = redis.Redis(host="127.0.0.1", port=proxy.port, socket_timeout=0.5, **no_retry())
    key = f"proxy-{uuid.uuid4().hex[:8]}"
    try:
        assert client.ping()
        # command lost: reset before the SET reaches the server
        proxy.cut_when(b"$3\r\nSET\r\n", mode="command")
        with pytest.raises(redis.exceptions.ConnectionError):
            client.set(f"{key}:lost", "v")
        assert direct.get(f"{key}:lost") is None
        # reply lost: the SET ran, the client saw the connection reset
        proxy.cut_when(b"$3\r\nSET\r\n", mode="reply")
        with pytest.raises(redis.exceptions.ConnectionError):
            client.set(f"{key}:ran", "v")
        assert direct.get(f"{key}:ran") == b"v"
        # a stall outlasting the socket timeout: the client times out, and the
        # command it gave up on runs once the network heals
        assert client.ping()
        proxy.stall(1.0)
        with pytest.raises(redis.exceptions.TimeoutError):
            client.set(f"{key}:late", "v")
        assert direct.get(f"{key}:late") is None
        wait_until(lambda: direct.get(f"{key}:late") == b"v", timeout=5)
        # refused connections, then drop and reset of live ones
        proxy.refuse(True)
        client.connection_pool.disconnect()
        with pytest.raises(redis.exceptions.ConnectionError):
            client.ping()
        proxy.refuse(False)
        assert client.ping()
        assert proxy.drop() >= 1
        assert client.ping()  # the pool notices the closed connection and reconnects
        assert proxy.reset() >= 1
        assert client.ping()
        assert len(proxy.cuts) == 3
        assert proxy.refused == 1
    finally:
        client.close()


# ---------------------------------------------------------------------------
# a, b: every connection dropped (FIN) or reset (RST) every 300 ms


@pytest.mark.parametrize("how", ["drop", "reset"])
def test_repeated_loss_of_every_connection_loses_no_job(
    how: str,
    net: Net,
) -> None:
    total = 3000
    records = Records(sleeper(0.005))
    ids, handle = net.busy_queue(total, records, concurrency=4)

    # Every ~300 ms, every connection flowd has is cut; once, new ones are refused too.
    fault = net.proxy.drop if how == "drop" else net.proxy.reset
    timeline = []
    for i in range(8):
        time.sleep(0.3)
        cut = fault()
        if i == 3:
            net.proxy.refuse(True)
            time.sleep(0.3)
            net.proxy.refuse(False)
        timeline.append(f"{cut}@{records.ok}")

    net.settle(ids, records, handle)
    account = net.account(
        f"{how} every connection 8 times",
        records,
        handle.stats(),
        f"8 x {how} (connections cut @ successful runs so far: {', '.join(timeline)}), "
        f"{net.proxy.refused} connections refused, {net.proxy.accepted} accepted",
    )
    net.say(account.render())
    account.check()
    assert account.entries == account.jobs == total
    assert int(timeline[0].split("@")[1]) < total, "the faults must hit a running queue"


# ---------------------------------------------------------------------------
# c: stalls longer than the socket timeout


def test_stalls_longer_than_the_socket_timeout_are_survived(
    net: Net,
) -> None:
    total = 3000
    records = Records(sleeper(0.005))
    ids, handle = net.busy_queue(total, records, socket_timeout=0.5, concurrency=4)

    resumed = []
    for _ in range(3):
        net.proxy.stall(2.0)
        at_stall = records.ok
        time.sleep(2.0)
        wait_until(lambda: not net.proxy.stalled, timeout=2)
        healed = time.monotonic()
        # The queue resumes on its own: more jobs succeed after the stall.
        wait_until(runs_reach(records, min(total, at_stall + 100)), timeout=10)
        resumed.append(f"{at_stall}->+100 in {time.monotonic() - healed:.2f}s")
        time.sleep(0.3)

    net.settle(ids, records, handle)
    account = net.account(
        "stall 2 s x 3 with socket_timeout=0.5",
        records,
        handle.stats(),
        f"3 stalls of 2 s (resumed: {'; '.join(resumed)}), {net.proxy.accepted} connections",
    )
    net.say(account.render())
    account.check()
    assert account.entries == account.jobs == total


# ---------------------------------------------------------------------------
# d: the batched XACK cut: its command lost, or its reply lost


@pytest.mark.parametrize("mode", ["reply", "command"])
def test_batched_xack_cut_mid_command_is_acked_or_redelivered(
    mode: CutMode,
    net: Net,
) -> None:
    total = 2000
    records = Records(sleeper(0.004))
    claimer = flowd.Claimer(min_idle_time=2.0, max_retries=50, interval=0.25)
    ids, handle = net.busy_queue(total, records, claimer=claimer)

    cut_at = []
    for _ in range(4):
        rule = net.proxy.cut_when(XACK, mode=mode)
        wait_until(lambda: rule.done, timeout=10)  # noqa: B023
        cut_at.append(records.ok)
        wait_until(runs_reach(records, min(total, records.ok + 150)), timeout=10)

    net.settle(ids, records, handle)
    lost_what = "reply lost: XACK ran" if mode == "reply" else "command lost: XACK never ran"
    account = net.account(
        f"batched XACK cut, {mode} lost",
        records,
        handle.stats(),
        f"4 XACK pipelines cut ({lost_what}) at successful runs {cut_at}",
    )
    account.notes += net.proxy.cuts
    net.say(account.render())
    account.check()
    assert account.entries == account.jobs == total
    assert all(at < total for at in cut_at), "the cuts must hit a running queue"


# ---------------------------------------------------------------------------
# e: the atomic dead-letter move (EVALSHA) cut: its command lost, or its reply lost


@pytest.mark.parametrize(
    ("max_retries", "client_retry"),
    [(0, True), (1, False)],
    ids=["max_retries=0-default-client-retry", "max_retries=1-no-client-retry"],
)
def test_dead_letter_move_cut_mid_command_dead_letters_each_job_exactly_once(
    max_retries: int,
    client_retry: bool,
    net: Net,
) -> None:
    total = 30
    ids = enqueue(net.direct, net.stream, total)
    records = Records(fail=True)
    client = (
        net.handles.client(socket_timeout=1.0)
        if client_retry
        else net.handles.client(socket_timeout=1.0, **no_retry())
    )
    # The move's script is loaded beforehand, so that every EVALSHA is a move (no
    # NOSCRIPT round trip); six of the first twelve are cut, alternating the variants.
    move_script = getattr(
        importlib.import_module("flowd._consumer.dead_letter_move"), "_MOVE_LUA", None
    )
    if move_script is not None:
        net.direct.script_load(move_script)
    rules = [
        net.proxy.cut_when(EVALSHA, mode="command" if i % 2 == 0 else "reply", skip=2 * i)
        for i in range(6)
    ]
    hook = DeadLetterHook()
    queue = make_queue(
        client,
        net.stream,
        records,
        claimer=flowd.Claimer(
            min_idle_time=0.3, max_retries=max_retries, interval=0.1, dlq_worker=records.dead
        ),
        hooks=[hook],
    )
    handle = net.handles.run(queue)

    net.settle(ids, records, handle, timeout=30)
    assert all(rule.done for rule in rules), [rule.log for rule in rules]
    stats = handle.stats()
    account = net.account(
        f"dead-letter move cut, max_retries={max_retries}, "
        f"client retry {'default' if client_retry else 'None'}",
        records,
        stats,
        "6 EVALSHA of the move cut (3 command lost, 3 reply lost)",
    )
    runs_per_job = Counter(run.msg_id for run in records.snapshot())
    dlq_calls = Counter(records.dlq_calls)
    account.notes += net.proxy.cuts
    account.notes.append(
        f"runs per job: {sorted(Counter(runs_per_job.values()).items())} (runs: jobs); "
        f"dlq_worker calls: {len(records.dlq_calls)} for {len(dlq_calls)} jobs; "
        f"stats.dead_lettered={stats.dead_lettered} and {len(hook.ids)} on_dead_letter "
        f"calls for {account.dead} messages moved"
    )
    net.say(account.render())
    account.check(dead_expected=total)
    dead = dead_entries(net.direct, net.stream)
    assert sorted(entry["flowd:id"] for entry in dead) == sorted(ids)
    assert all("always fails" in entry["flowd:reason"] for entry in dead)
    assert all(count == max_retries + 1 for count in runs_per_job.values())
    assert set(dlq_calls) == set(ids)  # at least once each
    # flowd counts, and reports to hooks, every message it moved, including a move
    # whose reply was lost on the way back (the script ran; the re-sent one, or the
    # caller, only saw "already acked" or a connection error)
    assert (stats.dead_lettered, len(hook.ids)) == (account.dead, account.dead), (
        f"{account.dead} messages were moved to the dead-letter stream, but flowd counted "
        f"{stats.dead_lettered} and called on_dead_letter {len(hook.ids)} times: a move "
        "whose reply was lost is not counted (see DeadLetterMover.handle)"
    )


# ---------------------------------------------------------------------------
# f: the producer's pipeline cut mid-way


@pytest.mark.parametrize("mode", ["command", "reply"])
@pytest.mark.parametrize("client_retry", [True, False], ids=["default-retry", "retry-None"])
def test_enqueue_bulk_cut_mid_pipeline_is_at_least_once_and_counted(
    client_retry: bool,
    mode: CutMode,
    server: RedisServer,
    net: Net,
) -> None:
    total, batch = 5000, 1000
    # A proxy of its own that forwards at most 4 KiB per read: the 1,000 XADDs of
    # one pipeline reach Redis in a dozen reads, so the cut lands mid-pipeline.
    with Proxy(("127.0.0.1", server.port), chunk=4096) as small:
        client = redis.Redis(
            host="127.0.0.1",
            port=small.port,
            socket_timeout=2.0,
            **({} if client_retry else no_retry()),
        )
        try:
            producer = flowd.Producer(client, net.stream)
            # The XADD of job 2500, in the middle of the third batch, is cut.
            rule = small.cut_when(b"$1\r\nn\r\n$4\r\n2500\r\n", mode=mode)
            returned: list[str] = []
            raised = resent = 0
            for start in range(0, total, batch):
                jobs = [Numbered(n) for n in range(start, start + batch)]
                try:
                    returned += producer.enqueue_bulk(jobs)
                except flowd.EnqueueError as err:
                    assert isinstance(err.cause, redis.exceptions.ConnectionError)
                    raised += 1
                    # which XADDs of the cut chunk ran is unknown: send those again
                    again = [jobs[i] for i in sorted(err.failed + err.unknown)]
                    resent += len(again)
                    returned += err.enqueued + producer.enqueue_bulk(again)
        finally:
            client.close()
        assert rule.done
        cuts = list(small.cuts)

    net.direct.xgroup_create(net.stream, GROUP, id="0")
    entries: Any = net.direct.xrange(net.stream)
    ids = [as_str(msg_id) for msg_id, _ in entries]
    records = Records()
    queue = make_queue(net.handles.client(socket_timeout=1.0), net.stream, records)
    handle = net.handles.run(queue)
    net.settle(ids, records, handle)

    account = net.account(
        f"enqueue_bulk cut mid-pipeline, {mode} lost, client retry "
        f"{'default' if client_retry else 'None'}",
        records,
        handle.stats(),
        f"one pipeline of {batch} XADD cut at job 2500 ({mode} lost); enqueue_bulk raised "
        f"{raised} time(s), the test re-sent {resent} jobs",
    )
    account.notes += cuts
    twice = sorted(n for n, c in Counter(int(f[b"n"]) for _, f in entries).items() if c > 1)
    if twice:
        account.notes.append(f"jobs enqueued twice: n={twice[0]}..{twice[-1]}")
    net.say(account.render())
    account.check()
    assert account.jobs == total
    assert account.entries == total + account.enqueued_twice
    assert account.duplicate_runs == 0  # each entry ran once; only the enqueue duplicated
    # duplicates come only from the batch that was cut, and at most once per job
    assert all(2000 <= n < 3000 for n in twice)
    assert account.enqueued_twice == len(twice)
    assert set(returned) <= set(ids) and len(returned) == total
    if client_retry:
        assert raised == 0  # redis-py re-sent the whole pipeline on a new connection
    else:
        assert raised == 1  # retry=None: the error reaches the caller
    if mode == "reply":
        assert account.enqueued_twice > 0  # the cut pipeline had run (at least in part)


# ---------------------------------------------------------------------------
# e: half-open connections, whatever the client's socket timeout (issue 21, case 6)


def flowd_warnings(caplog: pytest.LogCaptureFixture, thread: str, text: str, since: float) -> int:
    return sum(
        1
        for r in caplog.records
        if r.created >= since and r.threadName.startswith(thread) and text in r.getMessage()
    )


def test_a_half_open_connection_ends_in_a_retried_error_even_without_a_client_timeout(
    direct: redis.Redis,
    stream: str,
    proxy: Proxy,
    handles: Handles,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="flowd")
    # Given a queue whose client has no socket timeout at all, idle after 20 jobs
    enqueue(direct, stream, 20)
    records = Records()
    client = handles.client(socket_timeout=None, **no_retry())
    handle = handles.run(make_queue(client, stream, records, concurrency=2))
    wait_until(runs_reach(records, 20), timeout=10)
    # When every connection goes half-open: nothing is forwarded, nothing is closed
    proxy.stall()
    stalled_at = time.time()
    # Then the reader's blocked read ends on flowd's own timeout, and it says so
    wait_until(
        lambda: flowd_warnings(caplog, "flowd-reader", "Redis unavailable", stalled_at) > 0,
        timeout=20,
        message="the reader noticed the half-open connection",
    )
    # And once the network heals, new jobs run again
    proxy.unstall()
    flowd.Producer(direct, stream).enqueue_bulk(Numbered(n) for n in range(20, 40))
    wait_until(runs_reach(records, 40), timeout=30)
    assert handle.stop(timeout=5) is True


@pytest.mark.parametrize("socket_timeout", [None, 5.0], ids=["no-timeout", "redis-py-default"])
def test_stop_returns_within_its_timeout_while_redis_answers_nothing(
    socket_timeout: float | None,
    direct: redis.Redis,
    stream: str,
    proxy: Proxy,
    handles: Handles,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="flowd")
    # Given a queue with a claimer, running a job that takes 1 s
    enqueue(direct, stream, 1)
    started = threading.Event()

    def slow() -> None:
        started.set()
        time.sleep(1.0)

    records = Records(slow)
    claimer = flowd.Claimer(min_idle_time=3.0, interval=0.25)
    client = handles.client(socket_timeout=socket_timeout, **no_retry())
    handle = handles.run(make_queue(client, stream, records, concurrency=2, claimer=claimer))
    assert started.wait(10), "the job never started"
    # When Redis stops answering (every connection half-open) and stop(timeout=2) is called
    proxy.stall()
    outcome: list[bool] = []
    began = time.monotonic()
    stopper = threading.Thread(target=lambda: outcome.append(handle.stop(timeout=2)))
    stopper.start()
    stopper.join(15)
    took = time.monotonic() - began
    proxy.unstall()
    stopper.join(15)
    # Then stop returned within its timeout and one second, and said it was not clean:
    # the job finished, but its ack could not be written
    assert outcome == [False], (outcome, took)
    assert took <= 3.0, f"stop(timeout=2) took {took:.1f}s"
    assert records.ok == 1
    assert flowd_warnings(caplog, "", "did not stop cleanly", 0) == 1
