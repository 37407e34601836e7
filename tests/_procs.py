"""Start worker processes from tests/workers.py and drive them through their start barrier."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

WORKERS = str(Path(__file__).with_name("workers.py"))


def start(command: str, *args: str) -> subprocess.Popen[str]:
    """Start a worker and wait (on its stdout, not a sleep) until it says ``ready``."""
    proc = subprocess.Popen(
        [sys.executable, WORKERS, command, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if line.strip() != "ready":
        proc.kill()
        _, err = proc.communicate()
        raise AssertionError(f"worker {command} did not start: {line!r} {err}")
    return proc


def release(procs: Sequence[subprocess.Popen[str]]) -> None:
    """Let every worker past its barrier at once."""
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()


def finish(proc: subprocess.Popen[str], timeout: float = 60) -> str:
    """Wait for a worker, fail on a non-zero exit, return its remaining stdout."""
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, f"worker failed ({proc.returncode}): {err}"
    return out
