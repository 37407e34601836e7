"""The store against raw apsw doing the same durable work, measured so the ratio survives noise.

Script (the figures in README.md)::

    python benchmarks/bench_ratio.py ops   [--ops log_event heartbeat] [--rounds 21] [--n 2000]
    python benchmarks/bench_ratio.py procs [--procs 1 4 16] [--rounds 5] [--seconds 1]
    python benchmarks/bench_ratio.py procs --synchronous FULL --procs 8

How it measures, and why:

* **Same work.** Raw apsw runs the store's own statements on a file the store created, with
  the store's pragmas and busy handler (``_raw.py``); ``check_same_work`` traces one op of each
  side and fails the run if the statements or pragmas differ.
* **Interleaved rounds on fresh files.** This machine's speed drifts by 2x within minutes, so
  two figures measured one after the other do not compare. Each round runs both sides back to
  back (the order alternates round by round) on new files, and yields one ratio, store ops/s
  divided by raw ops/s. The result is the **median of the per-round ratios** with their min and
  max: drift moves both sides of a round together and cancels in its ratio.
* **CPU beside wall.** Each side's CPU time per op (``time.process_time``: every thread of the
  process, the store's checkpointer included) is reported next to its wall time per op. Under
  contention wall time says who waited; CPU time says who worked.
* ``ops``: one process, ``--n`` ops per side per round after a warm-up.
* ``procs``: N worker processes per side (``_mp_worker.py``), each writing ``log_event`` to its
  own session for ``--seconds``, released together by a start barrier; aggregate ops/s, p99
  latency over every op, errors (exceptions, and writes the store journaled), and CPU per op
  summed over the workers' own loops.

Each line printed is JSON: first the machine, then one line per result.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import _raw
from _mp import kill_all, machine, percentile, release_and_collect, start_workers

from sessionstore import SessionStore, StoreConfig

WARMUP = 100


def _spread(values: list[float], digits: int = 3) -> dict[str, float]:
    return {
        "median": round(statistics.median(values), digits),
        "min": round(min(values), digits),
        "max": round(max(values), digits),
    }


CHUNK = 100  # ops per turn: the two sides alternate every CHUNK ops within a round


def _new_store(db: str, config: StoreConfig) -> tuple[SessionStore, str]:
    store = SessionStore.open(db, config=config)
    return store, store.create_session("bench").id


def _round(op: str, n: int, folder: str, config: StoreConfig, raw_first: bool) -> dict[str, float]:
    """One round: both sides on fresh files, alternating every CHUNK ops; per-op figures."""
    store, store_sid = _new_store(os.path.join(folder, "store.db"), config)
    other, raw_sid = _new_store(os.path.join(folder, "raw.db"), config)
    other.close()  # the store made the raw side's schema and session row; raw does the rest
    conn = _raw.connect(
        os.path.join(folder, "raw.db"), busy=config.busy_handler, synchronous=config.synchronous
    )
    raw_fn, store_fn = _raw.RAW_OPS[op], _raw.store_op(store, op)
    sides: dict[str, Callable[[int], Any]] = {
        "raw": lambda i: raw_fn(conn, raw_sid, i),
        "store": lambda i: store_fn(store_sid, i),
    }
    order = ["raw", "store"] if raw_first else ["store", "raw"]
    wall = dict.fromkeys(sides, 0.0)
    cpu = dict.fromkeys(sides, 0.0)
    try:
        for side in order:
            for i in range(WARMUP):
                sides[side](i)
        done = 0
        while done < n:
            for side in order:
                fn = sides[side]
                w0, c0 = time.perf_counter(), time.process_time()
                for i in range(done, done + CHUNK):
                    fn(i)
                wall[side] += time.perf_counter() - w0
                cpu[side] += time.process_time() - c0
            done += CHUNK
    finally:
        conn.close()
        store.close()
    return {
        "ratio": wall["raw"] / wall["store"],
        "cpu_ratio": cpu["raw"] / cpu["store"],
        "raw_wall_us": wall["raw"] / done * 1e6,
        "raw_cpu_us": cpu["raw"] / done * 1e6,
        "store_wall_us": wall["store"] / done * 1e6,
        "store_cpu_us": cpu["store"] / done * 1e6,
    }


def check(folder: str, config: StoreConfig) -> None:
    """Prove raw does the store's work (statements and pragmas) on this build; raises if not."""
    store, sid = _new_store(os.path.join(folder, "check-store.db"), config)
    try:
        raw_db = os.path.join(folder, "check-raw.db")
        other, raw_sid = _new_store(raw_db, config)
        other.close()
        conn = _raw.connect(raw_db, busy=config.busy_handler, synchronous=config.synchronous)
        try:
            _raw.check_same_work(store, sid, conn, raw_sid)
        finally:
            conn.close()
    finally:
        store.close()


def ops(op: str, rounds: int, n: int, folder: str, config: StoreConfig) -> dict[str, Any]:
    """``rounds`` interleaved rounds of ``n`` ops per side; the per-round ratios summarised."""
    per_round = []
    for r in range(rounds):
        sub = os.path.join(folder, f"{op}-{r}")  # fresh files every round
        os.mkdir(sub)
        per_round.append(_round(op, n, sub, config, raw_first=r % 2 == 0))
    return {
        "bench": "ops",
        "op": op,
        "rounds": rounds,
        "n": n,
        "synchronous": config.synchronous,
        "ratio": _spread([x["ratio"] for x in per_round]),
        "cpu_ratio": _spread([x["cpu_ratio"] for x in per_round]),
        **{
            key: _spread([x[key] for x in per_round], 1)
            for key in ("store_wall_us", "raw_wall_us", "store_cpu_us", "raw_cpu_us")
        },
    }


