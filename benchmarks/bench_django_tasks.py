"""Django Tasks backends side by side: flowd's FlowdBackend, django-tasks-db (on PostgreSQL
and on SQLite) and django-tasks-rq, on the same ``@task`` functions.

Run from the repository root with the ``bench`` extra installed (about 3 minutes)::

    python benchmarks/bench_django_tasks.py
    python benchmarks/bench_django_tasks.py --tasks 2000 --repeat 5 --json out.json
    python benchmarks/bench_django_tasks.py --skip-postgres          # no PostgreSQL at hand
    FLOWD_REDIS_SERVER=/path/to/redis-server python benchmarks/bench_django_tasks.py

For each body (``noop``; ``checksum``, a JSON document and its SHA-256, no database),
each repeat runs every contender in turn (the order rotates) in a fresh process
(benchmarks/djtasks/driver.py): ``--tasks`` tasks are enqueued one ``Task.enqueue()``
at a time behind a start marker, then the backend's own worker runs them as a
subprocess, with each backend's defaults (results kept):

- flowd: ``manage.py flowd_worker`` (one process, concurrency 8);
- django-tasks-db: ``manage.py db_worker`` (one process, one task at a time);
- django-tasks-rq: ``manage.py rqworker --job-class django_tasks_rq.Job
  --worker-class rq.worker.SimpleWorker`` (rq runs one job at a time; SimpleWorker, which
  rq's notes on performance recommend for short jobs, instead of a fork per job:
  ``--with-rq-fork`` adds the default forking worker too).

The run clock starts when the worker has run the marker (start-up is left out for all)
and stops when the backend's own record says every task succeeded: flowd's group has
read every entry and has nothing pending; django-tasks-db has N+1 SUCCESSFUL rows;
rq's finished-job registry holds N+1 jobs. The worker is then stopped (SIGTERM) and
three results are read back with ``get_result``. The table gives medians over the
repeats and, per contender, the median of flowd's rate over that contender's in the
same repeat.

Everything runs against a private redis-server on a free loopback port (flowd in
database 0, rq in 1) and, for PostgreSQL, a database ``flowd_bench_<pid>`` created on
``--pg-host`` (trust auth, user ``postgres`` by default) and dropped at the end.
Nothing is asserted about speed; a run fails if a task is lost or a result is wrong.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import redis  # noqa: E402

from tests.redis_server import RedisServer  # noqa: E402

BODIES = ("noop", "checksum")
SETTINGS = "benchmarks.djtasks.settings"


@dataclass(frozen=True)
class Contender:
    """One backend on one database, and the worker that runs it."""

    name: str
    backend: str  # BENCH_TASKS_BACKEND
    database: str  # BENCH_DATABASE
    worker: str  # a key of driver.WORKERS


FLOWD = Contender("flowd", "flowd", "sqlite", "flowd")
CONTENDERS = (
    FLOWD,
    Contender("django-tasks-db, PostgreSQL", "db", "postgres", "db"),
    Contender("django-tasks-db, SQLite", "db", "sqlite", "db"),
    Contender("django-tasks-rq", "rq", "sqlite", "rq"),
)
RQ_FORK = Contender("django-tasks-rq, forking worker", "rq", "sqlite", "rq-fork")


@dataclass
class Row:
    """Every repeat's rates of one contender (and body, for runs)."""

    rates: list[float] = field(default_factory=list)
    ratios: list[float] = field(default_factory=list)  # flowd's rate / this one's


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=1000, help="tasks per run (1000)")
    parser.add_argument("--repeat", type=int, default=3, help="repeats (3)")
    parser.add_argument("--skip-postgres", action="store_true", help="no PostgreSQL rows")
    parser.add_argument("--with-rq-fork", action="store_true", help="add rq's forking worker")
    parser.add_argument("--pg-host", default="127.0.0.1")
    parser.add_argument("--pg-port", default="5432")
    parser.add_argument("--pg-user", default="postgres")
    parser.add_argument(
        "--pg-admin-db", default="postgres", help="database to connect to for CREATE DATABASE"
    )
    parser.add_argument("--json", type=Path, help="also write every run's numbers here")
    parser.add_argument("--logs", type=Path, help="keep the workers' logs here (default: deleted)")
    parser.add_argument(
        "--only", action="append", help="run only contenders whose name has this (and flowd)"
    )
    return parser.parse_args(argv)


def env_of(contender: Contender, base: dict[str, str], tmp: Path) -> dict[str, str]:
    env = dict(base)
    env.update(
        BENCH_TASKS_BACKEND=contender.backend,
        BENCH_DATABASE=contender.database,
        BENCH_SQLITE=str(tmp / f"{contender.worker}.sqlite3"),
    )
    return env


def django(args: list[str], env: dict[str, str]) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "django", *args], cwd=ROOT, env=env, capture_output=True
    )
    if done.returncode != 0:
        raise RuntimeError(f"django {args} failed:\n{done.stderr.decode(errors='replace')}")


def one_run(
    contender: Contender, body: str, args: argparse.Namespace, env: dict[str, str], logs: Path
) -> dict[str, Any]:
    command = [sys.executable, "-m", "benchmarks.djtasks.driver", contender.worker, body]
    done = subprocess.run(
        [*command, str(args.tasks), str(logs)], cwd=ROOT, env=env, capture_output=True
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"{contender.name} / {body} failed:\n{done.stderr.decode(errors='replace')}"
        )
    found: dict[str, Any] = json.loads(done.stdout.decode().splitlines()[-1])
    return found


