"""Memory: an orchestrator's RSS, and paging through a very long session.

Script (the figures in README.md)::

    python benchmarks/bench_memory.py rss
    python benchmarks/bench_memory.py pages [--events 200000]     # --events 1000000 for 1M

``rss`` starts an orchestrator process that opens the store, creates a session, installs the
process layer, spawns 2 children and writes 5,000 events (plus heartbeats and checkpoints), then
reports its RSS; a bare interpreter and one that only imported sessionstore are measured the same
way for reference. Target: under 50 MB.

``pages`` fills one session with N events (raw apsw, one transaction: the reading is what is
measured), then a fresh process reads them all with ``store.events(after_id=..., limit=1000)``,
sampling RSS every 5% of the pages. Flat means the last sample is within a few MiB of the first.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import apsw
import pytest
from _mp import kill_all, machine, release_and_collect, start_workers

from sessionstore import SessionStore

_RSS_OF = "import psutil, sys; {imports}print(round(psutil.Process().memory_info().rss / 2**20, 1))"


def _rss_after(imports: str) -> float:
    code = _RSS_OF.format(imports=imports)
    return float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                check=True).stdout)  # fmt: skip


def rss(folder: str, events: int = 5000) -> dict[str, Any]:
    """RSS of an orchestrator (store + process layer + 2 children), with references."""
    db = os.path.join(folder, "rss.db")
    procs = start_workers("orchestrator", [{"db": db, "children": 2, "events": events}])
    try:
        result = release_and_collect(procs)[0]
    finally:
        kill_all(procs)
    return {
        "orchestrator_rss_mib": result["rss_mib"],
        "orchestrator_peak_rss_mib": result["peak_rss_mib"],
        "events_written": events,
        "bare_python_rss_mib": _rss_after(""),
        "import_sessionstore_rss_mib": _rss_after("import sessionstore, sessionstore.process; "),
    }


def fill(db: str, n: int) -> str:
    """Create a session with ``n`` events (same columns the store writes); return its id."""
    with SessionStore.open(db) as store:
        sid = store.create_session("long").id
    conn = apsw.Connection(db)
    now = time.time()
    with conn:
        conn.executemany(
            "INSERT INTO events (op_id, session_id, level, message, data, created_at) "
            "VALUES (?, ?, 'info', 'step finished', ?, ?)",
            ((f"op-{i:09d}", sid, f'{{"step":{i}}}', now + i * 1e-6) for i in range(n)),
        )
    conn.close()
    return sid


def pages(folder: str, events: int, page: int = 1000) -> dict[str, Any]:
    """Read ``events`` events page by page in a fresh process; RSS samples along the way."""
    db = os.path.join(folder, "pages.db")
    t0 = time.perf_counter()
    sid = fill(db, events)
    fill_s = time.perf_counter() - t0
    n_pages = events // page + 1
    spec = {"db": db, "sid": sid, "page": page, "sample_every": max(1, n_pages // 20)}
    procs = start_workers("pager", [spec])
    try:
        result = release_and_collect(procs)[0]
    finally:
        kill_all(procs)
    samples = result["rss_mib"]
    return {
        "events": result["events"],
        "page": page,
        "fill_s": round(fill_s, 1),
        "read_s": round(result["elapsed"], 2),
        "events_per_s": round(result["events"] / result["elapsed"]),
        "rss_first_mib": samples[0],
        "rss_max_mib": max(samples),
        "rss_last_mib": samples[-1],
        "rss_growth_mib": round(samples[-1] - samples[0], 1),
        "samples": samples,
    }


# ------------------------------------------------------------------------------ pytest


def test_orchestrator_rss(benchmark: Any, tmp_path: Path) -> None:
    """RSS of an orchestrator embedding the store and the process layer (target < 50 MB)."""
    result = benchmark.pedantic(rss, args=(str(tmp_path), 1000), rounds=1, iterations=1)
    benchmark.extra_info.update(result)
    assert result["orchestrator_rss_mib"] < 50


@pytest.mark.parametrize("events", [50_000])
def test_paging_memory_is_flat(benchmark: Any, tmp_path: Path, events: int) -> None:
    """Paging through a long session does not grow memory (the script does 1M)."""
    result = benchmark.pedantic(pages, args=(str(tmp_path), events), rounds=1, iterations=1)
    benchmark.extra_info.update(result)
    assert result["events"] == events
    assert result["rss_growth_mib"] < 5


# ------------------------------------------------------------------------------ script


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("rss")
    p = sub.add_parser("pages")
    p.add_argument("--events", type=int, default=200_000)
    p.add_argument("--page", type=int, default=1000)
    args = parser.parse_args()
    print(json.dumps({"machine": machine()}))
    with tempfile.TemporaryDirectory(prefix="ss-bench-") as folder:
        if args.command == "rss":
            print(json.dumps(rss(folder)))
        else:
            print(json.dumps(pages(folder, args.events, args.page)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
