"""How far past its deadline a timed batch holding one bad op runs: the close's queue drain.

Script (the figures in README.md)::

    python benchmarks/bench_deadline.py [--rounds 7] [--ops 1000] [--deadline-ms 50]

A close applies its queue with ``apply_isolated`` under the drain's deadline. One op that
cannot be bound (built without validation, as an op from an older version could be) fails its
whole transaction, and the batch is redone one op per transaction. Each round, on a fresh
file, times that call with the deadline ``--deadline-ms`` away and prints the wall time, the CPU
time, how many ops it got through and how it ended. Compare two trees with ``PYTHONPATH``
pointing at an export of each (``git archive REV sessionstore migrations``).

Each line printed is JSON: one per round, then the medians.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
import time
from pathlib import Path

from sessionstore import SessionStore, StoreConfig
from sessionstore._journal import apply_isolated
from sessionstore._ops import LogEvent, Op, RemoveChild


def one_round(ops_n: int, deadline_s: float) -> dict[str, object]:
    """One timed batch of ``ops_n`` ops, the first of them unbindable, on a fresh file."""
    with (
        tempfile.TemporaryDirectory() as tmp,
        SessionStore.open(Path(tmp) / "s.db", config=StoreConfig(checkpointing=False)) as store,
    ):
        sid = store.create_session("s").id
        bad = RemoveChild.model_construct(session_id=sid, pid=5, exit_code=2**64)
        ops: list[Op] = [bad, *(LogEvent(session_id=sid, message=str(i)) for i in range(ops_n - 1))]
        writer = store._writer
        wall, cpu = time.perf_counter(), time.process_time()
        deadline = writer._clock() + deadline_s
        try:
            tried = len(apply_isolated(lambda b: writer.apply_batch(b, deadline=deadline), ops))
            ended = "whole"
        except Exception as err:  # the deadline's error says how far it got
            tried = len(getattr(err, "results", []))
            ended = type(err).__name__
        return {
            "wall_ms": round((time.perf_counter() - wall) * 1000, 1),
            "cpu_ms": round((time.process_time() - cpu) * 1000, 1),
            "ops_tried": tried,
            "ended": ended,
        }


def main() -> None:
    """Run the rounds and print them, then the medians."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--ops", type=int, default=1000)
    parser.add_argument("--deadline-ms", type=float, default=50.0)
    args = parser.parse_args()
    logging.disable(logging.WARNING)  # the "applying one by one" warning, once per round
    rounds = [one_round(args.ops, args.deadline_ms / 1000) for _ in range(args.rounds)]
    for row in rounds:
        print(json.dumps(row))
    medians = {
        key: statistics.median(float(str(row[key])) for row in rounds)
        for key in ("wall_ms", "cpu_ms", "ops_tried")
    }
    print(json.dumps({"median": medians, "deadline_ms": args.deadline_ms, "ops": args.ops}))


if __name__ == "__main__":
    main()
