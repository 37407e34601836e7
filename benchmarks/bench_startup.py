"""Start-up wall time: ``import sessionstore`` and ``python -m sessionstore status``, end to end.

Script (the figures in README.md)::

    python benchmarks/bench_startup.py [--runs 21]

Each command runs ``--runs`` times as a fresh interpreter, the commands interleaved run by run
(so drift hits them alike), after one unmeasured run of each. Bytecode is cached as an installed
package has it (``PYTHONPYCACHEPREFIX`` in a temporary folder, written by that first run, even
where ``PYTHONDONTWRITEBYTECODE`` is set: compiling the sources at every start is not what a
user pays, and it doubled the figure here). The
figure is the wall time from spawn to exit, median with min and max, next to a bare
``python -c pass`` on the same interpreter; the CPU time (user + system) of each run beside
it, which a loaded machine inflates far less than the wall time. Targets (issue 13): import
<= 100 ms, status <= 200 ms. ``python -X importtime -c "import sessionstore"`` says where an
import's time goes.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sessionstore import SessionStore


def commands(db: str) -> dict[str, list[str]]:
    """The measured commands, by name."""
    return {
        "python": [sys.executable, "-c", "pass"],
        "import sessionstore": [sys.executable, "-c", "import sessionstore"],
        "status": [sys.executable, "-m", "sessionstore", "--db", db, "status"],
    }


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _once(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall and CPU seconds of one run (CPU: the child's user + system time, once reaped)."""
    c0, t0 = _children_cpu(), time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, env=env)
    return time.perf_counter() - t0, _children_cpu() - c0


def measure(db: str, runs: int) -> dict[str, dict[str, float]]:
    """Wall ms per command: median, min, max over ``runs`` interleaved runs."""
    cmds = commands(db)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = os.path.join(os.path.dirname(db), "pycache")
    for argv in cmds.values():
        _once(argv, env)  # warm: .pyc files written, the file in the page cache
    wall: dict[str, list[float]] = {name: [] for name in cmds}
    cpu: dict[str, list[float]] = {name: [] for name in cmds}
    for _ in range(runs):
        for name, argv in cmds.items():
            w, c = _once(argv, env)
            wall[name].append(w * 1000)
            cpu[name].append(c * 1000)
    return {
        name: {
            "median_ms": round(statistics.median(wall[name]), 1),
            "min_ms": round(min(wall[name]), 1),
            "max_ms": round(max(wall[name]), 1),
            "cpu_median_ms": round(statistics.median(cpu[name]), 1),
            "cpu_min_ms": round(min(cpu[name]), 1),
        }
        for name in cmds
    }


def make_db(folder: str) -> str:
    """A store with a session, an event and a checkpoint, as ``status`` finds in real use."""
    db = os.path.join(folder, "startup.db")
    with SessionStore.open(db) as store:
        sid = store.create_session("startup").id
        store.log_event(sid, "started")
        store.save_checkpoint(sid, "progress", {"step": 1})
    return db


def test_startup_commands_run(tmp_path: Path) -> None:
    """Every measured command runs and exits 0 (the script measures; this only runs them)."""
    result = measure(make_db(str(tmp_path)), 1)
    assert set(result) == {"python", "import sessionstore", "status"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=21)
    args = parser.parse_args()
    print(json.dumps({"python": sys.version.split()[0], "load": os.getloadavg()}), flush=True)
    with tempfile.TemporaryDirectory(prefix="ss-bench-") as folder:
        for name, figures in measure(make_db(folder), args.runs).items():
            print(json.dumps({"command": name, **figures}), flush=True)
    print(json.dumps({"load_after": os.getloadavg()}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
