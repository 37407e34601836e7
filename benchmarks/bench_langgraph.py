"""LangGraph checkpointers side by side: the official SqliteSaver and SessionStoreSaver.

``python benchmarks/bench_langgraph.py [--procs 1 4 16] [--seconds 3]``

For each saver and process count, that many processes (each its own interpreter, released
together through a stdin barrier) call ``saver.put`` on their own thread of one shared file
for ``--seconds``, with a real serialised checkpoint. Per configuration it prints one JSON
line: puts, errors (an exception from ``put``; the official saver's are "database is locked"),
p50/p99 and worst single put, and fairness (the slowest process's puts over the fastest's).

Needs ``langgraph`` and ``langgraph-checkpoint-sqlite`` (the official saver), not in any extra.
Each saver uses its own file: the official one opens it with the stdlib ``sqlite3``, never in a
process that uses apsw on it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from _mp import contention, kill_all, machine

KINDS = ("official-sqlite", "sessionstore")


def _saver(kind: str, db: str) -> Any:
    if kind == "official-sqlite":
        import sqlite3

        from langgraph.checkpoint.sqlite import SqliteSaver

        saver = SqliteSaver(sqlite3.connect(db, check_same_thread=False))
        saver.setup()
        return saver, saver.conn.close
    from sessionstore import SessionStore
    from sessionstore.integrations.langgraph import SessionStoreSaver

    store = SessionStore.open(db)
    return SessionStoreSaver(store), store.close


def worker(kind: str, db: str, thread_id: str, seconds: float) -> None:
    """One process: set up, say ready, wait for go, put for ``seconds``, print the figures."""
    from langgraph.checkpoint.base import empty_checkpoint

    saver, close = _saver(kind, db)
    print("ready", flush=True)
    sys.stdin.readline()
    latencies: list[float] = []
    errors = 0
    parent: str | None = None
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        cp = empty_checkpoint()
        cp["channel_values"] = {"messages": ["x" * 200] * 5, "step": len(latencies)}
        config: dict[str, Any] = {"configurable": {"thread_id": thread_id, "checkpoint_ns": ""}}
        if parent:
            config["configurable"]["checkpoint_id"] = parent
        t0 = time.perf_counter()
        try:
            saver.put(config, cp, {"source": "loop", "step": len(latencies)}, {})
            parent = cp["id"]
        except Exception:
            errors += 1
        latencies.append(time.perf_counter() - t0)
    close()
    print(json.dumps({"puts": len(latencies) - errors, "errors": errors, "lat": latencies}))


def run(kind: str, procs: int, seconds: float, folder: str) -> dict[str, Any]:
    """One configuration: ``procs`` processes on one new file."""
    import subprocess

    db = os.path.join(folder, f"{kind}-{procs}.db")
    if kind == "sessionstore":  # migrate once, outside the timed part
        from sessionstore import SessionStore

        SessionStore.open(db).close()
    workers = [
        subprocess.Popen(
            [sys.executable, __file__, "worker", kind, db, f"t-{i}", str(seconds)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(procs)
    ]
    try:
        for w in workers:
            assert w.stdout is not None
            if w.stdout.readline().strip() != "ready":
                raise RuntimeError(f"{kind} worker did not start")
        for w in workers:
            assert w.stdin is not None
            w.stdin.write("go\n")
            w.stdin.flush()
        results = [json.loads(w.communicate(timeout=seconds + 120)[0]) for w in workers]
    finally:
        kill_all(workers)
    lat = [x for r in results for x in r["lat"]]
    puts = [r["puts"] for r in results]
    return {
        "saver": kind,
        "procs": procs,
        "seconds": seconds,
        "puts": sum(puts),
        "errors": sum(r["errors"] for r in results),
        **contention(puts, lat),
    }


def main() -> None:
    """Run every saver at every process count and print one JSON line each."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--procs", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    print(json.dumps(machine()))
    with tempfile.TemporaryDirectory() as folder:
        for procs in args.procs:
            for kind in KINDS:
                print(json.dumps(run(kind, procs, args.seconds, folder)), flush=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "worker":
        worker(sys.argv[2], sys.argv[3], sys.argv[4], float(sys.argv[5]))
    else:
        main()
