"""Commands framed as RESP by hand are byte for byte what redis-py frames, and a script
call framed so runs as redis-py's would."""

from __future__ import annotations

import pytest
import redis
from redis.connection import Connection

from flowd._redis.resp import frame
from flowd._redis.scripts import Script


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


_ECHO = Script("return {KEYS[1], ARGV[1], ARGV[2]}")


def test_a_framed_script_call_runs_after_a_script_flush_and_raises_its_errors(
    client: redis.Redis,
) -> None:
    # Given a server that does not know the script (flushed)
    client.script_flush()
    # When it is called framed by hand, twice (EVAL, then EVALSHA)
    for _ in range(2):
        assert _ECHO.framed(client, ["{s}:k"], ["Zoë", 7]) == [b"{s}:k", "Zoë".encode(), b"7"]
    # Then an error reply is raised, and the pooled connection stays usable
    with pytest.raises(redis.exceptions.ResponseError):
        Script("return redis.call('NOSUCHCOMMAND')").framed(client, ["{s}:k"], [])
    assert client.ping()
