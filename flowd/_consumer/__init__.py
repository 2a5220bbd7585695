"""The consumer runtime of a running Queue: threads, permits, reading, claiming, acking.

``engine.py`` opens with the walk-through. Never imports ``cli``, ``dashboard``
or ``contrib``.
"""
