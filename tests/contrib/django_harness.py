"""Helpers of the Django tests: run the test project (tests/contrib/django_project) in
subprocesses, as Django sets up once per process, and read what its jobs recorded."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import redis

from tests.helpers import run_python

REPO = Path(__file__).resolve().parents[2]


def scenario(
    name: str, env: dict[str, str], argument: Any = None, module: str = "scenarios"
) -> dict[str, Any]:
    """Run scenario ``name`` of ``tests/contrib/django_project/<module>.py`` (with a JSON
    ``argument``, if given) in a subprocess; the JSON it printed."""
    extra = [] if argument is None else [json.dumps(argument)]
    result = run_python(["-m", f"tests.contrib.django_project.{module}", name, *extra], env=env)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[-2] == "ok", result.stdout
    found: dict[str, Any] = json.loads(lines[-1])
    return found


def recorded(client: redis.Redis, stream: str, what: str) -> list[str]:
    return [v.decode() for v in client.lrange(f"{stream}:{what}", 0, -1)]


def child_pids(parent: int) -> list[int]:
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(stat[1]) == parent and stat[0] not in ("Z", "X"):
                children.append(int(entry.name))
    return children
