"""``python manage.py flowd_worker [queue ...]``: run queues of ``settings.FLOWD``.

The options, signals and exit statuses are those of ``flowd worker``:
SIGTERM or SIGINT stops gracefully (a second SIGINT exits at once); 0 on a
clean stop, 1 on an unclean one, 2 for bad usage or settings, 3 when Redis
cannot be reached.
"""

from __future__ import annotations

from typing import Any

import redis.exceptions
from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError

from flowd import cli
from flowd.contrib import LOG_LEVELS, configure_logging, run_queues
from flowd.contrib.django import QUEUE_ENV, get_queue, queue_names, registry


class Command(BaseCommand):
    help = (
        "Run flowd queues of settings.FLOWD in the foreground (default: every queue "
        "with a WORKER). SIGTERM or SIGINT stops gracefully."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument(
            "queues", nargs="*", metavar="queue", help="names in FLOWD['QUEUES'] (default: all)"
        )
        cli.add_worker_options(parser, processes_note="; one queue only")
        parser.add_argument(
            "--log-level",
            choices=LOG_LEVELS,
            help="level of the flowd loggers (default: INFO, or your LOGGING setting)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        configure_logging(options["log_level"])
        try:
            names = list(options["queues"]) or queue_names()
            queues = [get_queue(name) for name in names]
            status = run_queues(
                queues,
                url=registry().url,
                burst=options["burst"],
                processes=options["processes"],
                shutdown_timeout=options["shutdown_timeout"],
                connect_timeout=options["connect_timeout"],
                log_level=options["log_level"],
                child_target="flowd.contrib.django:queue_from_environ",
                child_env={QUEUE_ENV: names[0]} if names else None,
            )
        except ImproperlyConfigured as exc:
            raise CommandError(str(exc), returncode=cli.EXIT_USAGE) from exc
        except cli.CommandError as exc:
            raise CommandError(str(exc), returncode=exc.status) from exc
        except redis.exceptions.RedisError as exc:
            status = (
                cli.EXIT_UNREACHABLE
                if isinstance(exc, redis.exceptions.ConnectionError)
                else cli.EXIT_FAILED
            )
            raise CommandError(
                f"Redis error: {type(exc).__name__}: {exc}", returncode=status
            ) from exc
        if status != cli.EXIT_OK:
            raise CommandError("some worker processes stopped uncleanly", returncode=status)
