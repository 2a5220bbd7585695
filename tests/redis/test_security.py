"""Security: a password, an ACL user limited to what flowd needs, TLS, and no code in decoding.

Each test starts redis-servers of its own (``tests.redis_server.RedisServer``),
so ``requirepass``, ACL users and TLS never touch the suite's shared server.

One flow, :func:`run_flow`, exercises every command flowd sends: enqueue
(single and pipelined), the reader, a worker that fails (claimer retries, then
the dead-letter move script), an undecodable message, a job that outlives
``min_idle_time`` (lease renewal with XCLAIM JUSTID), housekeeping (the lease
key, the trim and idle-consumer scripts), ``stop()`` interrupting a blocked read
with CLIENT UNBLOCK, ``DeadLetters`` (requeue script, purge in MULTI/EXEC),
``drain()``, ``trim_stream`` and ``stream_info``. :func:`run_cli` adds
``flowd worker --burst``, ``flowd info`` and ``flowd dlq list``.
"""

from __future__ import annotations

import collections
import enum
import json
import logging
import os
import pickle
import subprocess
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import redis

import flowd
from flowd._redis.urls import redact_url
from tests.helpers import (
    Numbered,
    as_str,
    clean_env,
    numbered_queue,
    run_flowd,
    running_server,
    wait_until,
)
from tests.redis_server import RedisServer, free_port

REPO = Path(__file__).resolve().parents[2]
GROUP = "g"
JOBS = 20
POISON = -1  # its worker raises until FlowWorker.fixed is set
RACED = -2  # its worker raises; someone else acks it just before it is dead-lettered
SLOW = 1_000_000  # runs for SLOW_SECONDS, well past min_idle_time
SLOW_SECONDS = 1.2
MIN_IDLE = 0.5

#: What flowd needs beyond a user's key patterns; see acl_rules().
FLOWD_COMMANDS = (
    # every connection flowd opens itself: CLIENT ID and INFO (server version check)
    "+client|id",
    "+info",
    # the CLI checks the connection with PING
    "+ping",
    # stop() ends a blocked XREADGROUP at once
    "+client|unblock",
    # queue, claimer, lease renewal, drain
    "+xgroup|create",
    "+xreadgroup",
    "+xack",
    "+xautoclaim",
    "+xclaim",
    "+xpending",
    "+xrange",
    # producer, dead-letter move and requeue
    "+xadd",
    "+xdel",
    # failure reasons ({stream}:errors:<group>), the housekeeping lease, and the marker
    # ({stream}:moved:<id>) that the dead-letter move script sets, and reads when the
    # message was acked already (e.g. a re-sent move whose first reply was lost)
    "+hset",
    "+hget",
    "+hdel",
    "+set",
    "+get",
    # the per-minute throughput counters the dashboard charts ({stream}:stats:<minute>:...)
    "+incrby",
    "+expire",
    # housekeeping scripts (trim, idle consumers)
    "+exists",
    "+xinfo|groups",
    "+xinfo|consumers",
    "+xtrim",
    "+xgroup|delconsumer",
    # Lua scripts: redis-py's Script (EVALSHA, SCRIPT LOAD on NOSCRIPT) and EVAL
    "+evalsha",
    "+eval",
    "+script|load",
    # stream_info, DeadLetters.count/requeue_all/purge
    "+time",
    "+xlen",
    "+xrevrange",
    "+multi",
    "+exec",
    "+del",
    # scheduling: delayed jobs ({stream}:scheduled and its hashes), the due-job mover,
    # unique keys, periodic schedules ({stream}:schedules), ScheduledJobs and stream_info
    "+zadd",
    "+zrem",
    "+zscore",
    "+zcard",
    "+zrange",
    "+zrangebyscore",
    "+hgetall",
    "+hmget",
    # run records of claimed jobs ({stream}:runs:<group>)
    "+hincrby",
    # job records ({stream}:result:<id>, of dead and cancelled jobs), the waiters' wake-up list
    # ({stream}:done:<id>) that Results.wait blocks on, aliases of moved jobs
    # ({stream}:alias:<id>), the lookup script's TYPE
    "+rpush",
    "+pexpire",
    "+blmove",
    "+type",
    # successes' records in time-slice buckets ({stream}:results:..., listed in
    # {stream}:result-buckets), and the set of waited-for ids ({stream}:waiters)
    "+pexpireat",
    "+zremrangebyscore",
    "+pttl",
    "+sadd",
    "+srem",
    "+sismember",
)


def acl_rules(stream: str, password: str) -> list[str]:
    """The ACL SETUSER rules of a user that may run flowd on ``stream`` and nothing else."""
    return [
        "reset",
        "on",
        f">{password}",
        f"~{stream}",
        f"~{{{stream}}}:*",
        "resetchannels",
        *FLOWD_COMMANDS,
    ]


