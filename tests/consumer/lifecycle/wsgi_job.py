"""The job of tests/consumer/lifecycle/wsgi.py, importable without starting that module's queue."""

from __future__ import annotations

from dataclasses import dataclass

import flowd


@dataclass
class Sleep(flowd.Job):
    seconds: float
