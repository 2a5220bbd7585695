"""Processing throughput of two revisions side by side: a commit against this working tree.

Run from the repository root:

    python benchmarks/bench_ab.py --base 7dcb4d0          # 5 alternating rounds
    python benchmarks/bench_ab.py --base main --rounds 9 --url redis://127.0.0.1:7000/0

The base revision is exported with ``git archive`` to a temporary directory. Each
round runs, in a fresh interpreter per side, bench_process.py's raw loop and its
flowd queue (concurrency 8 and 32) on a no-op and a one-INCR body, against one
redis-server, alternating the sides so that a busy machine slows both alike. The
table shows, per side, the median jobs/s and the median of per-sample ratios to the
raw loop of the same sample.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.redis_server import RedisServer  # noqa: E402

#: Runs in a fresh interpreter with sys.argv = [tree, url, noop jobs, incr jobs].
SAMPLE = """
import importlib.util, json, sys, uuid
tree, url, noop_jobs, incr_jobs = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
sys.path.insert(0, tree)
import redis, flowd
assert flowd.__file__.startswith(tree), flowd.__file__
path = tree + "/benchmarks/bench_process.py"
spec = importlib.util.spec_from_file_location("bench_process", path)
bp = importlib.util.module_from_spec(spec)
sys.modules["bench_process"] = bp
spec.loader.exec_module(bp)
client = redis.Redis.from_url(url)
variants = {
    "raw": bp.raw_loop,
    "flowd c8": lambda c, s, n, b: bp.flowd_queue(c, s, n, b, 8),
    "flowd c32": lambda c, s, n, b: bp.flowd_queue(c, s, n, b, 32),
}
out = {}
for body, jobs in (("noop", noop_jobs), ("incr", incr_jobs)):
    for name, run in variants.items():
        stream = f"ab-{uuid.uuid4().hex[:8]}"
        bp._fill(client, stream, jobs)
        out[f"{body} {name}"] = run(client, stream, jobs, bp._body(client, body))
        client.delete(stream)
print(json.dumps(out))
"""


def sample(tree: Path, url: str, noop_jobs: int, incr_jobs: int) -> dict[str, float]:
    args = [sys.executable, "-c", SAMPLE, str(tree), url, str(noop_jobs), str(incr_jobs)]
    done = subprocess.run(args, capture_output=True, text=True, check=True)
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def table(samples: dict[str, list[dict[str, float]]]) -> str:
    lines = [f"{'variant':12}" + "".join(f"{side:>30}" for side in samples)]
    for variant in ("noop flowd c8", "noop flowd c32", "incr flowd c8", "incr flowd c32"):
        raw = variant.split()[0] + " raw"
        cells = []
        for runs in samples.values():
            rate = statistics.median(run[variant] for run in runs)
            ratio = statistics.median(run[variant] / run[raw] for run in runs)
            cells.append(f"{rate:9.0f}/s  x{ratio:.2f} raw")
        lines.append(f"{variant:12}" + "".join(f"{cell:>30}" for cell in cells))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="the git revision to compare against")
    parser.add_argument("--url", help="Redis URL (default: start a private redis-server)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--jobs", type=int, default=20_000, help="jobs per no-op sample")
    parser.add_argument("--incr-jobs", type=int, default=5_000, help="jobs per INCR sample")
    args = parser.parse_args()
    server = None
    url = args.url
    if url is None:
        server = RedisServer()
        server.start()
        url = server.url
    try:
        with tempfile.TemporaryDirectory() as base:
            archive = subprocess.run(
                ["git", "-C", str(ROOT), "archive", args.base], capture_output=True, check=True
            )
            subprocess.run(["tar", "-x", "-C", base], input=archive.stdout, check=True)
            trees = {f"base {args.base}": Path(base), "this tree": ROOT}
            samples: dict[str, list[dict[str, float]]] = {side: [] for side in trees}
            for round_no in range(1, args.rounds + 1):
                for side, tree in trees.items():
                    samples[side].append(sample(tree, url, args.jobs, args.incr_jobs))
                print(f"round {round_no}/{args.rounds} done", file=sys.stderr)
    finally:
        if server is not None:
            server.close()
    print(table(samples))
    print(f"({args.rounds} alternating rounds; x raw = median of per-sample flowd/raw)")


if __name__ == "__main__":
    main()
