"""The job codec: how a Job dataclass maps to stream fields and back.

Imports nothing of flowd but ``errors`` and ``_redis`` (see flowd/__init__).
"""
