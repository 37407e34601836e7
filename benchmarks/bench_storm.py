"""Exit-storm wall time: N orchestrators x 2 children, all sent SIGTERM at once.

Script (the figures in README.md)::

    python benchmarks/bench_storm.py [--procs 8 16 32] [--rounds 3] [--stubborn 0] [--naive]

Each round is a full :func:`sessionstore.stress.run` (1 s of writes at 200/s per orchestrator,
then the storm) and must pass every invariant; the figure is SIGTERM -> last orchestrator gone
(each one has ended its children's trees, written its final state and closed the store before
it dies). Target (issue 5): 32 orchestrators x 2 children on 2 cores, all down in < 5 s with
nothing lost.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from pathlib import Path
from typing import Any

import pytest
from _mp import machine

from sessionstore import stress


def storm(procs: int, folder: str, *, stubborn: int = 0, baseline: str = "sessionstore") -> Any:
    """One storm on a fresh database; the report."""
    db = os.path.join(folder, f"storm-{procs}-{baseline}-{len(os.listdir(folder))}.db")
    return stress.run(
        db, procs=procs, children=2, seconds=1.0, stubborn=stubborn, baseline=baseline,  # type: ignore[arg-type]
        grace_s=1.0, deadline_s=15.0,
    )  # fmt: skip


def summary(procs: int, rounds: int, folder: str, **kw: Any) -> dict[str, Any]:
    """``rounds`` storms of ``procs`` orchestrators: wall times and whether all held."""
    reports = [storm(procs, folder, **kw) for _ in range(rounds)]
    times = [r.storm_s for r in reports]
    return {
        "procs": procs,
        "children": 2,
        "stubborn": kw.get("stubborn", 0),
        "baseline": kw.get("baseline", "sessionstore"),
        "rounds": rounds,
        "storm_s_median": round(statistics.median(times), 3),
        "storm_s_max": round(max(times), 3),
        "all_ok": all(r.ok for r in reports),
        "failures": sorted({f for r in reports for f in r.failures}),
        "acked": sum(r.acked for r in reports),
        "missing": sum(r.missing for r in reports),
        "orphans": sum(r.orphans for r in reports),
        "hung": sum(r.hung for r in reports),
        "busy_errors": sum(r.busy_errors for r in reports),
        "wal_peak_mib": round(max(r.wal_bytes_peak for r in reports) / 2**20, 2),
        "startup_s_median": round(statistics.median(r.startup_s for r in reports), 2),
    }


@pytest.mark.parametrize("procs", [8, 16])
def test_storm(benchmark: Any, tmp_path: Path, procs: int) -> None:
    """One storm of ``procs`` orchestrators x 2 children; every invariant holds."""
    report = benchmark.pedantic(storm, args=(procs, str(tmp_path)), rounds=1, iterations=1)
    benchmark.extra_info.update(
        {"storm_s": report.storm_s, "acked": report.acked, "failures": report.failures}
    )
    assert report.ok, report.failures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--procs", type=int, nargs="+", default=[8, 16, 32])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--stubborn", type=int, default=0)
    parser.add_argument("--naive", action="store_true", help="also run the naive baseline")
    args = parser.parse_args()
    print(json.dumps({"machine": machine()}))
    with tempfile.TemporaryDirectory(prefix="ss-storm-") as folder:
        for n in args.procs:
            result = summary(n, args.rounds, folder, stubborn=args.stubborn)
            print(json.dumps(result), flush=True)
            if args.naive:
                naive = summary(n, 1, folder, stubborn=args.stubborn, baseline="naive")
                print(json.dumps(naive), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
