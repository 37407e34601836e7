"""Shared machinery of the multi-process benchmarks: start workers, release them at once, collect.

A worker is this same interpreter running ``benchmarks/_mp_worker.py KIND JSON``. It sets itself
up, prints ``ready``, waits for ``go`` on stdin (the start barrier: no sleeps), runs, and prints
one JSON line with its results.
"""

from __future__ import annotations

import json
import os
import platform
import selectors
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

WORKER = str(Path(__file__).with_name("_mp_worker.py"))


def start_workers(kind: str, specs: list[dict[str, Any]], timeout: float = 120) -> list[Any]:
    """Start one worker per spec and wait until every one printed ``ready``."""
    commands = [[sys.executable, WORKER, kind, json.dumps(spec)] for spec in specs]
    return start_commands(kind, commands, timeout)


def start_commands(kind: str, commands: list[list[str]], timeout: float = 120) -> list[Any]:
    """Start one worker per command line and wait until every one printed ``ready``.

    Raises:
        RuntimeError: a worker printed something else first, or not all were ready in
            ``timeout`` s; every worker is then killed and reaped.
    """
    procs = [
        subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        for command in commands
    ]
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        for p in procs:
            assert p.stdout is not None
            sel.register(p.stdout, selectors.EVENT_READ, p)
        waiting = set(range(len(procs)))
        while waiting:
            left = deadline - time.monotonic()
            if left <= 0:
                kill_all(procs)
                raise RuntimeError(f"{len(waiting)} {kind} workers not ready in {timeout} s")
            for key, _ in sel.select(left):
                p = key.data
                line = p.stdout.readline()
                if line.strip() != "ready":
                    kill_all(procs)
                    raise RuntimeError(f"{kind} worker failed to start: {line!r}")
                sel.unregister(key.fileobj)
                waiting.discard(procs.index(p))
    return procs


def release_and_collect(procs: list[Any], timeout: float = 600) -> list[dict[str, Any]]:
    """Release every worker at once and return their JSON results, in order."""
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()
    results = []
    for p in procs:
        out, _ = p.communicate(timeout=timeout)
        if p.returncode != 0:
            raise RuntimeError(f"worker exited with {p.returncode}")
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def kill_all(procs: list[Any]) -> None:
    """Kill and reap every worker still running."""
    for p in procs:
        if p.poll() is None:
            p.kill()
    for p in procs:
        p.wait()


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) of ``values`` (nearest rank); 0 for none."""
    if not values:
        return 0.0
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[k]


def summarize(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Aggregate per-worker results: ops/s over the longest worker, latency percentiles (ms)."""
    lat = [x for r in results for x in r["lat"]]
    ops = sum(r["ops"] for r in results)
    wall = max(r["elapsed"] for r in results)
    return {
        "procs": len(results),
        "ops": ops,
        "errors": sum(r["errors"] for r in results),
        "ops_per_s": round(ops / wall, 1) if wall else 0.0,
        "p50_ms": round(percentile(lat, 50) * 1000, 3),
        "p99_ms": round(percentile(lat, 99) * 1000, 3),
        "max_ms": round(max(lat, default=0.0) * 1000, 3),
        "fairness": round(
            min(r["ops"] for r in results) / max(1, statistics.mean(r["ops"] for r in results)), 3
        ),
    }


def contention(counts: list[int], lat: list[float]) -> dict[str, Any]:
    """Latency (ms) of every op of every process, and fairness: slowest process / fastest."""
    return {
        "p50_ms": round(percentile(lat, 50) * 1000, 2),
        "p99_ms": round(percentile(lat, 99) * 1000, 2),
        "worst_ms": round(max(lat, default=0.0) * 1000, 1),
        "fairness": round(min(counts) / max(counts), 2) if counts and max(counts) else 0.0,
    }


def machine() -> dict[str, Any]:
    """The machine the figures came from."""
    import apsw

    return {
        "nproc": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "sqlite": apsw.sqlite_lib_version(),
        "apsw": apsw.apsw_version(),
    }
