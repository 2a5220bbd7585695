"""Key naming (flowd/_redis/keys.py): every derived key is in the stream's cluster slot."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flowd import ConfigurationError
from flowd._redis.keys import (
    dead_letter_stream,
    derived_key,
    hash_tag,
    key_prefix,
    key_slot,
    legacy_key_prefix,
)

TEXT = st.text(st.characters(codec="utf-8"), max_size=30)


@pytest.mark.parametrize(
    ("key", "slot"),
    [  # as CLUSTER KEYSLOT answers on a cluster-enabled redis-server 7.0
        ("foo", 12182),
        ("bar", 5061),
        ("somekey", 11058),
        ("{}emails", 1624),
        ("{", 4092),
        ("a}b", 7866),
        ("{{}emails}:dead", 4092),
    ],
)
def test_key_slot_matches_redis(key: str, slot: int) -> None:
    assert key_slot(key) == slot


# ---------------------------------------------------------------------------


def test_dead_letter_stream_of_a_plain_name() -> None:
    assert dead_letter_stream("emails") == "{emails}:dead"


@pytest.mark.parametrize(
    ("stream", "dead"),
    [
        ("jobs:{emails}", "jobs:{emails}:dead"),
        ("{emails}", "{emails}:dead"),
        ("{emails}:main", "{emails}:main:dead"),
        ("a{b}c{d}", "a{b}c{d}:dead"),  # the first tag decides, as in Redis
        ("x}y{z}", "x}y{z}:dead"),  # a "}" before the first "{" does not matter
    ],
)
def test_an_existing_tag_is_kept(stream: str, dead: str) -> None:
    assert dead_letter_stream(stream) == dead
    assert key_slot(dead) == key_slot(stream)


@pytest.mark.parametrize("stream", ["emails{", "{emails", "a{b"])
def test_an_open_brace_without_a_tag_still_names_its_own_slot(stream: str) -> None:
    assert hash_tag(stream) == "{" + stream + "}"
    assert key_slot(dead_letter_stream(stream)) == key_slot(stream)


def test_derived_key_uses_the_same_tag() -> None:
    assert derived_key("emails", "schedule") == "{emails}:schedule"
    assert derived_key("jobs:{emails}", "meta") == "jobs:{emails}:meta"


SUFFIXES = ["dead", "scheduled", "scheduled:s-1", "unique:cust:7", "schedules", "errors:g"]


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_streams_sharing_a_tag_share_no_derived_key(suffix: str) -> None:
    # {shop}:emails and {shop}:orders once shared {shop}:scheduled, {shop}:dead, ...
    emails, orders = derived_key("{shop}:emails", suffix), derived_key("{shop}:orders", suffix)
    assert emails != orders
    assert key_slot(emails) == key_slot(orders) == key_slot("{shop}:emails")


def test_partitions_and_untagged_names_keep_the_layout_they_had() -> None:
    assert derived_key("emails", "dead") == "{emails}:dead"
    assert derived_key("{emails:0}", "scheduled") == "{emails:0}:scheduled"
    assert legacy_key_prefix("{shop}:emails") == "{shop}"
    assert key_prefix("{shop}:emails") == "{shop}:emails"


def test_hash_tag() -> None:
    assert hash_tag("emails") == "{emails}"
    assert hash_tag("jobs:{emails}") == "{emails}"
    assert hash_tag("a{b") == "{a{b}"


@settings(max_examples=200, deadline=None)
@given(TEXT.filter(lambda s: s and "}" not in s))  # "" is never a stream name
def test_names_without_a_closing_brace_keep_their_slot(stream: str) -> None:
    assert key_slot(dead_letter_stream(stream)) == key_slot(stream)
    assert key_slot(derived_key(stream, "x")) == key_slot(stream)


@settings(max_examples=200, deadline=None)
@given(
    TEXT.filter(lambda s: "{" not in s),
    TEXT.filter(lambda s: s and "}" not in s),
    TEXT,
)
def test_names_with_a_tag_keep_their_slot(prefix: str, tag: str, suffix: str) -> None:
    stream = f"{prefix}{{{tag}}}{suffix}"
    assert hash_tag(stream) == f"{{{tag}}}"
    assert key_slot(dead_letter_stream(stream)) == key_slot(stream)


@pytest.mark.parametrize("stream", ["{}emails", "a}b", "{}{a}", "x{}y{z}", "emails{}", "{}"])
def test_a_close_brace_without_a_tag_is_refused(stream: str) -> None:
    # Such a name cannot be its own tag: the tag would end at its first '}', in another
    # slot, and the queue's keys would not share the stream's slot on Redis Cluster.
    with pytest.raises(ConfigurationError, match="no hash tag"):
        dead_letter_stream(stream)
