"""Commands framed as RESP by hand are byte for byte what redis-py frames."""

from __future__ import annotations

import pytest
from redis.connection import Connection

from flowd._redis.resp import frame


@pytest.mark.parametrize(
    "args",
    [
        ("EVALSHA", "ab12", 2, "{s}:k", "7", "1-0", ""),
        ("SET", "Zoë", "東京"),
        ("EVALSHA", "ab12", 2, b"{s}:\xff\x00", "{s}:k", 60_000, "1-0"),
    ],
)
def test_frame_is_redis_pys_framing(args: tuple[str | bytes | int, ...]) -> None:
    assert frame(args) == b"".join(Connection().pack_commands([args]))
