"""rq's side of bench_compare.py: the job function (``rq worker`` imports it by name).

The body and its Redis database come from $BENCH_BODY and $BENCH_RQ_URL.
"""

from __future__ import annotations

from bench_bodies import body_from_env

_body = body_from_env("BENCH_RQ_URL")


def job(n: int, key: str) -> None:
    _body(n, key)