# ---------------------------------------------------------------------------
# helpers


class Problems(logging.Handler):
    """Collects flowd log records that show a refused command or a failing loop."""

    MARKERS = ("permission", "noauth", "wrongpass", "unavailable", "could not", "unblock failed")

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(levelname)s %(threadName)s %(message)s"))
        self.found: list[str] = []
        self.texts: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = self.format(record)
        self.texts.append(text)
        if "poison job" in text:
            return  # the flow's failing job, logged as it should be
        lowered = text.lower()
        if record.levelno >= logging.ERROR or any(m in lowered for m in self.MARKERS):
            self.found.append(text)


@contextmanager
def watch_flowd_logs() -> Iterator[Problems]:
    """Every flowd record at DEBUG and above, and the problems among them."""
    problems = Problems()
    logger = logging.getLogger("flowd")
    level = logger.level
    logger.addHandler(problems)
    logger.setLevel(logging.DEBUG)
    try:
        yield problems
    finally:
        logger.removeHandler(problems)
        logger.setLevel(level)


def wait_for(predicate: Callable[[], Any], problems: Problems, timeout: float = 20.0) -> None:
    """wait_until, but failing at once when flowd logs a problem."""

    def check() -> Any:
        assert not problems.found, "flowd reported problems:\n" + "\n".join(problems.found[:5])
        return predicate()

    wait_until(check, timeout=timeout)


def consumer_names(admin: redis.Redis, stream: str) -> set[str]:
    return {as_str(row["name"]) for row in admin.xinfo_consumers(stream, GROUP)}


class FlowWorker:
    """The flow's worker: records each run; POISON raises until ``fixed``, SLOW sleeps.

    RACED always raises, and its ``dlq`` call acks it through ``ack`` first, as if
    another consumer had dead-lettered it a moment earlier.
    """

    def __init__(self, ack: Callable[[str], None]) -> None:
        self.ack = ack
        self.runs: collections.Counter[int] = collections.Counter()
        self.succeeded: set[int] = set()
        self.fixed = threading.Event()
        self.dead: list[flowd.Task[Any]] = []
        self._lock = threading.Lock()

    def work(self, task: flowd.Task[Numbered]) -> None:
        n = task.job.n
        with self._lock:
            self.runs[n] += 1
        if (n == POISON and not self.fixed.is_set()) or n == RACED:
            raise RuntimeError("poison job")
        if n == SLOW:
            time.sleep(SLOW_SECONDS)
        with self._lock:
            self.succeeded.add(n)

    def dlq(self, task: flowd.Task[Any]) -> None:
        with self._lock:
            self.dead.append(task)
        if task.job is not None and task.job.n == RACED:
            self.ack(task.id)


