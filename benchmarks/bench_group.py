"""Group commit against one transaction per op, many writer threads in one process.

Script (the figures in README.md, section "Group commit at FULL")::

    python benchmarks/bench_group.py [--threads 1 4 16] [--rounds 5] [--seconds 0.5]
    python benchmarks/bench_group.py --synchronous NORMAL --threads 16

Each round runs both sides back to back on fresh files (the order alternates round by round):
``StoreConfig(synchronous=..., group_commit=False)`` and ``group_commit=True``. N threads of
one process, released together, each write ``log_event`` to its own session for ``--seconds``.
Per side: aggregate ops/s, p99 latency of one call, CPU per op (``time.process_time`` over the
run, every thread of the process, divided by the ops), and for group commit the mean number of
ops per transaction. The result is the median of the per-round ratios (group / unbatched ops/s
and p99) with their min and max: the machine's drift moves both sides of a round together.

``--synchronous NORMAL``: the config refuses group commit there (a commit has no fsync to
share). To show why, the group side opens with FULL and then sets its write connection to
NORMAL, the one place this combination is built; it is a measurement, not a setting.

Each line printed is JSON: first the machine and its load, then one line per thread count.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import threading
import time
from typing import Any

from _mp import machine, percentile

from sessionstore import SessionStore, StoreConfig


def _spread(values: list[float], digits: int = 3) -> dict[str, float]:
    return {
        "median": round(statistics.median(values), digits),
        "min": round(min(values), digits),
        "max": round(max(values), digits),
    }


def _side(
    folder: str, threads: int, seconds: float, group: bool, synchronous: str
) -> dict[str, Any]:
    """One side of a round: ``threads`` writers on a fresh file for ``seconds``."""
    db = os.path.join(folder, f"{'group' if group else 'plain'}.db")
    config = StoreConfig(
        synchronous="FULL" if group else synchronous,  # type: ignore[arg-type]
        group_commit=group,
        checkpointing=False,
    )
    store = SessionStore.open(db, config=config)
    try:
        if group and synchronous == "NORMAL":
            store._writer.with_connection(lambda conn: conn.pragma("synchronous", "NORMAL"))
        sids = [store.create_session(f"t{i}").id for i in range(threads)]
        lat: list[list[float]] = [[] for _ in range(threads)]
        start = threading.Barrier(threads + 1)
        stop_at = [0.0]
        errors = [0]

        def work(i: int) -> None:
            mine, sid = lat[i], sids[i]
            start.wait()
            end = stop_at[0]
            clock = time.perf_counter
            while (t0 := clock()) < end:
                try:
                    event = store.log_event(sid, "bench", data={"i": len(mine)})
                except Exception:
                    errors[0] += 1
                    continue
                mine.append(clock() - t0)
                if event.id is None:  # journaled, not applied
                    errors[0] += 1

        workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
        for worker in workers:
            worker.start()
        cpu0 = time.process_time()
        t0 = time.perf_counter()
        stop_at[0] = t0 + seconds
        start.wait()
        for worker in workers:
            worker.join()
        wall = time.perf_counter() - t0
        cpu = time.process_time() - cpu0
        writer = store._writer
        commits = getattr(writer, "group_commits", 0)
        grouped = getattr(writer, "group_ops", 0)
    finally:
        store.close()
    every = [x for per in lat for x in per]
    ops = len(every)
    return {
        "ops": ops,
        "errors": errors[0],
        "ops_per_s": ops / wall,
        "p99_ms": percentile(every, 99) * 1000,
        "cpu_us_per_op": cpu / max(ops, 1) * 1e6,
        "ops_per_commit": grouped / commits if commits else 1.0,
    }


def run(threads: int, rounds: int, seconds: float, synchronous: str) -> dict[str, Any]:
    """Interleaved rounds at ``threads`` writer threads; medians of per-round ratios."""
    sides: dict[str, list[dict[str, Any]]] = {"plain": [], "group": []}
    ratios: list[float] = []
    p99_ratios: list[float] = []
    for r in range(rounds):
        order = ["plain", "group"] if r % 2 == 0 else ["group", "plain"]
        got: dict[str, dict[str, Any]] = {}
        with tempfile.TemporaryDirectory() as folder:
            for side in order:
                got[side] = _side(folder, threads, seconds, side == "group", synchronous)
        for side, result in got.items():
            sides[side].append(result)
        ratios.append(got["group"]["ops_per_s"] / got["plain"]["ops_per_s"])
        p99_ratios.append(got["group"]["p99_ms"] / max(got["plain"]["p99_ms"], 1e-9))
    out: dict[str, Any] = {
        "threads": threads,
        "synchronous": synchronous,
        "rounds": rounds,
        "seconds": seconds,
        "ratio_ops_per_s": _spread(ratios),
        "ratio_p99": _spread(p99_ratios),
    }
    for side, results in sides.items():
        out[side] = {
            key: _spread([res[key] for res in results], 1 if key != "ops_per_commit" else 2)
            for key in ("ops_per_s", "p99_ms", "cpu_us_per_op", "ops_per_commit")
        }
        out[side]["errors"] = sum(res["errors"] for res in results)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=0.5)
    parser.add_argument("--synchronous", choices=["FULL", "NORMAL"], default="FULL")
    args = parser.parse_args()
    print(json.dumps({"machine": machine(), "load": os.getloadavg()}), flush=True)
    for threads in args.threads:
        result = run(threads, args.rounds, args.seconds, args.synchronous)
        result["load_after"] = [round(x, 2) for x in os.getloadavg()]
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
