"""Small helpers shared by the tests: polling with a deadline, reply and thread helpers,
a recording worker, and sample jobs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.cluster

import flowd
from tests.redis_server import RedisServer

__all__ = [
    "GROUP",
    "REPO",
    "Email",
    "Hang",
    "Numbered",
    "QueueFactory",
    "Recorder",
    "as_str",
    "child_env",
    "clean_env",
    "client_of",
    "enqueue_numbers",
    "flowd_threads",
    "group_info",
    "id_key",
    "last_delivered_id",
    "messages",
    "no_flowd_threads",
    "noop",
    "numbered_queue",
    "pending_count",
    "pending_ids",
    "run_command",
    "run_flowd",
    "run_python",
    "running_server",
    "stream_ids",
    "terminate",
    "wait_until",
]

#: The consumer group the tests use unless they say otherwise.
GROUP = "g"

#: The repository's root: the working directory of the child processes the tests start.
REPO = Path(__file__).resolve().parent.parent


def as_str(value: Any) -> str:
    """A reply value (bytes or str, or a number) as text."""
    return value.decode() if isinstance(value, bytes) else str(value)


def id_key(msg_id: Any) -> tuple[int, int]:
    """A stream id as a sortable (ms, seq) pair."""
    ms, seq = as_str(msg_id).split("-")
    return int(ms), int(seq)


def pending_count(client: redis.Redis, stream: str, group: str = GROUP) -> int:
    """How many entries of ``group`` are pending (XPENDING summary)."""
    return int(client.xpending(stream, group)["pending"])


def flowd_threads(stream: str | None = None) -> list[str]:
    """Names of the live flowd threads (of one stream's queue, if given)."""
    return [
        t.name
        for t in threading.enumerate()
        if t.name.startswith("flowd-") and t.is_alive() and (stream is None or stream in t.name)
    ]


def wait_until(
    predicate: Callable[[], Any],
    timeout: float = 10.0,
    interval: float = 0.01,
    message: str | None = None,
) -> Any:
    """Poll ``predicate`` until it returns something truthy, and return that value.

    :raises AssertionError: ``predicate`` stayed falsy for ``timeout`` seconds; the
        message names the predicate (or uses ``message``) and its last value.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            what = message or getattr(predicate, "__qualname__", repr(predicate))
            raise AssertionError(
                f"condition not met within {timeout}s: {what} (last value: {value!r})"
            )
        time.sleep(interval)


class Recorder:
    """A worker (and dlq_worker) that records what it saw, from several worker threads.

    Call it (or ``record``) as the worker; ``work`` also fails a task that
    runs twice; ``dlq`` is a dlq_worker. ``enter``/``leave`` count jobs
    running at once.
    """

    def __init__(self, body: Callable[[flowd.Task[Any]], None] | None = None) -> None:
        self.lock = threading.Lock()
        self.body = body
        self.tasks: list[flowd.Task[Any]] = []
        self.dead: dict[str, flowd.Task[Any]] = {}
        self.running = 0
        self.max_running = 0

    def __call__(self, task: flowd.Task[Any]) -> None:
        if self.body is not None:
            self.body(task)
        self.record(task)

    def record(self, task: flowd.Task[Any]) -> None:
        with self.lock:
            self.tasks.append(task)

    def work(self, task: flowd.Task[Any]) -> None:
        with self.lock:
            assert all(t.id != task.id for t in self.tasks), f"{task.id} ran twice"
            self.tasks.append(task)

    def dlq(self, task: flowd.Task[Any]) -> None:
        with self.lock:
            self.dead[task.id] = task

    def enter(self) -> None:
        with self.lock:
            self.running += 1
            self.max_running = max(self.max_running, self.running)

    def leave(self) -> None:
        with self.lock:
            self.running -= 1

    @property
    def count(self) -> int:
        with self.lock:
            return len(self.tasks)

    @property
    def done(self) -> dict[str, Any]:
        """Message id -> job of every task recorded."""
        with self.lock:
            return {t.id: t.job for t in self.tasks}

    @property
    def runs(self) -> list[tuple[int, int, str]]:
        """(n, deliveries, id) of each run, for Numbered jobs."""
        with self.lock:
            return [(t.job.n, t.deliveries, t.id) for t in self.tasks]

    def ids(self) -> list[str]:
        with self.lock:
            return [t.id for t in self.tasks]

    def numbers(self) -> list[int]:
        with self.lock:
            return [t.job.n for t in self.tasks]

    def ns(self) -> set[int]:
        return set(self.numbers())

    def counts(self) -> Counter[int]:
        return Counter(self.numbers())

    def deliveries(self, n: int) -> list[int]:
        return [d for m, d, _ in self.runs if m == n]


def noop(task: flowd.Task[Any]) -> None:
    return None


# ---------------------------------------------------------------------------
# private servers and child processes


@contextmanager
def running_server(**options: Any) -> Iterator[RedisServer]:
    """A started private redis-server (``options`` as RedisServer takes them), closed after."""
    server = RedisServer(**options)
    server.start()
    try:
        yield server
    finally:
        server.close()


def client_of(server: RedisServer, **options: Any) -> redis.Redis:
    """A client of a private server, with its password if it has one (as a context manager,
    it closes itself)."""
    return redis.Redis.from_url(server.url, **options)


def run_command(
    argv: Sequence[str],
    *,
    env: dict[str, str] | None = None,
    cwd: Path | str | None = REPO,
    timeout: float = 60.0,
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` to completion, capturing its output as text (its exit code is not checked)."""
    return subprocess.run(
        list(argv), cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def run_python(
    args: Sequence[str],
    *,
    env: dict[str, str] | None = None,
    cwd: Path | str | None = REPO,
    timeout: float = 60.0,
) -> subprocess.CompletedProcess[str]:
    """Run ``python ARGS`` (this interpreter) to completion, as :func:`run_command` does."""
    return run_command([sys.executable, *args], env=env, cwd=cwd, timeout=timeout)


def terminate(proc: subprocess.Popen[Any], timeout: float) -> None:
    """SIGTERM ``proc`` and wait for it; SIGKILL it if it outlives ``timeout`` seconds."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def clean_env(*drop: str) -> dict[str, str]:
    """This process's environment without FLOWD_ (and ``drop``) variables, with the
    repository first on PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLOWD_", *drop))}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return env


def run_flowd(
    args: Sequence[str],
    env: dict[str, str] | None = None,
    *,
    cwd: Path | str | None = REPO,
    timeout: float = 60.0,
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m flowd ARGS`` to completion (its exit code is not checked)."""
    return run_python(["-m", "flowd", *args], env=env, cwd=cwd, timeout=timeout)


def worker_client(url: str, partitions: int = 1) -> Any:
    """A worker child's client: one Redis, or a cluster when its queue has partitions."""
    if partitions == 1:
        return redis.Redis.from_url(url)
    return redis.cluster.RedisCluster.from_url(url)


def child_env(redis_url: str, stream: str, *drop: str) -> dict[str, str]:
    """The environment of a child process that runs a test app: this one without FLOWD_
    (and ``drop``) variables, with the repository importable and the test's Redis and stream."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLOWD_", *drop))}
    env.update(
        PYTHONPATH=str(REPO),
        PYTHONUNBUFFERED="1",
        FLOWD_REDIS_URL=redis_url,
        FLOWD_TEST_STREAM=stream,
    )
    return env


# ---------------------------------------------------------------------------
# queues under test


def numbered_queue(
    client: Any,
    stream: str,
    worker: Callable[[flowd.Task[Any]], None] = noop,
    **options: Any,
) -> flowd.Queue[Any]:
    """A queue of ``stream`` (group ``g`` and Numbered jobs unless ``options`` say otherwise)."""
    options.setdefault("group", GROUP)
    options.setdefault("job", Numbered)
    return flowd.Queue(client, stream=stream, worker=worker, **options)


class Hang:
    """A worker that hangs until ``release`` is set (at most ``seconds``); ``started`` is set
    when a job begins."""

    def __init__(self, seconds: float = 20.0) -> None:
        self.seconds = seconds
        self.started = threading.Event()
        self.release = threading.Event()

    def __call__(self, task: flowd.Task[Any]) -> None:
        self.started.set()
        self.release.wait(self.seconds)


def stream_ids(client: redis.Redis, stream: str) -> list[str]:
    entries: Any = client.xrange(stream)
    return [as_str(msg_id) for msg_id, _ in entries]


def pending_ids(client: redis.Redis, stream: str, group: str = GROUP) -> set[str]:
    rows: Any = client.xpending_range(stream, group, min="-", max="+", count=1_000_000)
    return {as_str(row["message_id"]) for row in rows}


def group_info(client: redis.Redis, stream: str, group: str = GROUP) -> dict[str, Any] | None:
    for info in client.xinfo_groups(stream):
        if as_str(info["name"]) == group:
            return dict(info)
    return None


def last_delivered_id(client: redis.Redis, stream: str, group: str = GROUP) -> str:
    info = group_info(client, stream, group)
    assert info is not None, f"group {group} missing on {stream}"
    return as_str(info["last-delivered-id"])


def no_flowd_threads() -> bool:
    return not flowd_threads()


def messages(caplog: pytest.LogCaptureFixture, level: int, text: str = "") -> list[str]:
    """Messages of flowd records at exactly ``level`` that contain ``text``."""
    return [
        r.getMessage()
        for r in caplog.records
        if r.name.startswith("flowd") and r.levelno == level and text in r.getMessage()
    ]


def retry_once_or_give_up(task: flowd.Task[Numbered]) -> None:
    """Job 1 asks for one retry (0.1 s), job 2 gives up ("card declined"), others succeed."""
    if task.job.n == 1 and task.deliveries == 1:
        raise flowd.Retry(delay=0.1)
    if task.job.n == 2:
        raise flowd.GiveUp("card declined")


class QueueFactory:
    """Builds queues on the test's stream (without a claimer unless given: the tests were
    written when that was the default) and stops every handle it started on teardown."""

    def __init__(self, client: redis.Redis, stream: str) -> None:
        self.client = client
        self.stream = stream
        self.handles: list[flowd.QueueHandle] = []

    def __call__(
        self,
        worker: Callable[[flowd.Task[Any]], None] = noop,
        *,
        client: Any = None,
        **kwargs: Any,
    ) -> flowd.Queue[Any]:
        kwargs.setdefault("claimer", None)
        stream = kwargs.pop("stream", self.stream)
        return numbered_queue(self.client if client is None else client, stream, worker, **kwargs)

    def run(self, queue: flowd.Queue[Any]) -> flowd.QueueHandle:
        handle = queue.run()
        self.handles.append(handle)
        return handle

    def stop_all(self) -> None:
        # stop() runs on a fresh thread: a handle that the test body already stopped from
        # the main thread would otherwise take this call for a re-entrant one (see
        # test_stop_twice_from_the_same_thread_returns_the_same_result).
        results: dict[int, bool] = {}

        def stop(index: int, handle: flowd.QueueHandle) -> None:
            results[index] = handle.stop(timeout=5)

        for index, handle in enumerate(self.handles):
            stopper = threading.Thread(target=stop, args=(index, handle), name="test-stopper")
            stopper.start()
            stopper.join(10)
        unclean = [repr(h) for i, h in enumerate(self.handles) if results.get(i) is not True]
        assert not unclean, f"handles did not stop cleanly: {unclean}"


def enqueue_numbers(client: redis.Redis, stream: str, count: int, start: int = 0) -> list[str]:
    return flowd.Producer(client, stream).enqueue_bulk(
        Numbered(n) for n in range(start, start + count)
    )


@dataclass
class Email(flowd.Job):
    """The job of DESIGN.md's examples."""

    to: str
    subject: str
    attempt: int = 0
    cc: str | None = None


@dataclass
class Numbered(flowd.Job):
    """A one-field job whose ``n`` tells jobs apart and shows their order."""

    n: int