def run_flow(
    client: redis.Redis,
    admin: redis.Redis,
    stream: str,
    problems: Problems,
    while_running: Callable[[], None] | None = None,
) -> None:
    """Everything flowd does, as ``client``'s user; ``admin`` only observes (and adds a ghost)."""
    flow = FlowWorker(lambda msg_id: admin.xack(stream, GROUP, msg_id))
    producer = flowd.Producer(client, stream)
    queue = flowd.Queue(
        client,
        stream=stream,
        group=GROUP,
        job=Numbered,
        worker=flow.work,
        concurrency=4,
        claimer=flowd.Claimer(
            min_idle_time=MIN_IDLE, max_retries=1, interval=0.05, dlq_worker=flow.dlq
        ),
        housekeeping=flowd.Housekeeping(interval=0.3, consumer_ttl=0.2),
        block=10.0,  # only CLIENT UNBLOCK lets stop() end this read quickly
        result_ttl=60,
    )
    # Given a running queue (run() created the group) and an idle consumer without pending
    handle = queue.run()
    try:
        admin.xgroup_createconsumer(stream, GROUP, "ghost")

        # When jobs arrive: plain ones, a slow one, failing ones and an unreadable entry
        producer.enqueue_bulk([Numbered(n) for n in range(JOBS)])
        slow_id = producer.enqueue(Numbered(SLOW))
        poison_id = producer.enqueue(Numbered(POISON))
        raced_id = producer.enqueue(Numbered(RACED))
        bad_id = as_str(client.xadd(stream, {"n": "not a number"}))

        # Then all are handled, and housekeeping removes the idle ghost consumer
        wait_for(
            lambda: (
                len(flow.succeeded) == JOBS + 1
                and len(flow.dead) == 3
                and "ghost" not in consumer_names(admin, stream)
            ),
            problems,
        )
        if while_running is not None:
            while_running()
    finally:
        started = time.monotonic()
        clean = handle.stop(timeout=5)
    # And stop() is clean and quick: CLIENT UNBLOCK ended the 10 s read
    assert clean
    assert time.monotonic() - started < 2.5
    assert not problems.found, "\n".join(problems.found[:5])
    stats = handle.stats()
    assert (stats.processed, stats.dead_lettered) == (JOBS + 1, 2), stats
    # And the slow job ran once: its lease kept the claimer away
    assert flow.runs[SLOW] == 1, slow_id
    # And the failing jobs ran max_retries + 1 times before they were dead-lettered (the
    # one acked meanwhile is left alone)
    assert flow.runs[POISON] == flow.runs[RACED] == 2
    assert {t.id for t in flow.dead} == {poison_id, raced_id, bad_id}
    assert admin.hlen(f"{{{stream}}}:errors:{GROUP}") == 0

    # Results: a success's record (written with its ack), waited for; a dead job's
    results = flowd.Results(client, stream)
    assert results.wait(slow_id, timeout=5).status is flowd.JobStatus.SUCCEEDED
    assert results.get(bad_id).status is flowd.JobStatus.DEAD  # type: ignore[union-attr]

    # DeadLetters: list, requeue (script), purge (MULTI/EXEC)
    dead = flowd.DeadLetters(client, stream)
    letters = {letter.original_id: letter for letter in dead.list()}
    assert set(letters) == {poison_id, bad_id}
    assert "RuntimeError: poison job" in letters[poison_id].reason
    assert "field 'n'" in letters[bad_id].reason
    assert dead.count() == 2
    flow.fixed.set()
    assert len(dead.requeue([letters[poison_id].dlq_id])) == 1
    assert dead.purge() == 1

    # drain(): the requeued job, fixed now, succeeds
    assert queue.drain(timeout=10) == 1
    assert flow.runs[POISON] == 3

    # trim_stream and stream_info
    assert flowd.trim_stream(client, stream, exact=True).removed >= JOBS
    info = flowd.stream_info(client, stream, group=GROUP)
    assert info.dlq_length == 0
    (group,) = info.groups
    assert (group.pending, group.lag) == (0, 0)
    assert not problems.found, "\n".join(problems.found[:5])


def cli_queue() -> flowd.Queue[Numbered]:
    """``flowd worker tests.redis.test_security:cli_queue``: a queue built from the environment."""
    client = redis.Redis.from_url(os.environ["FLOWD_REDIS_URL"])
    return numbered_queue(
        client,
        os.environ["FLOWD_TEST_STREAM"],
        lambda task: None,
        claimer=flowd.Claimer(min_idle_time=30.0),
    )


def flowd_cli(
    args: list[str], *, stream: str = "", timeout: float = 60.0
) -> subprocess.CompletedProcess[str]:
    """``python -m flowd ARGS`` without FLOWD_ settings but the test's stream, if given."""
    env = clean_env()
    if stream:
        env["FLOWD_TEST_STREAM"] = stream
    return run_flowd(args, env, timeout=timeout)


def run_cli(url: str, admin: redis.Redis, stream: str) -> list[subprocess.CompletedProcess[str]]:
    """``flowd worker --burst``, ``flowd info`` and ``flowd dlq list`` against ``url``."""
    flowd.Producer(admin, stream).enqueue_bulk([Numbered(n) for n in range(3)])
    admin.xadd(stream, {"n": "unreadable"})
    worker = flowd_cli(
        [
            *("--log-level", "DEBUG", "worker", "tests.redis.test_security:cli_queue", "--burst"),
            *("--url", url, "--connect-timeout", "5"),
        ],
        stream=stream,
    )
    assert worker.returncode == 0, worker.stderr[-3000:]
    assert "burst done: 3 jobs processed" in worker.stderr
    info = flowd_cli(["info", stream, "--group", GROUP, "--json", "--url", url])
    assert info.returncode == 0, info.stderr[-3000:]
    data = json.loads(info.stdout)
    assert data["dlq_length"] == 1
    assert [(g["name"], g["pending"], g["lag"]) for g in data["groups"]] == [(GROUP, 0, 0)]
    dlq = flowd_cli(["dlq", "list", stream, "--url", url])
    assert dlq.returncode == 0, dlq.stderr[-3000:]
    assert "field 'n'" in dlq.stdout
    return [worker, info, dlq]


def stream_name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


# ---------------------------------------------------------------------------
# (a) a server with a password


@pytest.fixture
def secret() -> str:
    """A password no other text could contain by chance."""
    return f"pw-{uuid.uuid4().hex}"


