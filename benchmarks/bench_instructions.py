"""The store against raw apsw in instructions and system calls per op: figures that do not drift.

Script (the figures in README.md)::

    python benchmarks/bench_instructions.py [--ops heartbeat log_event] [--n 4000]

Why: on these machines wall and CPU time drift by up to 10x between runs, so ``bench_ratio.py``
needs many interleaved rounds and still reports a spread wider than the gaps worth closing. The
number of instructions a process executes does not drift. Each side (raw apsw as ``_raw.py``
writes it, and the store) runs in its own process under ``valgrind --tool=cachegrind``, once
with ``--n`` ops and once with none after the same set-up and warm-up; the difference divided
by ``--n`` is the side's user-space instructions per op. ``strace -c`` counts the system calls
per op the same way (kernel work is what the instruction count leaves out; the two sides must
make the same calls, or the instruction ratio says little about time).

The ratio printed is raw's instructions per op over the store's: the share of the store's
user-space work that is SQLite's and apsw's own. Needs ``valgrind`` (Debian's package) and,
for the system calls, ``strace``; a missing tool is reported, never guessed.

Each line printed is JSON: first the machine, then one line per op.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

WARMUP = 200
_IREFS = re.compile(r"I\s+refs:\s+([\d,]+)")


def _child(side: str, op: str, n: int, folder: str) -> None:
    """The measured process: set up, warm up, then ``n`` ops of ``op`` on ``side``."""
    import _raw

    from sessionstore import SessionStore

    db = os.path.join(folder, "bench.db")
    store = SessionStore.open(db)
    sid = store.create_session("bench").id
    if side == "raw":
        store.close()
        conn = _raw.connect(db)
        raw_fn = _raw.RAW_OPS[op]

        def fn(i: int) -> object:
            return raw_fn(conn, sid, i)
    else:
        store_fn = _raw.store_op(store, op)

        def fn(i: int) -> object:
            return store_fn(sid, i)

    for i in range(WARMUP):
        fn(i)
    for i in range(n):
        fn(i)
    if side == "raw":
        conn.close()
    else:
        store.close()


def _run(tool: list[str], side: str, op: str, n: int) -> subprocess.CompletedProcess[str]:
    folder = tempfile.mkdtemp(prefix="bench-instr-")
    try:
        cmd = [*tool, sys.executable, __file__, "--child", side, op, str(n), folder]
        # A fixed hash seed: dict and set layouts, and so the counts, the same every run.
        env = {**os.environ, "PYTHONHASHSEED": "0"}
        return subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def instructions(side: str, op: str, n: int) -> int:
    """User-space instructions the whole process executed (cachegrind's ``I refs``)."""
    tool = ["valgrind", "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null"]
    found = _IREFS.findall(_run(tool, side, op, n).stderr)
    if len(found) != 1:
        raise RuntimeError(f"cachegrind printed {len(found)} instruction counts")
    return int(found[0].replace(",", ""))


def syscalls(side: str, op: str, n: int) -> Counter[str]:
    """System calls by name, every thread of the process (``strace -f -c``)."""
    with tempfile.NamedTemporaryFile("r", suffix=".strace") as out:
        _run(["strace", "-f", "-c", "-o", out.name], side, op, n)
        counts: Counter[str] = Counter()
        for line in out.read().splitlines():
            parts = line.split()
            # "% time  seconds  usecs/call  calls  [errors]  syscall"; skip headers and total.
            if len(parts) >= 5 and parts[0][0].isdigit() and parts[-1] != "total":
                counts[parts[-1]] += int(parts[3])
        return counts


def per_op(op: str, n: int) -> dict[str, Any]:
    """Instructions and system calls per op, each side, and the instruction ratio."""
    result: dict[str, Any] = {"bench": "instructions", "op": op, "n": n}
    per: dict[str, float] = {}
    for side in ("raw", "store"):
        per[side] = (instructions(side, op, n) - instructions(side, op, 0)) / n
        result[f"{side}_instructions"] = round(per[side])
    result["ratio"] = round(per["raw"] / per["store"], 3)
    if shutil.which("strace"):
        for side in ("raw", "store"):
            more, base = syscalls(side, op, n), syscalls(side, op, 0)
            calls = {k: round((more[k] - base[k]) / n, 2) for k in more | base}
            result[f"{side}_syscalls"] = {k: v for k, v in sorted(calls.items()) if v}
    else:
        result["syscalls"] = "not counted: strace is not installed"
    return result


# ------------------------------------------------------------------------------ pytest


def test_measured_processes_run(tmp_path: Path) -> None:
    """Each side's measured process runs every op to the end (here without valgrind)."""
    for side in ("raw", "store"):
        for op in ("heartbeat", "log_event"):
            folder = tmp_path / f"{side}-{op}"
            folder.mkdir()
            _child(side, op, 20, str(folder))


def test_strace_summary_is_read_by_name(tmp_path: Path) -> None:
    """The system-call counts are what ``strace -c`` printed, by name, without its total."""
    if shutil.which("strace") is None:
        pytest.skip("strace is not installed: the script reports calls as not counted")
    counts = syscalls("store", "heartbeat", 20)
    assert counts["pwrite64"] >= 20
    assert "total" not in counts


# ------------------------------------------------------------------------------ script


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ops", nargs="+", default=["heartbeat", "log_event"])
    parser.add_argument("--n", type=int, default=4000)
    parser.add_argument("--child", nargs=4, metavar=("SIDE", "OP", "N", "FOLDER"))
    args = parser.parse_args()
    if args.child:
        side, op, n, folder = args.child
        _child(side, op, int(n), folder)
        return
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is not installed (Debian: apt-get install valgrind)")
    import apsw

    print(
        json.dumps(
            {
                "machine": {
                    "python": sys.version.split()[0],
                    "sqlite": apsw.sqlite_lib_version(),
                    "apsw": apsw.apsw_version(),
                    "valgrind": subprocess.run(
                        ["valgrind", "--version"], capture_output=True, text=True
                    ).stdout.strip(),
                }
            }
        )
    )
    for op in args.ops:
        print(json.dumps(per_op(op, args.n)), flush=True)


if __name__ == "__main__":
    main()
