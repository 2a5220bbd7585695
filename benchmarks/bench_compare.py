"""flowd against raw redis-py and against rq, Dramatiq and Celery, on one private redis-server.

Run from the repository root (12-15 minutes; ``--quick`` under 2)::

    python benchmarks/bench_compare.py
    python benchmarks/bench_compare.py --quick --json /tmp/compare.json
    python benchmarks/bench_compare.py --skip-peers --rss-jobs 200000
    python benchmarks/bench_compare.py --targets   # only the rows of flowd's targets

``--targets`` runs the rows the performance targets name (README.rst, Performance), side
by side in each repeat: raw pipelined XADD vs ``enqueue_bulk``; the raw one-thread
COUNT-100 loop, flowd (default settings, concurrency 8) and Dramatiq (8 threads) with the
no-op and one-INCR bodies; enqueue-to-start latency at 500 jobs/s; RSS over 1,000,000
jobs. It ends with one line per target: the figure, the target, met or missed.

Scenarios (benchmarks/README.md says what each row means):

- enqueue: flowd ``enqueue`` / ``enqueue_bulk`` vs one XADD per job / pipelined XADD, and
  rq ``enqueue`` / ``enqueue_many``, Dramatiq ``send``, Celery ``delay``;
- processing, per body (no-op, one INCR, a 5 ms sleep): the raw loops of DESIGN.md (one
  thread; eight threads, each its own consumer), flowd in this process (concurrency 8 and
  32), ``flowd worker`` subprocesses (1 and 2 processes), rq SimpleWorker (burst),
  Dramatiq (1 process, 8 threads), Celery (threads pool, 8);
- latency: enqueue-to-start p50/p99 at a steady rate (500 jobs/s), raw loop and flowd;
- memory: RSS of a ``flowd worker`` after 10,000 and after ``--rss-jobs`` no-op jobs.

Every repeat runs all contenders of a scenario in turn (the order rotates per repeat), on
the same server, with the same N and the same job bodies; each row's ratio is computed
against its baseline *of the same repeat*, then the median is taken. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import asdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for _path in (str(HERE), str(ROOT)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

from bench_bodies import SLEEP_SECONDS  # noqa: E402

from benchmarks.compare.config import Config, quick  # noqa: E402
from benchmarks.compare.environment import environment, load_summary, run_loads  # noqa: E402
from benchmarks.compare.report import comparisons, print_comparisons, print_table  # noqa: E402
from benchmarks.compare.results import Results, rows_json  # noqa: E402
from benchmarks.compare.scenario_enqueue import run_enqueue  # noqa: E402
from benchmarks.compare.scenario_latency import run_latency  # noqa: E402
from benchmarks.compare.scenario_memory import run_memory  # noqa: E402
from benchmarks.compare.scenario_processing import run_processing  # noqa: E402
from benchmarks.compare.server import DB, PEERS, private_server  # noqa: E402
from benchmarks.compare.targets import print_targets, target_lines  # noqa: E402


def parse_args(argv: list[str] | None) -> Config:
    parser = argparse.ArgumentParser(
        description="flowd vs raw redis-py vs rq, Dramatiq and Celery, on a private redis-server."
    )
    parser.add_argument(
        "--quick", action="store_true", help="small numbers: a 2-3 minute smoke run"
    )
    parser.add_argument("--jobs", type=int, help="N for the no-op and INCR bodies (10,000)")
    parser.add_argument("--sleep-jobs", type=int, help="N for the 5 ms sleep body (1,000)")
    parser.add_argument("--enqueue-jobs", type=int, help="N for the enqueue runs (10,000)")
    parser.add_argument("--repeat", type=int, help="interleaved repeats (3)")
    parser.add_argument("--latency-seconds", type=float, help="length of a latency run (10)")
    parser.add_argument("--latency-rate", type=int, help="jobs/s of the latency runs (500)")
    parser.add_argument("--rss-jobs", type=int, help="no-op jobs of the memory run (1,000,000)")
    parser.add_argument("--skip-peers", action="store_true", help="leave out rq, Dramatiq, Celery")
    parser.add_argument(
        "--targets",
        action="store_true",
        help="only the rows the performance targets name, then met/missed per target",
    )
    parser.add_argument(
        "--json", metavar="PATH", help="results file (benchmarks/results-compare.json)"
    )
    args = parser.parse_args(argv)
    cfg = Config()
    if args.quick:
        cfg = quick()
    for name in (
        "jobs",
        "sleep_jobs",
        "enqueue_jobs",
        "repeat",
        "latency_seconds",
        "latency_rate",
        "rss_jobs",
        "json",
    ):
        value = getattr(args, name)
        if value is not None:
            if name != "json" and value <= 0:
                parser.error(f"--{name.replace('_', '-')} must be positive")
            setattr(cfg, name, value)
    cfg.peers = not args.skip_peers
    cfg.targets = args.targets
    if cfg.rss_jobs < cfg.rss_first:
        cfg.rss_first = cfg.rss_jobs
    return cfg


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    started = time.perf_counter()
    results = Results()
    with private_server() as ctx:
        for peer in PEERS:  # read by peer_*.py, here and in their worker processes
            os.environ[f"BENCH_{peer.upper()}_URL"] = ctx.url(DB[peer])
        env = environment(ctx)
        print(
            f"Redis {env['redis_server']} (private, port {ctx.server.port}) | Python "
            f"{env['python']} | redis-py {env['redis_py']} (hiredis {env['hiredis']}) | "
            f"flowd {env['flowd']} | rq {env['rq']} | dramatiq {env['dramatiq']} | "
            f"celery {env['celery']} | {env['cpu_count']} CPUs"
        )
        print(f"config: {asdict(cfg)}  (logs of worker processes: {ctx.tmp})\n", flush=True)
        for repeat in range(cfg.repeat):
            print(f"repeat {repeat + 1}/{cfg.repeat}", flush=True)
            run_enqueue(ctx, cfg, results, repeat)
            run_processing(ctx, cfg, results, repeat)
            run_latency(ctx, cfg, results, repeat)
        print("memory", flush=True)
        run_memory(ctx, cfg, results)
    elapsed = time.perf_counter() - started
    env["load_average_at_end"] = os.getloadavg()
    loads = run_loads(results)
    if loads:
        env["loadavg_1m_during_runs"] = load_summary(loads)
    print(f"\n{cfg.repeat} interleaved repeats, {elapsed / 60:.1f} minutes; ratio = median of")
    print("per-repeat ratios to the row named under 'vs' (for latency and RSS, lower is better)")
    if loads:
        print(
            f"1-minute load average during the runs: {min(loads):.2f} .. {max(loads):.2f} "
            f"(median {statistics.median(loads):.2f}) on {env['cpu_count']} CPUs"
        )
    print()
    print_table(results)
    cross = comparisons(results)
    print_comparisons(cross)
    targets = target_lines(results)
    print_targets(targets)
    out = {
        "environment": env,
        "config": asdict(cfg),
        "sleep_seconds": SLEEP_SECONDS,
        "minutes": elapsed / 60,
        "rows": rows_json(results),
        "comparisons": cross,
        "targets": targets,
    }
    Path(cfg.json).write_text(json.dumps(out, indent=2))
    print(f"wrote {cfg.json}")
    failed = [r for r in results.rows.values() if any(v is None for v in r.values)]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