@pytest.fixture
def password_server(secret: str) -> Iterator[RedisServer]:
    with running_server(password=secret) as server:
        yield server


def test_everything_works_with_a_password_and_never_shows_it(
    password_server: RedisServer, secret: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="flowd")
    stream = stream_name("pw")
    client = redis.Redis.from_url(password_server.url)
    admin = redis.Redis.from_url(password_server.url)
    try:
        with watch_flowd_logs() as problems:
            run_flow(client, admin, stream, problems)
        outputs = run_cli(password_server.url, admin, stream)
    finally:
        client.close()
        admin.close()
    # The password is in no log record and in no output of the CLI
    assert caplog.records
    assert secret not in caplog.text
    for record in caplog.records:
        assert secret not in record.getMessage()
        assert secret not in (record.exc_text or "")
    for proc in outputs:
        assert secret not in proc.stdout + proc.stderr
    # The worker names its Redis with the password masked
    assert f"redis://:***@127.0.0.1:{password_server.port}/0" in outputs[0].stderr


def exception_text(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc)) + repr(exc)


@pytest.mark.parametrize("auth", ["wrong", "missing"])
def test_bad_credentials_give_errors_without_any_password(
    password_server: RedisServer, secret: str, auth: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="flowd")
    wrong = f"wrong-{uuid.uuid4().hex}"
    port = password_server.port
    url = {
        "wrong": f"redis://:{wrong}@127.0.0.1:{port}/0",
        "missing": f"redis://127.0.0.1:{port}/0",
    }[auth]
    client = redis.Redis.from_url(url)
    stream = stream_name("badauth")
    queue = numbered_queue(client, stream, lambda t: None, claimer=None)
    try:
        # enqueue and drain raise redis-py's AuthenticationError, with no password in it
        with pytest.raises(redis.exceptions.AuthenticationError) as enqueue_error:
            flowd.Producer(client, stream).enqueue(Numbered(1))
        with pytest.raises(redis.exceptions.AuthenticationError) as drain_error:
            queue.drain(timeout=5)
        # run() keeps retrying in the background and logs why, without the password
        handle = queue.run()
        wait_until(lambda: "AuthenticationError" in caplog.text, timeout=10)
        assert handle.stop(timeout=5)
    finally:
        client.close()
    for exc in (enqueue_error.value, drain_error.value):
        assert secret not in exception_text(exc)
        assert wrong not in exception_text(exc)
    assert secret not in caplog.text
    assert wrong not in caplog.text


def test_cli_with_a_wrong_password_fails_at_once_without_showing_it(
    password_server: RedisServer, secret: str
) -> None:
    wrong = f"wrong-{uuid.uuid4().hex}"
    url = f"redis://:{wrong}@127.0.0.1:{password_server.port}/0"
    stream = stream_name("badauth")
    # flowd info: one line on stderr, exit 3, the password masked
    info = flowd_cli(["info", stream, "--url", url])
    assert info.returncode == 3, info.stderr
    assert info.stderr.startswith("flowd: ") and info.stderr.count("\n") == 1, info.stderr
    assert f"redis://:***@127.0.0.1:{password_server.port}/0" in info.stderr
    # flowd worker: refused credentials are not an outage to wait out for --connect-timeout
    started = time.monotonic()
    worker = flowd_cli(
        [
            *("worker", "tests.redis.test_security:cli_queue", "--burst"),
            *("--url", url, "--connect-timeout", "8"),
        ],
        stream=stream,
    )
    elapsed = time.monotonic() - started
    for proc in (info, worker):
        assert wrong not in proc.stdout + proc.stderr
        assert secret not in proc.stdout + proc.stderr
    assert worker.returncode == 3, worker.stderr
    assert "refused the credentials" in worker.stderr, worker.stderr
    assert elapsed < 6, f"took {elapsed:.1f}s: the wrong password was retried as an outage"


