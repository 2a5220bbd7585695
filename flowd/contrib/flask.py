"""flowd for Flask: the :class:`Flowd` extension and the ``flask flowd worker`` command.

::

    from flask import Flask
    from flowd.contrib.flask import Flowd

    flowd_ext = Flowd()

    def create_app() -> Flask:
        app = Flask(__name__)
        app.config["FLOWD_URL"] = "redis://localhost:6379/0"
        app.config["FLOWD_QUEUES"] = {
            "emails": {"JOB": "myapp.jobs.SendEmail", "WORKER": "myapp.jobs.send"},
        }
        flowd_ext.init_app(app)
        return app

In a view, ``flowd_ext.producer("emails").enqueue(job)`` (or
``flowd_ext.enqueue(job)``) sends a job. Run the workers with
``flask --app myapp flowd worker [QUEUE ...]``, which takes the options of
``flowd worker``. Jobs run inside an app context of the app, so
``current_app`` and app-bound extensions work in them.

Configuration, read once by ``init_app``:

- ``FLOWD_URL``: the Redis URL (default ``redis://localhost:6379/0``);
- ``FLOWD_CLIENT_OPTIONS``: extra keywords of ``redis.Redis.from_url``;
- ``FLOWD_QUEUES``: queue name -> settings, the keys of :mod:`flowd.contrib`
  (``JOB``, ``WORKER``, ``STREAM``, ``GROUP``, ``CONCURRENCY``, ``CLAIMER``...).
  ``JOB`` and ``WORKER`` may be dotted paths or the objects themselves.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any, NoReturn

import click
from flask import Flask, current_app, has_app_context
from flask.cli import AppGroup, ScriptInfo

from .._redis.connect import EXIT_USAGE
from .._redis.urls import DEFAULT_URL, redact_url
from ..cli import runner as _runner
from ..errors import CommandError
from ..job import Job
from ..producer import Producer
from ..queue import Queue
from ..task import Task
from ._settings import QueueRegistry

__all__ = ["Flowd", "flowd_cli"]

_EXTENSION = "flowd"
#: Environment of the children of ``flask flowd worker --processes N``.
QUEUE_ENV = "FLOWD_FLASK_QUEUE"
APP_ENV = "FLOWD_FLASK_APP"


def _in_app_context(
    app: Flask, worker: Callable[[Task[Any]], object]
) -> Callable[[Task[Any]], object]:
    @functools.wraps(worker)
    def run(task: Task[Any]) -> object:
        with app.app_context():
            return worker(task)

    return run


class Flowd:
    """The flowd extension: queues from ``app.config``, producers, a CLI command.

    Use ``Flowd(app)`` for one app, or ``Flowd()`` then ``init_app(app)`` in an
    app factory. Methods act on the app of the current app context, else on
    the app given to the constructor. Thread-safe.
    """

    def __init__(self, app: Flask | None = None) -> None:
        self.app = app
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Read ``FLOWD_URL``, ``FLOWD_CLIENT_OPTIONS`` and ``FLOWD_QUEUES``; add ``flask flowd``.

        :raises flowd.ConfigurationError: the settings are malformed.
        """
        app.extensions[_EXTENSION] = QueueRegistry(
            app.config.get("FLOWD_URL", DEFAULT_URL),
            app.config.get("FLOWD_QUEUES", {}),
            where="FLOWD_QUEUES",
            client_options=app.config.get("FLOWD_CLIENT_OPTIONS"),
            wrap=functools.partial(_in_app_context, app),
        )
        app.cli.add_command(flowd_cli)

    def registry(self, app: Flask | None = None) -> QueueRegistry:
        """The queues of ``app`` (default: the current app, else the constructor's)."""
        if app is None:
            if has_app_context():
                app = current_app._get_current_object()  # type: ignore[attr-defined]
            elif self.app is not None:
                app = self.app
            else:
                raise RuntimeError(
                    "no Flask app: call this inside an app context, or create Flowd(app)"
                )
        try:
            found: QueueRegistry = app.extensions[_EXTENSION]
        except KeyError:
            raise RuntimeError(f"flowd is not initialised on {app!r}: call init_app") from None
        return found

    @property
    def client(self) -> Any:
        """The app's ``redis.Redis`` client, shared by its queues."""
        return self.registry().client

    def producer(self, name: str) -> Producer:
        """The :class:`flowd.Producer` of queue ``name``; the same object on every call."""
        return self.registry().producer(name)

    def queue(self, name: str) -> Queue[Any]:
        """The :class:`flowd.Queue` of queue ``name``; its workers run in an app context."""
        return self.registry().queue(name)

    def enqueue(self, job: Job, queue: str | None = None) -> str:
        """Send ``job`` now; returns its stream id.

        :param queue: the queue's name; by default the one queue whose ``JOB``
            is the job's class.
        :raises flowd.EncodeError: the job does not fit the queue's ``JOB``.
        """
        reg = self.registry()
        return reg.producer(reg.queue_for(job, queue)).enqueue(job)


