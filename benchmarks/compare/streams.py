"""Stream helpers of the raw and flowd contenders: fill a stream, and know when it is done.

The clock of a processing run stops when the last job's effect is visible in Redis: the
counter reaching N for the INCR body; for the others, the contender's own record that
every job finished (for flowd and the raw loops: nothing pending, everything delivered).
"""

from __future__ import annotations

from collections.abc import Callable

import redis


def bench_fields(n: int, key: str) -> list[dict[str, str]]:
    """The stream fields of n BenchJobs, built before the clock starts (raw contenders)."""
    return [{"n": str(i), "key": key} for i in range(n)]


def check_xlen(client: redis.Redis, stream: str, n: int) -> None:
    length = client.xlen(stream)
    if length != n:
        raise RuntimeError(f"{stream}: expected {n} entries, found {length}")


def fill_stream(
    client: redis.Redis, stream: str, n: int, key: str, marker: str | None, group: bool
) -> str:
    """XADD the N jobs (after a start marker, if given); returns the last id."""
    fields = bench_fields(n, key)
    if marker is not None:
        fields.insert(0, {"n": "-1", "key": marker})
    last = ""
    for start in range(0, len(fields), 1000):
        pipe = client.pipeline(transaction=False)
        for entry in fields[start : start + 1000]:
            pipe.xadd(stream, entry)  # type: ignore[arg-type]
        last = pipe.execute()[-1].decode()
    if group:
        client.xgroup_create(stream, "g", id="0")
    return last


def flowd_finished(client: redis.Redis, stream: str, last_id: str) -> bool:
    for info in client.xinfo_groups(stream):
        if info["name"] in (b"g", "g"):
            delivered = info["last-delivered-id"]
            if isinstance(delivered, bytes):
                delivered = delivered.decode()
            return bool(info["pending"] == 0 and delivered == last_id)
    return False


def counter_reached(client: redis.Redis, key: str, n: int) -> Callable[[], bool]:
    def check() -> bool:
        value = client.get(key)
        return value is not None and int(value) >= n

    return check


def group_progress(client: redis.Redis, stream: str) -> tuple[int, int]:
    """(entries delivered to group g, pending) from XINFO GROUPS (Redis >= 7 has entries-read)."""
    for info in client.xinfo_groups(stream):
        if info["name"] in (b"g", "g"):
            read = info.get("entries-read")
            if read is None:  # Redis 6.2: count what is left after last-delivered-id
                last = info["last-delivered-id"]
                left = len(client.xrange(stream, min=b"(" + _as_bytes(last), max="+"))
                read = int(client.xlen(stream)) - left  # only valid before any trim
            return int(read), int(info["pending"])
    return 0, 0


def _as_bytes(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode()