# Passwords in URLs that flowd prints (CLI errors, the worker's start line).
REDACTED_URLS = [
    pytest.param(
        "redis://user:p%40ss@host:6379/0", "redis://user:***@host:6379/0", "p%40ss", id="pct"
    ),
    pytest.param("redis://us@er:pw-1@host:1/0", "redis://us@er:***@host:1/0", "pw-1", id="at"),
    pytest.param("redis://user:pa:ss@h/0", "redis://user:***@h/0", "pa:ss", id="colon"),
    pytest.param("redis://:pw-1@[::1]:6379/0", "redis://:***@[::1]:6379/0", "pw-1", id="ipv6"),
    pytest.param(
        "redis://u:pw-1@[fe80::1%25eth0]:6379",
        "redis://u:***@[fe80::1%25eth0]:6379",
        "pw-1",
        id="ipv6-zone",
    ),
    pytest.param(
        "unix://:pw-1@/tmp/r.sock?db=0", "unix://:***@/tmp/r.sock?db=0", "pw-1", id="unix"
    ),
    pytest.param(
        "unix://user:pw-1@/tmp/r.sock", "unix://user:***@/tmp/r.sock", "pw-1", id="unix-user"
    ),
    pytest.param(
        "unix:///tmp/r.sock?password=pw-1&db=1",
        "unix:///tmp/r.sock?password=***&db=1",
        "pw-1",
        id="unix-query",
    ),
    pytest.param(
        "redis://h?Password=pw-1&PASS=pw-2", "redis://h?Password=***&PASS=***", "pw-", id="case"
    ),
    pytest.param(
        "redis://h/0?username=u&password=p%20q",
        "redis://h/0?username=u&password=***",
        "p%20q",
        id="query-pct",
    ),
    pytest.param("redis://:pw-1@h/0#frag", "redis://:***@h/0#frag", "pw-1", id="fragment"),
    pytest.param("redis://:@h", "redis://:***@h", None, id="empty-password"),
    pytest.param("redis://user@h:1/0", "redis://user@h:1/0", None, id="no-password"),
    pytest.param("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0", None, id="plain"),
    # a URL without a secret is shown as given, not re-encoded
    pytest.param(
        "rediss://h:1/0?ssl_ca_certs=/etc/ca.pem",
        "rediss://h:1/0?ssl_ca_certs=/etc/ca.pem",
        None,
        id="path-in-query",
    ),
    # malformed, but with no secret in it: shown as given
    pytest.param("redis://[::1", "redis://[::1", None, id="unparsable"),
]


@pytest.mark.parametrize(("url", "shown", "secret_part"), REDACTED_URLS)
def test_redact_url_masks_passwords(url: str, shown: str, secret_part: str | None) -> None:
    assert redact_url(url) == shown
    if secret_part is not None:
        assert secret_part not in redact_url(url)


@pytest.mark.parametrize(
    ("url", "secret_part"),
    [
        # redis-py passes unknown query arguments to the connection: this is the key file's password
        pytest.param("rediss://h:1/0?ssl_password=keypw-1", "keypw-1", id="ssl_password"),
        # generated passwords often hold '#', '/' or '?': unencoded, they end the authority part
        pytest.param("redis://:s3cr#t-XYZ@host:1/0", "t-XYZ", id="hash-in-password"),
        pytest.param("redis://:s3cr/t-XYZ@host:1/0", "t-XYZ", id="slash-in-password"),
        pytest.param("redis://:s3cr?t-XYZ@host:1/0", "t-XYZ", id="question-mark-in-password"),
    ],
)
def test_redact_url_masks_passwords_in_tricky_urls(url: str, secret_part: str) -> None:
    assert secret_part not in redact_url(url)


def test_cli_bad_url_with_a_password_does_not_show_it() -> None:
    # A password with an unencoded '#': redis-py cannot parse the URL, and flowd reports it
    proc = flowd_cli(["info", "s", "--url", "redis://:s3cr#t-XYZ@127.0.0.1:1/0"])
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("flowd: bad Redis URL")
    assert "t-XYZ" not in proc.stderr, proc.stderr


# ---------------------------------------------------------------------------
# (b) an ACL user with only the commands and keys flowd needs


@pytest.fixture
def acl_server() -> Iterator[RedisServer]:
    with running_server() as server:
        yield server


def acl_user(admin: redis.Redis, stream: str) -> str:
    """Create user ``flowd`` for ``stream``; returns its password."""
    password = f"acl-{uuid.uuid4().hex}"
    admin.execute_command("ACL", "SETUSER", "flowd", *acl_rules(stream, password))
    return password


def test_flowd_works_as_an_acl_user_limited_to_its_commands_and_keys(
    acl_server: RedisServer,
) -> None:
    stream = stream_name("acl")
    admin = redis.Redis(port=acl_server.port)
    password = acl_user(admin, stream)
    url = f"redis://flowd:{password}@127.0.0.1:{acl_server.port}/0"
    client = redis.Redis.from_url(url)
    try:
        with watch_flowd_logs() as problems:
            run_flow(client, admin, stream, problems)
        outputs = run_cli(url, admin, stream)
        # Nothing flowd did was refused (but redis-py's CLIENT SETINFO on connect, which it
        # ignores when refused: logged as "client" by 6.2, "client|setinfo" by 7.2+)
        denied = {as_str(entry.get("object")) for entry in admin.acl_log()}
        assert denied <= {"client", "client|setinfo"}, admin.acl_log()
    finally:
        client.close()
        admin.close()
    for proc in outputs:
        assert password not in proc.stdout + proc.stderr