class PostgresDatabase:
    """A database of the benchmark's own on the machine's PostgreSQL, dropped at the end."""

    def __init__(self, args: argparse.Namespace) -> None:
        import psycopg

        self.name = f"flowd_bench_{os.getpid()}"
        self._connect = lambda: psycopg.connect(
            host=args.pg_host,
            port=args.pg_port,
            user=args.pg_user,
            dbname=args.pg_admin_db,
            autocommit=True,
        )
        with self._connect() as conn:
            self.version = str(conn.execute("SHOW server_version").fetchone()[0])  # type: ignore[index]
            conn.execute(f'CREATE DATABASE "{self.name}"')

    def drop(self) -> None:
        with self._connect() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in (
        "Django",
        "django-tasks",
        "django-tasks-db",
        "django-tasks-rq",
        "rq",
        "redis",
        "hiredis",
        "psycopg",
    ):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "-"
    return found


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def report(
    contenders: list[Contender],
    enqueue: dict[str, Row],
    runs: dict[tuple[str, str], Row],
    args: argparse.Namespace,
) -> str:
    head = f"{'backend (worker)':34} {'enqueue/s':>10} {'flowd x':>8}" + "".join(
        f" {body + ' run/s':>14} {'flowd x':>8}" for body in BODIES
    )
    lines = [head, "-" * len(head)]
    for contender in contenders:
        cells = [f"{contender.name:34}"]
        row = enqueue[contender.name]
        cells.append(f"{median(row.rates):>10,.0f} {median(row.ratios):>7.1f}x")
        for body in BODIES:
            row = runs[(contender.name, body)]
            cells.append(f" {median(row.rates):>14,.0f} {median(row.ratios):>7.1f}x")
        lines.append(" ".join(cells))
    lines.append(
        f"({args.tasks:,} tasks per run, medians of {args.repeat} repeats; 'flowd x' is the"
        " median of flowd's rate / this row's, per repeat)"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    contenders = [c for c in CONTENDERS if not (args.skip_postgres and c.database == "postgres")]
    if args.with_rq_fork:
        contenders.append(RQ_FORK)
    if args.only:
        contenders = [c for c in contenders if c is FLOWD or any(o in c.name for o in args.only)]
    tmpdir = tempfile.TemporaryDirectory(prefix="flowd-bench-djtasks-")
    tmp = Path(tmpdir.name)
    logs = args.logs or tmp
    logs.mkdir(parents=True, exist_ok=True)
    server = RedisServer()
    server.start()
    pg: PostgresDatabase | None = None
    try:
        base = dict(os.environ)
        base.update(
            DJANGO_SETTINGS_MODULE=SETTINGS,
            PYTHONPATH=os.pathsep.join([str(ROOT), base.get("PYTHONPATH", "")]).rstrip(os.pathsep),
            BENCH_REDIS_URL=f"redis://127.0.0.1:{server.port}",
        )
        if any(c.database == "postgres" for c in contenders):
            pg = PostgresDatabase(args)
            base.update(
                BENCH_PG_NAME=pg.name,
                BENCH_PG_HOST=args.pg_host,
                BENCH_PG_PORT=args.pg_port,
                BENCH_PG_USER=args.pg_user,
            )
        env_info = versions()
        env_info["redis-server"] = str(
            redis.Redis(port=server.port).info("server")["redis_version"]
        )
        env_info["postgresql"] = pg.version if pg else "-"
        print(
            "environment: "
            + ", ".join(f"{k} {v}" for k, v in env_info.items())
            + f"; {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}; logs in {logs}",
            flush=True,
        )
        envs = {c.name: env_of(c, base, tmp) for c in contenders}
        for contender in contenders:
            django(["migrate", "--verbosity", "0"], envs[contender.name])
        enqueue = {c.name: Row() for c in contenders}
        runs = {(c.name, body): Row() for c in contenders for body in BODIES}
        records: list[dict[str, Any]] = []
        for repeat in range(args.repeat):
            for body in BODIES:
                shift = (repeat + BODIES.index(body)) % len(contenders)
                order = contenders[shift:] + contenders[:shift]
                got: dict[str, dict[str, Any]] = {}
                for contender in order:
                    found = one_run(contender, body, args, envs[contender.name], logs)
                    found.update(repeat=repeat, body=body, contender=contender.name)
                    records.append(found)
                    got[contender.name] = found
                    print(
                        f"repeat {repeat + 1}/{args.repeat} {body:8} {contender.name:34}"
                        f" enqueue {args.tasks / found['enqueue_s']:>9,.0f}/s"
                        f"  run {args.tasks / found['run_s']:>9,.0f}/s"
                        f"  (worker start-up {found['startup_s']:.2f} s)",
                        flush=True,
                    )
                flowd_run = got[FLOWD.name]
                for contender in contenders:
                    found = got[contender.name]
                    enqueue[contender.name].rates.append(args.tasks / found["enqueue_s"])
                    enqueue[contender.name].ratios.append(
                        found["enqueue_s"] / flowd_run["enqueue_s"]
                    )
                    row = runs[(contender.name, body)]
                    row.rates.append(args.tasks / found["run_s"])
                    row.ratios.append(found["run_s"] / flowd_run["run_s"])
        print()
        print(report(contenders, enqueue, runs, args))
        if args.json:
            args.json.write_text(
                json.dumps(
                    {"environment": env_info, "tasks": args.tasks, "runs": records}, indent=2
                )
            )
    finally:
        server.stop()
        if pg is not None:
            pg.drop()
        tmpdir.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
