"""Process lifecycle: interpreter exit, fork, gunicorn, Django's autoreloader, eviction.

Each scenario runs the way a deployment does, in real subprocesses against the
test Redis: nothing here calls flowd's lifecycle hooks directly.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO

import pytest
import redis

import flowd
from tests.helpers import child_env, wait_until
from tests.redis_server import free_port

REPO = Path(__file__).resolve().parents[2]


def _stop_timed(proc: subprocess.Popen[str]) -> float:
    """SIGTERM ``proc`` and wait (up to 40 s) for it to exit; returns the seconds that took."""
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=40)
    return time.monotonic() - started


def _pending(client: redis.Redis, stream: str, group: str) -> int:
    return int(client.xpending(stream, group)["pending"])


def _script(redis_url: str, stream: str, mode: str, timeout: float = 60):
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "tests.consumer.lifecycle.script", redis_url, stream, mode],
        cwd=REPO,
        env=child_env(redis_url, stream, "DJANGO_"),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return proc, time.monotonic() - started


@pytest.mark.parametrize("mode", ["atexit", "never"])
def test_a_script_that_runs_a_queue_exits(redis_url: str, client: redis.Redis, stream: str, mode):
    # Given a script that starts a queue, processes 50 jobs and reaches its end
    # When it ends, with atexit.register(handle.stop, 10) or with no stop at all
    proc, seconds = _script(redis_url, stream, mode)
    # Then the process exits by itself, status 0, with every job acked
    assert proc.returncode == 0, proc.stderr
    assert "processed 50" in proc.stdout
    assert seconds < 30, f"took {seconds:.1f}s"
    assert _pending(client, stream, "g") == 0
    assert "stopped (consumer" in proc.stderr
    assert "did not stop cleanly" not in proc.stderr


def test_a_hung_job_does_not_keep_the_process_alive(
    redis_url: str, client: redis.Redis, stream: str
):
    # Given a script whose queue has a job that never returns and stop_timeout=1
    proc, seconds = _script(redis_url, stream, "hung")
    # Then the process still exits, naming the running message, which stays pending
    assert proc.returncode == 0, proc.stderr
    assert seconds < 30, f"took {seconds:.1f}s"
    assert "did not stop cleanly" in proc.stderr
    hung_id = client.xrange(stream, "-", "+")[-1][0].decode()
    assert hung_id in proc.stderr
    pending = client.xpending_range(stream, "g", "-", "+", 10)
    assert [p["message_id"].decode() for p in pending] == [hung_id]


def test_fork_after_run(redis_url: str, client: redis.Redis, stream: str):
    # Given a process that runs a queue, then forks (as gunicorn --preload does)
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.consumer.lifecycle.script", redis_url, stream, "fork"],
        cwd=REPO,
        env=child_env(redis_url, stream, "DJANGO_"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        lines: list[str] = []
        assert proc.stdout is not None
        while not any(line.startswith("parent serving") for line in lines):
            line = proc.stdout.readline()
            assert line, f"script ended early: {lines}"
            lines.append(line)
        # When the parent gets SIGTERM (which it turns into SystemExit, as gunicorn does)
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # Then the child saw a stopped handle whose stop() returned at once, and a WARNING
    child = json.loads(next(line for line in lines if line.startswith("child "))[6:])
    assert child["is_running"] is False
    assert child["stop"] is True
    assert child["stop_seconds"] < 0.5
    assert child["joined"] is True
    assert "forked" in err and "post_fork" in err
    assert err.count("forked") == 1, err
    assert "did not stop cleanly" not in err
    # and the parent kept running, then stopped cleanly
    assert "parent serving, is_running=True" in "".join(lines)
    assert proc.returncode == 0, err
    assert _pending(client, stream, "g") == 0


def _gunicorn(redis_url: str, stream: str, tmp_path: Path, *extra: str) -> subprocess.Popen[str]:
    log = tmp_path / "gunicorn.log"
    with (tmp_path / "output.log").open("w") as output:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gunicorn",
                "--workers",
                "2",
                "--bind",
                f"127.0.0.1:{free_port()}",
                "--graceful-timeout",
                "30",
                "--error-logfile",
                str(log),
                *extra,
                "tests.consumer.lifecycle.wsgi:app",
            ],
            cwd=REPO,
            env=child_env(redis_url, stream, "DJANGO_"),
            stdout=output,
            stderr=subprocess.STDOUT,
            text=True,
        )


def _text(path: Path) -> str:
    return path.read_text() if path.exists() else ""


def _consumers(client: redis.Redis, stream: str) -> set[str]:
    try:
        return {c["name"].decode() for c in client.xinfo_consumers(stream, "web")}
    except redis.ResponseError:
        return set()


@pytest.mark.slow
def test_gunicorn_sigterm_and_sighup(
    redis_url: str, client: redis.Redis, stream: str, tmp_path: Path
):
    # Given gunicorn with 2 sync workers whose app module starts a queue
    producer = flowd.Producer(client, stream=stream)
    server = _gunicorn(redis_url, stream, tmp_path)
    log = tmp_path / "gunicorn.log"
    try:
        producer.enqueue_bulk([_sleep(0.2) for _ in range(8)])
        wait_until(lambda: client.llen(f"{stream}:ran") >= 8, timeout=30)
        first_pids = {int(p) for p in client.lrange(f"{stream}:ran", 0, -1)}
        # When gunicorn is told to reload (SIGHUP): old workers exit, new ones consume
        server.send_signal(signal.SIGHUP)
        wait_until(lambda: _text(log).count("Booting worker") >= 4, timeout=30)
        # (an old worker may still finish what it read before the reload reached it)
        wait_until(lambda: not any(Path(f"/proc/{pid}").exists() for pid in first_pids), 30)
        client.delete(f"{stream}:ran")
        producer.enqueue_bulk([_sleep(0.2) for _ in range(8)])
        wait_until(lambda: client.llen(f"{stream}:ran") >= 8, timeout=30)
        new_pids = {int(p) for p in client.lrange(f"{stream}:ran", 0, -1)}
        assert not new_pids & first_pids, "old workers kept consuming after the reload"
        # and then the master gets SIGTERM while jobs run
        producer.enqueue_bulk([_sleep(1.0) for _ in range(4)])
        wait_until(lambda: _pending(client, stream, "web") > 0, timeout=10)
        seconds = _stop_timed(server)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    text = log.read_text()
    # Then everything ended within the stop timeout, with nothing left pending
    assert server.returncode == 0, text
    assert seconds < 15, f"gunicorn took {seconds:.1f}s to stop:\n{text}"
    assert "WORKER TIMEOUT" not in text
    assert _pending(client, stream, "web") == 0


@pytest.mark.slow
def test_gunicorn_preload(redis_url: str, client: redis.Redis, stream: str, tmp_path: Path):
    # Given gunicorn --preload: the app module, and its queue, start in the master
    producer = flowd.Producer(client, stream=stream)
    server = _gunicorn(redis_url, stream, tmp_path, "--preload")
    log, output = tmp_path / "gunicorn.log", tmp_path / "output.log"
    try:
        wait_until(lambda: _text(log).count("Booting worker") >= 2, timeout=30)
        # Then each forked worker says once that the queue runs in the parent only
        wait_until(lambda: _text(output).count("post_fork") >= 2, timeout=30)
        # and the master consumes
        producer.enqueue_bulk([_sleep(0.1) for _ in range(4)])
        wait_until(lambda: client.llen(f"{stream}:ran") >= 4, timeout=30)
        assert {int(p) for p in client.lrange(f"{stream}:ran", 0, -1)} == {server.pid}
        # When the master gets SIGTERM
        seconds = _stop_timed(server)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    # Then it stops its queue and exits promptly, with nothing pending
    assert server.returncode == 0, log.read_text()
    assert seconds < 15, f"gunicorn took {seconds:.1f}s to stop"
    assert _pending(client, stream, "web") == 0
    assert "did not stop cleanly" not in output.read_text()


def _sleep(seconds: float) -> flowd.Job:
    from tests.consumer.lifecycle.wsgi_job import Sleep

    return Sleep(seconds)


_DJANGO_SETTINGS = """
import os
SECRET_KEY = "flowd-lifecycle-tests"
DEBUG = True
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
INSTALLED_APPS = ["runapp"]
ROOT_URLCONF = "runapp.urls"
DATABASES = {}
USE_TZ = True
"""

_DJANGO_APPS = """
import os
from dataclasses import dataclass

