"""Dramatiq's side of bench_compare.py: a RedisBroker with its default middleware and one actor.

Run as ``dramatiq peer_dramatiq --processes 1 --threads 8 --queues bench``. The broker's
database and the body come from $BENCH_DRAMATIQ_URL and $BENCH_BODY.
"""

from __future__ import annotations

import os

import dramatiq
from bench_bodies import body_from_env
from dramatiq.brokers.redis import RedisBroker

QUEUE = "bench"

broker = RedisBroker(url=os.environ["BENCH_DRAMATIQ_URL"])
dramatiq.set_broker(broker)
_body = body_from_env("BENCH_DRAMATIQ_URL")


@dramatiq.actor(queue_name=QUEUE)
def job(n: int, key: str) -> None:
    _body(n, key)