def _procs_run(n: int, seconds: float, kind: str, folder: str, config: dict[str, Any]) -> Any:
    db = os.path.join(folder, f"{kind}-{n}.db")
    with SessionStore.open(db, config=StoreConfig(**config)) as store:
        sids = [store.create_session(f"bench-{i}").id for i in range(n)]
    specs = [{"db": db, "sid": sid, "seconds": seconds, "config": config} for sid in sids]
    workers = start_workers(kind, specs)
    try:
        results = release_and_collect(workers)
    finally:
        kill_all(workers)
    lat = [x for r in results for x in r["lat"]]
    total = sum(r["ops"] for r in results)
    return {
        "ops_per_s": total / max(r["elapsed"] for r in results),
        "p99_ms": percentile(lat, 99) * 1000,
        "max_ms": max(lat, default=0.0) * 1000,
        "errors": sum(r["errors"] for r in results),
        "cpu_us_per_op": sum(r["cpu"] for r in results) / max(1, total) * 1e6,
    }


def procs(n: int, rounds: int, seconds: float, folder: str, config: dict[str, Any]) -> Any:
    """``rounds`` interleaved rounds of N store workers and N raw workers, fresh files each."""
    per_round: list[dict[str, dict[str, float]]] = []
    for r in range(rounds):
        order = ["raw", "sessionstore"] if r % 2 == 0 else ["sessionstore", "raw"]
        got: dict[str, dict[str, float]] = {}
        for kind in order:
            sub = os.path.join(folder, f"p{n}-r{r}-{kind}")
            os.mkdir(sub)
            got[kind] = _procs_run(n, seconds, kind, sub, config)
        per_round.append(got)
    ratios = [g["sessionstore"]["ops_per_s"] / g["raw"]["ops_per_s"] for g in per_round]
    out: dict[str, Any] = {
        "bench": "procs",
        "procs": n,
        "rounds": rounds,
        "seconds": seconds,
        "config": config,
        "ratio": _spread(ratios),
    }
    for kind in ("sessionstore", "raw"):
        rows = [g[kind] for g in per_round]
        out[kind] = {
            "ops_per_s": _spread([x["ops_per_s"] for x in rows], 0),
            "p99_ms": _spread([x["p99_ms"] for x in rows], 1),
            "max_ms": round(max(x["max_ms"] for x in rows), 1),
            "errors": sum(int(x["errors"]) for x in rows),
            "cpu_us_per_op": _spread([x["cpu_us_per_op"] for x in rows], 1),
        }
    return out


# ------------------------------------------------------------------------------ pytest


def test_same_work(tmp_path: Path) -> None:
    """Raw apsw sends SQLite the very statements the store does, with the same pragmas."""
    check(str(tmp_path), StoreConfig())


def test_ops_ratio_runs(tmp_path: Path) -> None:
    """The single-process harness runs end to end (a tiny run: the script measures)."""
    result = ops("log_event", 2, 50, str(tmp_path), StoreConfig())
    assert result["ratio"]["median"] > 0


def test_procs_ratio_runs(tmp_path: Path) -> None:
    """The multi-process harness runs end to end with 2 workers a side (a tiny run)."""
    result = procs(2, 1, 0.2, str(tmp_path), {})
    assert result["sessionstore"]["errors"] == 0
    assert result["raw"]["errors"] == 0


# ------------------------------------------------------------------------------ script


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("ops", help="one process, per-op cost")
    p.add_argument("--ops", nargs="+", default=list(_raw.RAW_OPS), choices=list(_raw.RAW_OPS))
    p.add_argument("--rounds", type=int, default=21)
    p.add_argument("--n", type=int, default=2000, help="timed ops per side per round")
    p.add_argument("--synchronous", choices=["NORMAL", "FULL"], default="NORMAL")
    p = sub.add_parser("procs", help="N processes, aggregate throughput")
    p.add_argument("--procs", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--seconds", type=float, default=1.0)
    p.add_argument("--synchronous", choices=["NORMAL", "FULL"], default="NORMAL")
    p.add_argument("--busy", choices=["fair", "sqlite"], default="fair")
    args = parser.parse_args()
    print(json.dumps({"machine": machine(), "load": os.getloadavg()}), flush=True)
    with tempfile.TemporaryDirectory(prefix="ss-bench-") as folder:
        if args.command == "ops":
            config = StoreConfig(synchronous=args.synchronous)
            check(folder, config)
            for op in args.ops:
                print(json.dumps(ops(op, args.rounds, args.n, folder, config)), flush=True)
        else:
            settings = {"synchronous": args.synchronous, "busy_handler": args.busy}
            check(folder, StoreConfig(**settings))
            for n in args.procs:
                print(json.dumps(procs(n, args.rounds, args.seconds, folder, settings)), flush=True)
    print(json.dumps({"load_after": os.getloadavg()}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
