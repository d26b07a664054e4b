"""``python -m bench``: the orchestrator measured on a local broker, side by side in one run.

Cases (each on topics of its own, through real worker processes):

- ``fold_events_per_s``: a worker folds a pre-filled ``task.events`` (created, started,
  completed per task): decode, fold, table write, effects, transactions. Timed by the outputs'
  record timestamps, from the first ``task.ready`` to the last ``task.completed``.
- ``eos_ceiling_events_per_s``: a bare aiokafka exactly-once loop over the same topic
  (``bench/ceiling.py``: decode, two records per event, transactions per partition at the
  worker's commit interval, no fold): the upper bound of the fold's design; the fold's ratio
  to it.
- ``raw_consume_events_per_s``: a plain aiokafka consumer decoding the same topic with fastavro:
  the upper bound of reading; the ceiling's ratio to it.
- ``peer_fold_events_per_s``: the same fold written with quixstreams (``bench/peer_quix.py``:
  RocksDB state, exactly-once, our codec and our pure fold) over the same topic, timed the
  same way; its ratio to the fold (needs the ``bench`` extra).
- ``replay_events_per_s``: the offline replay (``projections.replay``) over the same topic,
  when that module exists.
- ``lifecycle_tasks_per_s``: tasks through the whole path (created, ready, dispatched, a no-op
  handler, completed) with no rate limits.
- ``dependency_latency_ms_p50`` / ``_p99``: from a task's ``TaskCompleted`` write to a reader of
  ``task.ready`` (read committed) receiving its dependent on another partition, with dependents
  created at half the measured lifecycle rate (``dependency_load_dependents_per_s``);
  ``dependency_latency_group_ms_p50`` / ``_p99``: the same for pairs of one group
  (``g/a``, ``g/b``: one partition, the dependent made ready in the dependency's fold step).
  The two kinds alternate in one run.
- ``soak_*``: a worker whose results expire (``result_ttl`` 2 s) and whose finished tasks
  retire (``task_retention`` 5 s) takes ``--soak-tasks`` tasks at ``--soak-rate`` per second
  (``bench/soak.py``): its RSS, open files and ``data_dir`` size at the start (after a warm-up
  through the whole cycle) and at the end (every task retired).
- ``three_brokers_*``: a local three-node cluster (``kafka up --brokers 3``) and one worker take
  ``--three-brokers-tasks`` tasks while the broker leading most of ``task.events`` is killed
  (SIGKILL) and restarted, then the worker (``bench/three_brokers.py``): the rate, the pauses,
  and the ``task.ready`` / ``task.completed`` records, missing and duplicated (read committed);
  the whole report also goes to ``bench/results/three_brokers.json``. Not in a default run (it
  starts three brokers of its own): ``--only three_brokers``.
- ``worker_rss_mb_1m_tasks``: peak resident memory (VmHWM) of a worker whose ``tasks`` table
  holds a million completed tasks, restored from a pre-filled changelog, after it served
  status reads (``worker_restore_tasks_per_s``: how fast it restored them).

In a row, ``ratio`` is ``value`` divided by the value of the row named in ``ratio_to``.
Machines here are shared and noisy: compare ratios within one run, not figures across runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

from bench import ceiling, fold, lifecycle, memory, replay, soak, three_brokers
from bench.workload import Result
from streams import localbroker
from streams.process import free_port

RESULTS = Path(__file__).resolve().parent / "results"
CASES = ("fold", "peer", "replay", "lifecycle", "latency", "memory", "soak", "three_brokers")
DEFAULT_CASES = CASES[:-1]
"""``three_brokers`` starts a cluster of its own: only with ``--only three_brokers``."""


async def run(bootstrap: str, root: Path, args: argparse.Namespace) -> list[Result]:
    cases = set(args.only or DEFAULT_CASES)
    if "peer" in cases:
        cases.add("fold")  # the peer's row is its rate as a multiple of the fold's
    results: list[Result] = []
    if cases & {"fold", "peer", "replay"}:
        topic = await fold.prefill(bootstrap, args.events // 3)
        print(f"pre-filled {topic.topics.events} with {topic.events:,} events", flush=True)
        fold_rate = raw_rate = peer_rate = ceiling_rate = None
        if "fold" in cases:
            fold_rate = await fold.fold_rate(bootstrap, root, topic, args.profile)
            ceiling_rate = await ceiling.ceiling_rate(bootstrap, topic, args.commit_interval)
            raw_rate = await fold.raw_rate(bootstrap, topic)
            print(
                f"fold {fold_rate:,.0f} events/s, EOS ceiling {ceiling_rate:,.0f} events/s, "
                f"raw {raw_rate:,.0f} events/s",
                flush=True,
            )
        if "peer" in cases:
            peer_rate = await fold.peer_rate(bootstrap, root, topic, args.commit_interval)
            print(f"peer {peer_rate or 0:,.0f} events/s", flush=True)
        if fold_rate is not None and raw_rate is not None and ceiling_rate is not None:
            results += fold.results(fold_rate, raw_rate, peer_rate, ceiling_rate)
        if "replay" in cases:
            results += await replay.replay_case(bootstrap, topic)
    if cases & {"lifecycle", "latency"}:
        rows = await lifecycle.lifecycle(bootstrap, root, args.tasks)
        results += rows
        print(f"lifecycle {rows[0].value:,} tasks/s", flush=True)
        if "latency" in cases:
            results += await lifecycle.dependency_latency(
                bootstrap, root, rows[0].value, args.load, args.latency_seconds
            )
    if "memory" in cases:
        results += await memory.memory_case(bootstrap, root, args.million)
    if "soak" in cases:
        results += await soak.soak(bootstrap, root, args.soak_tasks, args.soak_rate)
    if "three_brokers" in cases:
        results += await three_brokers.bench_case(root, args.three_brokers_tasks)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--events",
        type=int,
        default=210_000,
        help="events for the fold, ceiling, raw, peer and replay cases, 3 per task (quick: 30000)",
    )
    parser.add_argument("--tasks", type=int, default=2_000, help="tasks for the lifecycle case")
    parser.add_argument(
        "--load",
        type=float,
        default=0.5,
        help="dependents per second in the latency case, as a fraction of lifecycle_tasks_per_s",
    )
    parser.add_argument(
        "--latency-seconds", type=float, default=20.0, help="how long the latency case runs"
    )
    parser.add_argument(
        "--million",
        type=int,
        default=1_000_000,
        help="tasks in the memory case's table (the row keeps its name)",
    )
    parser.add_argument(
        "--soak-tasks", type=int, default=50_000, help="tasks through the soak case"
    )
    parser.add_argument(
        "--soak-rate", type=float, default=250.0, help="tasks per second in the soak case"
    )
    parser.add_argument(
        "--three-brokers-tasks",
        type=int,
        default=50_000,
        help="tasks through the three_brokers case (its test runs 5000)",
    )
    parser.add_argument(
        "--commit-interval",
        type=float,
        default=0.2,
        help="the peer's and the EOS ceiling's commit interval in seconds (the worker's default)",
    )
    parser.add_argument(
        "--only", action="append", choices=CASES, help="run only this case (repeatable)"
    )
    parser.add_argument(
        "--profile",
        type=Path,
        help="sample the fold worker with py-spy into this file (collapsed stacks)",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="orchestrator-bench-") as tmp:
        root = Path(tmp)
        if set(args.only or DEFAULT_CASES) == {"three_brokers"}:  # its own cluster alone
            results = asyncio.run(run("", root, args))
        else:
            broker = localbroker.up(port=free_port(), data_dir=root / "kafka")
            try:
                results = asyncio.run(run(broker.bootstrap_servers, root, args))
            finally:
                localbroker.down(root / "kafka")
    if args.only or args.profile:
        print("partial or profiled run: bench/results/latest.json left as it was")
    else:
        RESULTS.mkdir(exist_ok=True)
        text = json.dumps([asdict(r) for r in results], indent=2) + "\n"
        (RESULTS / "latest.json").write_text(text)
    width = max(len(r.name) for r in results)
    print(f"{'case':<{width}}  {'value':>12}  {'unit':<9}  ratio")
    for r in results:
        ratio = f"{r.ratio:.3f} x {r.ratio_to}" if r.ratio is not None else ""
        print(f"{r.name:<{width}}  {r.value:>12,}  {r.unit:<9}  {ratio}")
    if not args.only and not args.profile:
        print(f"\nwritten to {RESULTS / 'latest.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