import redis
from django.apps import AppConfig

import flowd


@dataclass
class Ping(flowd.Job):
    n: int


def work(task):
    pass


class RunAppConfig(AppConfig):
    name = "runapp"

    def ready(self):
        client = redis.Redis.from_url(os.environ["FLOWD_REDIS_URL"])
        queue = flowd.Queue(
            client, stream=os.environ["FLOWD_TEST_STREAM"], group="django", job=Ping,
            worker=work, claimer=flowd.Claimer(min_idle_time=30), stop_timeout=10,
        )
        queue.run()
        print(f"queue started in {os.getpid()}", flush=True)
"""

_DJANGO_URLS = """
from django.http import HttpResponse
from django.urls import path

VERSION = 1

urlpatterns = [path("", lambda request: HttpResponse(str(VERSION)))]
"""


@pytest.fixture
def django_project(tmp_path: Path) -> Path:
    """A minimal Django project whose AppConfig.ready() starts a queue, as users write it."""
    app = tmp_path / "runapp"
    app.mkdir()
    (tmp_path / "settings.py").write_text(_DJANGO_SETTINGS)
    (app / "__init__.py").write_text("")
    (app / "apps.py").write_text(_DJANGO_APPS)
    (app / "urls.py").write_text(_DJANGO_URLS)
    return tmp_path


def _django_env(redis_url: str, stream: str, project: Path) -> dict[str, str]:
    env = child_env(redis_url, stream, "DJANGO_")
    env.update(PYTHONPATH=f"{project}{os.pathsep}{REPO}", DJANGO_SETTINGS_MODULE="settings")
    return env


def test_django_manage_check_exits(redis_url: str, stream: str, django_project: Path):
    # Given a project whose AppConfig.ready() starts a queue
    # When `manage.py check` runs
    proc = subprocess.run(
        [sys.executable, "-m", "django", "check"],
        cwd=django_project,
        env=_django_env(redis_url, stream, django_project),
        capture_output=True,
        text=True,
        timeout=60,
    )
    # Then it prints its result and exits
    assert proc.returncode == 0, proc.stderr
    assert "queue started" in proc.stdout
    assert "no issues" in proc.stdout


def _collect(stream: IO[str], lines: list[str]) -> threading.Thread:
    """Read a subprocess's output into ``lines`` on a thread, so waits can time out."""

    def read() -> None:
        for line in stream:
            lines.append(line)

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return thread


