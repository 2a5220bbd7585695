"""The Django app of flowd: add ``"flowd.contrib.django"`` to ``INSTALLED_APPS``."""

from __future__ import annotations

from django.apps import AppConfig
from django.core import checks


class FlowdConfig(AppConfig):
    """Registers the ``flowd_worker`` command and a system check of ``settings.FLOWD``."""

    name = "flowd.contrib.django"
    label = "flowd"
    verbose_name = "flowd"

    def ready(self) -> None:
        from . import check_settings

        checks.register(check_settings)
