"""Flow control: what decides when a waiting job may start.

Priorities (bands of streams), pause and resume, the global rate limit,
per-key concurrency and expiry each live in a module here. They talk to
Redis through ``flowd._redis`` and never import the consumer runtime or the
public modules above them: ``flowd._consumer`` and ``flowd.queue`` call them.
"""
