"""A web dashboard of flowd queues: ``flowd dashboard``, or a WSGI app to mount.

Needs the ``dashboard`` extra (Jinja2 renders the pages, waitress serves
them). ``Dashboard`` is imported on first use, so ``flowd`` itself and its
command line work without the extra.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .app import Dashboard

__all__ = ["Dashboard"]


def __getattr__(name: str) -> Any:
    if name == "Dashboard":
        from .app import Dashboard

        return Dashboard
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