@pytest.mark.slow
def test_django_runserver_reloads_on_a_file_change(
    redis_url: str, stream: str, django_project: Path
):
    # Given `runserver` with its autoreloader, and a queue started in ready()
    server = subprocess.Popen(
        [sys.executable, "-m", "django", "runserver", f"127.0.0.1:{free_port()}"],
        cwd=django_project,
        env=_django_env(redis_url, stream, django_project),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # so the test can end the reloader and its child together
    )
    lines: list[str] = []
    assert server.stdout is not None
    reader = _collect(server.stdout, lines)

    def queue_pids() -> set[str]:
        return {x.split()[-1] for x in list(lines) if x.startswith("queue started in")}

    try:
        wait_until(lambda: any("Quit the server" in x for x in list(lines)), 60)
        before = queue_pids()
        # When a source file changes
        time.sleep(1.1)  # the StatReloader compares modification times at 1 s resolution
        urls = django_project / "runapp" / "urls.py"
        urls.write_text(_DJANGO_URLS.replace("VERSION = 1", "VERSION = 2"))
        # Then the old child exits and a new one starts: the reload happened
        wait_until(lambda: queue_pids() - before, 60, message="".join(lines))
        assert any("changed, reloading" in x for x in lines), "".join(lines)
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGINT)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()
        reader.join(5)
        server.stdout.close()
