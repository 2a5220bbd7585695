"""Queue configuration: bad arguments fail at construction; server version checks."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import pytest
import redis

import flowd
from flowd._redis.session import check_version
from tests.helpers import GROUP, Numbered, flowd_threads, messages, noop, numbered_queue


class NotAJob:
    n: int = 0


@dataclasses.dataclass
class PlainDataclass:
    n: int


@pytest.mark.parametrize(
    "override",
    [
        {"concurrency": 0},
        {"concurrency": -1},
        {"concurrency": 1.5},
        {"concurrency": True},
        {"concurrency": 4097},
        {"concurrency": 10**9},
        {"block": -1},
        {"block": 0},
        {"block": "2"},
        {"stream": ""},
        {"stream": None},
        {"group": ""},
        {"consumer": ""},
        {"job": NotAJob},
        {"job": PlainDataclass},
        {"job": Numbered(1)},
        {"worker": "not callable"},
        {"worker": None},
        {"client": "redis://localhost"},
        {"client": object()},
        {"read_client": 42},
        {"claimer": 5},
    ],
    ids=lambda o: "-".join(f"{k}={v!r}" for k, v in o.items()),
)
def test_bad_configuration_raises_at_construction(
    client: redis.Redis, stream: str, override: dict[str, Any]
) -> None:
    # Given otherwise valid arguments with one bad value
    kwargs: dict[str, Any] = {
        "stream": stream,
        "group": GROUP,
        "job": Numbered,
        "worker": noop,
    }
    override = dict(override)
    target = override.pop("client", client)
    kwargs.update(override)

    # When the queue is built
    # Then ConfigurationError (also a ValueError and a FlowdError) is raised, with nothing sent
    with pytest.raises(flowd.ConfigurationError) as info:
        flowd.Queue(target, **{"claimer": None, **kwargs})
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, flowd.FlowdError)
    assert not client.exists(stream)


@pytest.mark.parametrize("version", ["6.0.16", "5.0.7", "6.1.240"])
def test_check_version_rejects_servers_older_than_6_2(version: str) -> None:
    # Given the version string of a server older than 6.2
    # When it is checked
    # Then RedisVersionError names the version found
    with pytest.raises(flowd.RedisVersionError) as info:
        check_version(version)
    assert version in str(info.value)
    assert info.value.found == version
    assert isinstance(info.value, flowd.FlowdError)


@pytest.mark.parametrize("version", ["6.2.0", "6.2.14", "7.0.15", "7.2.4", "10.0.0"])
def test_check_version_accepts_6_2_and_later(version: str) -> None:
    # Given a supported version, when it is checked, then nothing is raised
    check_version(version)


def test_the_test_server_passes_the_version_check(redis_version: tuple[int, ...]) -> None:
    # Given the server the suite runs against, when its version is checked, then it passes
    check_version(".".join(map(str, redis_version)))


def test_a_queue_has_a_claimer_by_default(
    client: redis.Redis, stream: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="flowd")
    # Given a Queue built without a claimer argument
    queue = numbered_queue(client, stream, noop)

    # Then it has DESIGN's default claimer: 30 s, 3 retries, the dead-letter stream on
    assert isinstance(queue.claimer, flowd.Claimer)
    assert queue.claimer.min_idle_time == 30.0
    assert queue.claimer.max_retries == 3
    assert queue.claimer.dead_letter_stream(stream) == "{" + stream + "}:dead"
    # (each queue its own: changing one queue's claimer changes no other's)
    other = numbered_queue(client, stream, noop)
    assert other.claimer is not queue.claimer

    # And running it starts a claimer thread, without the "no claimer" warning
    with queue.run():
        assert f"flowd-claimer-{stream}" in flowd_threads(stream)
    assert not messages(caplog, logging.WARNING, "no claimer")


def test_claimer_none_turns_the_claimer_off_with_a_warning(
    client: redis.Redis, stream: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="flowd")
    # Given a Queue built with claimer=None
    queue = numbered_queue(client, stream, noop, claimer=None)

    # When it runs, Then there is no claimer thread and a WARNING says failures are never retried
    assert queue.claimer is None
    with queue.run():
        assert f"flowd-claimer-{stream}" not in flowd_threads(stream)
        assert f"flowd-reader-{stream}" in flowd_threads(stream)
    assert messages(caplog, logging.WARNING, "no claimer")