@click.group("flowd", cls=AppGroup)
def flowd_cli() -> None:
    """flowd: run the app's queues."""


@flowd_cli.command("worker")
@click.argument("queues", nargs=-1, metavar="[QUEUE]...")
@click.option(
    "--processes",
    type=int,
    default=1,
    show_default=True,
    help="Worker processes, each its own consumer (one queue only).",
)
@click.option("--burst", is_flag=True, help="Process the backlog, then exit (cron mode).")
@click.option(
    "--shutdown-timeout",
    type=float,
    default=30.0,
    show_default=True,
    help="Seconds running jobs get to finish on stop.",
)
@click.option(
    "--connect-timeout",
    type=float,
    default=30.0,
    show_default=True,
    help="Seconds to wait for Redis at start.",
)
@click.option(
    "--log-level",
    type=click.Choice(_runner.LOG_LEVELS),
    default=None,
    help="Level of the flowd loggers (default INFO).",
)
def worker_command(
    queues: tuple[str, ...],
    processes: int,
    burst: bool,
    shutdown_timeout: float,
    connect_timeout: float,
    log_level: str | None,
) -> None:
    """Run QUEUEs of FLOWD_QUEUES (default: every queue with a WORKER) in the foreground.

    SIGTERM or SIGINT stops gracefully; a SIGINT after that exits at once.
    Exit status: 0 clean stop, 1 unclean stop, 2 bad usage or settings, 3 Redis
    unreachable.
    """
    _runner.configure_logging(log_level)
    reg: QueueRegistry = current_app.extensions[_EXTENSION]
    info = click.get_current_context().find_object(ScriptInfo)
    try:
        names = list(queues) or reg.consumable()
        child_env = {QUEUE_ENV: names[0] if names else ""}
        if processes > 1:
            if info is not None and info.create_app is not None:
                raise CommandError(
                    "--processes needs an app that `flask --app` can import", EXIT_USAGE
                )
            import_path = info.app_import_path if info is not None else None
            child_env[APP_ENV] = import_path or ""
        _runner.run(
            [reg.queue(name) for name in names],
            burst=burst,
            processes=processes,
            shutdown_timeout=shutdown_timeout,
            connect_timeout=connect_timeout,
            log_level=log_level,
            child_target="flowd.contrib.flask:queue_from_environ",
            child_env=child_env,
        )
    except Exception as exc:
        failure = _runner.exit_status(exc, redact_url(reg.url))
        if failure is None:
            raise
        _fail(str(failure), failure.status)


def _fail(message: str, status: int) -> NoReturn:
    click.echo(f"flowd: {message}", err=True)
    raise click.exceptions.Exit(status)


def queue_from_environ() -> Queue[Any]:
    """The queue ``$FLOWD_FLASK_QUEUE`` of the app ``$FLOWD_FLASK_APP`` (as ``flask --app``).

    The ``MODULE:ATTR`` target of the children of ``flask flowd worker --processes N``.
    """
    app = ScriptInfo(app_import_path=os.environ.get(APP_ENV) or None).load_app()
    with app.app_context():
        return Flowd().queue(os.environ[QUEUE_ENV])
