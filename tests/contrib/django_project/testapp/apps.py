from __future__ import annotations

from typing import Any

from django.apps import AppConfig


class TestAppConfig(AppConfig):
    name = "tests.contrib.django_project.testapp"
    label = "testapp"

    def ready(self) -> None:
        try:
            from django.tasks import signals
        except ImportError:
            from django_tasks import signals  # type: ignore[no-redef]

        for name in ("task_enqueued", "task_started", "task_finished"):
            getattr(signals, name).connect(_recorder(name), weak=False)


def _recorder(name: str) -> Any:
    def receive(sender: Any, task_result: Any, **kwargs: Any) -> None:
        from tests.contrib.django_project.testapp.jobs import record

        record("signals", f"{name} {task_result.task.name} {task_result.status} {task_result.id}")

    return receive
