"""The ``flowd`` command: argument parsing, commands, the worker runner and supervisor."""

from .parser import main

__all__ = ["main"]
