"""Fixtures of the Django tests: the test project's environment and its worker processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.contrib.django_harness import REPO, child_pids
from tests.helpers import child_env, run_python, terminate


@pytest.fixture
def django_env(redis_url: str, stream: str, tmp_path: Path) -> dict[str, str]:
    """The environment of the test project: its Redis, stream prefix and SQLite file."""
    env = child_env(redis_url, stream, "DJANGO_")
    env.update(
        DJANGO_SETTINGS_MODULE="tests.contrib.django_project.settings",
        FLOWD_TEST_DB=str(tmp_path / "db.sqlite3"),
    )
    return env


@pytest.fixture
def start_worker(django_env: dict[str, str], tmp_path: Path) -> Iterator[Any]:
    """Start ``python -m django flowd_worker ARGS``; stopped (and reaped) at teardown."""
    migrated = run_python(["-m", "django", "migrate", "--verbosity", "0"], env=django_env)
    assert migrated.returncode == 0, migrated.stderr
    started: list[tuple[subprocess.Popen[bytes], Path]] = []

    def start(*args: str) -> tuple[subprocess.Popen[bytes], Path]:
        err = tmp_path / f"worker-{len(started)}.err"
        with err.open("wb") as stderr:
            proc = subprocess.Popen(
                [sys.executable, "-m", "django", "flowd_worker", *args],
                cwd=REPO,
                env=django_env,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
        started.append((proc, err))
        return proc, err

    yield start
    for proc, _ in started:
        if proc.poll() is None:
            children = child_pids(proc.pid)
            terminate(proc, 20)
            for pid in children:  # only the children of the process started here
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
