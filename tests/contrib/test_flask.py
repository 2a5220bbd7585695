"""flowd.contrib.flask: the extension with Flask's test client, and real workers.

The app factory below is also what the subprocess tests run, as
``flask --app tests.contrib.test_flask:create_app flowd worker``; it takes its Redis
and stream prefix from ``FLOWD_REDIS_URL`` and ``FLOWD_TEST_STREAM`` then.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from flask import Flask, current_app, jsonify

import flowd
from flowd.contrib.flask import Flowd
from tests.helpers import child_env, terminate, wait_until

REPO = Path(__file__).resolve().parents[2]
APP = "tests.contrib.test_flask:create_app"

flowd_ext = Flowd()


@dataclass
class Greet(flowd.Job):
    name: str
    sleep: float = 0.0


def greet(task: flowd.Task[Greet]) -> str:
    # Jobs run in an app context: current_app and the extension work as in a view.
    app = current_app
    time.sleep(task.job.sleep)
    client = flowd_ext.client
    client.rpush(f"{app.config['PREFIX']}:greeted", f"{app.config['GREETING']} {task.job.name}")
    client.hincrby(f"{app.config['PREFIX']}:by_consumer", flowd_ext.queue("greetings").consumer)
    return f"greeted {task.job.name}"


def create_app(url: str | None = None, prefix: str | None = None, **config: Any) -> Flask:
    app = Flask(__name__)
    prefix = prefix or os.environ["FLOWD_TEST_STREAM"]
    app.config.update(
        PREFIX=prefix,
        GREETING="hello",
        FLOWD_URL=url or os.environ["FLOWD_REDIS_URL"],
        FLOWD_CLIENT_OPTIONS={"socket_timeout": 10},
        FLOWD_QUEUES={
            "greetings": {
                "STREAM": f"{prefix}-greetings",
                "GROUP": "greeters",
                "JOB": Greet,  # objects work as well as dotted paths
                "WORKER": "tests.contrib.test_flask.greet",
                "CONCURRENCY": 4,
                "CLAIMER": {"MIN_IDLE_TIME": 5, "MAX_RETRIES": 2},
                "RESULT_TTL": 60,
            },
            "audit": {"STREAM": f"{prefix}-audit", "JOB": "tests.helpers.Numbered"},
        },
    )
    app.config.update(config)
    flowd_ext.init_app(app)

    @app.post("/greet/<name>")
    def enqueue_greeting(name: str) -> Any:
        return jsonify(id=flowd_ext.producer("greetings").enqueue(Greet(name=name)))

    @app.post("/greet-any/<name>")
    def enqueue_by_class(name: str) -> Any:
        return jsonify(id=flowd_ext.enqueue(Greet(name=name)))

    return app


def greeted(client: redis.Redis, prefix: str) -> list[str]:
    return [v.decode() for v in client.lrange(f"{prefix}:greeted", 0, -1)]


@pytest.fixture
def app(redis_url: str, stream: str) -> Flask:
    return create_app(redis_url, stream)


def test_init_app_reads_the_config_once_and_gives_cached_objects(
    app: Flask, redis_url: str, stream: str
) -> None:
    # Given an app initialised with FLOWD_* settings
    with app.app_context():
        # Then the extension builds each queue's producer and queue once, on one client
        producer = flowd_ext.producer("greetings")
        assert producer is flowd_ext.producer("greetings")
        assert producer.stream == f"{stream}-greetings"
        queue = flowd_ext.queue("greetings")
        assert queue is flowd_ext.queue("greetings")
        assert (queue.group, queue.concurrency, queue.job) == ("greeters", 4, Greet)
        assert queue.claimer is not None and queue.claimer.max_retries == 2
        assert queue.client is flowd_ext.client is producer.client
        assert flowd_ext.producer("audit").stream == f"{stream}-audit"
        with pytest.raises(flowd.ConfigurationError, match="has no 'WORKER'"):
            flowd_ext.queue("audit")
        with pytest.raises(flowd.ConfigurationError, match="no queue 'nope'"):
            flowd_ext.producer("nope")
        # And a config change after init_app changes nothing: it was read once
        app.config["FLOWD_QUEUES"] = {}
        assert flowd_ext.producer("greetings") is producer

    # And each app has its own queues
    other = create_app(redis_url, f"{stream}-other")
    with other.app_context():
        assert flowd_ext.producer("greetings").stream == f"{stream}-other-greetings"
    with app.app_context():
        assert flowd_ext.producer("greetings").stream == f"{stream}-greetings"

    # And without an app context, only an extension bound to an app knows which one
    with pytest.raises(RuntimeError, match="no Flask app"):
        flowd_ext.producer("greetings")
    bound = Flowd(create_app(redis_url, f"{stream}-bound"))
    assert bound.producer("greetings").stream == f"{stream}-bound-greetings"


def test_bad_settings_fail_at_init_app(redis_url: str, stream: str) -> None:
    with pytest.raises(flowd.ConfigurationError, match=r"FLOWD_QUEUES\['x'\]: unknown keys"):
        create_app(redis_url, stream, FLOWD_QUEUES={"x": {"JOB": Greet, "WORKR": greet}})
    with pytest.raises(flowd.ConfigurationError, match="needs 'JOB'"):
        create_app(redis_url, stream, FLOWD_QUEUES={"x": {"WORKER": greet}})
    app = create_app(redis_url, stream, FLOWD_QUEUES={"x": {"JOB": "tests.nope.Job"}})
    with app.app_context(), pytest.raises(flowd.ConfigurationError, match="cannot import"):
        flowd_ext.enqueue(Greet(name="a"), queue="x")


def test_views_enqueue_and_a_worker_runs_the_jobs_in_an_app_context(
    app: Flask, client: redis.Redis, stream: str
) -> None:
    # Given two jobs enqueued by views through Flask's test client
    web = app.test_client()
    first = web.post("/greet/ann")
    second = web.post("/greet-any/bob")
    assert first.status_code == second.status_code == 200
    ids = [first.get_json()["id"], second.get_json()["id"]]
    assert [i.decode() for i, _ in client.xrange(f"{stream}-greetings")] == ids

    # And a job of the wrong class is refused before anything is sent
    with app.app_context(), pytest.raises(flowd.EncodeError, match="takes Numbered jobs"):
        flowd_ext.enqueue(Greet(name="x"), queue="audit")

    # When the app's queue runs
    with app.app_context():
        queue = flowd_ext.queue("greetings")
    with queue.run() as handle:
        wait_until(lambda: len(greeted(client, stream)) == 2)
    # Then each job ran once, inside an app context of this app
    assert sorted(greeted(client, stream)) == ["hello ann", "hello bob"]
    assert handle.stats().processed == 2
    assert client.xpending(f"{stream}-greetings", "greeters")["pending"] == 0
    # And RESULT_TTL kept what each returned (from inside the app context)
    results = flowd.Results(client, f"{stream}-greetings")
    assert [results.wait(i, timeout=5).value for i in ids] == ["greeted ann", "greeted bob"]


def test_flask_flowd_worker_burst_drains_the_backlog(
    app: Flask, client: redis.Redis, stream: str
) -> None:
    # Given three jobs waiting
    with app.app_context():
        flowd_ext.producer("greetings").enqueue_bulk([Greet(name=n) for n in "xyz"])

    # When `flask flowd worker --burst` runs (in process, with Flask's CLI runner)
    result = app.test_cli_runner().invoke(args=["flowd", "worker", "--burst"])

    # Then it exits 0 after running them
    assert result.exit_code == 0, result.output
    assert sorted(greeted(client, stream)) == ["hello x", "hello y", "hello z"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nope"], "no queue 'nope'"),
        (["audit"], "has no 'WORKER'"),
        (["--processes", "2"], "--processes needs an app that `flask --app` can import"),
    ],
)
def test_flask_flowd_worker_usage_errors_exit_2(app: Flask, args: list[str], message: str) -> None:
    result = app.test_cli_runner().invoke(args=["flowd", "worker", *args])
    assert result.exit_code == 2, result.output
    assert message in result.output


@pytest.fixture
def flask_worker(redis_url: str, stream: str, tmp_path: Path) -> Iterator[Any]:
    """Start ``flask --app tests.contrib.test_flask:create_app flowd worker ARGS``."""
    started: list[subprocess.Popen[bytes]] = []
    env = child_env(redis_url, stream, "FLASK_")

    def start(*args: str) -> tuple[subprocess.Popen[bytes], Path]:
        err = tmp_path / f"flask-{len(started)}.err"
        with err.open("wb") as stderr:
            proc = subprocess.Popen(
                [sys.executable, "-m", "flask", "--app", APP, "flowd", "worker", *args],
                cwd=REPO,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
        started.append(proc)
        return proc, err

    yield start
    for proc in started:
        if proc.poll() is None:
            terminate(proc, 20)


def test_flask_flowd_worker_processes_consume_until_sigterm(
    flask_worker: Any, client: redis.Redis, stream: str
) -> None:
    # Given `flask flowd worker --processes 2`, as a deployment runs it
    proc, err = flask_worker("greetings", "--processes", "2", "--log-level", "INFO")

    # (once both children have started their queue)
    wait_until(lambda: all(f"-w{i}, concurrency" in err.read_text() for i in (0, 1)), timeout=30)
    # When jobs that take a moment arrive
    for i in range(24):
        client.xadd(f"{stream}-greetings", {"name": f"n{i}", "sleep": "0.1"})

    # Then both child processes run them, each as its own consumer
    wait_until(lambda: len(greeted(client, stream)) == 24, timeout=30)
    by_consumer = {
        name.decode()[-3:]: int(n) for name, n in client.hgetall(f"{stream}:by_consumer").items()
    }
    assert set(by_consumer) == {"-w0", "-w1"}, by_consumer

    # And SIGTERM stops everything cleanly
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0, err.read_text()
    assert "all worker processes stopped" in err.read_text()


def test_flask_flowd_worker_stops_cleanly_on_sigterm(
    flask_worker: Any, client: redis.Redis, stream: str
) -> None:
    proc, err = flask_worker("--log-level", "INFO")
    client.xadd(f"{stream}-greetings", {"name": "sub"})
    wait_until(lambda: greeted(client, stream) == ["hello sub"], timeout=20)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0, err.read_text()
    assert f"queue {stream}-greetings/greeters stopped" in err.read_text()
