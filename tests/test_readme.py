"""README.rst stays true: its quick start runs as written against a real server."""

from __future__ import annotations

import os
import re
from pathlib import Path

import redis

from tests.helpers import run_python
from tests.redis_server import RedisServer

README = Path(__file__).resolve().parent.parent / "README.rst"


def _python_blocks(text: str) -> list[str]:
    blocks = []
    for match in re.finditer(r"\.\. code-block:: python\n\n((?:    .*\n|\n)+)", text):
        lines = [line[4:] for line in match.group(1).splitlines()]
        blocks.append("\n".join(lines).strip() + "\n")
    return blocks


def test_quickstart_runs_and_processes_every_job(tmp_path: Path) -> None:
    # Given the README's quick start, saved as a file, and a Redis of its own
    script = tmp_path / "quickstart.py"
    script.write_text(_python_blocks(README.read_text())[0])
    server = RedisServer()
    server.start()
    try:
        # When it runs as a user would run it
        env = {**os.environ, "FLOWD_REDIS_URL": server.url}
        result = run_python([str(script)], env=env, cwd=None)
        # Then it exits cleanly, every job ran, and nothing is left pending
        assert result.returncode == 0, result.stderr
        assert result.stdout.count("mail to") == 4, result.stdout
        assert "processed=4" in result.stdout, result.stdout
        client = redis.Redis.from_url(server.url)
        try:
            assert client.xpending("emails", "mailers")["pending"] == 0
            entry = client.xrange("emails", count=1)[0][1]
            assert entry == {b"to": b"a@example.com", b"subject": b"hi", b"attempt": b"0"}
        finally:
            client.close()
    finally:
        server.close()


def test_readme_names_the_commands_ci_runs() -> None:
    text = README.read_text()
    ci = (README.parent / ".ci" / "run").read_text()
    assert "pip install -e '.[test]'" in text and "pip install -e '.[test]'" in ci
    assert "python -m pytest" in text and "python -m pytest" in ci


def test_every_test_file_the_readme_names_exists() -> None:
    # The Reliability section names the test of each fault; a moved or renamed test
    # must not leave it pointing nowhere.
    named = re.findall(r"``(tests/[\w/]+\.py)``", README.read_text())
    assert len(named) >= 11, named
    missing = [path for path in named if not (README.parent / path).is_file()]
    assert not missing, missing
