"""``python manage.py flowd_worker [queue ...]``: run queues of ``settings.FLOWD``.

The options, signals and exit statuses are those of ``flowd worker`` (the
same runner, :mod:`flowd.cli.runner`): SIGTERM or SIGINT stops gracefully (a
SIGINT after that exits at once); 0 on a clean stop, 1 on an unclean one, 2
for bad usage or settings (system check errors included), 3 when Redis cannot
be reached.
"""

from __future__ import annotations

from typing import Any, ClassVar

from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError, SystemCheckError

from flowd.contrib.django import QUEUE_ENV, get_queue, queue_names, registry

from ....._redis.connect import EXIT_USAGE
from ....._redis.urls import redact_url
from .....cli import runner as _runner
from .....cli.parser import add_worker_options


class Command(BaseCommand):
    help = (
        "Run flowd queues of settings.FLOWD in the foreground (default: every queue "
        "with a WORKER). SIGTERM or SIGINT stops gracefully."
    )
    # Run in handle(), so that a failing check exits 2 like other bad settings.
    requires_system_checks: ClassVar[list[str]] = []

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument(
            "queues", nargs="*", metavar="queue", help="names in FLOWD['QUEUES'] (default: all)"
        )
        add_worker_options(parser, processes_note="; one queue only")
        parser.add_argument("--skip-checks", action="store_true", help="skip the system checks")
        parser.add_argument(
            "--log-level",
            choices=_runner.LOG_LEVELS,
            help="level of the flowd loggers (default: INFO, or your LOGGING setting)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        _runner.configure_logging(options["log_level"])
        try:
            if not options.get("skip_checks"):
                self.check()
            names = list(options["queues"]) or queue_names()
            _runner.run(
                [get_queue(name) for name in names],
                burst=options["burst"],
                processes=options["processes"],
                shutdown_timeout=options["shutdown_timeout"],
                connect_timeout=options["connect_timeout"],
                log_level=options["log_level"],
                child_target="flowd.contrib.django:queue_from_environ",
                child_env={QUEUE_ENV: names[0]} if names else None,
            )
        except SystemCheckError as exc:
            raise CommandError(str(exc), returncode=EXIT_USAGE) from exc
        except ImproperlyConfigured as exc:
            raise CommandError(str(exc), returncode=EXIT_USAGE) from exc
        except Exception as exc:
            failure = _runner.exit_status(exc, redact_url(registry().url))
            if failure is None:
                raise
            raise CommandError(str(failure), returncode=failure.status) from exc
