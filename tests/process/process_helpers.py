"""Drive orchestrator subprocesses (scripts/orchestrator.py) and watch processes by pidfd.

Nothing here sleeps to synchronise: readiness is a line on a pipe, exits are pidfds turning
readable or ``Popen.wait(timeout)``.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from sessionstore._proc import wait_pidfds

SCRIPTS = Path(__file__).parent / "scripts"
ORCHESTRATOR = str(SCRIPTS / "orchestrator.py")


def read_line(fd: int, timeout: float) -> str:
    """Read one line from a raw fd (a pipe) within ``timeout`` seconds; '' on EOF."""
    deadline = time.monotonic() + timeout
    buf = b""
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while not buf.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or not sel.select(left):
                raise TimeoutError(f"no line within {timeout} s (got {buf!r})")
            chunk = os.read(fd, 1)
            if not chunk:
                break
            buf += chunk
    return buf.decode()


def wait_pidfds_readable(fds: Iterable[int], timeout: float) -> bool:
    """Wait until every pidfd is readable (its process exited); False on timeout."""
    return not wait_pidfds(fds, time.monotonic() + timeout)


def is_running(pidfd: int) -> bool:
    """True while the pidfd's process has not exited."""
    with selectors.DefaultSelector() as sel:
        sel.register(pidfd, selectors.EVENT_READ)
        return not sel.select(0)


class Orchestrator:
    """One ``orchestrator.py`` subprocess; every child pid it reports is pinned at once."""

    def __init__(self, db: str, *args: str, pass_fds: Sequence[int] = ()) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, ORCHESTRATOR, db, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            pass_fds=pass_fds,
        )
        assert self.proc.stdout is not None
        try:
            line = read_line(self.proc.stdout.fileno(), 60)
        except TimeoutError:
            self.close()
            raise
        if not line.startswith("READY "):
            _, err = self.close()
            raise AssertionError(f"orchestrator did not start: {line!r}\n{err}")
        info: dict[str, Any] = json.loads(line[len("READY ") :])
        self.session_id: str = info["session_id"]
        self.pids: dict[str, list[int]] = info["pids"]
        self.deadline_s: float = info["deadline"]
        self.pidfds: dict[int, int] = {}
        for pid in self.all_pids:
            # An orchestrator that returns at once shuts down at once: a child may be gone.
            with contextlib.suppress(ProcessLookupError):
                self.pidfds[pid] = os.pidfd_open(pid)

    @property
    def all_pids(self) -> list[int]:
        """Every child and grandchild pid the orchestrator reported."""
        return [pid for group in self.pids.values() for pid in group]

    def send(self, sig: int) -> float:
        """Signal the orchestrator; returns the monotonic time it was sent."""
        t = time.monotonic()
        self.proc.send_signal(sig)
        return t

    def wait(self, timeout: float) -> int:
        """Wait for the orchestrator to exit; its returncode."""
        return self.proc.wait(timeout)

    def all_gone(self, timeout: float = 10.0) -> bool:
        """True when every reported process has exited (pidfds readable) within ``timeout``."""
        return wait_pidfds_readable(self.pidfds.values(), timeout)

    def close(self) -> tuple[bytes, bytes]:
        """Kill whatever is left (orchestrator and reported processes), close the pidfds."""
        for fd in self.pidfds.values():
            with contextlib.suppress(OSError):
                signal.pidfd_send_signal(fd, signal.SIGKILL)
            os.close(fd)
        self.pidfds.clear()
        if self.proc.poll() is None:
            self.proc.kill()
        out, err = self.proc.communicate(timeout=30)
        return out, err
