"""``python manage.py flowd_worker [queue ...] [--queue NAME ...]``: run queues of
``settings.FLOWD`` and the task queues of the ``TASKS`` backends that are
``flowd.contrib.django.tasks.FlowdBackend``.

Positional names are queues of ``FLOWD['QUEUES']``; ``--queue`` names Django task
queues (``--backend ALIAS`` narrows them to one backend). With neither, every
queue of both runs.

The options, signals and exit statuses are those of ``flowd worker`` (the
same runner, :mod:`flowd.cli.runner`): SIGTERM or SIGINT stops gracefully (a
SIGINT after that exits at once); 0 on a clean stop, 1 on an unclean one, 2
for bad usage or settings (system check errors included), 3 when Redis cannot
be reached.
"""

from __future__ import annotations

from typing import Any, ClassVar

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError, SystemCheckError

from flowd.contrib.django import QUEUE_ENV, get_queue, queue_names, registry

from ....._redis.connect import EXIT_USAGE, client_address
from ....._redis.urls import redact_url
from .....cli import runner as _runner
from .....cli.parser import add_worker_options
from .....queue import Queue


class Command(BaseCommand):
    help = (
        "Run flowd queues of settings.FLOWD and Django task queues of flowd TASKS "
        "backends in the foreground (default: all of them). SIGTERM or SIGINT stops "
        "gracefully."
    )
    # Run in handle(), so that a failing check exits 2 like other bad settings.
    requires_system_checks: ClassVar[list[str]] = []

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument(
            "queues", nargs="*", metavar="queue", help="names in FLOWD['QUEUES'] (default: all)"
        )
        parser.add_argument(
            "--queue",
            action="append",
            dest="task_queues",
            metavar="NAME",
            help="a Django task queue to run (repeatable; default: all of them)",
        )
        parser.add_argument(
            "--backend",
            metavar="ALIAS",
            help="run the task queues of this TASKS backend only (default: every flowd one)",
        )
        add_worker_options(parser, processes_note="; one queue only")
        parser.add_argument("--skip-checks", action="store_true", help="skip the system checks")
        parser.add_argument(
            "--log-level",
            choices=_runner.LOG_LEVELS,
            help="level of the flowd loggers (default: INFO, or your LOGGING setting)",
        )

    #: The Redis the queues use, as a failure message names it.
    _url = "the server"

    def handle(self, *args: Any, **options: Any) -> None:
        _runner.configure_logging(options["log_level"])
        try:
            if not options.get("skip_checks"):
                self.check()
            queues, target, env = self._queues(options)
            _runner.run(
                queues,
                burst=options["burst"],
                processes=options["processes"],
                shutdown_timeout=options["shutdown_timeout"],
                connect_timeout=options["connect_timeout"],
                log_level=options["log_level"],
                child_target=target,
                child_env=env,
            )
        except SystemCheckError as exc:
            raise CommandError(str(exc), returncode=EXIT_USAGE) from exc
        except ImproperlyConfigured as exc:
            raise CommandError(str(exc), returncode=EXIT_USAGE) from exc
        except Exception as exc:
            failure = _runner.exit_status(exc, self._url)
            if failure is None:
                raise
            raise CommandError(str(failure), returncode=failure.status) from exc

    def _queues(self, options: dict[str, Any]) -> tuple[list[Queue[Any]], str | None, Any]:
        """The queues to run, and the target and environment of a --processes child."""
        asked = list(options["queues"])
        names = list(asked)
        task_names = list(options["task_queues"] or [])
        alias = options["backend"]
        tasks_asked = bool(task_names or alias)
        queues: list[Queue[Any]] = []
        target: str | None = None
        env: dict[str, str] | None = None
        if names or (not tasks_asked and getattr(settings, "FLOWD", None) is not None):
            names = names or queue_names()
            queues += [get_queue(name) for name in names]
            self._url = redact_url(registry().url)
            if names:
                target, env = "flowd.contrib.django:queue_from_environ", {QUEUE_ENV: names[0]}
        if tasks_asked or (not asked and getattr(settings, "TASKS", None)):
            from ...tasks.worker import TASK_QUEUE_ENV, backend_queues

            chosen = backend_queues(task_names or None, alias)
            queues += [queue for _, _, queue in chosen]
            if chosen and target is None:
                self._url = client_address(chosen[0][2].client)
                target = "flowd.contrib.django.tasks.worker:queue_from_environ"
                env = {TASK_QUEUE_ENV: f"{chosen[0][0]}:{chosen[0][1]}"}
        return queues, target, env
