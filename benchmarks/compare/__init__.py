"""The pieces of ``benchmarks/bench_compare.py``: one module per contender and per scenario.

- ``config``, ``server``, ``timing``, ``process``, ``streams``: shared pieces (the run's
  settings, the private server and its clients, clocks, worker subprocesses, stream
  helpers);
- ``adapter_raw``, ``adapter_flowd``, ``adapter_rq``, ``adapter_dramatiq``,
  ``adapter_celery``: how each contender enqueues, processes and is found finished;
- ``scenario_enqueue``, ``scenario_processing``, ``scenario_latency``,
  ``scenario_memory``: what each scenario runs, in which order, into which rows;
- ``results``, ``report``, ``targets``, ``environment``: the rows, their ratios and
  the printed table.

The job modules (``bench_app``, ``bench_bodies``, ``peer_*``) are imported by their
top-level names, as the worker subprocesses import them, so ``benchmarks/`` goes on
``sys.path`` here; the repository root too, for ``flowd`` and ``tests``.
"""

from __future__ import annotations

import sys
from pathlib import Path

#: ``benchmarks/`` and the repository root.
HERE = Path(__file__).resolve().parent.parent
ROOT = HERE.parent
for _path in (str(HERE), str(ROOT)):
    if _path not in sys.path:
        sys.path.insert(0, _path)