XADD_LUA = "return redis.call('XADD', KEYS[1] or 'other', '*', 'n', '1')"
REFUSED = r"(?i)no permissions|can't run this command|can't access at least one of the keys"


@pytest.mark.parametrize(
    ("what", "call"),
    [
        ("FLUSHALL", lambda c, s: c.flushall()),
        ("KEYS", lambda c, s: c.keys("*")),
        ("CONFIG", lambda c, s: c.config_get("requirepass")),
        ("GET on another key", lambda c, s: c.get("other")),
        ("HKEYS", lambda c, s: c.hkeys(f"{{{s}}}:errors:{GROUP}")),  # (HGETALL: scheduling)
        ("CLIENT LIST", lambda c, s: c.client_list()),
        ("XADD to another stream", lambda c, s: c.xadd("other", {"n": "1"})),
        ("XGROUP DESTROY", lambda c, s: c.xgroup_destroy(s, GROUP)),
        ("Lua FLUSHALL", lambda c, s: c.eval("return redis.call('FLUSHALL')", 0)),
        # a script runs its commands with the caller's permissions, key patterns included
        ("Lua XADD to another stream", lambda c, s: c.eval(XADD_LUA, 1, "other")),
        ("Lua XADD with an undeclared key", lambda c, s: c.eval(XADD_LUA, 0)),
    ],
)
def test_the_acl_user_is_refused_everything_else(
    acl_server: RedisServer, what: str, call: Callable[[redis.Redis, str], Any]
) -> None:
    stream = stream_name("acl")
    admin = redis.Redis(port=acl_server.port)
    password = acl_user(admin, stream)
    client = redis.Redis(port=acl_server.port, username="flowd", password=password)
    try:
        client.xgroup_create(stream, GROUP, id="0", mkstream=True)  # allowed
        # NOPERM, or from inside a script the error that names the refused command or key
        with pytest.raises(redis.exceptions.ResponseError, match=REFUSED):
            call(client, stream)
        assert admin.exists("other") == 0
        assert admin.dbsize() == 1
    finally:
        client.close()
        admin.close()


def test_a_queue_on_a_stream_outside_the_acl_keys_fails_at_once(acl_server: RedisServer) -> None:
    stream = stream_name("acl")
    admin = redis.Redis(port=acl_server.port)
    password = acl_user(admin, stream)
    client = redis.Redis(port=acl_server.port, username="flowd", password=password)
    queue = numbered_queue(client, "other", lambda t: None, claimer=None)
    try:
        with pytest.raises(redis.exceptions.NoPermissionError):
            queue.drain(timeout=5)
        with pytest.raises(redis.exceptions.NoPermissionError):
            queue.run()
    finally:
        client.close()
        admin.close()


# ---------------------------------------------------------------------------
# (c) TLS


@dataclass
class TLSFiles:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TLSFiles:
    trustme = pytest.importorskip("trustme")
    tmp = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("flowd-client@example.com")
    files = TLSFiles(
        tmp / "ca.pem",
        tmp / "server.pem",
        tmp / "server.key",
        tmp / "client.pem",
        tmp / "client.key",
    )
    ca.cert_pem.write_to_path(str(files.ca))
    server.private_key_pem.write_to_path(str(files.server_key))
    client.private_key_pem.write_to_path(str(files.client_key))
    for cert, path in ((server, files.server_cert), (client, files.client_cert)):
        with open(path, "wb") as out:
            for blob in cert.cert_chain_pems:
                out.write(blob.bytes())
    return files


@dataclass
class TLSServer:
    server: RedisServer
    tls_port: int
    auth_clients: bool


#: Why TLS tests are skipped, once a start has shown that the binary cannot do TLS.
_NO_TLS: list[str] = []


@pytest.fixture(scope="module", params=[False, True], ids=["server-auth", "mutual-auth"])
def tls_server(request: pytest.FixtureRequest, tls_files: TLSFiles) -> Iterator[TLSServer]:
    """A redis-server with a TLS port; its plain port is only for the start probe and admin.

    (RedisServer probes its plain port for readiness, so the plain port stays open; flowd
    is only ever given the TLS port.)
    """
    if _NO_TLS:
        pytest.skip(_NO_TLS[0])
    tls_port = free_port()
    server = RedisServer(
        extra_args=(
            "--tls-port",
            str(tls_port),
            "--tls-cert-file",
            str(tls_files.server_cert),
            "--tls-key-file",
            str(tls_files.server_key),
            "--tls-ca-cert-file",
            str(tls_files.ca),
            "--tls-auth-clients",
            "yes" if request.param else "no",
        )
    )
    try:
        server.start()
    except RuntimeError as exc:
        server.close()
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        at = next((i for i, line in enumerate(lines) if "tls-port" in line), None)
        if at is None:
            raise
        _NO_TLS.append(
            f"{server.binary} was built without TLS support: {' '.join(lines[at : at + 2])}"
        )
        pytest.skip(_NO_TLS[0])
    try:
        yield TLSServer(server, tls_port, request.param)
    finally:
        server.close()


