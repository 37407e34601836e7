"""Several processes writing one database: throughput, latency, errors, WAL peak.

Script (the figures in README.md)::

    python benchmarks/bench_multiprocess.py throughput [--procs 1 4 16] [--seconds 3]
    python benchmarks/bench_multiprocess.py wal [--writers 8] [--seconds 10]

``throughput`` runs, for each process count, the same timed loop of single-event writes
through (a) sessionstore ``log_event``, (b) raw apsw with the same INSERT in its own
``BEGIN IMMEDIATE`` transaction (busy timeout 5 s, synchronous NORMAL: the store's settings),
and (c) diskcache ``Cache.set`` as a peer. Each process writes to its own session, all
released at once by a start barrier. ``sessionstore-sqlitebusy`` is the store configured with
SQLite's own busy handler instead of its default fair one, to show what fairness costs.
``wal`` runs N writers flat out (``--kind sessionstore`` or ``raw``) plus a reader polling every
session for new events every 10 ms, and samples the WAL file size every 5 ms.

Targets (issue 5): 16 processes: zero errors, aggregate >= 0.8 x raw apsw, p99 < 50 ms;
WAL peak <= 8 MiB. ``pytest benchmarks/bench_multiprocess.py --benchmark-enable`` runs a
short version of each, with the figures in ``extra_info``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import tempfile
import threading
from pathlib import Path
from typing import Any

import apsw
import pytest
from _mp import kill_all, machine, release_and_collect, start_workers, summarize

from sessionstore import SessionStore

# name -> (worker kind, settings). The two extra rows separate the store's own cost from the
# cost of fair lock hand-off: "sessionstore-sqlitebusy" is the store with SQLite's busy handler
# instead of its default fair one; "raw-fair" is raw apsw with the store's fair handler.
KINDS: dict[str, tuple[str, dict[str, Any]]] = {
    "sessionstore": ("sessionstore", {}),
    "raw": ("raw", {}),
    "sessionstore-sqlitebusy": ("sessionstore", {"busy_handler": "sqlite"}),
    "raw-fair": ("raw", {"busy_handler": "fair"}),
    "diskcache": ("diskcache", {}),
}


def _sessions(db: str, n: int) -> list[str]:
    with SessionStore.open(db) as store:
        return [store.create_session(f"bench-{i}").id for i in range(n)]


def throughput(procs: int, seconds: float, kind: str, folder: str) -> dict[str, Any]:
    """One run of ``procs`` processes writing for ``seconds``; the aggregate figures."""
    db = os.path.join(folder, f"{kind}-{procs}.db")
    worker, config = KINDS[kind]
    if worker == "diskcache":
        specs = [
            {"dir": os.path.join(folder, f"cache-{procs}"), "index": i, "seconds": seconds}
            for i in range(procs)
        ]
    else:
        specs = [
            {"db": db, "sid": sid, "seconds": seconds, "config": config}
            for sid in _sessions(db, procs)
        ]
    workers = start_workers(worker, specs)
    try:
        return {"kind": kind, **summarize(release_and_collect(workers))}
    finally:
        kill_all(workers)


def wal_peak(
    writers: int, seconds: float, folder: str, kind: str = "sessionstore"
) -> dict[str, Any]:
    """N writers (``sessionstore`` or ``raw``) flat out and one polling reader; WAL sampled."""
    db = os.path.join(folder, f"wal-{kind}.db")
    sids = _sessions(db, writers)
    # An idle connection held open throughout: without it the last writer to close deletes the
    # WAL, and "after" would say nothing about whether the file ever shrinks while in use.
    holder = apsw.Connection(db)
    holder.execute("SELECT count(*) FROM sqlite_schema").fetchall()  # now it uses the WAL
    specs = [{"db": db, "sid": sid, "seconds": seconds} for sid in sids]
    procs = start_workers(kind, specs)
    procs += start_workers("reader", [{"db": db, "sids": sids, "seconds": seconds}])
    peak = 0
    samples = 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak, samples
        while not stop.wait(0.005):  # a sampling interval, not a synchronisation
            with contextlib.suppress(FileNotFoundError):
                peak = max(peak, os.stat(db + "-wal").st_size)
            samples += 1

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        results = release_and_collect(procs)
    finally:
        stop.set()
        sampler.join()
        kill_all(procs)
    writes = summarize(results[:-1])
    wal_after = os.stat(db + "-wal").st_size if os.path.exists(db + "-wal") else 0
    holder.close()
    # The last connection is closed: SQLite deletes the WAL (0 bytes when it is still there).
    wal_closed = os.stat(db + "-wal").st_size if os.path.exists(db + "-wal") else 0
    return {
        "kind": kind,
        "writers": writers,
        "seconds": seconds,
        "wal_peak_mib": round(peak / 2**20, 2),
        "wal_after_mib": round(wal_after / 2**20, 2),  # writers closed, holder still open
        "wal_after_close_bytes": wal_closed,  # every connection closed
        "samples": samples,
        "writes": writes["ops"],
        "write_errors": writes["errors"],
        "reader_polls": results[-1]["ops"],
    }


def _median_run(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median throughput, plus every run's throughput (the spread)."""
    ordered = sorted(results, key=lambda r: r["ops_per_s"])
    return {
        **ordered[len(ordered) // 2],
        "ops_per_s_runs": [r["ops_per_s"] for r in results],
        "errors_all_runs": sum(r["errors"] for r in results),
    }


# ------------------------------------------------------------------------------ pytest


@pytest.mark.parametrize("kind", ["sessionstore", "raw", "diskcache"])
@pytest.mark.parametrize("procs", [1, 4])
def test_throughput(benchmark: Any, tmp_path: Path, kind: str, procs: int) -> None:
    """A short throughput run per kind and count (the script runs the full set)."""
    result = benchmark.pedantic(
        throughput, args=(procs, 1.0, kind, str(tmp_path)), rounds=1, iterations=1
    )
    benchmark.extra_info.update(result)
    assert result["ops"] > 0


def test_wal_peak(benchmark: Any, tmp_path: Path) -> None:
    """Four writers and a polling reader for 2 s: the WAL stays bounded."""
    result = benchmark.pedantic(wal_peak, args=(4, 2.0, str(tmp_path)), rounds=1, iterations=1)
    benchmark.extra_info.update(result)
    assert result["wal_peak_mib"] <= 8


# ------------------------------------------------------------------------------ script


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("throughput")
    p.add_argument("--procs", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--kinds", nargs="+", default=list(KINDS), choices=list(KINDS))
    p.add_argument("--repeat", type=int, default=3, help="runs per kind; the median is shown")
    p = sub.add_parser("wal")
    p.add_argument("--writers", type=int, default=8)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--kind", choices=["sessionstore", "raw"], default="sessionstore")
    p.add_argument("--runs", type=int, default=1, help="runs, each on a fresh database file")
    args = parser.parse_args()
    print(json.dumps({"machine": machine()}))
    with tempfile.TemporaryDirectory(prefix="ss-bench-") as folder:
        if args.command == "throughput":
            for n in args.procs:
                runs: dict[str, list[dict[str, Any]]] = {k: [] for k in args.kinds}
                for _ in range(args.repeat):  # kinds interleaved, so noise spreads evenly
                    for kind in args.kinds:
                        runs[kind].append(throughput(n, args.seconds, kind, folder))
                for results in runs.values():
                    print(json.dumps(_median_run(results)), flush=True)
        else:
            for run in range(args.runs):
                run_folder = os.path.join(folder, f"run{run}")  # a fresh file for every run
                os.mkdir(run_folder)
                result = wal_peak(args.writers, args.seconds, run_folder, args.kind)
                print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