def tls_url(tls: TLSServer, files: TLSFiles) -> str:
    url = f"rediss://127.0.0.1:{tls.tls_port}/0?ssl_ca_certs={files.ca}"
    if tls.auth_clients:
        url += f"&ssl_certfile={files.client_cert}&ssl_keyfile={files.client_key}"
    return url


def test_everything_works_over_tls(tls_server: TLSServer, tls_files: TLSFiles) -> None:
    stream = stream_name("tls")
    url = tls_url(tls_server, tls_files)
    client = redis.Redis.from_url(url)
    # The plain port, for observing; named, since jobs use it from worker threads too
    admin = redis.Redis(port=tls_server.server.port, client_name="admin")
    assert client.connection_pool.connection_class is redis.SSLConnection

    def only_tls_connections() -> None:
        # Every connection but the admin's own came in on the TLS port
        clients = [c for c in admin.client_list() if "laddr" in c]
        ports = collections.Counter(int(c["laddr"].rsplit(":", 1)[1]) for c in clients)
        plain = [c for c in clients if int(c["laddr"].rsplit(":", 1)[1]) == tls_server.server.port]
        assert plain and all(c["name"] == "admin" for c in plain), ports
        assert ports[tls_server.tls_port] >= 4, ports  # reader, claimer, lease, acker at least

    try:
        with watch_flowd_logs() as problems:
            run_flow(client, admin, stream, problems, while_running=only_tls_connections)
        run_cli(url, admin, stream)
    finally:
        client.close()
        admin.close()


def test_tls_settings_given_as_keywords_carry_over(
    tls_server: TLSServer, tls_files: TLSFiles
) -> None:
    stream = stream_name("tls")
    extra: dict[str, Any] = {}
    if tls_server.auth_clients:
        extra = {
            "ssl_certfile": str(tls_files.client_cert),
            "ssl_keyfile": str(tls_files.client_key),
        }
    client = redis.Redis(
        host="127.0.0.1",
        port=tls_server.tls_port,
        ssl=True,
        ssl_ca_certs=str(tls_files.ca),
        **extra,
    )
    done: list[int] = []
    queue = numbered_queue(
        client,
        stream,
        lambda task: done.append(task.job.n),
        claimer=flowd.Claimer(min_idle_time=1.0),
    )
    try:
        flowd.Producer(client, stream).enqueue_bulk([Numbered(n) for n in range(5)])
        assert queue.drain(timeout=10) == 5
        with queue.run() as handle:
            flowd.Producer(client, stream).enqueue(Numbered(5))
            wait_until(lambda: len(done) == 6)
        assert handle.stop(timeout=5)
    finally:
        client.close()
    assert sorted(done) == list(range(6))


def test_tls_without_the_ca_is_a_clear_connection_error(
    tls_server: TLSServer, tls_files: TLSFiles
) -> None:
    url = f"rediss://127.0.0.1:{tls_server.tls_port}/0"
    client = redis.Redis.from_url(url)
    queue = numbered_queue(client, "s", lambda t: None, claimer=None)
    try:
        with pytest.raises(redis.exceptions.ConnectionError, match="certificate verify failed"):
            queue.drain(timeout=5)
    finally:
        client.close()
    proc = flowd_cli(["info", "s", "--url", url])
    assert proc.returncode == 3, proc.stderr
    assert proc.stderr.startswith("flowd: cannot reach Redis") and proc.stderr.count("\n") == 1


# ---------------------------------------------------------------------------
# (d) decoding never evaluates code


class Tier(enum.Enum):
    GOLD = "gold"


@dataclass
class Address:
    street: str
    zip: str


@dataclass
class Anything(flowd.Job):
    """A job with one field of each kind that an attacker might write into."""

    n: int = 0
    text: str = ""
    blob: bytes = b""
    ratio: float = 0.0
    flag: bool = False
    amount: Decimal | None = None
    uid: uuid.UUID | None = None
    at: datetime | None = None
    day: date | None = None
    tier: Tier = Tier.GOLD
    tags: list[str] = field(default_factory=list)
    attrs: dict[str, str] = field(default_factory=dict)
    address: Address | None = None


EXTRA_KEY = "<payload as a field name>"


class Exploit:
    """Unpickling this runs ``touch <path>``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.path}",))


def payloads(marker: Path) -> dict[str, bytes]:
    """Texts that create ``marker`` if anything evaluates or unpickles them."""
    expression = f"__import__('os').system('touch {marker}')"
    return {
        "expression": expression.encode(),
        "lambda": f"(lambda: {expression})()".encode(),
        "pickle-0": pickle.dumps(Exploit(marker), protocol=0),
        "pickle-5": pickle.dumps(Exploit(marker), protocol=5),
        "json-object": json.dumps(
            {"py/object": "os.system", "py/args": f"touch {marker}"}
        ).encode(),
        "json-list": json.dumps([expression]).encode(),
    }


def read_as_data(kind: str, name: str, payload: bytes) -> bool:
    """Whether the payload is valid data for the field (else it is dead-lettered)."""
    if name in ("blob", EXTRA_KEY):
        return True
    if name == "text":
        try:
            payload.decode("utf-8")
        except UnicodeDecodeError:
            return False
        return True
    return (name, kind) in (("tags", "json-list"), ("attrs", "json-object"))


def assert_read_as_data(job: Anything, name: str, payload: bytes) -> None:
    if name == "text":
        assert job.text == payload.decode()
    elif name == "blob":
        assert job.blob == payload
    elif name in ("tags", "attrs"):
        assert getattr(job, name) == json.loads(payload)
    else:
        assert name == EXTRA_KEY
        assert job == Anything()


def test_the_payloads_would_run_if_anything_evaluated_them(tmp_path: Path) -> None:
    # A control: eval and pickle.loads of these payloads do create the file
    marker = tmp_path / "control"
    loaded = payloads(marker)
    eval(loaded["expression"])
    assert marker.exists()
    marker.unlink()
    pickle.loads(loaded["pickle-5"])
    assert marker.exists()


def test_decoding_never_evaluates_code(client: redis.Redis, stream: str, tmp_path: Path) -> None:
    marker = tmp_path / f"pwned-{uuid.uuid4().hex}"
    # Given each payload in each field of a job (and as a field name), an entry each
    entries = [
        (kind, name, payload)
        for kind, payload in payloads(marker).items()
        for name in [*Anything.__dataclass_fields__, EXTRA_KEY]
    ]
    pipe = client.pipeline(transaction=False)
    for _, name, payload in entries:
        pipe.xadd(stream, {payload: b"x"} if name == EXTRA_KEY else {name.encode(): payload})
    ids = [as_str(msg_id) for msg_id in pipe.execute()]

    # When a queue with a claimer (and its dead-letter stream) consumes them
    done: dict[str, Anything] = {}
    queue = numbered_queue(
        client,
        stream,
        lambda task: done.__setitem__(task.id, task.job),
        job=Anything,
        claimer=flowd.Claimer(min_idle_time=5.0),
        housekeeping=False,
    )
    handle = queue.run()
    try:
        wait_until(lambda: len(done) + handle.stats().dead_lettered == len(entries), timeout=20)
    finally:
        assert handle.stop(timeout=5)

    # Then nothing ran the payloads
    assert not marker.exists()
    # And each was read as data where the field takes it as data, else dead-lettered
    # with a reason naming the field
    letters = {letter.original_id: letter for letter in flowd.DeadLetters(client, stream).list()}
    for msg_id, (kind, name, payload) in zip(ids, entries, strict=True):
        if read_as_data(kind, name, payload):
            assert msg_id in done, (kind, name)
            assert_read_as_data(done[msg_id], name, payload)
        else:
            assert msg_id in letters, (kind, name)
            assert f"field {name!r}" in letters[msg_id].reason, (kind, name)
    assert len(done) + len(letters) == len(entries)


@pytest.mark.parametrize("kind", list(payloads(Path("/nonexistent"))))
def test_from_fields_never_evaluates_code(kind: str, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    payload = payloads(marker)[kind]
    for name in [*Anything.__dataclass_fields__, EXTRA_KEY]:
        raw = {payload: b"x"} if name == EXTRA_KEY else {name.encode(): payload}
        text = {
            k.decode("utf-8", "surrogateescape"): v.decode("utf-8", "surrogateescape")
            for k, v in raw.items()
        }
        for fields in (raw, text):
            try:
                job = Anything.from_fields(fields)
            except flowd.DecodeError as exc:
                assert not read_as_data(kind, name, payload), (name, exc)
                assert exc.field == name
            else:
                assert read_as_data(kind, name, payload), (name, job)
                assert_read_as_data(job, name, payload)
    assert not marker.exists()
